"""python -m drawpipe.export: the export's command line (the export: curate/export.py).

    python -m drawpipe.export --root SHARE --out DIR                       accepted images
    python -m drawpipe.export --root SHARE --out DIR --include-unreviewed  + the unreviewed
    python -m drawpipe.export --root SHARE --out DIR --cutouts-by-label    + cut-outs by name
"""

import argparse
import os
from pathlib import Path

from drawpipe.cli.common import program_name, script_main
from drawpipe.cli.options import add_setting_arguments, resolve_share
from drawpipe.curate.export import ExportSettings, run_export
from drawpipe.errors import UsageError
from drawpipe.files import default_cache_dir
from drawpipe.settings import SHARE


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m drawpipe.export"),
        description="Write the accepted images, their upscaled versions and cut-outs as a "
                    "Hugging Face imagefolder with metadata.jsonl.")
    add_setting_arguments(parser, SHARE)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="a new or empty folder outside the share")
    parser.add_argument("--include-unreviewed", action="store_true",
                        help="also export the images nobody has reviewed yet (never the rejected)")
    parser.add_argument("--cutouts-by-label", action="store_true",
                        help="also put the cut-outs in a folder per name (segment.py --label), "
                             "DIR/cutouts_by_label/<name>/, for browsing")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, project_dir: Path) -> int:
    share = resolve_share(args, project_dir)
    if not args.out.strip():
        raise UsageError("--out needs a folder")
    return run_export(ExportSettings(root=share.root, out=Path(args.out).expanduser(),
                                     include_unreviewed=args.include_unreviewed,
                                     cutouts_by_label=args.cutouts_by_label,
                                     cache_dir=default_cache_dir(os.environ)))


def main(argv=None, project_dir: Path | None = None) -> int:
    """python -m drawpipe.export (and drawpipe export): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
