#!/usr/bin/env python3
"""K workers over one shared folder: wall time against the ideal N*L/K, requests per image.

For K = 1, 2, 3 (``--workers``): K processes of generate.py, each with its own
simulator process answering in L seconds (``--latency``), all over one fresh
--root with the same queue of N images (``--images``). Then the same with the
original scripts' style (bench/baseline_generate.py), which has no coordination.

Figures, per run:
  ideal       N * L / K: every image requested once, the K servers never idle
  wall/ideal  launch of the first worker to exit of the last, over ideal (target
              for drawpipe: <= 1.10); includes start-up (interpreter, imports,
              preflight) and the final poll
  span/ideal  first POST received to last POST answered, from the simulators'
              request logs, over ideal: the work alone, start-up excluded
  start s     launch to the first POST: the fixed cost inside wall
  req/image   POSTs to /sdapi/v1/txt2img in all request logs / N (drawpipe: 1.00
              exactly; the baseline makes every image in every process: K)

    .venv/bin/python bench/scaling.py                        # ~1.5-2 minutes
    .venv/bin/python bench/scaling.py --images 12 --latency 0.25 --workers 1,2
"""

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from client_overhead import baseline_command, count_pngs, generate_command
from harness import Child, print_table, read_posts, start_simulator, stop_process

TARGET_WALL_RATIO = 1.10


@dataclass
class ScalingRun:
    side: str
    workers: int
    images: int
    latency_seconds: float
    wall_seconds: float
    span_seconds: float
    start_seconds: float
    posts: int
    images_on_disk: int

    @property
    def ideal_seconds(self) -> float:
        return self.images * self.latency_seconds / self.workers


def run_workers(side: str, workers: int, images: int, latency_seconds: float,
                poll_seconds: float, work: Path, config: Path) -> ScalingRun:
    folder = work / f"{side}-k{workers}"
    root = folder / "share"
    root.mkdir(parents=True)
    log_paths = [folder / f"simulator-{index}.jsonl" for index in range(workers)]
    simulators = [start_simulator("--latency", latency_seconds, log_path=path)
                  for path in log_paths]
    try:
        commands = []
        for _, server in simulators:
            if side == "drawpipe":
                commands.append(generate_command(root, server, images, None, config,
                                                 "--poll-seconds", poll_seconds))
            else:
                commands.append(baseline_command(root, server, images, None))
        launched_epoch = time.time()
        launched = time.monotonic()
        children = [Child(command, folder / f"worker-{index}.log")
                    for index, command in enumerate(commands)]
        usages = [child.wait() for child in children]
        wall = time.monotonic() - launched
    finally:
        for process, _ in simulators:
            stop_process(process)
    for index, usage in enumerate(usages):
        if usage.exit_code != 0:
            tail = usage.output_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{side} worker {index} of {workers} exited {usage.exit_code}:\n{tail}")
    posts = read_posts(log_paths, "/sdapi/v1/txt2img")
    if not posts:
        raise RuntimeError(f"{side} with {workers} workers sent no request")
    first_received = min(post["time"] for post in posts)
    span = max(post["finished"] for post in posts) - first_received
    result = ScalingRun(side, workers, images, latency_seconds, wall, span,
                        first_received - launched_epoch, len(posts),
                        count_pngs(root / "GENERATIONS"))
    shutil.rmtree(folder)
    return result


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24, metavar="N",
                        help="images in the queue (default 24)")
    parser.add_argument("--latency", type=float, default=1.0, metavar="SECONDS",
                        help="each simulator's time per image (default 1.0)")
    parser.add_argument("--workers", default="1,2,3", metavar="K,...",
                        help="worker counts to run (default 1,2,3)")
    parser.add_argument("--poll-seconds", type=float, default=0.2, metavar="S",
                        help="drawpipe workers' --poll-seconds (default 0.2)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="run drawpipe only")
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_arguments(argv)
    worker_counts = [int(k) for k in args.workers.split(",")]
    sides = ["drawpipe"] + ([] if args.skip_baseline else ["baseline"])
    work = Path(tempfile.mkdtemp(prefix="drawpipe-scaling-"))
    config = work / "empty.toml"  # a user's drawpipe.toml must not change the runs
    config.write_text("")
    print(f"scaling: N={args.images} images, L={args.latency:g} s per image per simulator, "
          f"K={args.workers}, drawpipe --poll-seconds {args.poll_seconds:g}; work folder {work}")
    started = time.monotonic()
    runs = []
    for side in sides:
        for workers in worker_counts:
            run = run_workers(side, workers, args.images, args.latency, args.poll_seconds,
                              work, config)
            runs.append(run)
            print(f"  {side:8s} K={workers}: wall {run.wall_seconds:6.2f} s, span "
                  f"{run.span_seconds:6.2f} s, {run.posts} POSTs, "
                  f"{run.images_on_disk} images on disk", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nideal = N*L/K; wall = first launch to last exit; span = first POST received to "
          f"last answered (request logs); total time {time.monotonic() - started:.0f} s")
    rows = []
    for run in runs:
        ratio = run.wall_seconds / run.ideal_seconds
        per_image = run.posts / run.images
        verdict = ""
        if run.side == "drawpipe":
            ok = ratio <= TARGET_WALL_RATIO and run.posts == run.images
            verdict = "met" if ok else "MISSED"
        rows.append([run.side, run.workers, run.images, f"{run.ideal_seconds:.2f}",
                     f"{run.wall_seconds:.2f}", f"{ratio:.2f}", f"{run.span_seconds:.2f}",
                     f"{run.span_seconds / run.ideal_seconds:.2f}", f"{run.start_seconds:.2f}",
                     run.posts, f"{per_image:.2f}", run.images_on_disk, verdict])
    print_table(["client", "K", "N", "ideal s", "wall s", "wall/ideal", "span s", "span/ideal",
                 "start s", "POSTs", "req/image", "on disk",
                 f"target (wall/ideal <= {TARGET_WALL_RATIO:.2f}, req/image 1.00)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
