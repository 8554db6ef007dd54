#!/usr/bin/env python3
"""Upscale every image under GENERATIONS/ to 2048 px with Draw Things' img2img, on one or more Macs.

The options and examples: ``python upscale.py --help`` (drawpipe/cli/upscale.py).
"""

import sys
from pathlib import Path

from drawpipe.cli.launch import launch  # first: stop signals are handled from here on

if __name__ == "__main__":
    sys.exit(launch("upscale", sys.argv[1:], Path(__file__).resolve().parent))
