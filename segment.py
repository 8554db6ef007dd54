#!/usr/bin/env python3
"""Cut every object out of the upscaled images with Segment Anything, resumably, on one or more Macs.

Every PNG under ROOT/UPSCALED_IMAGES/ becomes a folder ROOT/CUTOUTS/<same sub-folders>/<stem>/
of square transparent PNGs, one per object (<stem>_cutout_<k>.png, largest first), and
cutouts.json (bbox, area, scores, outline polygons of each).

Examples:
  python segment.py --root SHARE --checkpoint sam_vit_h_4b8939.pth
  python segment.py --root SHARE --download        # vit_b, fetched into the cache
  python segment.py --model vit_l --download --device mps   # the cache's sam_vit_l_0b3195.pth
  python segment.py --points-per-side 16 --max-cutouts 12 --watch
  python segment.py --dry-run                               # to do, done, claimed by whom
"""

import argparse
import sys
from pathlib import Path

from drawpipe.cli.common import add_common_arguments, add_watch_arguments, run_main
from drawpipe.cli.commands import segment

GENERATOR_OPTIONS = (  # segment-anything's scripts/amg.py names; unset: SAM's defaults
    ("--points-per-side", int, "grid points along each side (default 32)"),
    ("--points-per-batch", int, "grid points per decoder batch (default: from free memory)"),
    ("--pred-iou-thresh", float, "keep masks with predicted IoU above this (default 0.88)"),
    ("--stability-score-thresh", float, "keep masks at least this stable (default 0.95)"),
    ("--stability-score-offset", float, "logit offset of the stability score (default 1.0)"),
    ("--box-nms-thresh", float, "box IoU above which duplicates are dropped (default 0.7)"),
    ("--crop-n-layers", int, "also run on 2^i x 2^i crops, i = 1..N (default 0)"),
    ("--min-mask-region-area", int, "remove islands and holes smaller than this, px (default 0)"),
)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="FILE", help="SAM weights (default: the "
                        "official file of --model in the cache folder)")
    parser.add_argument("--model", choices=("vit_h", "vit_l", "vit_b", "vit_tiny"),
                        help="default: named in the checkpoint's file name, else vit_b "
                             "(vit_tiny: tests only)")
    parser.add_argument("--device", choices=("auto", "mps", "cuda", "cpu"), default="auto",
                        help="auto: mps on Apple Silicon, cuda where present, else cpu")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                        default="auto", help="auto: float32 (the masks SAM gives)")
    parser.add_argument("--download", action="store_true", help="fetch the official "
                        "checkpoint if missing (resumable, SHA-256 checked)")
    parser.add_argument("--download-from", metavar="URL", help="a mirror holding the "
                        "official file names (default: Meta's own address)")
    parser.add_argument("--cache-dir", metavar="FOLDER", help="checkpoints go to FOLDER/sam/ "
                        "(default $DRAWPIPE_CACHE_DIR, else ~/.cache/drawpipe)")
    for flag, kind, text in GENERATOR_OPTIONS:
        parser.add_argument(flag, type=kind, metavar="N" if kind is int else "X", help=text)
    parser.add_argument("--min-area-fraction", type=float, metavar="X", help="drop masks "
                        "smaller than this fraction of the image (default 0.001)")
    parser.add_argument("--max-cutouts", type=int, metavar="N", help="at most N per image, "
                        "largest first (default: all)")
    parser.add_argument("--keep-background", action="store_true", help="keep masks whose "
                        "box touches all four edges (dropped as background by default)")
    parser.add_argument("--margin", type=float, metavar="X", help="space around the object "
                        "as a fraction of its longer side (default 0.05)")
    add_watch_arguments(parser, "UPSCALED_IMAGES/")
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)  # make demo
    add_common_arguments(parser, server_options=False)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_main(segment, parse_arguments(sys.argv[1:]), Path(__file__).resolve().parent))
