"""What the benchmarks share: simulators in their own processes, children measured
with os.wait4 (their own CPU time and peak RSS), request-log reading, tables."""

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR))

from drawpipe.drawthings.simulator import start_process, stop_process  # noqa: E402

__all__ = ["BENCH_DIR", "PROJECT_DIR", "Child", "ProcessUsage", "print_table", "read_posts",
           "run_measured", "start_simulator", "stop_process"]

RUN_TIMEOUT_SECONDS = 600.0


def start_simulator(*args, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m drawpipe.simulator --port 0 ARGS`` in its own process: (process, url)."""
    return start_process(*args, request_log=log_path)


def read_posts(log_paths: list[Path], route: str) -> list[dict]:
    """Every POST to ``route`` (e.g. "/sdapi/v1/txt2img") in simulators' JSON-lines logs."""
    posts = []
    for path in log_paths:
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["method"] == "POST" and entry["path"] == route:
                    posts.append(entry)
    return posts


@dataclass
class ProcessUsage:
    exit_code: int
    cpu_seconds: float  # user + system of the child alone
    wall_seconds: float
    max_rss_mb: float  # peak resident set, MiB
    output_path: Path  # stdout and stderr, together


def _max_rss_mb(ru_maxrss: int) -> float:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


class Child:
    """A subprocess whose own CPU time and peak RSS are read when it exits (os.wait4)."""

    def __init__(self, command: list[str], output_path: Path, answer: str = ""):
        """``answer`` is typed on the child's stdin (the baseline asks which machine)."""
        self.output_path = output_path
        self._output = open(output_path, "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self._output,
                                        stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
        self.process.stdin.write(answer.encode())
        self.process.stdin.close()

    def wait(self, timeout_seconds: float = RUN_TIMEOUT_SECONDS) -> ProcessUsage:
        # wait4 has no timeout: a timer kills this child (by its pid) if it hangs.
        timer = threading.Timer(timeout_seconds, self.process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(self.process.pid, 0)
        finally:
            timer.cancel()
            self._output.close()
        wall = time.monotonic() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return ProcessUsage(self.process.returncode, usage.ru_utime + usage.ru_stime, wall,
                            _max_rss_mb(usage.ru_maxrss), self.output_path)


def run_measured(command: list[str], output_path: Path, answer: str = "") -> ProcessUsage:
    """Run a child to its end; RuntimeError with its output's tail if it fails."""
    usage = Child(command, output_path, answer).wait()
    if usage.exit_code != 0:
        tail = usage.output_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(command)}\nexited {usage.exit_code}:\n{tail}")
    return usage


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


# --------------------------------------------------------------------------- benchmark


