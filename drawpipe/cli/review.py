"""python -m drawpipe.review: the review page's command line (the page: curate/review.py).

    python -m drawpipe.review --root SHARE                 http://127.0.0.1:8765/
    python -m drawpipe.review --root SHARE --port 0        a free port; the URL is printed
"""

import argparse
import os
from pathlib import Path

from drawpipe.cli.common import program_name, script_main
from drawpipe.cli.options import add_setting_arguments, resolve, resolve_share
from drawpipe.curate.review import ReviewSettings, run_review
from drawpipe.errors import UsageError
from drawpipe.files import default_cache_dir, host_name
from drawpipe.settings import SHARE


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m drawpipe.review"),
        description="A local web page to accept or reject the generated images; verdicts "
                    "go to the share's reviews/<host>.jsonl.")
    add_setting_arguments(parser, SHARE + ("host", "port"))
    parser.add_argument("--host-name", metavar="NAME",
                        help="this Mac's name in reviews/NAME.jsonl (default: its host name)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="processes measuring new images' quality (default: one per core)")
    return parser.parse_args(argv)


def settings_from_arguments(args: argparse.Namespace, project_dir: Path, environ) -> ReviewSettings:
    share = resolve_share(args, project_dir)
    values = resolve(args, ("host", "port"), share.profile)
    if not 0 <= values["port"] <= 65535:
        raise UsageError(f"--port must be 0..65535, got {values['port']}")
    name = args.host_name or host_name()
    if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise UsageError(f"--host-name {name!r}: use letters, digits, '-' and '_' (a file name)")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes must be 1 or more, got {args.processes}")
    return ReviewSettings(root=share.root, bind_host=values["host"], port=values["port"],
                          host_name=name, cache_dir=default_cache_dir(environ),
                          processes=args.processes or min(os.cpu_count() or 1, 8))


def run(args: argparse.Namespace, project_dir: Path) -> int:
    return run_review(settings_from_arguments(args, project_dir, os.environ))


def main(argv=None, project_dir: Path | None = None) -> int:
    """python -m drawpipe.review (and drawpipe review): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
