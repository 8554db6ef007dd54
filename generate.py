#!/usr/bin/env python3
"""Generate the dataset's images with Draw Things' txt2img, resumably, on one or more Macs.

The options and examples: ``python generate.py --help`` (drawpipe/cli/generate.py).
"""

import sys
from pathlib import Path

from drawpipe.cli.launch import launch  # first: stop signals are handled from here on

if __name__ == "__main__":
    sys.exit(launch("generate", sys.argv[1:], Path(__file__).resolve().parent))
