#!/usr/bin/env python3
"""The original generate script's way of working, kept as the benchmarks' baseline.

docs/DESIGN.md, "The original scripts: the baseline to beat": for each image, POST
txt2img with ``requests``; decode the base64 answer with the standard library,
open it with Pillow and save it again (a full PNG re-encode); append a CSV row
holding the whole base64 string plus CPU % and RAM sampled once just before the
request. The CSV is opened with mode "w" at each run start (erasing the previous
log). No claims, no existence check, no retries: every process does every image.

It deliberately does not import drawpipe. It sends the same request drawpipe
would (same template, prompt and file-name seed) so that the server renders the
same pictures for both, and the only difference measured is the client's work.

    python bench/baseline_generate.py --server URL --root FOLDER --add Japan:family:10
        [--payload payloads/txt2img.json] [--prompts prompts/variable_sets.json]

Writes ``FOLDER/GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png`` and
``FOLDER/generation_metrics.csv``.
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


def seed_for(stem: str) -> int:
    # drawpipe's file-name seed, so both clients ask for the same pictures.
    return int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:4], "big")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:7860")
    parser.add_argument("--root", required=True)
    parser.add_argument("--add", action="append", required=True, metavar="NATION:CATEGORY:COUNT")
    parser.add_argument("--payload", default=str(PROJECT_DIR / "payloads" / "txt2img.json"))
    parser.add_argument("--prompts", default=str(PROJECT_DIR / "prompts" / "variable_sets.json"))
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_arguments(argv)
    root = Path(args.root)
    with open(args.payload, encoding="utf-8") as stream:
        template = {k: v for k, v in json.load(stream).items() if not k.startswith("_")}
    with open(args.prompts, encoding="utf-8") as stream:
        variants = json.load(stream)

    # The original reopened its log with "w" on every run: the previous log is gone.
    with open(root / "generation_metrics.csv", "w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["time", "nation", "category", "file", "prompt", "cpu_percent",
                         "ram_percent", "ram_used_mb", "image_base64"])
        for spec in args.add:
            nation, category, count = spec.split(":")
            prompts = [v["prompt"] for v in variants
                       if v["nation"] == nation and v["category"] == category]
            for prompt in prompts:
                # File names restart for each prompt variant (variants overwrite each other).
                for number in range(1, int(count) + 1):
                    stem = f"{nation}_{category}_{number}"
                    payload = dict(template)
                    payload["prompt"] = template["prompt"].replace("{prompt}", prompt)
                    payload["seed"] = seed_for(stem)

                    cpu_percent = psutil.cpu_percent()
                    memory = psutil.virtual_memory()
                    response = requests.post(args.server + "/sdapi/v1/txt2img", json=payload)
                    response.raise_for_status()
                    for image_base64 in response.json()["images"]:
                        image = Image.open(io.BytesIO(base64.b64decode(image_base64)))
                        folder = root / "GENERATIONS" / nation / category
                        os.makedirs(folder, exist_ok=True)
                        image.save(folder / f"{stem}.png")
                        writer.writerow([time.strftime("%Y-%m-%d %H:%M:%S"), nation, category,
                                         f"{stem}.png", prompt, cpu_percent, memory.percent,
                                         memory.used / 1024 / 1024, image_base64])
                        log.flush()
                    print(f"saved {stem}.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
