"""Fixtures: a real simulator on loopback, real folders, real script subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from drawpipe.drawthings import simulator as simulator_module
from drawpipe.drawthings.simulator import Simulator

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Retries in tests: quick, so fault-injection tests stay fast.
FAST_RETRY_ARGS = ["--backoff-seconds", "0.05", "--retries", "2", "--no-progress"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_signal(number, frame):
    pass


def give_children_default_signals() -> None:
    """Children of this process start with SIGINT, SIGTERM and SIGHUP at their defaults.

    A signal ignored here (``(make test > log 2>&1 &)`` from a non-interactive shell
    ignores SIGINT, ``nohup`` SIGHUP) would be ignored by every script the tests start,
    and the scripts rightly keep an inherited "ignore". A signal *handled* here is reset
    to its default by exec, so an ignoring no-op handler keeps pytest deaf to it while
    its children hear it. Process-wide, set once, no preexec_fn (unsafe with the
    simulator's threads).
    """
    for number in STOP_SIGNALS:
        if signal.getsignal(number) is signal.SIG_IGN:
            signal.signal(number, _ignore_signal)


give_children_default_signals()


@pytest.fixture(autouse=True, scope="session")
def local_cache_folder(tmp_path_factory):
    """The scripts the tests start keep their local caches (file hashes, SAM
    checkpoints) in a folder of the test session, never in the user's cache."""
    folder = tmp_path_factory.mktemp("drawpipe-cache")
    previous = os.environ.get("DRAWPIPE_CACHE_DIR")
    os.environ["DRAWPIPE_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DRAWPIPE_CACHE_DIR", None)
    else:
        os.environ["DRAWPIPE_CACHE_DIR"] = previous


def write_labelled_cutouts(folder: Path, labels, background=()) -> None:
    """A cutouts.json in ``folder`` naming its cut-outs 1, 2, ... as segment.py --label
    does: ``labels`` [(name, score, trusted, runner-up, runner-up score)], ``background``
    the names of objects left out as background."""
    entries = [{"file": f"{folder.name}_cutout_{k}.png", "label": {
        "name": name, "score": score, "trusted": trusted, "runner_up": runner_up,
        "runner_up_score": runner_up_score, "background": False, "background_score": 0.01}}
        for k, (name, score, trusted, runner_up, runner_up_score) in enumerate(labels, 1)]
    (folder / "cutouts.json").write_text(json.dumps({
        "cutouts": entries, "background": [{"label": {"name": name}} for name in background]}))


@pytest.fixture(scope="session")
def tiny_label_model(tmp_path_factory) -> Path:
    """A random-weight ViT-tiny-test label model file (a state_dict, like the official
    ones; sam/labels.py), named so that segment.py tells its model from the name."""
    from drawpipe.sam.labels import save_random_label_model

    return save_random_label_model("ViT-tiny-test", tmp_path_factory.mktemp("labels") /
                                   "ViT-tiny-test.bin")


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Kill every process a test started and left running, pass or fail."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    try:
        yield
    finally:
        left = [child for child in me.children(recursive=True) if child.pid not in before]
        for child in left:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        # Reap the zombies of Popen objects the test dropped.
        for child in left:
            try:
                os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pass


@pytest.fixture
def simulator():
    """A Draw Things stand-in on a free loopback port, stopped after the test."""
    with Simulator() as server:
        yield server


@pytest.fixture
def share(tmp_path) -> Path:
    """An empty folder playing the shared network volume."""
    folder = tmp_path / "share"
    folder.mkdir()
    return folder


def script_command(script: str, *args) -> list[str]:
    return [sys.executable, str(PROJECT_DIR / script), *map(str, args)]


def run_script(script: str, *args, stdin: str = "", timeout: float = 120,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run generate.py/upscale.py/segment.py as a user would; text output captured."""
    return subprocess.run(
        script_command(script, *args), input=stdin, capture_output=True, text=True,
        timeout=timeout, cwd=PROJECT_DIR, env={**os.environ, **(env or {})},
    )


def start_script(script: str, *args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        script_command(script, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR, env={**os.environ, **(env or {})},
    )


def start_simulator_process(*args, log_path: Path | None = None):
    """(process, url) of ``python -m drawpipe.simulator`` in its own process."""
    return simulator_module.start_process(*args, request_log=log_path)


stop_process = simulator_module.stop_process


def read_request_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def png_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))


def wait_for(condition, timeout_seconds: float = 30, interval_seconds: float = 0.05):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_seconds)
    raise AssertionError("condition not met in time")


def make_old(path: Path, age_seconds: float) -> None:
    """Set ``path``'s mtime ``age_seconds`` in the past, and wait until it shows."""
    old = time.time() - age_seconds

    def aged() -> bool:
        if abs(path.stat().st_mtime - old) < 5:
            return True
        # On an SMB share the writer's handle may close a moment after write_bytes
        # returned (the FUSE client delays it), and the close stamps the time again.
        os.utime(path, (old, old))
        return False

    os.utime(path, (old, old))
    wait_for(aged, timeout_seconds=10, interval_seconds=0.2)
