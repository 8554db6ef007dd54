"""python -m drawpipe.report: the report's command line (the report: report/build.py).

    python -m drawpipe.report --root SHARE                  the figures, on the terminal
    python -m drawpipe.report --root SHARE --html           + SHARE/report/index.html
    python -m drawpipe.report --root SHARE --contact-sheets + SHARE/report/contact_sheets/*.png
    python -m drawpipe.report --root SHARE --csv [FILE]     + the per-image table (report/images.csv)
    python -m drawpipe.report --root SHARE --queue q.json   + what generate.py still has to make
    python -m drawpipe.report --root SHARE --grid-intensity 300   + CO2e at 300 g per kWh
"""

import argparse
import os
from pathlib import Path

from drawpipe import bundled
from drawpipe.cli.common import program_name, script_main
from drawpipe.cli.options import add_setting_arguments, resolve, resolve_share
from drawpipe.errors import UsageError
from drawpipe.files import default_cache_dir
from drawpipe.layout import IMAGE_FOLDERS, LOGS_FOLDER, report_folder
from drawpipe.report.build import CSV_NAME, ReportSettings, run_report
from drawpipe.report.energy import check_grid_intensity
from drawpipe.settings import SHARE
from drawpipe.stages.prompts import load_prompt_sets, load_queue, merge_queue, parse_add


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m drawpipe.report"),
        description="Progress, ETA and costs of the three stages from the per-host logs; "
                    "a gallery, contact sheets and a per-image table.")
    add_setting_arguments(parser, SHARE)
    parser.add_argument("--html", action="store_true",
                        help="write report/index.html: gallery, failures, charts")
    parser.add_argument("--contact-sheets", action="store_true",
                        help="write one PNG grid per nation and category to report/contact_sheets/")
    parser.add_argument("--csv", nargs="?", const="", metavar="FILE",
                        help=f"write the per-image table (default report/{CSV_NAME})")
    parser.add_argument("--queue", action="append", metavar="FILE",
                        help="generate.py's queue file, to count the images still to generate")
    parser.add_argument("--add", action="append", metavar="NATION:CATEGORY:COUNT",
                        help="a queue entry, as generate.py takes it; repeatable")
    parser.add_argument("--prompts", metavar="FILE",
                        help="prompt sets naming the nations (default prompts/variable_sets.json)")
    add_setting_arguments(parser, ("eta_window_minutes", "grid_intensity"))
    parser.add_argument("--processes", type=int, metavar="N",
                        help="processes making thumbnails (default: one per CPU core)")
    return parser.parse_args(argv)


def settings_from_arguments(args: argparse.Namespace, project_dir: Path) -> ReportSettings:
    share = resolve_share(args, project_dir)
    queue = None
    if args.queue or args.add:
        sets = load_prompt_sets(Path(args.prompts) if args.prompts
                                else bundled.PROMPT_SETS)
        items = [item for path in args.queue or [] for item in load_queue(Path(path), sets)]
        items += [parse_add(spec, sets) for spec in args.add or []]
        queue = tuple(merge_queue(items))
    values = resolve(args, ("eta_window_minutes", "grid_intensity"), share.profile)
    window_minutes = values["eta_window_minutes"]
    if window_minutes <= 0:
        raise UsageError(f"--eta-window-minutes must be more than 0, got {window_minutes:g}")
    grid_g_per_kwh = None
    if values["grid_intensity"] is not None:
        try:
            grid_g_per_kwh = check_grid_intensity(values["grid_intensity"])
        except ValueError as exc:
            given = ("--grid-intensity" if args.grid_intensity is not None
                     else f"grid_intensity of the profile '{share.profile_name}'")
            raise UsageError(f"{given} {exc}") from None
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes must be 1 or more, got {args.processes}")
    csv_path = None
    if args.csv is not None:
        csv_path = Path(args.csv).resolve() if args.csv else report_folder(share.root) / CSV_NAME
        for folder in (LOGS_FOLDER, *IMAGE_FOLDERS):
            if csv_path.is_relative_to(share.root / folder):
                raise UsageError(f"--csv {args.csv}: the report never writes into {folder}/; "
                                 f"choose a file elsewhere (default: report/{CSV_NAME})")
    return ReportSettings(
        root=share.root, html=args.html, contact_sheets=args.contact_sheets, csv_path=csv_path,
        queue=queue, eta_window_seconds=window_minutes * 60,
        processes=args.processes or min(os.cpu_count() or 1, 8),
        cache_dir=default_cache_dir(os.environ), grid_g_per_kwh=grid_g_per_kwh)


def run(args: argparse.Namespace, project_dir: Path) -> int:
    return run_report(settings_from_arguments(args, project_dir))


def main(argv=None, project_dir: Path | None = None) -> int:
    """python -m drawpipe.report (and drawpipe report): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
