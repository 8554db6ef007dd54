"""What the status and control files add to a worker's pass, on a 2,000-image share.

A pass (engine/worker.py) stats every job's output (``Run.scan``), then goes through the
jobs still to do. The night at a glance adds, per pass: the control files looked at
(``.drawpipe/pause``, ``drain/<host>``, ``drain/<host>-<pid>``, ``priority.json``: four
``stat`` calls, read again at most once a second), the priority order applied to the
jobs to do, a check before every claim (from the cache), and the status file rewritten
(at most once every ``--status-seconds``: counted here once per pass, an upper bound).

Measured in this process on real files, the engine's own objects:

    baseline   Run.scan: the pass's look at the share (2,000 stats, half the outputs there)
    glance     the same plus before_pass, ordered (a priority file naming 5 nations),
               may_claim for each of the 1,000 jobs to do, and one status file written

It prints the median wall and CPU milliseconds of each over --passes passes (interleaved),
their difference and ratio, then each part on its own and their sum: the control files
read uncached, may_claim from the cache times the jobs to do, a status file written, the
priority order. On a share the scan's noise can hide the difference; the sum of the
parts is the steadier figure.
--folder DIR runs on a share (e.g. the loopback SMB share: ../shared/smb/up.sh).

    .venv/bin/python bench/status.py [--images 2000] [--passes 15] [--folder DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import print_table

from drawpipe.engine import supervision
from drawpipe.engine.claims import ClaimStore
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.progress import Progress
from drawpipe.engine.run import EngineSettings, Run
from drawpipe.engine.worker import Worker
from drawpipe.files import host_name

NATIONS = [f"Nation{n:02d}" for n in range(40)]


class ShareStage:
    """``images`` jobs GENERATIONS/<Nation>/<category>/<name>.png; every other one done."""

    name = "generate"
    extra_columns = ()

    def __init__(self, root: Path, images: int):
        self.root = root
        self.keys = []
        for number in range(images):
            nation = NATIONS[number % len(NATIONS)]
            category = ("family", "working")[number // len(NATIONS) % 2]
            self.keys.append(f"GENERATIONS/{nation}/{category}/{nation}_{category}_{number}.png")

    def build(self) -> None:
        for number, key in enumerate(self.keys):
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            if number % 2 == 0:
                path.write_bytes(b"done")

    def plan(self):
        return [Job(key=key, output=self.root / key) for key in self.keys]

    def process_to_sample(self, server):
        return None

    def make_worker(self, server, context):
        return lambda job, scratch: JobResult(data=b"")


def median_ms(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """(wall, cpu) medians in milliseconds of (wall, cpu) seconds samples."""
    return (statistics.median(wall for wall, _ in samples) * 1000,
            statistics.median(cpu for _, cpu in samples) * 1000)


def timed(action, repeat: int) -> list[tuple[float, float]]:
    samples = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        samples.append((time.perf_counter() - wall, time.process_time() - cpu))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--folder", type=Path, help="build the share under this folder")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-status-", dir=args.folder))
    try:
        return run_bench(base, args.images, args.passes)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_bench(root: Path, images: int, passes: int) -> int:
    stage = ShareStage(root, images)
    started = time.monotonic()
    stage.build()
    print(f"share of {images:,} jobs ({images // 2:,} done) built in "
          f"{time.monotonic() - started:.1f} s under {root}")
    (root / ".drawpipe").mkdir()
    (root / ".drawpipe/priority.json").write_text(json.dumps({"nations": NATIONS[-5:]}))
    settings = EngineSettings(root=root, show_progress=False, status_seconds=3600)
    run = Run(stage, settings, host_name())
    store = ClaimStore(root, stage.name, f"{host_name()}-{os.getpid()}-0", settings.lease_seconds)
    store.prepare()
    run.clock = store.server_now
    worker = Worker(run, 0, None, store)
    jobs = run.replan()
    run.progress = Progress(run.summary, set(), False)
    run.board.start()
    try:
        def baseline():
            run.scan()

        def glance():
            supervision.before_pass(worker)
            pending, _ = run.scan()
            for _job in supervision.ordered(worker, pending):
                supervision.may_claim(worker)  # the check before each claim
            run.board.write()

        def control_uncached():
            run.control._read_at = None  # what a read after the cache's second costs
            run.control.read()

        # Interleaved, so that a share's drift (caches, other clients) hits both alike.
        base_samples, glance_samples = [], []
        for _ in range(passes):
            base_samples += timed(baseline, 1)
            glance_samples += timed(glance, 1)
        base_wall, base_cpu = median_ms(base_samples)
        glance_wall, glance_cpu = median_ms(glance_samples)
        rows = [["baseline: a pass's scan", f"{base_wall:.1f}", f"{base_cpu:.1f}", "1.00"],
                ["glance: + control files, priority, checks, status file",
                 f"{glance_wall:.1f}", f"{glance_cpu:.1f}", f"{glance_wall / base_wall:.3f}"],
                ["added per pass (difference of medians)", f"{glance_wall - base_wall:.1f}",
                 f"{glance_cpu - base_cpu:.1f}", ""]]
        to_do = [job for number, job in enumerate(jobs) if number % 2]
        parts = (("control files read (uncached: 4 stats, 1 read)", control_uncached, 200, 1),
                 ("may_claim from the cache, x jobs to do", lambda: supervision.may_claim(worker),
                  2000, len(to_do)),
                 ("status file written (atomic replace)", run.board.write, 100, 1),
                 ("priority order of the jobs to do", lambda: supervision.ordered(worker, to_do),
                  50, 1))
        total_wall = total_cpu = 0.0
        for label, action, repeat, times in parts:
            wall, cpu = median_ms(timed(action, repeat))
            total_wall += wall * times
            total_cpu += cpu * times
            rows.append([label, f"{wall * times:.2f}", f"{cpu * times:.2f}",
                         f"{wall * times / base_wall:.3f}"])
        rows.append(["added per pass (sum of the parts)", f"{total_wall:.1f}", f"{total_cpu:.1f}",
                     f"{total_wall / base_wall:.3f}"])
        print_table(["per pass", "wall ms", "CPU ms", "x baseline"], rows)
    finally:
        run.board.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
