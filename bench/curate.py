#!/usr/bin/env python3
"""Quality signals (drawpipe/quality.py) over a share of generated images: first run,
second (cached) run, and what the downscaled measurement saves.

The share: ``--images`` (default 2,000) generated PNGs of ``--size-px`` (default 1024,
the size generate.py makes) in nation/category folders of 50, each carrying the
provenance chunks generate.py writes. Their pixels come from ``--scenes`` (default
16) distinct simulator pictures, so every file has its own bytes (its own chunks)
while the share builds in about a minute.

Runs, each timed in this process (``update_signals`` as the review page and the
report call it):

  full-res     baseline: the same signals computed on the full-size picture (no
               reduction), over ``--baseline-images`` images (default 100)
  first        nothing cached, one process: every PNG read, decoded, reduced, measured
  first, N     nothing cached, ``--processes`` processes (default: every core)
  second       everything cached: a listing and a stat per image, no PNG opened.
               Target < 1 s.

How to read it: ``ms/image`` is wall time per image; ``full-res/first`` what
measuring a reduced copy saves per image; ``first/second`` what the cache saves.

    .venv/bin/python bench/curate.py                       # ~2-3 minutes on 2 cores
    .venv/bin/python bench/curate.py --images 200 --size-px 512
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR))

from harness import print_table  # noqa: E402

from drawpipe import quality  # noqa: E402
from drawpipe.generation import seed_for  # noqa: E402
from drawpipe.pngmeta import add_text_chunks, provenance_chunks  # noqa: E402
from drawpipe.report_data import scan_inventory  # noqa: E402
from drawpipe.simulator import encode_png, render_scene  # noqa: E402

IMAGES_PER_GROUP = 50
TARGET_SECOND_RUN_SECONDS = 1.0


def build_share(root: Path, images: int, size_px: int, scenes: int) -> None:
    pictures = [encode_png(render_scene(seed, "bench curate", size_px, size_px))
                for seed in range(scenes)]
    for index in range(images):
        group, number = divmod(index, IMAGES_PER_GROUP)
        nation, category = f"Nation{group // 2:02d}", ("family", "working")[group % 2]
        stem = f"{nation}_{category}_{number + 1}"
        payload = {"prompt": f"a photo for {stem}", "negative_prompt": "blurry",
                   "seed": seed_for(stem), "model": "sd_xl_base_1.0_f16.ckpt",
                   "width": size_px, "height": size_px, "steps": 30}
        path = root / "GENERATIONS" / nation / category / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(add_text_chunks(pictures[index % scenes], provenance_chunks(payload)))


def full_resolution_signals(path: Path) -> None:
    """The baseline: what quality.measure_png does, on the picture as it is."""
    import imagehash
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as picture:
        rgb = picture.convert("RGB")
    luma = np.asarray(rgb.convert("L"), dtype=np.float32)
    laplacian = (luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1]
                 - 4 * luma[1:-1, 1:-1])
    laplacian.var(), luma.mean(), (luma >= quality.HIGHLIGHT_LUMA).mean()
    np.asarray(rgb.convert("HSV"))[..., 1].mean()
    imagehash.phash(rgb)


def timed_run(root: Path, host: str, processes: int) -> tuple[float, quality.QualityRun]:
    """Listing and stats included: the cache is keyed by each file's (size, mtime_ns)."""
    started = time.perf_counter()
    files = [entry.generated for entry in scan_inventory(root).entries.values() if entry.generated]
    run = quality.update_signals(root, files, host, processes)
    return time.perf_counter() - started, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size-px", type=int, default=1024)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--baseline-images", type=int, default=100)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic share")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="drawpipe-bench-curate-"))
    root = folder / "share"
    try:
        started = time.perf_counter()
        build_share(root, args.images, args.size_px, args.scenes)
        size_mb = sum(p.stat().st_size for p in (root / "GENERATIONS").rglob("*.png")) / 1e6
        print(f"share: {args.images:,} generated PNGs of {args.size_px} px ({size_mb:,.0f} MB), "
              f"built in {time.perf_counter() - started:.1f} s", flush=True)

        paths = sorted((root / "GENERATIONS").rglob("*.png"))[:args.baseline_images]
        started = time.perf_counter()
        for path in paths:
            full_resolution_signals(path)
        full_ms = (time.perf_counter() - started) / len(paths) * 1000

        first_seconds, first = timed_run(root, "bench-one", 1)
        shutil.rmtree(quality.quality_dir(root))
        pool_seconds, _ = timed_run(root, "bench-pool", args.processes)
        second_seconds, second = timed_run(root, "bench-pool", args.processes)
        if second.measured:
            raise SystemExit(f"the second run measured {second.measured} images: the cache failed")
        count = len(first.signals)
        first_ms = first_seconds / count * 1000
        rows = [
            ["full-res", f"{len(paths):,}", "", f"{full_ms * len(paths) / 1000:.2f}",
             f"{full_ms:.1f}", "baseline"],
            ["first", f"{count:,}", "1", f"{first_seconds:.2f}", f"{first_ms:.1f}",
             f"full-res/first {full_ms / first_ms:.1f}x"],
            [f"first, {args.processes}", f"{count:,}", str(args.processes), f"{pool_seconds:.2f}",
             f"{pool_seconds / count * 1000:.1f}", f"first/first,{args.processes} "
             f"{first_seconds / pool_seconds:.1f}x"],
            ["second", f"{count:,}", str(args.processes), f"{second_seconds:.3f}",
             f"{second_seconds / count * 1000:.3f}", f"first/second {first_seconds / second_seconds:.0f}x"],
        ]
        print()
        print_table(["run", "images", "processes", "wall s", "ms/image", "ratio"], rows)
        suspects = sum(1 for item in second.signals.values() if quality.suspect_reasons(item))
        verdict = "met" if second_seconds < TARGET_SECOND_RUN_SECONDS else "MISSED"
        print(f"\nsecond run {second_seconds:.3f} s for {count:,} images: target < "
              f"{TARGET_SECOND_RUN_SECONDS:g} s {verdict}; {suspects:,} suspect "
              f"({args.scenes} distinct pictures: most are near-duplicates by design)")
    finally:
        if args.keep:
            print(f"share kept at {root}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
