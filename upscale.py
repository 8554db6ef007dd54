#!/usr/bin/env python3
"""Upscale every image under GENERATIONS/ to 2048 px with Draw Things' img2img, on one or more Macs.

The options and examples: ``python upscale.py --help`` (drawpipe/cli/upscale.py).
"""

import sys
from pathlib import Path

from drawpipe.cli.upscale import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(__file__).resolve().parent))
