#!/usr/bin/env python3
"""Curating a 2,000-image share: quality signals (part 1), and a re-run after 20
rejections (part 2).

Part 1: quality signals (drawpipe/curate/quality.py) over a share of generated images: first
run, second (cached) run, and what the downscaled measurement saves.

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

Part 2: a complete share (``--remake-images``, default 2,000, at ``--remake-size-px``
px: the work is per file, not per pixel) whose every image is generated, upscaled and
cut out, each output recording its input's SHA-256 as the scripts write it; then 20
images are rejected in review (curate/verdicts.py) and the three scripts run again, each in
its own process against the simulator (segment.py with a tiny random-weight SAM):

  --help         baseline: the script's start alone (interpreter, imports)
  dry run, cold  planning with an empty hash cache: every input hashed once
  dry run, warm  planning again: a stat per file (the cache)
  re-run         the real run: exactly the 20 rejected images' jobs must be done

How to read it: ``planning s`` is the dry run's wall minus the ``--help`` baseline,
the overhead a re-run pays before its first job (target < 2 s, warm); ``jobs`` what
the re-run did, which must be 20 per stage (the bench fails otherwise).

    .venv/bin/python bench/curate.py                       # ~4-5 minutes on 2 cores
    .venv/bin/python bench/curate.py --images 200 --size-px 512 --remake-images 200
    .venv/bin/python bench/curate.py --skip-signals        # part 2 only
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR))

from harness import print_table, run_measured, start_simulator, stop_process  # noqa: E402

from drawpipe.curate import quality  # noqa: E402
from drawpipe.curate.takes import seed_for  # noqa: E402
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.simulator import encode_png, render_scene  # noqa: E402
from drawpipe.inventory import scan_inventory  # noqa: E402
from drawpipe.layout import quality_folder  # noqa: E402
from drawpipe.png import add_text_chunks  # noqa: E402

IMAGES_PER_GROUP = 50
TARGET_SECOND_RUN_SECONDS = 1.0
REJECTED_IMAGES = 20
TARGET_PLANNING_SECONDS = 2.0


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


def signals_benchmark(args) -> None:
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
        shutil.rmtree(quality_folder(root))
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


# --------------------------------------------------------------------------- part 2


def build_complete_share(root: Path, size_px: int, images: int) -> list[dict]:
    """Every image generated, upscaled and cut out, with the provenance the scripts
    write (take 1; each output records its input's SHA-256). Returns the queue."""
    from drawpipe.layout import cutouts_path, upscaled_path
    from drawpipe.stages.prompts import load_prompt_sets

    nations = load_prompt_sets(PROJECT_DIR / "prompts" / "variable_sets.json").nations
    groups = [(nation, category) for nation in nations for category in ("family", "working")]
    per_group = -(-images // len(groups))
    queue = [{"nation": n, "category": c, "count": per_group} for n, c in groups]
    small = encode_png(render_scene(1, "bench remake", size_px, size_px))
    large = encode_png(render_scene(1, "bench remake", size_px * 2, size_px * 2))
    for nation, category in groups:
        for number in range(1, per_group + 1):
            stem = f"{nation}_{category}_{number}"
            payload = {"prompt": f"a photo for {stem}", "seed": seed_for(stem),
                       "width": size_px, "height": size_px}
            generated = root / "GENERATIONS" / nation / category / f"{stem}.png"
            generated.parent.mkdir(parents=True, exist_ok=True)
            data = add_text_chunks(small, provenance_chunks(payload, take=1))
            generated.write_bytes(data)
            texts = provenance_chunks({**payload, "width": size_px * 2, "height": size_px * 2})
            texts["drawpipe-source"] = json.dumps({
                "input": generated.relative_to(root).as_posix(), "take": 1,
                "sha256": hashlib.sha256(data).hexdigest()})
            upscaled = upscaled_path(root, generated)
            upscaled.parent.mkdir(parents=True, exist_ok=True)
            upscaled_data = add_text_chunks(large, texts)
            upscaled.write_bytes(upscaled_data)
            folder = cutouts_path(root, upscaled)
            folder.mkdir(parents=True)
            (folder / "cutouts.json").write_text(json.dumps({
                "version": 1, "source": upscaled.relative_to(root).as_posix(),
                "source_sha256": hashlib.sha256(upscaled_data).hexdigest(), "cutouts": []}))
    return queue


def made_count(output: Path) -> int:
    found = re.search(r"(\d+) made, ", output.read_text())
    return int(found.group(1)) if found else -1


def remake_benchmark(args) -> None:
    from drawpipe.curate.verdicts import append_verdict
    from drawpipe.files import file_sha256
    from drawpipe.sam.models import save_random_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="drawpipe-bench-remake-"))
    root = folder / "share"
    os.environ["DRAWPIPE_CACHE_DIR"] = str(folder / "cache")  # the children's hash cache
    simulator, url = start_simulator()
    try:
        started = time.perf_counter()
        queue = build_complete_share(root, args.remake_size_px, args.remake_images)
        images = sum(item["count"] for item in queue)
        queue_file = folder / "queue.json"
        queue_file.write_text(json.dumps(queue))
        recipe = json.loads((PROJECT_DIR / "payloads" / "creative_upscale.json").read_text())
        recipe["output_width"] = recipe["output_height"] = args.remake_size_px * 2
        recipe_file = folder / "recipe.json"
        recipe_file.write_text(json.dumps(recipe))
        checkpoint = save_random_checkpoint("vit_tiny", folder / "sam_vit_tiny_bench.pth")
        generated = sorted((root / "GENERATIONS").rglob("*.png"))
        for path in generated[::len(generated) // REJECTED_IMAGES][:REJECTED_IMAGES]:
            image = path.relative_to(root).as_posix()
            append_verdict(root, "bench-reviewer", image, file_sha256(path), "reject", "bench")
        print(f"share: {images:,} images generated, upscaled and cut out at "
              f"{args.remake_size_px} px, {REJECTED_IMAGES} rejected; built in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

        size = str(args.remake_size_px)
        common = ["--root", str(root), "--no-progress"]
        scripts = {
            "generate": (["generate.py", *common, "--server", url, "--queue", str(queue_file),
                          "--set", f"width={size}", "--set", f"height={size}",
                          "--set", "hires_fix=false"]),
            "upscale": ["upscale.py", *common, "--server", url, "--recipe", str(recipe_file)],
            "segment": ["segment.py", *common, "--checkpoint", str(checkpoint),
                        "--points-per-side", "4", "--pred-iou-thresh", "0",
                        "--stability-score-thresh", "0", "--box-nms-thresh", "1.0",
                        "--keep-background", "--min-area-fraction", "0", "--max-cutouts", "2"],
        }
        rows, failures = [], []
        for stage, (script, *arguments) in scripts.items():
            command = [sys.executable, str(PROJECT_DIR / script)]
            baseline = run_measured(command + ["--help"], folder / f"{stage}-help.txt")
            cold = run_measured(command + arguments + ["--dry-run"], folder / f"{stage}-cold.txt")
            warm = run_measured(command + arguments + ["--dry-run"], folder / f"{stage}-warm.txt")
            rerun = run_measured(command + arguments, folder / f"{stage}-rerun.txt")
            jobs = made_count(rerun.output_path)
            if jobs != REJECTED_IMAGES:
                failures.append(f"{stage} re-run made {jobs} outputs, not {REJECTED_IMAGES}")
            planning = warm.wall_seconds - baseline.wall_seconds
            rows.append([stage, f"{baseline.wall_seconds:.2f}",
                         f"{cold.wall_seconds - baseline.wall_seconds:.2f}", f"{planning:.2f}",
                         f"{rerun.wall_seconds:.2f}", f"{jobs} of {images:,}",
                         "met" if planning < TARGET_PLANNING_SECONDS else "MISSED"])
        print()
        print_table(["stage", "--help s", "planning cold s", "planning warm s", "re-run s",
                     "jobs", f"warm < {TARGET_PLANNING_SECONDS:g} s"], rows)
        if failures:
            raise SystemExit("; ".join(failures))
        print(f"\nre-run after {REJECTED_IMAGES} rejections: exactly {REJECTED_IMAGES} jobs per "
              "stage")
    finally:
        stop_process(simulator)
        if args.keep:
            print(f"share kept at {root}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size-px", type=int, default=1024)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--baseline-images", type=int, default=100)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--remake-images", type=int, default=2000)
    parser.add_argument("--remake-size-px", type=int, default=128)
    parser.add_argument("--skip-signals", action="store_true", help="part 2 only")
    parser.add_argument("--skip-remake", action="store_true", help="part 1 only")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic shares")
    args = parser.parse_args()
    if not args.skip_signals:
        signals_benchmark(args)
    if not args.skip_remake:
        remake_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
