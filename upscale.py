#!/usr/bin/env python3
"""Upscale every image under GENERATIONS/ to 2048 px with Draw Things' img2img, on one or more Macs.

Examples:
  python upscale.py --root SHARE                 # GENERATIONS/ -> UPSCALED_IMAGES/
  python upscale.py --root SHARE --watch         # keep picking up new images; Ctrl-C stops
  python upscale.py --recipe upscale_fast.json            # one request per image instead of two
  python upscale.py --set strength=0.35                   # every step that sends strength
  python upscale.py --set "refine 2048:steps=12"          # one step, by name or number
  python upscale.py --dry-run                             # to do, done, claimed by whom
  python upscale.py --server http://10.0.0.5:7860 --server http://127.0.0.1:7860
"""

import argparse
import sys
from pathlib import Path

from drawpipe.cli.common import add_common_arguments, add_watch_arguments, run_main
from drawpipe.cli.commands import upscale


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", metavar="FILE",
                        help="the img2img steps: a file, or a bundled recipe's name "
                             "(default creative_upscale.json; see README 'Choosing a recipe')")
    parser.add_argument("--set", action="append", metavar="[STEP:]KEY=VALUE",
                        help="override a Draw Things API key in every step that sends it, or "
                             "in one step (its name or number); VALUE is JSON or text; "
                             "repeatable. Images already upscaled are not redone")
    add_watch_arguments(parser, "GENERATIONS/")
    parser.add_argument("--seed-offset", type=int, metavar="N",
                        help="added to every file-name seed, for a different take (default 0)")
    parser.add_argument("--settle-seconds", type=float, metavar="S",
                        help="an incomplete input modified less than S seconds ago is waited "
                             "for; older, it is reported as damaged (default 60)")
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_main(upscale, parse_arguments(sys.argv[1:]), Path(__file__).resolve().parent))
