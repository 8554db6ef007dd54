"""The job loop in this process, driven through a small stage written for the test: no
server, no simulator. What a stage's job does (write, fail, defer, wait) is the test's
to choose; claims, the metrics log, the summary and the files are the engine's own."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import wait_for

from drawpipe.engine.interrupts import StopSignals
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.loop import run_stage
from drawpipe.engine.metrics import read_logs
from drawpipe.engine.run import EngineSettings
from drawpipe.errors import BadInput, JobDeferred, JobFailed, TransientError, UsageError


class ListStage:
    """Jobs ``OUT/<name>`` for each name; a job writes "<key> by <server>" unless
    ``behaviour(job, call_number, server)`` returns a JobResult or raises first.
    ``calls``: (server, key) of every job run, in order."""

    name = "listing"
    extra_columns = ("note",)

    def __init__(self, root: Path, names, behaviour=None, sampled: str | None = None):
        self.root = root
        self.names = list(names)
        self.behaviour = behaviour
        self.sampled = sampled
        self.calls: list[tuple[str | None, str]] = []
        self.contexts: dict = {}  # server -> the WorkerContext the engine lent
        self._lock = threading.Lock()

    def plan(self) -> list[Job]:
        return [Job(key=f"OUT/{name}", output=self.root / "OUT" / name) for name in self.names]

    def process_to_sample(self, server):
        return self.sampled

    def make_worker(self, server, context):
        self.contexts[server] = context

        def run(job: Job, scratch: Path) -> JobResult:
            with self._lock:
                self.calls.append((server, job.key))
                call_number = sum(1 for _, key in self.calls if key == job.key)
            if self.behaviour is not None:
                result = self.behaviour(job, call_number, server)
                if result is not None:
                    return result
            return JobResult(data=f"{job.key} by {server}".encode(), extra={"note": "ok"})

        return run


def settings(root: Path, **changes) -> EngineSettings:
    values = {"root": root, "lease_seconds": 30.0, "poll_seconds": 0.05, "show_progress": False,
              "sample_interval_seconds": 0.05}
    values.update(changes)
    return EngineSettings(**values)


def run(stage, root: Path, **changes):
    """run_stage with its own stop-signal state (handlers installed only for the run)."""
    return run_stage(stage, settings(root, **changes), signals=StopSignals())


def rows(root: Path) -> list[dict]:
    return read_logs(root / "logs", ListStage.name)[0]


def leftovers(root: Path) -> list[Path]:
    claims = [p for p in (root / ".claims").rglob("*") if p.is_file()] \
        if (root / ".claims").exists() else []
    return claims + list(root.rglob(".*.tmp"))


def test_every_job_is_done_once_logged_and_a_second_run_does_nothing(share):
    stage = ListStage(share, ["a", "b", "c", "d", "e"])
    summary = run(stage, share)
    assert (summary.made, summary.already_done, summary.by_others, summary.remaining) == (5, 0, 0, 0)
    assert summary.exit_code == 0 and summary.lines()[0] == (
        "listing: 5 made, 0 already done, 0 made by other workers, 0 failed, 0 left of 5")
    assert sorted(key for _, key in stage.calls) == [f"OUT/{n}" for n in "abcde"]
    assert (share / "OUT/c").read_bytes() == b"OUT/c by None"
    logged = rows(share)
    assert sorted(row["output"] for row in logged) == [f"OUT/{n}" for n in "abcde"]
    assert {(row["status"], row["attempt"], row["note"]) for row in logged} == {("done", "1", "ok")}
    assert leftovers(share) == []

    again = ListStage(share, ["a", "b", "c", "d", "e"])
    summary = run(again, share)
    assert (summary.made, summary.already_done, summary.exit_code) == (0, 5, 0)
    assert again.calls == []


def test_a_failed_job_carries_its_attempts_into_the_log_and_the_batch_goes_on(share):
    def behaviour(job, call_number, server):
        if job.key == "OUT/b":
            raise TransientError("the backend gave up", attempts=3)

    summary = run(ListStage(share, ["a", "b", "c"], behaviour), share)
    assert (summary.made, list(summary.failed), summary.remaining) == (2, ["OUT/b"], 1)
    assert summary.exit_code == 1
    assert "1 failed; run the same command again to retry them" in summary.lines()
    failed = [row for row in rows(share) if row["status"] == "failed"]
    assert [(row["output"], row["attempt"], row["error"]) for row in failed] == [
        ("OUT/b", "3", "the backend gave up")]
    assert leftovers(share) == []


def test_an_output_that_appears_meanwhile_is_kept_and_counted_as_another_workers(share, capsys):
    def behaviour(job, call_number, server):
        job.output.write_bytes(b"theirs")  # another worker finished it meanwhile

    summary = run(ListStage(share, ["a"], behaviour), share)
    assert (share / "OUT/a").read_bytes() == b"theirs"
    assert (summary.made, summary.by_others, summary.exit_code) == (0, 1, 0)
    assert "duplicate: OUT/a: another worker had it" in capsys.readouterr().err
    assert [row["status"] for row in rows(share)] == ["duplicate"]
    assert leftovers(share) == []


def watch_until(path: Path) -> threading.Thread:
    """Send this process SIGINT once ``path`` exists: ends a --watch run."""
    def stop_when_done():
        wait_for(path.exists, timeout_seconds=30)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=stop_when_done, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("retry_after_seconds, at_least, below", [
    (1.0, 1.0, None),  # the backend may still be at it: not sent again sooner
    (0.0, 0.0, 1.0),  # the backend confirmed it stopped: the usual (short) --watch pause
])
def test_watch_never_sends_a_job_again_before_its_backends_retry_after(
        share, retry_after_seconds, at_least, below):
    started: list[float] = []

    def behaviour(job, call_number, server):
        started.append(time.monotonic())
        if call_number == 1:
            raise JobFailed("the answer was lost", retry_after_seconds=retry_after_seconds)

    stage = ListStage(share, ["a"], behaviour)
    signals = StopSignals()
    watch_until(share / "OUT/a")
    summary = run_stage(stage, settings(share, watch=True, watch_retry_seconds=0.05),
                        signals=signals)
    assert summary.made == 1 and summary.retried == 1 and len(started) == 2
    assert started[1] - started[0] >= at_least
    if below is not None:
        assert started[1] - started[0] < below


def test_a_worker_whose_server_keeps_failing_retires_and_the_other_goes_on(share, capsys):
    def behaviour(job, call_number, server):
        if server == "broken":
            raise TransientError("connection refused")
        time.sleep(0.05)  # the broken worker gets its share of jobs

    stage = ListStage(share, [str(n) for n in range(8)], behaviour)
    summary = run(stage, share, servers=("broken", "working"))
    err = capsys.readouterr().err
    assert "stopped sending to broken after 3 failed jobs in a row; the other workers go on" in err
    assert sum(1 for server, _ in stage.calls if server == "broken") == 3
    assert (summary.made, summary.failed, summary.remaining, summary.exit_code) == (8, {}, 0, 0)
    assert {path.read_bytes().split(b" by ")[1] for path in (share / "OUT").iterdir()} == {
        b"working"}


def test_bad_inputs_are_not_held_against_the_server(share, capsys):
    def behaviour(job, call_number, server):
        raise BadInput(f"{job.key} is not an image")

    summary = run(ListStage(share, ["a", "b", "c", "d"], behaviour), share)
    assert len(summary.failed) == 4 and summary.exit_code == 1
    assert "stopped sending" not in capsys.readouterr().err


def test_a_deferred_job_waits_for_a_later_pass_and_says_so_once(share, capsys):
    def behaviour(job, call_number, server):
        if call_number <= 3:
            raise JobDeferred("its input is still being written")

    summary = run(ListStage(share, ["a"], behaviour), share)
    assert summary.made == 1 and summary.retried == 0
    err = capsys.readouterr().err
    assert err.count("waiting: OUT/a: its input is still being written") == 1


def test_a_usage_error_stops_the_run_at_once(share):
    def behaviour(job, call_number, server):
        raise UsageError("the template is wrong")

    stage = ListStage(share, ["a", "b", "c"], behaviour)
    with pytest.raises(UsageError, match="the template is wrong"):
        run(stage, share)
    assert len(stage.calls) == 1 and leftovers(share) == []


def test_the_stage_names_the_process_whose_usage_is_logged(share):
    token = f"drawpipe-test-server-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    try:
        def slow(job, call_number, server):
            time.sleep(0.2)  # a few readings

        run(ListStage(share, ["a"], slow, sampled=token), share)
        run(ListStage(share, ["b"], slow, sampled=None), share)
    finally:
        server.kill()
        server.wait()
    by_output = {row["output"]: row for row in rows(share)}
    assert float(by_output["OUT/a"]["server_rss_mb"]) > 1
    assert by_output["OUT/b"]["server_rss_mb"] == "" and by_output["OUT/b"]["server_cpu_seconds"] == ""


def test_a_job_no_longer_ours_stops_at_its_next_checkpoint(share, capsys):
    sent = []

    def behaviour(job, call_number, server):
        checkpoint = stage.contexts[server].checkpoint
        checkpoint()  # the first request: ours
        sent.append(1)
        # Meanwhile our lease lapsed: another worker took the job over, made it, released it.
        job.output.parent.mkdir(parents=True, exist_ok=True)
        job.output.write_bytes(b"theirs")
        (share / ".claims" / "listing" / (job.key + ".claim")).unlink()
        checkpoint()  # the second request: never sent
        sent.append(2)

    stage = ListStage(share, ["a"], behaviour)
    summary = run(stage, share)
    assert sent == [1] and (share / "OUT/a").read_bytes() == b"theirs"
    assert (summary.made, summary.by_others, summary.exit_code) == (0, 1, 0)
    assert ("duplicate: OUT/a: another worker had it (our lease lapsed or it finished first); "
            "theirs is kept; nothing more was sent for it") in capsys.readouterr().err
    assert [(row["status"], row["attempt"]) for row in rows(share)] == [("duplicate", "1")]
    assert leftovers(share) == []


def test_a_claim_the_heartbeat_finds_lost_cancels_the_backends_request_in_flight(share, capsys):
    """A backend that can cancel leaves its cancel with the engine (WorkerContext.on_cancel);
    the heartbeat, finding the claim taken over while the request runs, fires it at once
    (not at the next checkpoint), and the job is the other worker's."""
    cancelled = threading.Event()
    reasons = []

    def cancel(reason):
        reasons.append(reason)
        cancelled.set()
        return True

    def behaviour(job, call_number, server):
        context = stage.contexts[server]
        context.on_cancel(cancel)
        context.checkpoint()  # the request is sent
        context.activity("sampling 3/8")
        # Meanwhile our lease lapsed and another worker took the job over and made it.
        claim = share / ".claims" / "listing" / (job.key + ".claim")
        claim.write_bytes(b'{"worker": "another"}')
        job.output.parent.mkdir(parents=True, exist_ok=True)
        job.output.write_bytes(b"theirs")
        assert cancelled.wait(10)  # the request in flight, cancelled by the heartbeat
        claim.unlink()  # the other worker finished and released it
        raise JobFailed("cancelled: the server stopped drawing it", 1, retry_after_seconds=0)

    stage = ListStage(share, ["a"], behaviour)
    summary = run(stage, share, lease_seconds=1.2)
    assert reasons == ["its lease was lost: another worker has the job"]
    assert (share / "OUT/a").read_bytes() == b"theirs"
    assert (summary.made, summary.by_others, len(summary.failed), summary.exit_code) == (0, 1, 0, 0)
    err = capsys.readouterr().err
    assert "its request was cancelled, so the server stops drawing it" in err
    assert ("duplicate: OUT/a: another worker had it (our lease lapsed or it finished first); "
            "theirs is kept; nothing more was sent for it") in err
    assert [(row["status"], row["attempt"]) for row in rows(share)] == [("duplicate", "1")]
    assert leftovers(share) == []


@pytest.mark.parametrize("names, left", [(["a"], 0), (["a", "b"], 1)])
def test_interrupted_is_said_only_when_something_was_left_undone(share, names, left):
    """A stop signal that comes as the last image is being made changes nothing."""
    def behaviour(job, call_number, server):
        if job.key == "OUT/a":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the signal is seen while this job is in flight

    summary = run(ListStage(share, names, behaviour), share)
    assert summary.interrupted and summary.made == 1 and summary.remaining == left
    interrupted = "interrupted; run the same command again to continue" in summary.lines()
    assert interrupted == bool(left)
    assert summary.exit_code == (130 if left else 0)
