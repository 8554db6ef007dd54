"""The scripts' first lines: stop signals are handled before anything heavy is imported.

    launch(script, argv, project_dir)   install the stop-signal handlers, then import
                                        drawpipe.cli.<script> and call its main
    generate(), upscale(), segment()    the installed commands (drawpipe-generate, ...)
    drawpipe()                          the installed drawpipe command (cli/commands.py)

A cold start spends a second or more importing (requests, Pillow, numpy): a Ctrl-C,
SIGTERM or SIGHUP in that time ends the script with "interrupted" and exit 130, as
later, instead of a KeyboardInterrupt traceback or a silent exit 143. Only the
standard library and engine/interrupts.py are imported before the handlers are in.
"""

import importlib
import sys
from pathlib import Path

from drawpipe.engine.interrupts import STOP_SIGNALS_STATE


def launch(script: str, argv: list[str] | None = None, project_dir: Path | None = None) -> int:
    """Run drawpipe.cli.<script>'s main(argv, project_dir) (main(argv) when no
    ``project_dir`` is given); the exit code."""
    STOP_SIGNALS_STATE.install()
    try:
        module = importlib.import_module(f"drawpipe.cli.{script}")
    except KeyboardInterrupt:  # a stop signal while importing (see interrupts.py)
        try:
            print("interrupted", file=sys.stderr)
        except OSError:
            pass  # the terminal is gone (SIGHUP)
        return 130  # errors.Interrupted.exit_code
    return module.main(argv) if project_dir is None else module.main(argv, project_dir)


def generate() -> int:
    return launch("generate")


def upscale() -> int:
    return launch("upscale")


def segment() -> int:
    return launch("segment")


def drawpipe() -> int:
    return launch("commands")
