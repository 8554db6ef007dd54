#!/usr/bin/env python3
"""How long a worker that stalls can overwrite another's output: the window between a
job's last ownership check and its output being in place, against the first engine's.

  before   check (claim read, output stat), then write the scratch file, fsync, os.replace:
           the whole file transfer lies inside the window, and the replace replaces
  now      write the scratch file and fsync, then check, then files.publish: only the
           publish lies inside the window, and link / RENAME_NOREPLACE cannot replace
           at all (``method`` says which one this folder takes; "rename" is a look just
           before a plain rename)

On an SMB share pass its folder: the window is a round trip instead of a transfer.
``best ms`` is the fastest of ``--repeats``, ``median ms`` the median; ``ratio`` the
baseline's median over ours.

    .venv/bin/python bench/publish.py                       # a local temporary folder
    .venv/bin/python bench/publish.py --folder SHARE/bench  # a folder on a share
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from harness import print_table  # noqa: E402

from drawpipe.files import output_exists, publish, scratch_path, write_atomically, write_synced  # noqa: E402


def check(claim: Path, claim_content: bytes, output: Path) -> None:
    """The last ownership check: the claim still ours, the output still missing."""
    if claim.read_bytes() != claim_content or output_exists(output):
        raise RuntimeError("the benchmark's own claim or output changed")


def window_before(folder: Path, data: bytes, claim: Path, content: bytes, n: int) -> float:
    output = folder / f"before-{n}.png"
    started = time.perf_counter()
    check(claim, content, output)
    write_atomically(output, data, "bench")
    return time.perf_counter() - started


def window_now(folder: Path, data: bytes, claim: Path, content: bytes, n: int) -> tuple[float, str]:
    output = folder / f"now-{n}.png"
    scratch = scratch_path(output, "bench")
    write_synced(scratch, data)
    started = time.perf_counter()
    check(claim, content, output)
    method = publish(scratch, output)
    return time.perf_counter() - started, method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary folder)")
    parser.add_argument("--size-mb", type=float, default=8.0, help="output size (a 2048 px PNG: ~8)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as temporary:
        folder = Path(temporary)
        data = os.urandom(int(args.size_mb * 1024 * 1024))
        claim = folder / "job.claim"
        content = b'{"worker": "bench-1-0", "token": "0123456789abcdef"}\n'
        claim.write_bytes(content)
        before, now, methods = [], [], set()
        for n in range(args.repeats):
            before.append(window_before(folder, data, claim, content, n))
            seconds, method = window_now(folder, data, claim, content, n)
            now.append(seconds)
            methods.add(method)
    rows = [["before: check, write, fsync, replace", f"{min(before) * 1000:.2f}",
             f"{statistics.median(before) * 1000:.2f}", "1.0", "replace"],
            ["now: write, fsync, check, publish", f"{min(now) * 1000:.2f}",
             f"{statistics.median(now) * 1000:.2f}",
             f"{statistics.median(before) / statistics.median(now):.1f}", ",".join(sorted(methods))]]
    print(f"{args.size_mb:g} MB outputs in {args.folder or tempfile.gettempdir()}, "
          f"{args.repeats} each")
    print_table(["window", "best ms", "median ms", "ratio", "method"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
