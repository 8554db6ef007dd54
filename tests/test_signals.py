"""Stop signals end to end: SIGINT, SIGTERM and SIGHUP at several moments of a run, once
and twice, also with every CPU busy. Real script processes, a real simulator."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, png_files, script_command, start_script, wait_for
from PIL import Image

from drawpipe.drawthings.simulator import Simulator

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
IDS = ["SIGINT", "SIGTERM", "SIGHUP"]
# A signalled run must end this soon after the image in flight is answered.
PROMPT_SECONDS = 5.0


def start_generate(share: Path, simulator, *args):
    return start_script("generate.py", "--root", share, "--server", simulator.url,
                        "--no-progress", "--poll-seconds", "0.1", *args)


def claims(share: Path) -> list[Path]:
    folder = share / ".claims"
    return sorted(folder.rglob("*.claim")) if folder.exists() else []


def assert_nothing_left_but_whole_pngs(share: Path) -> None:
    """No claim, take-over lock, run marker or temporary file; every PNG complete."""
    folder = share / ".claims"
    if folder.exists():
        assert [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".clock-")
                and not p.name.startswith(".")] == []
        assert list(folder.glob(".run-*")) == []
    assert list(share.rglob(".*.tmp")) == []
    for path in png_files(share):
        with Image.open(path) as image:
            image.verify()


def in_flight(share: Path, name: str) -> Path:
    return share / ".claims/generate/GENERATIONS/Peru/family" / (name + ".claim")


def stop(process: subprocess.Popen, number: int, times: int, pause_seconds: float = 0.2):
    for _ in range(times):
        process.send_signal(number)
        time.sleep(pause_seconds)
    out, err = process.communicate(timeout=60)
    return out, err


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_one_stop_signal_finishes_the_image_in_flight(share, number):
    with Simulator(latency_seconds=1.5) as simulator:
        worker = start_generate(share, simulator, "--add", "Peru:family:4")
        wait_for(in_flight(share, "Peru_family_1.png").exists)
        sent_at = time.monotonic()
        out, err = stop(worker, number, 1)
        waited = time.monotonic() - sent_at
    assert worker.returncode == 130, err
    assert waited < 1.5 + PROMPT_SECONDS
    assert "stopping: finishing the images in flight" in err and "Traceback" not in err
    assert "generate: 1 made, 0 already done, 0 made by other workers, 0 failed, 3 left of 4" \
        in out
    assert "interrupted; run the same command again to continue" in out
    assert [p.name for p in png_files(share / "GENERATIONS")] == ["Peru_family_1.png"]
    assert_nothing_left_but_whole_pngs(share)


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_a_second_stop_signal_abandons_the_image_in_flight(share, number):
    with Simulator(latency_seconds=5) as simulator:
        worker = start_generate(share, simulator, "--add", "Peru:family:2")
        wait_for(in_flight(share, "Peru_family_1.png").exists)
        sent_at = time.monotonic()
        out, err = stop(worker, number, 2)
        waited = time.monotonic() - sent_at
    assert worker.returncode == 130, err
    assert waited < PROMPT_SECONDS  # long before the 5 s image is answered
    assert "abandoning the images in flight" in err and "Traceback" not in err
    assert "interrupted; run the same command again to continue" in out
    assert png_files(share) == []
    assert_nothing_left_but_whole_pngs(share)


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_a_stop_signal_ends_a_resend_wait_at_once(share, number):
    with Simulator() as simulator:
        simulator.queue_faults(["503"])
        worker = start_generate(share, simulator, "--add", "Peru:family:2",
                                "--backoff-seconds", "60")
        wait_for(lambda: [r for r in simulator.requests if r["status"] == 503])
        time.sleep(0.3)  # in the 60 s wait
        sent_at = time.monotonic()
        out, err = stop(worker, number, 1)
        waited = time.monotonic() - sent_at
        posts = [r for r in simulator.requests if r["method"] == "POST"]
    assert worker.returncode == 130, err
    assert waited < PROMPT_SECONDS
    assert len(posts) == 1  # not re-sent, and no new job started
    assert "simulated fault 503; not re-sent: the run is stopping" in err
    assert "Traceback" not in err
    assert_nothing_left_but_whole_pngs(share)


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_a_stop_signal_ends_an_idle_watch(share, tmp_path, number):
    with Simulator() as simulator:
        watcher = start_script("upscale.py", "--root", share, "--server", simulator.url,
                               "--watch", "--poll-seconds", "30", "--no-progress")
        wait_for(lambda: list((share / ".claims").glob(".run-*")))
        time.sleep(0.3)  # in the 30 s wait between passes
        sent_at = time.monotonic()
        out, err = stop(watcher, number, 1)
        waited = time.monotonic() - sent_at
    assert watcher.returncode == 130, err
    assert waited < PROMPT_SECONDS
    assert "upscale: 0 made" in out and "interrupted" in out and "Traceback" not in err
    assert_nothing_left_but_whole_pngs(share)


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_a_stop_signal_before_any_claim_ends_the_script_at_once(share, number):
    """During the preflight: a server that accepts the connection and never answers."""
    import socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(60)
        process = start_script("generate.py", "--root", share, "--server",
                               f"http://127.0.0.1:{server.getsockname()[1]}",
                               "--add", "Peru:family:1", "--no-progress")
        connection, _ = server.accept()  # the script is waiting for GET / to be answered
        with connection:
            time.sleep(0.2)
            out, err = stop(process, number, 1)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not (share / ".claims").exists()


def test_an_inherited_ignore_is_kept(share):
    """nohup, or a background job of a non-interactive shell: the signal stays ignored."""
    wrapper = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
               "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    with Simulator(latency_seconds=0.5) as simulator:
        process = subprocess.Popen(
            [sys.executable, "-c", wrapper,
             *script_command("generate.py", "--root", share, "--server", simulator.url,
                             "--add", "Peru:family:2", "--no-progress")[1:]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR)
        wait_for(in_flight(share, "Peru_family_1.png").exists)
        out, err = stop(process, signal.SIGINT, 1)
    assert process.returncode == 0, err
    assert "generate: 2 made" in out


def test_children_of_the_tests_start_with_default_signal_dispositions():
    code = ("import signal; print([signal.getsignal(s) is signal.SIG_IGN for s in "
            "(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[False, False, False]"


@pytest.fixture
def busy_cpus():
    """Every CPU kept busy by a spinning process while the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_stop_signals_with_every_cpu_busy(share, busy_cpus, number, times):
    with Simulator(latency_seconds=1.5) as simulator:
        worker = start_generate(share, simulator, "--add", "Peru:family:3")
        wait_for(in_flight(share, "Peru_family_1.png").exists)
        sent_at = time.monotonic()
        out, err = stop(worker, number, times)
        waited = time.monotonic() - sent_at
    assert worker.returncode == 130, err
    assert waited < 1.5 + PROMPT_SECONDS
    assert "Traceback" not in err and "interrupted" in out
    made = [p.name for p in png_files(share / "GENERATIONS")]
    assert made == (["Peru_family_1.png"] if times == 1 else []) or times == 2 and made in (
        [], ["Peru_family_1.png"])
    assert_nothing_left_but_whole_pngs(share)


def catches(pid: int, number: int) -> bool:
    """Whether process ``pid`` has a handler for signal ``number`` now (SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (number - 1)))
    return False


@pytest.mark.parametrize("number", STOP_SIGNALS, ids=IDS)
def test_a_stop_signal_as_soon_as_the_script_starts_ends_it_quietly(share, number):
    """The handlers are the script's first act: from the moment one exists (while the
    script is still importing), a stop signal says "interrupted", exit 130: no
    KeyboardInterrupt traceback, no silent 143."""
    process = start_script("generate.py", "--root", share, "--server", "http://127.0.0.1:9",
                           "--add", "Peru:family:1", "--no-progress")
    wait_for(lambda: catches(process.pid, signal.SIGTERM), interval_seconds=0.001)
    process.send_signal(number)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not (share / ".claims").exists()
