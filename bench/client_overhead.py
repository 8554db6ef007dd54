#!/usr/bin/env python3
"""Client CPU time and memory per image: generate.py against the original scripts' style.

Both clients run as subprocesses against one simulator (``python -m
drawpipe.simulator --port 0``, zero latency) in a process of its own, so the
server's rendering is never counted. A client's CPU time and peak RSS are read
from ``os.wait4`` when it exits: user + system seconds of that process alone.

Start-up (interpreter, imports, preflight) is a fixed cost. The per-image cost is
the slope between two runs of different sizes on fresh folders:

    per_image = (cpu(large) - cpu(small)) / (large - small)
    fixed     = cpu(small) - small * per_image

and the ratio is baseline per_image / drawpipe per_image (docs/DESIGN.md's target: >= 10).
Memory: the drawpipe client's peak RSS after ``--rss-images`` images over its
peak after the small run (target: flat, a ratio near 1.0).

    .venv/bin/python bench/client_overhead.py                       # ~2-4 minutes
    .venv/bin/python bench/client_overhead.py --images 5,20 --images-2048 3,10 --rss-images 60

Runs at 1024 px (the default template) and at 2048 px (the same template with
the upscaler at 2x: the ~4-8 MB answers of docs/DESIGN.md's "What a request costs").
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import (BENCH_DIR, PROJECT_DIR, ProcessUsage, print_table, run_measured,
                     start_simulator, stop_process)

QUEUE_NATION, QUEUE_CATEGORY = "Japan", "family"
TARGET_CPU_RATIO = 10.0
TARGET_RSS_RATIO = 1.2  # "flat": within 20 % of the small run's peak


def generate_command(root: Path, server: str, images: int, payload: Path | None,
                     config: Path, *extra) -> list[str]:
    """generate.py as a user runs it: the real code path, no progress bar."""
    command = [sys.executable, str(PROJECT_DIR / "generate.py"), "--root", str(root),
               "--server", server, "--add", f"{QUEUE_NATION}:{QUEUE_CATEGORY}:{images}",
               "--config", str(config), "--no-progress", *map(str, extra)]
    if payload is not None:
        command += ["--payload", str(payload)]
    return command


def baseline_command(root: Path, server: str, images: int, payload: Path | None) -> list[str]:
    command = [sys.executable, str(BENCH_DIR / "baseline_generate.py"), "--root", str(root),
               "--server", server, "--add", f"{QUEUE_NATION}:{QUEUE_CATEGORY}:{images}"]
    if payload is not None:
        command += ["--payload", str(payload)]
    return command


def count_pngs(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*.png") if not path.name.startswith("."))


def write_templates(folder: Path) -> dict[int, Path | None]:
    """{output px: payload template}: 1024 is the default template (None: the default
    path), 2048 the same with the upscaler at 2x."""
    template = json.loads((PROJECT_DIR / "payloads" / "txt2img.json").read_text())
    template.update({"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2})
    path_2048 = folder / "txt2img_2048.json"
    path_2048.write_text(json.dumps(template, indent=2))
    return {1024: None, 2048: path_2048}


def measure(side: str, size_px: int, images: int, server: str, payload: Path | None,
            work: Path, config: Path) -> ProcessUsage:
    """One run of one client on a fresh root; checks that every image was written."""
    root = work / f"{side}-{size_px}-{images}"
    root.mkdir()
    if side == "drawpipe":
        command = generate_command(root, server, images, payload, config)
    else:
        command = baseline_command(root, server, images, payload)
    usage = run_measured(command, work / f"{root.name}.log")
    made = count_pngs(root / "GENERATIONS")
    if made != images:
        raise RuntimeError(f"{side} at {size_px} px wrote {made} images, expected {images}")
    shutil.rmtree(root)  # hundreds of MB otherwise (the baseline's CSV holds every image)
    return usage


def slope(small: tuple[int, ProcessUsage], large: tuple[int, ProcessUsage]) -> tuple[float, float]:
    """(per-image CPU seconds, fixed CPU seconds) from two runs (images, usage)."""
    (n_small, small_usage), (n_large, large_usage) = small, large
    per_image = (large_usage.cpu_seconds - small_usage.cpu_seconds) / (n_large - n_small)
    return per_image, small_usage.cpu_seconds - n_small * per_image


def parse_counts(text: str) -> tuple[int, int]:
    try:
        small, large = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SMALL,LARGE image counts, got '{text}'") from None
    if not 1 <= small < large:
        raise argparse.ArgumentTypeError(f"need 1 <= SMALL < LARGE, got '{text}'")
    return small, large


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=parse_counts, default=(10, 60), metavar="SMALL,LARGE",
                        help="image counts of the two runs at 1024 px (default 10,60)")
    parser.add_argument("--images-2048", type=parse_counts, default=(5, 25), metavar="SMALL,LARGE",
                        help="image counts of the two runs at 2048 px (default 5,25)")
    parser.add_argument("--rss-images", type=int, default=200, metavar="N",
                        help="a third drawpipe run at 1024 px for the memory check "
                             "(default 200; 0 skips it)")
    parser.add_argument("--sizes", default="1024,2048", metavar="PX,...",
                        help="output sizes to measure: 1024 and/or 2048 (default both)")
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_arguments(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    counts = {1024: args.images, 2048: args.images_2048}
    work = Path(tempfile.mkdtemp(prefix="drawpipe-bench-"))
    config = work / "empty.toml"  # a user's drawpipe.toml must not change the runs
    config.write_text("")
    templates = write_templates(work)
    simulator, server = start_simulator("--latency", 0)
    print(f"client_overhead: simulator {server} (own process, latency 0); work folder {work}")
    runs: dict[tuple[str, int, int], ProcessUsage] = {}
    started = time.monotonic()
    try:
        for size in sizes:
            plan = [(side, n) for n in counts[size] for side in ("baseline", "drawpipe")]
            if size == 1024 and args.rss_images > counts[size][1]:
                plan.append(("drawpipe", args.rss_images))
            for side, n in plan:
                usage = measure(side, size, n, server, templates[size], work, config)
                runs[side, size, n] = usage
                print(f"  {side:8s} {size} px x {n:3d}: cpu {usage.cpu_seconds:7.3f} s, "
                      f"wall {usage.wall_seconds:6.2f} s, peak RSS {usage.max_rss_mb:6.1f} MiB",
                      flush=True)
    finally:
        stop_process(simulator)
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nper-image CPU = (cpu(large) - cpu(small)) / (large - small): start-up cancels; "
          f"total time {time.monotonic() - started:.0f} s")
    rows = []
    for size in sizes:
        small, large = counts[size]
        per_image = {}
        for side in ("baseline", "drawpipe"):
            per_image[side], fixed = slope((small, runs[side, size, small]),
                                           (large, runs[side, size, large]))
            rows.append([f"{size} px", side, f"{small}->{large}",
                         f"{runs[side, size, small].cpu_seconds:.3f}",
                         f"{runs[side, size, large].cpu_seconds:.3f}",
                         f"{fixed:.3f}", f"{per_image[side] * 1000:.1f}", ""])
        ratio = per_image["baseline"] / per_image["drawpipe"] if per_image["drawpipe"] > 0 else float("inf")
        verdict = "met" if ratio >= TARGET_CPU_RATIO else "MISSED"
        rows[-1][-1] = f"{ratio:.1f}x less ({verdict}: >= {TARGET_CPU_RATIO:g}x)"
    print_table(["size", "client", "images", "cpu small s", "cpu large s", "fixed s",
                 "ms/image", "baseline/drawpipe"], rows)

    if 1024 in sizes:
        small, large = counts[1024]
        rss_runs = [n for n in (small, large, args.rss_images)
                    if ("drawpipe", 1024, n) in runs]
        print("\ndrawpipe client peak RSS at 1024 px (target: flat)")
        base_rss = runs["drawpipe", 1024, small].max_rss_mb
        rss_rows = [[n, f"{runs['drawpipe', 1024, n].max_rss_mb:.1f}",
                     f"{runs['drawpipe', 1024, n].max_rss_mb / base_rss:.2f}"] for n in rss_runs]
        last = rss_runs[-1]
        ratio = runs["drawpipe", 1024, last].max_rss_mb / base_rss
        rss_rows[-1].append("met" if ratio <= TARGET_RSS_RATIO else "MISSED")
        for row in rss_rows[:-1]:
            row.append("")
        print_table(["images", "peak RSS MiB", f"/ {small} images", f"(<= {TARGET_RSS_RATIO:g})"],
                    rss_rows)
        if ("drawpipe", 1024, args.rss_images) in runs and args.rss_images > large:
            check, _ = slope((large, runs["drawpipe", 1024, large]),
                             (args.rss_images, runs["drawpipe", 1024, args.rss_images]))
            print(f"cross-check: drawpipe per-image CPU from {large}->{args.rss_images} "
                  f"images: {check * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
