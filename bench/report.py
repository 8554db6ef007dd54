#!/usr/bin/env python3
"""python -m drawpipe.report over a synthetic share: first run, second (cached) run, an update.

The share: N generated PNGs (``--images``, default 2,000) in nation/category folders,
as many upscaled PNGs, ``--cutouts`` (default 5) cut-outs per upscaled image (10,000)
with their cutouts.json, and per-host logs of ``--log-rows`` rows (default 10,000)
written by drawpipe.engine.metrics.MetricsLog over ``--hosts`` hosts (default 3) and the
three stages. Generated PNGs carry the same provenance chunks generate.py writes.
Pixel sizes are reduced (256 px generated, 512 px upscaled, 128 px cut-outs instead
of 1024 / 2048 / ~500), so the figures measure the report's own work per file;
a real 2048 px PNG adds ~0.1 s of decoding to its first thumbnail.

Every run is ``python -m drawpipe.report --root SHARE --html --contact-sheets --csv``
in a subprocess (interpreter start-up included), timed from launch to exit:

  first    no report/ yet: every thumbnail, chart, contact sheet, PNG metadata read
  second   nothing changed: must read no image and redraw nothing. Target < 2 s.
  update   one upscaled image replaced and 10 rows appended to one host's log: one
           thumbnail, one contact sheet, one chart, the page
  text     the plain report (no flags): logs and a listing only

    .venv/bin/python bench/report.py                     # ~1-2 minutes on 2 cores
    .venv/bin/python bench/report.py --images 200 --log-rows 1000
"""

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR))

from PIL import Image, ImageDraw  # noqa: E402

from drawpipe.curate.takes import seed_for  # noqa: E402
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.simulator import encode_png, render_scene  # noqa: E402
from drawpipe.engine.metrics import MetricsLog  # noqa: E402
from drawpipe.png import add_text_chunks  # noqa: E402

CATEGORIES = ("family", "working")
IMAGES_PER_GROUP = 50
START_EPOCH = 1777629600.0  # 2026-05-01T10:00:00Z
TARGET_SECOND_RUN_SECONDS = 2.0
GENERATE_EXTRA = ("server",)
UPSCALE_EXTRA = ("server", "recipe", "steps", "step_seconds", "step_attempts")
SEGMENT_EXTRA = ("model_seconds", "cutout_seconds", "masks_found", "cutouts_written",
                 "peak_rss_mb", "device")


def nations(count: int) -> list[str]:
    entries = json.loads((PROJECT_DIR / "prompts" / "variable_sets.json").read_text())
    names = list(dict.fromkeys(entry["nation"] for entry in entries))
    return [names[i % len(names)] + ("" if i < len(names) else f"_{i // len(names)}")
            for i in range(count)]


def image_keys(total: int) -> list[str]:
    """"France/family/France_family_7" for ``total`` images, 50 per group."""
    groups = -(-total // IMAGES_PER_GROUP)
    keys = []
    for index, nation in enumerate(nations(-(-groups // len(CATEGORIES)))):
        for category in CATEGORIES:
            for number in range(1, IMAGES_PER_GROUP + 1):
                if len(keys) < total:
                    keys.append(f"{nation}/{category}/{nation}_{category}_{number}")
    return keys


def base_pngs(size_px: int, count: int = 6) -> list[bytes]:
    return [encode_png(render_scene(seed, "bench", size_px, size_px)) for seed in range(count)]


def cutout_pngs(count: int) -> list[bytes]:
    found = []
    for k in range(count):
        image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse((10 + k, 16, 118, 112 - k), fill=(40 * k % 255, 120, 200, 255))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        found.append(buffer.getvalue())
    return found


def build_share(root: Path, images: int, cutouts: int, log_rows: int, hosts: int) -> list[str]:
    keys = image_keys(images)
    generated, upscaled, cut = base_pngs(256), base_pngs(512), cutout_pngs(cutouts)
    for index, key in enumerate(keys):
        stem = key.rsplit("/", 1)[1]
        payload = {"prompt": f"a photo for {key}", "negative_prompt": "blurry", "seed": seed_for(stem),
                   "model": "sd_xl_base_1.0_f16.ckpt", "width": 1024, "height": 1024, "steps": 30}
        path = root / "GENERATIONS" / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(add_text_chunks(generated[index % len(generated)], provenance_chunks(payload)))
        path = root / "UPSCALED_IMAGES" / f"{key}_upscaled.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(upscaled[index % len(upscaled)])
        folder = root / "CUTOUTS" / f"{key}_upscaled"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, cutouts + 1):
            (folder / f"{folder.name}_cutout_{k}.png").write_bytes(cut[k - 1])
        (folder / "cutouts.json").write_text(json.dumps({"cutouts": [{}] * cutouts}))
    write_logs(root / "logs", keys, log_rows, hosts)
    return keys


def write_logs(logs: Path, keys: list[str], rows: int, hosts: int) -> None:
    """``rows`` rows over the three stages and ``hosts`` hosts: every image done once per
    stage, 1 in 20 failing once first; the rest of the rows are images since deleted."""
    stages = (("generate", GENERATE_EXTRA, "GENERATIONS/{}.png"),
              ("upscale", UPSCALE_EXTRA, "UPSCALED_IMAGES/{}_upscaled.png"),
              ("segment", SEGMENT_EXTRA, "CUTOUTS/{}_upscaled"))
    per_stage = rows // len(stages)
    written = 0
    for stage_index, (stage, extra, pattern) in enumerate(stages):
        count = per_stage if stage_index < len(stages) - 1 else rows - written
        logs_by_host = [MetricsLog(logs, stage, f"mac-{chr(97 + h)}", extra) for h in range(hosts)]
        clock = START_EPOCH + stage_index * 100000
        jobs = []
        for index, key in enumerate(keys):
            if index % 20 == 0:
                jobs.append((key, "failed"))
            jobs.append((key, "done"))
        deleted = 0
        while len(jobs) < count:
            deleted += 1
            jobs.append((f"Deleted/{stage}/Deleted_{stage}_{deleted}", "done"))
        for index, (key, status) in enumerate(jobs[:count]):
            clock += 12.0 / hosts
            logs_by_host[index % hosts].append({
                "time_utc": clock, "output": pattern.format(key), "status": status,
                "attempt": 3 if status == "failed" else 1, "seconds": 10.0 + index % 7,
                "cpu_percent_mean": 40.0 + index % 30, "cpu_percent_peak": 90.0,
                "ram_mb_mean": 9000.0 + index % 500, "ram_mb_peak": 9800.0,
                "error": "HTTP 503 from the server" if status == "failed" else None,
            })
        written += count


def run_report(root: Path) -> tuple[float, str]:
    command = [sys.executable, "-m", "drawpipe.report", "--root", str(root), "--html",
               "--contact-sheets", "--csv"]
    return timed(command)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_DIR)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"report failed with exit code {result.returncode}")
    return seconds, result.stdout


def what_it_did(output: str) -> str:
    keep = ("thumbnails:", "contact sheets:", "charts:", "pages:")
    parts = [line.split(" in /")[0].split("; open ")[0] for line in output.splitlines()
             if line.startswith(keep)]
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cutouts", type=int, default=5, help="per upscaled image")
    parser.add_argument("--log-rows", type=int, default=10000)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic share")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="drawpipe-bench-report-"))
    root = folder / "share"
    try:
        started = time.perf_counter()
        keys = build_share(root, args.images, args.cutouts, args.log_rows, args.hosts)
        print(f"share: {len(keys):,} generated + {len(keys):,} upscaled + "
              f"{len(keys) * args.cutouts:,} cut-outs, {args.log_rows:,} log rows over "
              f"{args.hosts} hosts (built in {time.perf_counter() - started:.1f} s)", flush=True)
        results = []
        seconds, output = run_report(root)
        results.append(("first", seconds, what_it_did(output)))
        seconds, output = run_report(root)
        results.append(("second", seconds, what_it_did(output)))
        second = seconds

        replaced = root / "UPSCALED_IMAGES" / f"{keys[0]}_upscaled.png"
        replaced.write_bytes(base_pngs(512, 7)[-1])
        log = MetricsLog(root / "logs", "segment", "mac-a", SEGMENT_EXTRA)
        for n in range(10):
            log.append({"output": f"CUTOUTS/Extra/x_{n}", "status": "done", "seconds": 5.0})
        seconds, output = run_report(root)
        results.append(("update", seconds, what_it_did(output)))
        seconds, _ = timed([sys.executable, "-m", "drawpipe.report", "--root", str(root)])
        results.append(("text", seconds, "no flags"))

        width = max(len(row[2]) for row in results)
        print(f"\n{'run':8} {'wall s':>7}  what it did")
        for name, seconds, did in results:
            print(f"{name:8} {seconds:7.2f}  {did:{width}}")
        verdict = "met" if second < TARGET_SECOND_RUN_SECONDS else "MISSED"
        print(f"\nsecond run {second:.2f} s: target < {TARGET_SECOND_RUN_SECONDS:g} s {verdict}; "
              f"first/second = {results[0][1] / second:.1f}x")
    finally:
        if args.keep:
            print(f"share kept at {root}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
