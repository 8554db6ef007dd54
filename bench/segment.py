#!/usr/bin/env python3
"""Lean mask generator vs stock SamAutomaticMaskGenerator: seconds, peak RSS, agreement.

Both run on the same full-size image (a simulator scene, 2048 px by default), the
same checkpoint and the same settings, each in a fresh process (so peak RSS is one
image's, model included), one after the other. Then:

  seconds      generate() of one image (model already loaded, encoder included)
  peak RSS     the process's ru_maxrss: model, image, everything
  agreement    masks are matched by the grid point that prompted them (each point
               gives up to 3): for each stock mask, the lean mask of the same point
               with the highest IoU. Reported: mean and lowest IoU of the matched
               pairs, and the masks either side has without a partner (a candidate
               right at a threshold can fall the other way, since the lean path scores
               at 1024 px)

A last run (--memory-points, default 32) measures the lean generator alone at the
default 32 x 32 grid: the issue's memory target is <= 3 GiB with vit_b there.

Without --checkpoint a random-weight model of --model is saved to a temporary file
and used by every run. Random weights predict IoUs near 0.03 and logits near +-0.2,
so SAM's own thresholds (0.88, 0.95 at offset 1.0) would keep no mask at all; the
random-weight defaults below are chosen so that about half the candidates pass each
filter. Random masks are noise spread over the whole image, so every box is the whole
image and NMS would keep one mask: it is off (1.0), and every surviving candidate is
compared. With --checkpoint, SAM's defaults apply.

Examples:
  python bench/segment.py                                   # vit_b, random, ~12 min here
  python bench/segment.py --checkpoint ~/.cache/drawpipe/sam/sam_vit_b_01ec64.pth
  python bench/segment.py --model vit_tiny --image-size 512 --points-per-side 8 --memory-points 0
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

RANDOM_WEIGHT_SETTINGS = {"pred_iou_thresh": 0.03, "stability_score_thresh": 0.3,
                          "stability_score_offset": 0.05, "box_nms_thresh": 1.0}
TRAINED_SETTINGS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                    "stability_score_offset": 1.0, "box_nms_thresh": 0.7}


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", help="vit_h|vit_l|vit_b|vit_tiny (default vit_b)")
    parser.add_argument("--checkpoint", help="trained weights (default: random weights)")
    parser.add_argument("--image-size", type=int, default=2048, help="square image side, px")
    parser.add_argument("--points-per-side", type=int, default=16,
                        help="grid of the stock vs lean comparison (default 16: stock takes "
                             "~6 min here at 32)")
    parser.add_argument("--stock-points-per-batch", type=int, default=64,
                        help="stock's points_per_batch (its default 64)")
    parser.add_argument("--points-per-batch", type=int,
                        help="lean's points_per_batch (default: chosen from free memory)")
    parser.add_argument("--memory-points", type=int, default=32,
                        help="points per side of the lean-only memory run; 0 skips it")
    parser.add_argument("--precision", default="float32",
                        help="lean run's precision (float32, bfloat16, float16)")
    for name in ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                 "box_nms_thresh"):
        parser.add_argument("--" + name.replace("_", "-"), type=float,
                            help="default: SAM's with --checkpoint, else "
                                 f"{RANDOM_WEIGHT_SETTINGS[name]}")
    parser.add_argument("--seed", type=int, default=7, help="simulator scene seed")
    parser.add_argument("--worker", choices=("stock", "lean"), help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_image(size: int, seed: int) -> np.ndarray:
    from drawpipe.drawthings.simulator import render_scene

    return np.asarray(render_scene(seed, "a family in front of their house", size, size).convert("RGB"))


def full_mask(found, height: int, width: int) -> np.ndarray:
    """A mask_generator.FoundMask as height x width bool, to compare with stock's."""
    full = np.zeros((height, width), dtype=bool)
    x, y, w, h = found.box
    full[y:y + h, x:x + w] = found.mask
    return full


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_worker(args) -> None:
    """One generator on one image in this process; writes masks + figures to --output."""
    from drawpipe.sam.models import choose_device, import_torch, load_sam
    from drawpipe.sam.settings import GeneratorSettings

    torch = import_torch()
    settings = json.loads(args.settings_json)
    image = make_image(args.image_size, args.seed)
    device = choose_device("auto")
    started = time.monotonic()
    sam = load_sam(args.model, Path(args.checkpoint), device)
    load_seconds = time.monotonic() - started
    rss_loaded = peak_rss_mb()
    height, width = image.shape[:2]
    points, boxes, masks = [], [], []
    if args.worker == "stock":
        from segment_anything import SamAutomaticMaskGenerator
        from segment_anything.utils.amg import rle_to_mask

        generator = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", **settings)
        started = time.monotonic()
        records = generator.generate(image)
        seconds = time.monotonic() - started
        points_per_batch = settings["points_per_batch"]
        for record in records:
            masks.append(np.packbits(rle_to_mask(record["segmentation"])))
            points.append(record["point_coords"][0])
            boxes.append(record["bbox"])
    else:
        import psutil

        from drawpipe.sam.mask_generator import LeanMaskGenerator, choose_points_per_batch

        points_per_batch = settings.pop("points_per_batch") or choose_points_per_batch(
            psutil.virtual_memory().available)
        generator = LeanMaskGenerator(sam, GeneratorSettings(**settings), args.precision,
                                      points_per_batch)
        started = time.monotonic()
        found = generator.generate(image)
        seconds = time.monotonic() - started
        for mask in found:
            masks.append(np.packbits(full_mask(mask, height, width)))
            points.append(list(mask.point))
            boxes.append(list(mask.box))
    packed_bytes = (height * width + 7) // 8
    np.savez(args.output, masks=np.array(masks, dtype=np.uint8).reshape(len(masks), packed_bytes),
             points=np.array(points, dtype=float).reshape(-1, 2),
             boxes=np.array(boxes, dtype=float).reshape(-1, 4))
    Path(args.output + ".json").write_text(json.dumps({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded,
        "load_seconds": load_seconds, "masks": len(masks), "device": device,
        "points_per_batch": points_per_batch, "threads": torch.get_num_threads()}))


def launch(args, worker: str, settings: dict, output: str, points_per_side: int) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--model", args.model,
               "--checkpoint", args.checkpoint, "--image-size", str(args.image_size),
               "--seed", str(args.seed), "--precision", args.precision, "--output", output,
               "--settings-json", json.dumps({**settings, "points_per_side": points_per_side})]
    print(f"  running {worker} at {points_per_side} x {points_per_side} points ...", flush=True)
    subprocess.run(command, check=True)
    figures = json.loads(Path(output + ".json").read_text())
    print(f"    {figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB, "
          f"{figures['masks']} masks", flush=True)
    return figures


def agreement(stock_path: str, lean_path: str) -> dict:
    """Match masks prompted by the same grid point; IoU of the best pair per stock mask."""
    stock, lean = np.load(stock_path), np.load(lean_path)
    lean_by_point = {}
    for index, point in enumerate(lean["points"]):
        lean_by_point.setdefault((round(point[0], 1), round(point[1], 1)), []).append(index)
    used, ious = set(), []
    for index, point in enumerate(stock["points"]):
        candidates = [i for i in lean_by_point.get((round(point[0], 1), round(point[1], 1)), [])
                      if i not in used]
        if not candidates:
            continue
        a = np.unpackbits(stock["masks"][index]).astype(bool)
        best, best_iou = None, -1.0
        for candidate in candidates:
            b = np.unpackbits(lean["masks"][candidate]).astype(bool)
            union = np.count_nonzero(a | b)
            iou = np.count_nonzero(a & b) / union if union else 1.0
            if iou > best_iou:
                best, best_iou = candidate, iou
        used.add(best)
        ious.append(best_iou)
    return {"matched": len(ious), "mean_iou": float(np.mean(ious)) if ious else None,
            "min_iou": float(np.min(ious)) if ious else None,
            "stock_only": len(stock["points"]) - len(ious), "lean_only": len(lean["points"]) - len(used)}


def main(argv) -> int:
    args = parse_arguments(argv)
    if args.worker:
        run_worker(args)
        return 0
    from drawpipe.sam.models import save_random_checkpoint

    defaults = TRAINED_SETTINGS if args.checkpoint else RANDOM_WEIGHT_SETTINGS
    settings = {name: getattr(args, name) if getattr(args, name) is not None else value
                for name, value in defaults.items()}
    with tempfile.TemporaryDirectory() as folder:
        if not args.checkpoint:
            args.checkpoint = str(save_random_checkpoint(args.model, Path(folder) / f"random_{args.model}.pth"))
            weights = "random weights (seed 0)"
        else:
            weights = args.checkpoint
        print(f"{args.model}, {weights}, {args.image_size} x {args.image_size} px image, "
              f"settings {settings}", flush=True)
        stock = launch(args, "stock", {**settings, "points_per_batch": args.stock_points_per_batch},
                       f"{folder}/stock.npz", args.points_per_side)
        lean = launch(args, "lean", {**settings, "points_per_batch": args.points_per_batch},
                      f"{folder}/lean.npz", args.points_per_side)
        agreed = agreement(f"{folder}/stock.npz", f"{folder}/lean.npz")
        memory = None
        if args.memory_points:
            memory = launch(args, "lean", {**settings, "points_per_batch": args.points_per_batch},
                            f"{folder}/lean_memory.npz", args.memory_points)

    grid = f"{args.points_per_side}x{args.points_per_side}"
    print()
    print(f"| {args.model}, {args.image_size} px, {grid} points | stock | lean | stock / lean |")
    print("|---|---|---|---|")
    print(f"| seconds per image | {stock['seconds']:.1f} | {lean['seconds']:.1f} | "
          f"{stock['seconds'] / lean['seconds']:.2f}x |")
    print(f"| peak RSS, MB | {stock['peak_rss_mb']:.0f} | {lean['peak_rss_mb']:.0f} | "
          f"{stock['peak_rss_mb'] / lean['peak_rss_mb']:.2f}x |")
    print(f"| RSS with model loaded, MB | {stock['rss_after_load_mb']:.0f} | "
          f"{lean['rss_after_load_mb']:.0f} | |")
    print(f"| points per batch | {stock['points_per_batch']} | {lean['points_per_batch']} | |")
    print(f"| masks | {stock['masks']} | {lean['masks']} | |")
    if agreed["matched"]:
        print(f"| matched masks: mean IoU / lowest IoU | {agreed['mean_iou']:.4f} / "
              f"{agreed['min_iou']:.4f} ({agreed['matched']} pairs) | | |")
    print(f"| unmatched masks: stock only / lean only | {agreed['stock_only']} / "
          f"{agreed['lean_only']} | | |")
    if memory:
        print(f"| lean alone at {args.memory_points}x{args.memory_points}: seconds / peak RSS MB "
              f"/ masks | {memory['seconds']:.1f} / {memory['peak_rss_mb']:.0f} / "
              f"{memory['masks']} (points per batch {memory['points_per_batch']}) | | |")
    print(f"\ndevice {lean['device']}, {lean['threads']} threads, precision {args.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
