"""python -m drawpipe.status: every worker's live state on one screen; pause, resume and
drain the share's runs from any Mac (the screen: report/glance.py; the files:
engine/status.py, engine/control.py).

    python -m drawpipe.status --root SHARE                  one screen: workers, totals, ETA
    python -m drawpipe.status --root SHARE --watch          drawn again every 5 s until Ctrl-C
    python -m drawpipe.status --root SHARE --pause [--reason TEXT]   no worker starts a new job
    python -m drawpipe.status --root SHARE --resume                  they go on
    python -m drawpipe.status --root SHARE --drain HOST     HOST's runs finish and exit 0
    python -m drawpipe.status --root SHARE --undrain HOST   (HOST-PID: one run)
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

from drawpipe.cli.common import program_name, script_main
from drawpipe.cli.options import add_setting_arguments, resolve, resolve_share
from drawpipe.engine.control import remove_drain, remove_pause, write_drain, write_pause
from drawpipe.engine.status import read_statuses
from drawpipe.errors import UsageError
from drawpipe.layout import CONTROL_FOLDER
from drawpipe.report.glance import format_glance, take_glance
from drawpipe.settings import SHARE

PROG = "python -m drawpipe.status"


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(PROG), formatter_class=argparse.RawDescriptionHelpFormatter,
        description="What every worker on the share is doing, the share's totals and ETA; "
                    "pause, resume and drain the runs through files in "
                    f"{CONTROL_FOLDER}/.", epilog=__doc__.split("\n", 4)[4])
    add_setting_arguments(parser, SHARE)
    parser.add_argument("--watch", action="store_true",
                        help="draw the screen again and again until Ctrl-C")
    add_setting_arguments(parser, ("refresh_seconds", "eta_window_minutes"))
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--pause", action="store_true",
                        help="every worker finishes what is in flight and waits (claims "
                             "released) until --resume")
    action.add_argument("--resume", action="store_true", help="end a --pause")
    action.add_argument("--drain", metavar="HOST",
                        help="HOST's runs (HOST-PID: one run) finish what is in flight and "
                             "exit 0, leaving the rest to the others")
    action.add_argument("--undrain", metavar="HOST", help="remove HOST's drain file")
    parser.add_argument("--reason", default="", metavar="TEXT",
                        help="with --pause: why, shown to everyone")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, project_dir: Path, out=None) -> int:
    out = out or sys.stdout
    share = resolve_share(args, project_dir)
    values = resolve(args, ("refresh_seconds", "eta_window_minutes"), share.profile)
    root = share.root
    try:
        if args.pause:
            path = write_pause(root, args.reason)
            live = len(_live_names(root))
            running = (f"{live} running run{'s' if live != 1 else ''} finish what is in flight, "
                       "then wait" if live else "no run is live now; those started meanwhile wait")
            out.write(f"paused: no worker on {root} starts a new job ({running}); "
                      f"{path.relative_to(root)} stays until {PROG} --resume\n")
            return 0
        if args.resume:
            removed = remove_pause(root)
            out.write("resumed: the workers go on\n" if removed else f"{root} was not paused\n")
            return 0
        if args.drain:
            path = write_drain(root, args.drain)
            out.write(f"draining {args.drain}: its runs finish what is in flight and exit 0; "
                      f"{path.relative_to(root)} stays until {PROG} --undrain {args.drain} "
                      "(a run started meanwhile drains at once)\n")
            if not any(name == args.drain or name.startswith(args.drain + "-")
                       for name in _live_names(root)):
                out.write(f"note: no live run of {args.drain} on this share now\n")
            return 0
        if args.undrain:
            removed = remove_drain(root, args.undrain)
            out.write(f"{args.undrain} is no longer drained\n" if removed
                      else f"{args.undrain} was not drained\n")
            return 0
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write in {root / CONTROL_FOLDER} ({exc.strerror or exc}): is "
                         "the share mounted read-write?") from None
    window_seconds = values["eta_window_minutes"] * 60
    if not args.watch:
        out.write(format_glance(take_glance(root, window_seconds)))
        return 0
    return _watch(root, window_seconds, values["refresh_seconds"], out)


def _live_names(root: Path) -> list[str]:
    return [process.name for process in read_statuses(root).processes if not process.silent]


def _watch(root: Path, window_seconds: float, refresh_seconds: float, out) -> int:
    """Draw the screen every ``refresh_seconds`` until Ctrl-C (exit 0)."""
    on_terminal = out.isatty()
    try:
        while True:
            width = shutil.get_terminal_size().columns if on_terminal else None
            screen = format_glance(take_glance(root, window_seconds), width)
            if on_terminal:
                out.write("\x1b[H\x1b[2J")  # home, clear: one screen, drawn again
            out.write(screen + f"(every {refresh_seconds:g} s; Ctrl-C to stop)\n")
            out.flush()
            time.sleep(refresh_seconds)
    except KeyboardInterrupt:
        return 0


def main(argv=None, project_dir: Path | None = None) -> int:
    """python -m drawpipe.status (and drawpipe status): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
