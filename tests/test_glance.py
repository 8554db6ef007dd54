"""The night at a glance: live status files, python -m drawpipe.status, pause, drain and
priority from the share, messages to a loopback receiver, quarantine of a server that
stops answering, and a server asleep at the start of a night.

Workers are real script subprocesses against simulators on loopback, or the engine in
this process with a small stage written for the test; the receiver of messages is a
real HTTP server on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, png_files, start_script, wait_for
from fileserver import Receiver
from PIL import Image

from drawpipe.drawthings.simulator import Simulator
from drawpipe.engine.control import Priority, parse_priority
from drawpipe.engine.interrupts import StopSignals
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.loop import run_stage
from drawpipe.engine.notify import FORMATS, Message, NotifySettings
from drawpipe.engine.quarantine import Quarantine, QuarantineSettings
from drawpipe.engine.run import EngineSettings
from drawpipe.engine.status import StatusBoard
from drawpipe.errors import ShareLost, TransientError
from drawpipe.files import host_name

FAST = ["--backoff-seconds", "0.05", "--retries", "1", "--no-progress", "--poll-seconds", "0.1",
        "--status-seconds", "0.2"]


# --------------------------------------------------------------------------- helpers


def start_generate(share: Path, *args) -> subprocess.Popen:
    return start_script("generate.py", "--root", share, *FAST, *args)


def status_command(share: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drawpipe.status", "--root", str(share), *args],
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_DIR)


def status_files(share: Path) -> dict[str, dict]:
    """name (without .json) -> content of every status file that can be read now."""
    found = {}
    for path in sorted((share / ".drawpipe/status").glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            pass  # replaced while read
    return found


def states(share: Path) -> list[str]:
    return [worker["state"] for content in status_files(share).values()
            for worker in content["workers"]]


def generated(share: Path) -> list[Path]:
    return png_files(share / "GENERATIONS")


def posts(*simulators) -> int:
    return sum(1 for sim in simulators for request in sim.requests if request["method"] == "POST")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NationStage:
    """Jobs GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png, in the plan's order;
    ``calls``: the keys run, in order; ``behaviour(job, server)`` may raise or act first.
    ``stale``: keys whose output is there but not current (a rejected take)."""

    name = "generate"
    extra_columns = ()

    def __init__(self, root: Path, nations, categories=("family",), count=1, behaviour=None,
                 stale=()):
        self.root = root
        self.keys = [f"GENERATIONS/{nation}/{category}/{nation}_{category}_{n}.png"
                     for nation in nations for category in categories
                     for n in range(1, count + 1)]
        self.behaviour = behaviour
        self.stale = set(stale)
        self.calls: list[str] = []

    def plan(self):
        return [Job(key=key, output=self.root / key) for key in self.keys]

    def is_current(self, job):
        return job.key not in self.stale

    def set_aside(self, job):
        os.unlink(job.output)
        self.stale.discard(job.key)

    def process_to_sample(self, server):
        return None

    def make_worker(self, server, context):
        def run(job, scratch):
            self.calls.append(job.key)
            if self.behaviour is not None:
                self.behaviour(job, server)
            return JobResult(data=b"made by " + str(server).encode())
        return run


def run_engine(stage, root: Path, **changes):
    values = {"root": root, "lease_seconds": 30.0, "poll_seconds": 0.05, "show_progress": False,
              "sample_interval_seconds": 0.05, "status_seconds": 0.2}
    values.update(changes)
    return run_stage(stage, EngineSettings(**values), signals=StopSignals())


# --------------------------------------------------------------------------- status files


def test_two_workers_status_files_appear_update_show_and_vanish_and_a_killed_one_goes_silent(share):
    with Simulator(latency_seconds=0.3) as a, Simulator(latency_seconds=0.3) as b:
        args = ["--add", "Peru:family:14", "--lease-seconds", "2"]
        first = start_generate(share, "--server", a.url, *args)
        second = start_generate(share, "--server", b.url, *args)
        names = {f"{host_name()}-{process.pid}-generate": process for process in (first, second)}
        wait_for(lambda: set(status_files(share)) == set(names))
        wait_for(lambda: all(content["workers"][0]["done"] >= 1
                             for content in status_files(share).values()))
        files = status_files(share)
        for name, content in files.items():
            assert (content["host"], content["pid"], content["stage"]) == (
                host_name(), names[name].pid, "generate")
            worker = content["workers"][0]
            assert worker["server"] in (a.url, b.url) and worker["failed"] == 0
            assert content["energy_meter"] is None and content["counts"]["total"] == 14
        # Rewritten every 0.2 s, dated by the file server.
        wait_for(lambda: all(status_files(share).get(name, {}).get("written", 0)
                             > files[name]["written"] for name in names))
        screen = status_command(share)
        assert screen.returncode == 0, screen.stderr
        assert "2 workers:" in screen.stdout
        for process in (first, second):
            assert f"{host_name()}-{process.pid}  generate" in screen.stdout
        assert "a running generate.py's queue" in screen.stdout

        first.kill()
        first.wait()
        screen = wait_for(lambda: (text := status_command(share).stdout) and
                          "1 silent" in text and text)
        assert "silent (its process is gone)" in screen
        out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert len(generated(share)) == 14
    # The killed worker's file stays (silent); the clean exit removed the other's.
    killed = f"{host_name()}-{first.pid}-generate"
    assert set(status_files(share)) == {killed}
    # The next run on this Mac clears the file of the dead process.
    with Simulator() as c:
        again = start_generate(share, "--server", c.url, "--add", "Peru:family:14")
        again.communicate(timeout=60)
    assert again.returncode == 0 and status_files(share) == {}


def test_a_status_file_cut_off_by_a_crash_is_one_line(share):
    folder = share / ".drawpipe/status"
    folder.mkdir(parents=True)
    (folder / "mac-b-4242-upscale.json").write_text('{"host": "mac-b", "workers": [{"sta')
    result = status_command(share)
    assert result.returncode == 0, result.stderr
    assert (".drawpipe/status/mac-b-4242-upscale.json: unreadable (cut off, or not a status "
            "file); skipped") in result.stdout
    assert "no worker is running on this share" in result.stdout


def test_the_review_page_and_the_report_show_the_workers(share, tmp_path):
    from drawpipe.curate.review import Review, ReviewSettings
    from drawpipe.report.build import ReportSettings, run_report

    (share / "GENERATIONS/Peru/family").mkdir(parents=True)
    Image.new("RGB", (64, 64), "gray").save(share / "GENERATIONS/Peru/family/Peru_family_1.png")
    board = StatusBoard(share, "mac-b", 4242, "upscale", 120.0, 60.0, time.time)
    worker = board.worker(0, "http://10.0.0.5:7860")
    worker.working("UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png")
    worker.failed_job("step 2 (refine) of creative_upscale.json: HTTP 500\nmore")
    board.start()
    try:
        page = Review(ReviewSettings(share, cache_dir=tmp_path)).page()
        run_report(ReportSettings(share, html=True), out=open(os.devnull, "w"))
        report = (share / "report/index.html").read_text()
    finally:
        board.close()
    for html in (page, report):
        assert "working on UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png" in html
        assert "http://10.0.0.5:7860" in html and "mac-b-4242" in html
        assert "step 2 (refine) of creative_upscale.json: HTTP 500<" in html
    assert not (share / ".drawpipe/status/mac-b-4242-upscale.json").exists()
    run_report(ReportSettings(share, html=True), out=open(os.devnull, "w"))
    assert "mac-b-4242" not in (share / "report/index.html").read_text()


# --------------------------------------------------------------------------- pause and drain


def test_pause_stops_new_claims_within_one_pass_and_resume_restarts(share):
    with Simulator(latency_seconds=0.3) as a, Simulator(latency_seconds=0.3) as b:
        workers = [start_generate(share, "--server", sim.url, "--add", "Peru:family:16")
                   for sim in (a, b)]
        wait_for(lambda: len(generated(share)) >= 2)
        paused = status_command(share, "--pause", "--reason", "new model")
        assert paused.returncode == 0 and paused.stdout.startswith("paused: "), paused.stderr
        # Within one pass: what is in flight finishes, then nothing more is sent.
        wait_for(lambda: states(share) == ["paused", "paused"], timeout_seconds=15)
        sent = posts(a, b)
        assert list((share / ".claims/generate").rglob("*.claim")) == []  # claims released
        time.sleep(1.5)
        assert posts(a, b) == sent
        made = len(generated(share))
        assert 2 <= made < 16
        screen = status_command(share).stdout
        assert screen.count("paused: paused by ") == 2 and ": new model" in screen
        resumed = status_command(share, "--resume")
        assert resumed.stdout == "resumed: the workers go on\n"
        outputs = [worker.communicate(timeout=90) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert len(generated(share)) == 16
    for _, err in outputs:
        assert err.count("no new job starts (those in flight finish) until it is removed") == 1
        assert err.count("resumed: .drawpipe/pause is gone") == 1


def test_drain_ends_one_run_with_exit_0_while_the_other_finishes_the_queue(share):
    with Simulator(latency_seconds=0.3) as a, Simulator(latency_seconds=0.3) as b:
        leaving = start_generate(share, "--server", a.url, "--add", "Peru:family:16")
        staying = start_generate(share, "--server", b.url, "--add", "Peru:family:16")
        wait_for(lambda: len(generated(share)) >= 2)
        name = f"{host_name()}-{leaving.pid}"  # one run: the other runs on the same Mac
        drained = status_command(share, "--drain", name)
        assert drained.returncode == 0 and drained.stdout.startswith(f"draining {name}: ")
        out, err = leaving.communicate(timeout=60)
        assert leaving.returncode == 0, err
        assert f"drained by .drawpipe/drain/{name}: " in out
        assert "left to the other Macs" in out
        sent_by_leaving = posts(a)
        staying_out, staying_err = staying.communicate(timeout=90)
        assert posts(a) == sent_by_leaving  # nothing more once it left
    assert staying.returncode == 0, staying_err
    assert len(generated(share)) == 16
    made_by_leaving = int(out.split("generate: ")[1].split(" made")[0])
    assert 1 <= made_by_leaving < 16
    assert (share / ".drawpipe/drain" / name).exists()
    assert status_command(share, "--undrain", name).stdout == f"{name} is no longer drained\n"


def test_a_run_started_on_a_drained_mac_exits_0_at_once_and_sends_nothing(share):
    assert status_command(share, "--drain", host_name()).returncode == 0
    with Simulator() as simulator:
        worker = start_generate(share, "--server", simulator.url, "--add", "Peru:family:3")
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "generate: 0 made, 0 already done, 0 made by other workers, 0 failed, 3 left of 3" in out
    assert f"drained by .drawpipe/drain/{host_name()}: 3 left to the other Macs" in out
    assert posts(simulator) == 0


# --------------------------------------------------------------------------- priority


def test_priority_puts_nations_and_categories_first_and_a_change_applies_at_the_next_claim(share):
    (share / ".drawpipe").mkdir()
    (share / ".drawpipe/priority.json").write_text(
        json.dumps({"nations": ["Peru"], "categories": ["working"]}))
    stage = NationStage(share, ["Chile", "Japan", "Peru"], ("family", "working"))
    summary = run_engine(stage, share)
    assert summary.exit_code == 0
    assert [key.split("/")[1] + "/" + key.split("/")[2] for key in stage.calls] == [
        "Peru/working", "Peru/family", "Chile/working", "Japan/working", "Chile/family",
        "Japan/family"]

    other = share / "second"

    def behaviour(job, server):
        if job.key.startswith("GENERATIONS/Chile/family/Chile_family_1"):
            (other / ".drawpipe/priority.json").write_text(json.dumps({"nations": ["Peru"]}))
            time.sleep(1.1)  # the control files are read again after a second

    (other / ".drawpipe").mkdir(parents=True)
    stage = NationStage(other, ["Chile", "Japan", "Peru"], count=2, behaviour=behaviour)
    run_engine(stage, other)
    assert [key.split("/")[-1] for key in stage.calls] == [
        "Chile_family_1.png", "Peru_family_1.png", "Peru_family_2.png", "Chile_family_2.png",
        "Japan_family_1.png", "Japan_family_2.png"]


def test_rejected_remakes_first(share):
    stage = NationStage(share, ["Chile", "Japan", "Peru"],
                        stale=["GENERATIONS/Peru/family/Peru_family_1.png"])
    stale = share / "GENERATIONS/Peru/family/Peru_family_1.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"rejected take")
    (share / ".drawpipe").mkdir()
    (share / ".drawpipe/priority.json").write_text('{"remakes_first": true}')
    run_engine(stage, share)
    assert stage.calls[0] == "GENERATIONS/Peru/family/Peru_family_1.png"
    assert stale.read_bytes() == b"made by None"


@pytest.mark.parametrize("content, message", [
    ('{"nations": ["Peru"', ".drawpipe/priority.json is not JSON"),
    ('{"nation": ["Peru"]}', ".drawpipe/priority.json: unknown key 'nation' (known: nations, "
                             "categories, remakes_first)"),
    ('{"nations": "Peru"}', ".drawpipe/priority.json: 'nations' must be a list of names"),
])
def test_a_malformed_priority_file_is_one_line_and_the_plans_order_rules(share, capsys, content,
                                                                          message):
    (share / ".drawpipe").mkdir()
    (share / ".drawpipe/priority.json").write_text(content)
    stage = NationStage(share, ["Chile", "Japan", "Peru"], count=2)
    summary = run_engine(stage, share)
    assert summary.exit_code == 0 and stage.calls == stage.keys
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 and message in err
    assert "keeping the plan's order until it is fixed" in err


def test_a_pause_file_that_cannot_be_looked_at_is_one_line_and_the_run_goes_on(share, capsys):
    (share / ".drawpipe").mkdir()
    try:
        os.symlink("pause", share / ".drawpipe/pause")  # a link to itself: stat says ELOOP
    except OSError as exc:
        pytest.skip(f"this folder takes no symbolic links ({exc.strerror})")
    stage = NationStage(share, ["Chile", "Peru"])
    summary = run_engine(stage, share)
    assert summary.made == 2 and summary.exit_code == 0
    err = capsys.readouterr().err
    assert err.count("warning: cannot look at") == 1
    assert "going on as if it were not there" in err


def test_priority_files_parse_to_what_they_say():
    assert parse_priority(b'{"nations": ["Peru"], "remakes_first": true}', "p") == Priority(
        ("Peru",), (), True)
    assert Priority(("Peru", "Japan"), ("working",), True).describe() == (
        "first: re-makes; nations Peru, Japan; category working")


# --------------------------------------------------------------------------- messages


def test_messages_reach_a_receiver_for_the_end_a_retired_worker_and_a_lost_share(share):
    with Receiver() as receiver:
        notify = NotifySettings(urls=(receiver.url,))
        summary = run_engine(NationStage(share, ["Chile", "Peru"]), share, notify=notify)
        assert summary.exit_code == 0
        end = receiver.messages()[-1]
        assert (end["event"], end["outcome"], end["stage"], end["host"]) == (
            "run_ended", "done", "generate", host_name())
        assert end["counts"] == {"total": 2, "made": 2, "already_done": 0, "by_others": 0,
                                 "failed": 0, "left": 0}
        assert end["text"] == ("generate on " + host_name() + ": done: 2 made, 0 by other "
                               "workers, 0 failed, 0 left of 2")

        def broken(job, server):
            if server == "broken":
                raise TransientError("connection refused")
            time.sleep(0.05)

        second = share / "second"
        second.mkdir()
        run_engine(NationStage(second, ["Chile", "Japan", "Peru"], count=3, behaviour=broken),
                   second, notify=notify, servers=("broken", "working"))
        assert receiver.events()[1:] == ["worker_retired", "run_ended"]
        retired = receiver.messages()[1]
        assert retired["server"] == "broken" and retired["error"] == "connection refused"
        assert "the worker of broken stopped: 3 failed jobs in a row" in retired["text"]

        third = share / "third"
        third.mkdir()

        def unmounted(job, server):
            third.rename(share / "elsewhere")

        with pytest.raises(ShareLost):
            run_engine(NationStage(third, ["Chile", "Peru"], behaviour=unmounted), third,
                       notify=notify)
        lost = receiver.messages()[-1]
        assert lost["event"] == "share_lost" and "lost the shared folder" in lost["error"]
    assert all(path == "/drawpipe" for path, _, _ in receiver.received)


def test_a_notify_url_that_is_dead_or_answers_4xx_changes_nothing_but_one_line(share, capsys):
    dead = f"http://127.0.0.1:{free_port()}/gone"
    with Receiver(status=404) as refusing:
        notify = NotifySettings(urls=(dead, refusing.url))
        summary = run_engine(NationStage(share, ["Chile", "Peru"]), share, notify=notify)
    assert (summary.made, summary.exit_code) == (2, 0)
    err = capsys.readouterr().err
    assert err.count(f"warning: --notify {dead}: no answer (ConnectionError)") == 1
    assert err.count(f"warning: --notify {refusing.url}: HTTP 404 ok") == 1
    assert len(refusing.received) == 1  # a 4xx is not tried again


def test_ntfy_and_webhook_formats():
    message = Message("server_lost", "upscale on mac-a: http://x quarantined", "mac-a", "upscale")
    body, headers = FORMATS["ntfy"](message)
    assert body == b"upscale on mac-a: http://x quarantined"
    assert headers["Title"] == "drawpipe upscale on mac-a: server lost"
    assert headers["Tags"] == "warning" and headers["Priority"] == "4"
    assert json.loads(FORMATS["slack"](message)[0]) == {
        "text": "*drawpipe upscale on mac-a: server lost*\nupscale on mac-a: http://x quarantined"}
    assert json.loads(FORMATS["discord"](message)[0])["content"].startswith(
        "**drawpipe upscale on mac-a: server lost**\n")


# --------------------------------------------------------------------------- quarantine


def test_quarantine_probes_at_a_growing_interval_and_again_sooner_after_a_job_done():
    clock = [0.0]
    quarantine = Quarantine(QuarantineSettings(after_failures=3, after_seconds=600,
                                               probe_seconds=30, probe_cap_seconds=100),
                            now=lambda: clock[0])
    assert quarantine.failed() is None and quarantine.failed() is None
    assert quarantine.failed() == "3 failed jobs in a row"
    quarantine.start("3 failed jobs in a row")
    assert not quarantine.probe_due and quarantine.seconds_to_probe == 30
    waits = []
    for _ in range(4):
        clock[0] = quarantine.next_probe_at
        assert quarantine.probe_due
        quarantine.probe_failed("refused")
        waits.append(quarantine.pause_seconds)
    assert waits == [60, 100, 100, 100]
    quarantine.recovered()
    quarantine.start("again")  # before any job was done: a longer first pause
    assert quarantine.pause_seconds == 60
    quarantine.recovered()
    quarantine.succeeded()
    quarantine.start("later")
    assert quarantine.pause_seconds == 30
    # Failing for long enough counts too, however few the failures.
    quarantine.recovered()
    assert quarantine.failed() is None
    clock[0] += 601
    assert quarantine.failed() == "its jobs kept failing for 601 s (2 in a row)"


def test_a_server_that_stops_answering_is_quarantined_probed_and_used_again(share):
    port = free_port()
    simulator = Simulator(port=port, latency_seconds=0.2).start()
    try:
        with Receiver() as receiver:
            worker = start_generate(share, "--server", simulator.url, "--add", "Peru:family:10",
                                    "--probe-seconds", "0.5", "--notify", receiver.url)
            wait_for(lambda: len(generated(share)) >= 2)
            simulator.stop()  # refused from now on
            wait_for(lambda: states(share) == ["quarantined"], timeout_seconds=30)
            worker_status = next(iter(status_files(share).values()))["workers"][0]
            assert worker_status["detail"].startswith("3 failed jobs in a row; next GET / in")
            screen = status_command(share).stdout
            assert "quarantined: 3 failed jobs in a row" in screen
            time.sleep(1.0)  # a probe or two refused
            simulator = Simulator(port=port, latency_seconds=0.2).start()
            out, err = worker.communicate(timeout=90)
            events = receiver.events()
    finally:
        simulator.stop()
    # The three jobs that failed are left for the next run (not retried in this one).
    assert worker.returncode == 1, err
    assert "7 made" in out and "3 failed" in out
    assert len(generated(share)) == 7
    assert f"quarantined {simulator.url}: 3 failed jobs in a row (last: " in err
    assert f"back: {simulator.url} answers again after " in err
    assert [request["method"] for request in simulator.requests][:2] == ["GET", "GET"]
    assert events == ["server_lost", "server_back", "run_ended"]


def test_a_server_asleep_at_start_is_retried_while_the_other_works_and_joins(share):
    port = free_port()
    asleep = f"http://127.0.0.1:{port}"
    with Simulator(latency_seconds=0.4) as awake, Receiver() as receiver:
        worker = start_generate(share, "--server", awake.url, "--server", asleep,
                                "--add", "Peru:family:30", "--probe-seconds", "0.3",
                                "--notify", receiver.url)
        wait_for(lambda: "quarantined" in states(share) and len(states(share)) == 2)
        assert "no answer at start; next GET / in" in status_command(share).stdout
        with Simulator(port=port, latency_seconds=0.4) as woken:
            out, err = worker.communicate(timeout=90)
            joined = posts(woken)
        events = receiver.events()
    assert worker.returncode == 0, err
    assert "30 made" in out and len(generated(share)) == 30
    assert (f"warning: cannot reach {asleep} (connection refused): start Draw Things" in err
            and "; the other servers start without it, and it is tried again in 0.3 s" in err)
    assert f"back: {asleep} answers again after" in err
    assert joined >= 1 and posts(awake) >= 1
    assert events[0] == "server_lost" and "server_back" in events and events[-1] == "run_ended"


def test_no_server_answering_at_start_is_exit_2_and_an_answer_that_is_not_the_apps_too(share):
    asleep = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    none = start_generate(share, "--server", asleep[0], "--server", asleep[1],
                          "--add", "Peru:family:2")
    out, err = none.communicate(timeout=60)
    assert none.returncode == 2
    assert err.strip().endswith("(none of the 2 servers answers)")
    assert err.startswith(f"error: cannot reach {asleep[0]} (connection refused)")
    with Simulator() as simulator:
        wrong = start_generate(share, "--server", simulator.url, "--server",
                               simulator.url + "/not-the-api", "--add", "Peru:family:2")
        out, err = wrong.communicate(timeout=60)
    assert wrong.returncode == 2, err
    assert "answered HTTP 404, not Draw Things' API" in err
    assert generated(share) == [] and status_files(share) == {}


def test_desktop_banners_where_there_are_none_are_one_note(share, capsys):
    summary = run_engine(NationStage(share, ["Peru"]), share,
                         notify=NotifySettings(desktop=True))
    assert summary.exit_code == 0
    if sys.platform != "darwin":
        assert capsys.readouterr().err.count(
            "note: --notify-desktop shows banners on macOS only (with osascript); none on this "
            "machine") == 1


def test_status_watch_draws_the_screen_again_until_ctrl_c(share):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "drawpipe.status", "--root", str(share), "--watch",
         "--refresh-seconds", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=PROJECT_DIR)
    try:
        first = watcher.stdout.readline()
        assert first.startswith(f"drawpipe status of {share} at ")
        while watcher.stdout.readline() != "(every 0.2 s; Ctrl-C to stop)\n":
            pass
        assert watcher.stdout.readline().startswith(f"drawpipe status of {share} at ")  # again
    finally:
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
