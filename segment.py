#!/usr/bin/env python3
"""Cut every object out of the upscaled images with Segment Anything, resumably, on one or more Macs.

The options and examples: ``python segment.py --help`` (drawpipe/cli/segment.py).
"""

import sys
from pathlib import Path

from drawpipe.cli.launch import launch  # first: stop signals are handled from here on

if __name__ == "__main__":
    sys.exit(launch("segment", sys.argv[1:], Path(__file__).resolve().parent))
