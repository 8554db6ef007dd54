#!/usr/bin/env python3
"""The original upscale script's way of working, kept as the benchmarks' baseline.

docs/DESIGN.md, "The original scripts: the baseline to beat": choose the machine from a
typed answer that picks hard-coded folders; walk the input folder twice (once to
count, once to work); skip the names listed in a processed-files log, whose first
line is skipped when read (so the first file is always redone); for each image
base64 the file with the standard library, POST img2img with no timeout, decode
the answer with the standard library, open it with Pillow and save it again (a
full PNG re-encode, straight under its final name), then append a row to a
metrics CSV (CPU % and RAM sampled once, just before the request) and the name to
the processed log. No claims: two Macs upscale the same files at the same time.

It deliberately does not import drawpipe. Its one request per image is the
fast recipe's (payloads/upscale_fast.json: img2img at 1024 px, then the upscaler
at 2x) with the seed drawpipe would use, so the server renders the same pictures
for both clients and the only difference measured is the client's work.

    printf '1\\n' | python bench/baseline_upscale.py --server URL --root FOLDER

Reads ``FOLDER/GENERATIONS/**.png``; writes
``FOLDER/UPSCALED_IMAGES/<sub-folders>/<stem>_upscaled.png``,
``FOLDER/upscale_metrics_<machine>.csv`` and ``FOLDER/processed_<machine>.txt``.
"""

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import psutil
import requests
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parent.parent

# The original's hard-coded machines; here their folders hang off --root.
MACHINES = {"1": "MacBook", "2": "MacMini"}


def seed_for(stem: str) -> int:
    # drawpipe's file-name seed, so both clients ask for the same pictures.
    return int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:4], "big")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:7860")
    parser.add_argument("--root", required=True)
    parser.add_argument("--recipe", default=str(PROJECT_DIR / "payloads" / "upscale_fast.json"),
                        help="only its first step is sent (the original made one request)")
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_arguments(argv)
    root = Path(args.root)
    answer = input("Which machine is this? 1 = MacBook, 2 = MacMini: ").strip()
    machine = MACHINES[answer]
    input_folder = root / "GENERATIONS"
    output_folder = root / "UPSCALED_IMAGES"
    processed_log = root / f"processed_{machine}.txt"
    metrics_csv = root / f"upscale_metrics_{machine}.csv"
    with open(args.recipe, encoding="utf-8") as stream:
        step = json.load(stream)["steps"][0]["payload"]
    template = {key: value for key, value in step.items() if not key.startswith("_")}

    # First walk: count the work.
    total = 0
    for _, _, names in os.walk(input_folder):
        total += sum(1 for name in names if name.endswith(".png"))
    print(f"{total} images to upscale on {machine}", flush=True)

    processed = set()
    if processed_log.exists():
        with open(processed_log) as stream:
            processed = set(line.strip() for line in stream.readlines()[1:])  # the original bug

    # Second walk: the work.
    done = 0
    for folder, _, names in os.walk(input_folder):
        for name in sorted(names):
            if not name.endswith(".png") or name in processed:
                continue
            path = Path(folder) / name
            with open(path, "rb") as stream:
                image_base64 = base64.b64encode(stream.read()).decode()
            payload = dict(template)
            payload.update(init_images=[image_base64], width=1024, height=1024,
                           seed=seed_for(path.stem))
            cpu_percent = psutil.cpu_percent()
            memory = psutil.virtual_memory()
            started = time.time()
            response = requests.post(args.server + "/sdapi/v1/img2img", json=payload)
            image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
            target = output_folder / path.parent.relative_to(input_folder)
            os.makedirs(target, exist_ok=True)
            image.save(target / f"{path.stem}_upscaled.png")
            seconds = time.time() - started
            with open(metrics_csv, "a", newline="") as stream:
                csv.writer(stream).writerow([time.strftime("%Y-%m-%d %H:%M:%S"), name, seconds,
                                             cpu_percent, memory.percent,
                                             memory.used / 1024 / 1024])
            with open(processed_log, "a") as stream:
                stream.write(name + "\n")
            done += 1
            print(f"upscaled {name} ({done}/{total})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
