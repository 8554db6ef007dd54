"""generate.py end to end: real subprocesses, a real simulator on loopback, real files."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import (FAST_RETRY_ARGS, make_old, png_files, run_script, script_command,
                      start_script, wait_for)
from PIL import Image

from drawpipe.curate.takes import seed_for
from drawpipe.drawthings.api import api_table
from drawpipe.drawthings.simulator import Simulator
from drawpipe.png import read_text_chunks

UPSTREAM_COMMIT = api_table().upstream["draw-things-community"]["commit"]


def generate(share: Path, *args, stdin: str = "", **kwargs):
    return run_script("generate.py", "--root", share, *FAST_RETRY_ARGS, *args, stdin=stdin,
                      **kwargs)


def posts(simulator) -> list[dict]:
    return [r for r in simulator.requests if r["method"] == "POST"]


def generated(share: Path) -> list[str]:
    return [p.relative_to(share).as_posix() for p in png_files(share / "GENERATIONS")]


def claim_path(share: Path, name: str) -> Path:
    """The claim of GENERATIONS/Peru/family/<name>: it exists while a worker is on it.
    (The simulator logs a request only when it answers, so claims say "in flight".)"""
    return share / ".claims/generate/GENERATIONS/Peru/family" / (name + ".claim")


def leftovers(share: Path) -> list[Path]:
    """Temporary files or claims a run must not leave behind."""
    temporary = [p for p in share.rglob(".*.tmp")]
    claims = [p for p in (share / ".claims").rglob("*.claim*")] if (share / ".claims").exists() else []
    return temporary + claims


def test_generates_the_queue_with_provenance_and_metrics(share, simulator):
    result = generate(share, "--server", simulator.url, "--add", "France:family:2",
                      "--add", "japan:WORKING:1")
    assert result.returncode == 0, result.stderr
    assert generated(share) == [
        "GENERATIONS/France/family/France_family_1.png",
        "GENERATIONS/France/family/France_family_2.png",
        "GENERATIONS/Japan/working/Japan_working_1.png",
    ]
    assert "generate: 3 made, 0 already done, 0 made by other workers, 0 failed, 0 left of 3" \
        in result.stdout
    image_path = share / "GENERATIONS/France/family/France_family_2.png"
    with Image.open(image_path) as image:
        assert image.size == (1024, 1024)
        image.verify()
    chunks = read_text_chunks(image_path)
    seed = seed_for("France_family_2")
    assert f"Seed: {seed}, Size: 1024x1024, Model: sd_xl_base_1.0_f16.ckpt" in chunks["parameters"]
    assert "\nNegative prompt: " in chunks["parameters"]
    request = json.loads(chunks["drawpipe"])["request"]
    assert request["seed"] == seed and request["refiner_model"] == "sd_xl_refiner_1.0_f16.ckpt"
    # What was sent is what the template says, with the prompt variant and the seed.
    sent = [r for r in posts(simulator) if r["seed"] == seed][0]["payload"]
    assert sent == request
    assert sent["prompt"].endswith("shot on dslr, photorealistic, photographic, sharp")

    logs = list((share / "logs").glob("generate-*.csv"))
    assert len(logs) == 1
    rows = list(csv.DictReader(logs[0].open()))
    assert [row["status"] for row in rows] == ["done"] * 3
    for row in rows:
        assert float(row["seconds"]) > 0
        assert 0 <= float(row["cpu_percent_peak"]) <= 100
        assert float(row["ram_mb_peak"]) > 0
        assert row["seed"] == str(seed_for(Path(row["output"]).stem))
        assert len(",".join(row.values())) < 1000  # no base64 in the log
    assert leftovers(share) == []


def test_second_run_sends_nothing_and_a_larger_count_makes_only_the_missing(share, simulator):
    assert generate(share, "--server", simulator.url, "--add", "Peru:family:2").returncode == 0
    assert len(posts(simulator)) == 2
    first_bytes = (share / "GENERATIONS/Peru/family/Peru_family_1.png").read_bytes()

    again = generate(share, "--server", simulator.url, "--add", "Peru:family:2")
    assert again.returncode == 0
    assert "0 made, 2 already done" in again.stdout
    assert len(posts(simulator)) == 2

    more = generate(share, "--server", simulator.url, "--add", "Peru:family:4")
    assert more.returncode == 0
    assert [r["seed"] for r in posts(simulator)[2:]] == [
        seed_for("Peru_family_3"), seed_for("Peru_family_4")]
    assert (share / "GENERATIONS/Peru/family/Peru_family_1.png").read_bytes() == first_bytes


def test_seed_offset_changes_every_seed(share, simulator):
    assert generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                    "--seed-offset", "5").returncode == 0
    assert posts(simulator)[0]["seed"] == seed_for("Peru_family_1") + 5


def test_interactive_answers_through_a_pipe(share, simulator):
    # Nation 12 of the numbered list, a wrong category re-asked, a bad count re-asked.
    answers = "12\nfamly\nfamily\n0\n2\ndone\n"
    result = generate(share, "--server", simulator.url, stdin=answers)
    assert result.returncode == 0, result.stderr
    assert " 12  Ghana " in result.stdout
    assert "unknown category 'famly' (choose family or working)" in result.stdout
    assert "count must be a positive integer, got '0'" in result.stdout
    assert generated(share) == ["GENERATIONS/Ghana/family/Ghana_family_1.png",
                                "GENERATIONS/Ghana/family/Ghana_family_2.png"]


def test_end_of_input_after_one_item_means_done(share, simulator):
    result = generate(share, "--server", simulator.url, stdin="Kenya\nworking\n1\n")
    assert result.returncode == 0, result.stderr
    assert generated(share) == ["GENERATIONS/Kenya/working/Kenya_working_1.png"]


def test_nothing_queued_is_a_usage_error(share, simulator):
    result = generate(share, "--server", simulator.url, stdin="")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no images queued: the input ended before")
    assert posts(simulator) == []


def test_dry_run_prints_the_plan_and_sends_nothing(share, simulator):
    assert generate(share, "--server", simulator.url, "--add", "Peru:family:1").returncode == 0
    queue = share / "queue.json"
    queue.write_text(json.dumps([{"nation": "Peru", "category": "family", "count": 3},
                                 {"nation": "Chile", "category": "working", "count": 2}]))
    result = generate(share, "--queue", queue, "--dry-run", "--server", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert "Peru/family: 2 to make, 1 already done" in result.stdout
    assert "Chile/working: 2 to make, 0 already done" in result.stdout
    assert "dry run: 4 image(s) to make" in result.stdout
    assert len(posts(simulator)) == 1


@pytest.mark.parametrize("args, message", [
    (["--add", "Frnace:family:2"], "error: unknown nation 'Frnace' (did you mean: France?)"),
    (["--add", "France:famly:2"], "error: unknown category 'famly' (choose family or working)"),
    (["--add", "France:family:0"], "error: count must be a positive integer, got '0'"),
    (["--add", "France:family:-1"], "error: count must be a positive integer, got '-1'"),
    (["--add", "../x:family:1"], "error: unknown nation '../x'"),
    (["--add", "a/b:family:1"], "error: unknown nation 'a/b'"),
])
def test_bad_queue_arguments(share, simulator, args, message):
    result = generate(share, "--server", simulator.url, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert posts(simulator) == []
    assert not (share / "GENERATIONS").exists()


def test_malformed_files_name_the_file_and_position(share, simulator):
    queue = share / "queue.json"
    queue.write_text('[\n  {"nation": "Peru", "category": "family", "count": 1}\n  {"nation"}\n]')
    result = generate(share, "--server", simulator.url, "--queue", queue)
    assert result.returncode == 2
    assert result.stderr == (f"error: {queue}: invalid JSON at line 3, column 3: "
                             "Expecting ',' delimiter\n")

    payload = share / "txt2img.json"
    payload.write_text(json.dumps({"prompt": "{prompt}", "stpes": 20, "width": 1024}))
    result = generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                      "--payload", payload)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {payload}: \"stpes\" is not a key of Draw Things' HTTP API (draw-things-community "
        f"{UPSTREAM_COMMIT[:12]}): the app answers Unrecognized keys: [\"stpes\"]; did you mean "
        '"stpes" -> "steps"?\n')

    payload.write_text(json.dumps({"prompt": "{prompt}", "cfg_scale": 5, "guidance_scale": 5}))
    result = generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                      "--payload", payload)
    assert result.returncode == 2
    assert result.stderr == (f'error: {payload}: More than one key for guidance specified '
                             '(must only specify one of ["guidance_scale", "cfg_scale"])\n')
    assert posts(simulator) == []


def test_server_down_is_one_line_and_exit_2(share):
    result = generate(share, "--server", "http://127.0.0.1:9", "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:9 (connection refused)"
                                    ": start Draw Things and turn on its HTTP API server")
    assert len(result.stderr.splitlines()) == 1


def test_a_422_stops_the_run_at_once_with_the_servers_detail(share, simulator):
    # The client cannot know this one: only the server checks init_images per route.
    payload = json.loads(Path("payloads/txt2img.json").read_text())
    payload["init_images"] = []
    path = share / "bad.json"
    path.write_text(json.dumps(payload))
    result = generate(share, "--server", simulator.url, "--add", "Peru:family:5",
                      "--payload", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {simulator.url}/sdapi/v1/txt2img rejected the request (HTTP 422): init_images "
        "is not supported for text-to-image — fix the payload template or the app's "
        "settings and run again")
    assert len(posts(simulator)) == 1
    assert leftovers(share) == []


def test_failed_jobs_are_logged_the_batch_goes_on_and_a_rerun_retries(share, simulator):
    # Three attempts of the first image fail; the others succeed.
    simulator.queue_faults(["503", "truncate", "empty"])
    result = generate(share, "--server", simulator.url, "--add", "Peru:family:3")
    assert result.returncode == 1
    assert "2 made, 0 already done, 0 made by other workers, 1 failed, 1 left of 3" in result.stdout
    assert "retries: 2 request(s) re-sent, 0 failed job(s) tried again" in result.stdout
    assert "1 failed; run the same command again to retry them" in result.stdout
    assert 'failed: GENERATIONS/Peru/family/Peru_family_1.png: ' in result.stderr
    resends = [line for line in result.stderr.splitlines() if "re-sending" in line]
    assert resends[0] == (f"GENERATIONS/Peru/family/Peru_family_1.png: re-sending (attempt 2 "
                          f"of 3, after 0.05 s) because: {simulator.url}/sdapi/v1/txt2img: "
                          "HTTP 503 simulated fault 503")
    assert len(resends) == 2
    rows = list(csv.DictReader(next((share / "logs").glob("generate-*.csv")).open()))
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["attempt"] == "3"
    assert "no image (empty" in failed[0]["error"]

    retry = generate(share, "--server", simulator.url, "--add", "Peru:family:3")
    assert retry.returncode == 0
    assert "1 made, 2 already done" in retry.stdout


def test_three_workers_request_every_image_exactly_once(share):
    simulators = [Simulator(latency_seconds=0.15).start() for _ in range(3)]
    try:
        workers = [start_script("generate.py", "--root", share, "--server", sim.url,
                                "--add", "Peru:family:8", "--add", "Chile:working:7",
                                "--poll-seconds", "0.1", "--no-progress")
                   for sim in simulators]
        outputs = [worker.communicate(timeout=120) for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0, 0], outputs
    finally:
        for sim in simulators:
            sim.stop()
    requests = [r for sim in simulators for r in posts(sim)]
    per_seed = Counter(r["seed"] for r in requests)
    assert len(per_seed) == 15 and set(per_seed.values()) == {1}
    assert all(len(posts(sim)) > 0 for sim in simulators)  # the work was shared
    assert len(generated(share)) == 15
    assert leftovers(share) == []


def test_killed_worker_is_taken_over_after_its_lease(share):
    with Simulator(latency_seconds=2.0) as slow, Simulator() as fast:
        crashing = start_script("generate.py", "--root", share, "--server", slow.url,
                                "--add", "Peru:family:1", "--lease-seconds", "1.5",
                                "--no-progress")
        claim = claim_path(share, "Peru_family_1.png")
        wait_for(claim.exists)  # the request is in flight
        crashing.send_signal(signal.SIGKILL)
        crashing.wait()
        last_heartbeat = claim.stat().st_mtime  # the file server's clock (here: this one)
        result = run_script("generate.py", "--root", share, "--server", fast.url,
                            "--add", "Peru:family:1", "--lease-seconds", "1.5",
                            "--poll-seconds", "0.1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "1 made" in result.stdout
    (taken_over,) = posts(fast)
    # The lease was honoured: the job was sent again only once the dead worker's claim
    # had gone 1.5 s without a heartbeat, and not much later.
    assert last_heartbeat + 1.5 <= taken_over["time"] < last_heartbeat + 1.5 + 5
    assert generated(share) == ["GENERATIONS/Peru/family/Peru_family_1.png"]
    assert leftovers(share) == []


def test_worker_waits_for_images_claimed_by_others(share):
    """B must not exit while A holds an image; when A is killed, B takes it over."""
    with Simulator(latency_seconds=3.0) as slow, Simulator() as fast:
        holder = start_script("generate.py", "--root", share, "--server", slow.url,
                              "--add", "Peru:family:2", "--lease-seconds", "2", "--no-progress")
        wait_for(claim_path(share, "Peru_family_1.png").exists)
        helper = start_script("generate.py", "--root", share, "--server", fast.url,
                              "--add", "Peru:family:2", "--lease-seconds", "2",
                              "--poll-seconds", "0.1", "--no-progress")
        wait_for(lambda: len(posts(fast)) == 1)  # B did the free image
        time.sleep(0.5)
        assert helper.poll() is None  # ... and still waits for A's image
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        out, err = helper.communicate(timeout=60)
    assert helper.returncode == 0, err
    assert len(generated(share)) == 2
    assert len(posts(fast)) == 2


def test_ctrl_c_finishes_the_image_in_flight_and_releases_its_claim(share):
    with Simulator(latency_seconds=1.5) as simulator:
        worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                              "--add", "Peru:family:5", "--no-progress")
        wait_for(claim_path(share, "Peru_family_1.png").exists)
        worker.send_signal(signal.SIGINT)
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 130
    assert "stopping: finishing the images in flight" in err
    assert "interrupted; run the same command again to continue" in out
    assert "Traceback" not in err
    assert generated(share) == ["GENERATIONS/Peru/family/Peru_family_1.png"]
    assert leftovers(share) == []


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> None:
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root on Linux)")
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def test_disk_full_fails_the_job_and_leaves_no_partial_file(tmp_path, simulator):
    share = tmp_path / "small"
    mount_tmpfs(share, "1600k")
    try:
        result = generate(share, "--server", simulator.url, "--add", "Peru:family:3")
        assert result.returncode == 1, result.stderr
        assert "disk full writing" in result.stderr
        written = png_files(share / "GENERATIONS")
        assert 1 <= len(written) < 3
        for path in written:
            with Image.open(path) as image:
                image.verify()
        assert list(share.rglob(".*.tmp")) == []
    finally:
        subprocess.run(["umount", str(share)])


def test_read_only_root_is_a_usage_error(tmp_path, simulator):
    share = tmp_path / "readonly"
    mount_tmpfs(share, "1m", read_only=True)
    try:
        result = generate(share, "--server", simulator.url, "--add", "Peru:family:1")
        assert result.returncode == 2
        assert result.stderr == (f"error: cannot write to {share} (Read-only file system): check "
                                 "that the folder exists and the share is mounted read-write\n")
        assert posts(simulator) == []
    finally:
        subprocess.run(["umount", str(share)])


def test_missing_root_is_a_usage_error(tmp_path, simulator):
    result = generate(tmp_path / "not-mounted", "--server", simulator.url, "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr == (f"error: root folder {tmp_path / 'not-mounted'} does not exist "
                             "(is the share mounted?)\n")


def test_a_root_that_is_a_file_or_a_profiles_missing_folder_says_so(tmp_path, share):
    a_file = tmp_path / "README.md"
    a_file.write_text("not a folder")
    result = generate(a_file, "--add", "Peru:family:1", "--dry-run")
    assert result.returncode == 2
    assert result.stderr == (f"error: root {a_file} is a file, not a folder: name the shared "
                             "folder that holds (or will hold) GENERATIONS/\n")
    config = tmp_path / "drawpipe.toml"
    config.write_text(f'[profiles.studio]\nroot = "{tmp_path / "unmounted"}"\n')
    result = run_script("generate.py", "--config", config, "--add", "Peru:family:1", "--dry-run")
    assert result.returncode == 2
    assert result.stderr == (f"error: root folder {tmp_path / 'unmounted'} (the root of profile "
                             f"'studio' in {config}) does not exist (is the share mounted?)\n")


def test_a_server_without_a_scheme_is_taken_as_http(share, simulator):
    address = simulator.url.removeprefix("http://")
    result = generate(share, "--server", address, "--add", "Peru:family:1")
    assert result.returncode == 0, result.stderr
    assert generated(share) == ["GENERATIONS/Peru/family/Peru_family_1.png"]
    result = generate(share, "--server", "ftp://127.0.0.1:7859", "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr == ("error: --server ftp://127.0.0.1:7859: expected a URL like "
                             "http://127.0.0.1:7860 (Draw Things' HTTP API), grpc://HOST:7859 "
                             "(its gRPC API) or grpcs://HOST:7859 (gRPC over TLS)\n")


def test_the_same_nation_and_category_twice_says_what_was_kept(share):
    result = generate(share, "--add", "Peru:family:2", "--add", "peru:Family:5", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "Peru family: asked for 2 and 5 images: 5 kept, images 1 to 5; a count is how many images "
        "there are, not how many to add\nQueue: 1 entry, 5 images\n")


def test_profiles_choose_root_and_server_and_flags_override(tmp_path, share, simulator):
    config = tmp_path / "drawpipe.toml"
    config.write_text(f'''
[profiles.macmini]
root = "{share}"
servers = ["{simulator.url}"]
lease_seconds = 60

[profiles.macbook]
root = "{tmp_path}"
servers = ["http://127.0.0.1:9"]
''')
    result = run_script("generate.py", "--config", config, "--profile", "macmini",
                        "--add", "Peru:family:1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert generated(share) == ["GENERATIONS/Peru/family/Peru_family_1.png"]

    # Several profiles, none chosen, no terminal on stdin: say how to choose.
    result = run_script("generate.py", "--config", config, "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr == ("error: several profiles (macbook, macmini): choose one with "
                             "--profile NAME\n")

    config.write_text('[profiles.macmini]\nsevers = ["http://127.0.0.1:7860"]\n')
    result = run_script("generate.py", "--config", config, "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr == (f"error: {config}: profile 'macmini': unknown setting 'severs' "
                             "(did you mean 'servers'?)\n")


def test_two_servers_in_one_process_share_the_queue(share):
    with Simulator(latency_seconds=0.2) as first, Simulator(latency_seconds=0.2) as second:
        result = generate(share, "--server", first.url, "--server", second.url,
                          "--add", "Peru:family:6", "--poll-seconds", "0.1")
        assert result.returncode == 0, result.stderr
        assert len(posts(first)) >= 1 and len(posts(second)) >= 1
        assert len(posts(first)) + len(posts(second)) == 6


def test_a_nation_that_would_escape_the_root_is_refused(share, simulator):
    prompts = share / "sets.json"
    prompts.write_text(json.dumps([
        {"nation": "Peru", "category": "family", "prompt": "a family"},
        {"nation": "../../outside", "category": "family", "prompt": "a family"},
    ]))
    result = generate(share, "--server", simulator.url, "--prompts", prompts,
                      "--add", "Peru:family:1")
    assert result.returncode == 2
    assert result.stderr == (f'error: {prompts}: entry 2: nation "../../outside" cannot be used '
                             "as a folder name\n")
    assert not (share.parent / "outside").exists() and posts(simulator) == []


def test_a_local_servers_process_is_measured(share, tmp_path):
    from conftest import start_simulator_process, stop_process
    process, url = start_simulator_process()
    try:
        result = generate(share, "--server", url, "--add", "Peru:family:2",
                          "--server-process-name", "drawpipe.simulator")
    finally:
        stop_process(process)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(next((share / "logs").glob("generate-*.csv")).open()))
    assert all(float(row["server_rss_mb"]) > 10 for row in rows)
    assert all(float(row["server_cpu_seconds"]) >= 0 for row in rows)
    assert sum(float(row["server_cpu_seconds"]) for row in rows) > 0


def test_a_killed_workers_temporary_file_is_cleaned_by_the_next_owner(share, simulator):
    folder = share / "GENERATIONS/Peru/family"
    folder.mkdir(parents=True)
    abandoned = folder / ".Peru_family_1.png.deadhost-1-0.tmp"
    abandoned.write_bytes(b"\x89PNG half")
    recent = folder / ".Peru_family_1.png.livehost-2-0.tmp"
    recent.write_bytes(b"\x89PNG being written")
    make_old(abandoned, 3600)
    result = generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                      "--lease-seconds", "60")
    assert result.returncode == 0, result.stderr
    assert not abandoned.exists()
    assert recent.exists()  # within a lease: may belong to a live worker


def test_several_profiles_on_a_terminal_ask_which(tmp_path, share, simulator):
    import pty
    config = tmp_path / "drawpipe.toml"
    config.write_text(f'[profiles.macbook]\nroot = "{tmp_path}"\n'
                      f'[profiles.macmini]\nroot = "{share}"\nservers = ["{simulator.url}"]\n')
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            script_command("generate.py", "--config", config, "--add", "Peru:family:1",
                           "--no-progress"),
            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, b"2\n")  # the second profile of the numbered list
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert process.returncode == 0, err
    assert "  1. macbook\n  2. macmini\n" in out
    assert generated(share) == ["GENERATIONS/Peru/family/Peru_family_1.png"]


# --------------------------------------------------------------- a share that disappears


def lost_share_line(share: Path, reason: str) -> str:
    return (f"error: lost the shared folder {share} ({reason}): check the share is mounted, "
            "then run the same command again")


def test_a_share_unmounted_mid_run_stops_the_run_and_nothing_lands_on_the_local_disk(tmp_path):
    """The share is unmounted while its mount-point folder stays: the path is now a plain
    local folder, which must stay empty."""
    share = tmp_path / "mounted"
    mount_tmpfs(share, "64m")
    try:
        with Simulator(latency_seconds=0.4) as simulator:
            worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                                  "--add", "Peru:family:8", "--no-progress")
            wait_for(lambda: (share / "GENERATIONS/Peru/family/Peru_family_1.png").exists())
            subprocess.run(["umount", "-l", str(share)], check=True)
            started = time.monotonic()
            out, err = worker.communicate(timeout=60)
    finally:
        subprocess.run(["umount", str(share)], capture_output=True)
    assert worker.returncode == 1, err
    assert time.monotonic() - started < 5
    assert err.strip().splitlines()[-1] == lost_share_line(
        share, f"{share} is now on another device: the share was unmounted")
    assert "Traceback" not in err and "failed:" not in err
    assert list(share.iterdir()) == []  # the mount point: nothing was written there


def test_a_share_unmounted_during_a_long_request_stops_the_run_without_waiting_for_it(tmp_path):
    share = tmp_path / "mounted"
    mount_tmpfs(share, "64m")
    try:
        with Simulator(latency_seconds=60) as simulator:
            worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                                  "--add", "Peru:family:2", "--lease-seconds", "3",
                                  "--no-progress")  # a heartbeat every 0.5 s
            wait_for(claim_path(share, "Peru_family_1.png").exists)
            subprocess.run(["umount", "-l", str(share)], check=True)
            started = time.monotonic()
            out, err = worker.communicate(timeout=60)
    finally:
        subprocess.run(["umount", str(share)], capture_output=True)
    assert worker.returncode == 1, err
    assert time.monotonic() - started < 5  # the heartbeat noticed; the answer is 60 s away
    assert err.strip().splitlines()[-1] == lost_share_line(
        share, f"{share} is now on another device: the share was unmounted")
    assert list(share.iterdir()) == []


@pytest.mark.parametrize("how", ["moved away", "replaced by an empty folder"])
def test_a_root_that_disappears_mid_run_stops_the_run_with_one_line(share, how):
    with Simulator(latency_seconds=0.4) as simulator:
        worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                              "--add", "Peru:family:8", "--no-progress")
        wait_for(lambda: (share / "GENERATIONS/Peru/family/Peru_family_1.png").exists())
        marker = next((share / ".claims").glob(".run-*")).name
        # (On SMB a folder with a file open inside cannot be renamed: try until it can.)
        wait_for(lambda: _renamed(share, share.with_name("elsewhere")))
        if how == "replaced by an empty folder":
            share.mkdir()
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 1, err
    reason = ("No such file or directory" if how == "moved away"
              else f"its marker {marker} in .claims/ is gone")
    assert err.strip().splitlines()[-1] == lost_share_line(share, reason)
    assert "Traceback" not in err and "failed:" not in err
    if how == "replaced by an empty folder":
        assert list(share.iterdir()) == []
    moved = share.with_name("elsewhere")
    assert list(moved.rglob(".*.tmp")) == []
    # At most the claim of the job in flight stays where the share went: it goes stale
    # after its lease and another worker takes the job over.
    assert len(list((moved / ".claims").rglob("*.claim"))) <= 1


def _renamed(source: Path, target: Path) -> bool:
    try:
        source.rename(target)
        return True
    except PermissionError:
        return False


def test_an_output_that_cannot_be_looked_at_is_not_taken_for_missing(tmp_path):
    from drawpipe.files import output_exists
    assert output_exists(tmp_path / "missing.png") is False
    assert output_exists(tmp_path / "missing" / "deeper.png") is False
    (tmp_path / "file").write_bytes(b"")
    assert output_exists(tmp_path / "file" / "below-a-file.png") is False
    with pytest.raises(OSError):
        output_exists(tmp_path / ("x" * 300))  # ENAMETOOLONG: cannot tell, not "not done"
    try:
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
    except OSError:
        return  # no symbolic links here (an SMB share through FUSE)
    with pytest.raises(OSError):
        output_exists(tmp_path / "loop" / "x.png")  # ELOOP


# --------------------------------------------------------------- the lease decides who writes


def test_a_claim_taken_over_before_the_rename_keeps_the_other_workers_output(share):
    with Simulator(latency_seconds=2.0) as simulator:
        worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                              "--add", "Peru:family:1", "--poll-seconds", "0.1",
                              "--lease-seconds", "6", "--no-progress")  # a beat a second
        claim = claim_path(share, "Peru_family_1.png")
        wait_for(claim.exists)
        # Another worker took the job over (our lease lapsed, say, while this Mac slept).
        claim.write_text('{"worker": "other-1-0", "token": "theirs"}\n')
        wait_for(lambda: [r for r in simulator.requests if r["status"] == 200])
        time.sleep(1.0)
        output = share / "GENERATIONS/Peru/family/Peru_family_1.png"
        assert not output.exists()  # ours was not written over their job
        output.write_bytes(b"theirs")  # ... which they finish,
        claim.unlink()  # and release
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert output.read_bytes() == b"theirs"
    assert "duplicate: GENERATIONS/Peru/family/Peru_family_1.png: another worker had it" in err
    assert "warning: the claim Peru_family_1.png.claim is no longer ours" in err
    assert "generate: 0 made, 0 already done, 1 made by other workers, 0 failed, 0 left of 1" \
        in out
    assert list(share.rglob(".*.tmp")) == []


def test_an_output_finished_by_another_worker_meanwhile_is_kept(share):
    with Simulator(latency_seconds=1.5) as simulator:
        worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                              "--add", "Peru:family:1", "--no-progress")
        output = share / "GENERATIONS/Peru/family/Peru_family_1.png"
        # The worker makes the output's folder once it has its claim and has checked the
        # output is missing: from then on it is working on the image.
        wait_for(output.parent.exists)
        output.write_bytes(b"theirs")
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert output.read_bytes() == b"theirs"
    assert "duplicate: GENERATIONS/Peru/family/Peru_family_1.png" in err
    assert "0 made, 0 already done, 1 made by other workers" in out
    assert leftovers(share) == []


# --------------------------------------------------------------- SMB's "busy" is normal weather


@contextlib.contextmanager
def immutable(path: Path):
    """``path`` refuses changes even from root (chattr +i): EPERM, as SMB answers for a
    file someone else has open."""
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("needs chattr +i (root on a file system with the immutable attribute)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_busy_stale_claim_waits_for_a_later_pass_and_never_stops_the_worker(share, simulator):
    from drawpipe.engine.claims import ClaimStore
    dead = ClaimStore(share, "generate", "dead-1-0", lease_seconds=1)
    dead.prepare()
    key = "GENERATIONS/Peru/family/Peru_family_1.png"
    dead.try_claim(key)
    make_old(dead.claim_path(key), 100)
    with immutable(dead.claim_path(key)):
        worker = start_script("generate.py", "--root", share, "--server", simulator.url,
                              "--add", "Peru:family:2", "--lease-seconds", "1",
                              "--poll-seconds", "0.1", "--no-progress")
        wait_for(lambda: (share / "GENERATIONS/Peru/family/Peru_family_2.png").exists())
        time.sleep(1.5)  # many passes meet the busy claim
        assert worker.poll() is None
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "generate: 2 made" in out
    assert "lost" not in err and "failed" not in err and "Traceback" not in err
    assert leftovers(share) == []


def test_a_refused_write_fails_the_job_for_a_later_pass_and_the_batch_goes_on(share, simulator):
    refused = share / "GENERATIONS/Peru/family"
    refused.mkdir(parents=True)
    with immutable(refused):
        result = generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                          "--add", "Chile:working:2", "--poll-seconds", "0.1")
    assert result.returncode == 1, result.stderr
    assert "generate: 2 made, 0 already done, 0 made by other workers, 1 failed, 1 left of 3" \
        in result.stdout
    assert (f"failed: GENERATIONS/Peru/family/Peru_family_1.png: "
            f"{refused / '.Peru_family_1.png.'}") in result.stderr
    assert "is in use by someone else (Operation not permitted); tried again on a later pass" \
        in result.stderr
    assert "lost" not in result.stderr and "Traceback" not in result.stderr
    assert "stopped sending" not in result.stderr
    again = generate(share, "--server", simulator.url, "--add", "Peru:family:1",
                     "--add", "Chile:working:2")
    assert again.returncode == 0 and "1 made, 2 already done" in again.stdout
    assert leftovers(share) == []
