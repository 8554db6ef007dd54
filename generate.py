#!/usr/bin/env python3
"""Generate the dataset's images with Draw Things' txt2img, resumably, on one or more Macs.

Examples:
  python generate.py                                   # asks nation, category, count
  printf '12\\nfamily\\n3\\ndone\\n' | python generate.py
  python generate.py --add France:family:10 --add Japan:working:10 --root /path/to/share
  python generate.py --queue prompts/example_queue.json --dry-run
  python generate.py --queue q.json --server http://10.0.0.5:7860 --server http://127.0.0.1:7860
  python generate.py --add Japan:family:2 --set steps=40 --set sampler="DPM++ SDE Karras"
"""

import argparse
import sys
from pathlib import Path

from drawpipe.cli.common import add_common_arguments, run_main
from drawpipe.cli.commands import generate


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", action="append", metavar="FILE",
                        help='JSON list of {"nation", "category", "count"}; repeatable')
    parser.add_argument("--add", action="append", metavar="NATION:CATEGORY:COUNT",
                        help="queue one entry; repeatable")
    parser.add_argument("--seed-offset", type=int, metavar="N",
                        help="added to every file-name seed, for a different take (default 0)")
    parser.add_argument("--payload", metavar="FILE", help="txt2img template "
                        "(default payloads/txt2img.json)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one key of the template (a Draw Things API key; VALUE "
                             "is JSON or text); repeatable. Images already made are not redone")
    parser.add_argument("--prompts", metavar="FILE", help="prompt sets "
                        "(default prompts/variable_sets.json)")
    parser.add_argument("--list-nations", action="store_true", help="print the nations and exit")
    add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_main(generate, parse_arguments(sys.argv[1:]), Path(__file__).resolve().parent))
