"""``drawpipe COMMAND [OPTIONS]``: every command under one name, the ecosystem's way.

    drawpipe generate --add France:family:10      the same as python generate.py ...
    drawpipe upscale --watch                      python upscale.py ...
    drawpipe segment --download                   python segment.py ...
    drawpipe report --html                        python -m drawpipe.report ...
    drawpipe review                               python -m drawpipe.review ...
    drawpipe export --out DIR                     python -m drawpipe.export ...
    drawpipe simulator --port 7860                python -m drawpipe.simulator ...
    drawpipe status --watch                       python -m drawpipe.status ...

Installed with pip it is the ``drawpipe`` console command; ``python -m drawpipe`` runs
it from a checkout. Each command takes the options of its own form (``drawpipe generate
--help``) and, like every form but the checkout's own scripts, works on the current
folder unless ``--root`` or a profile says otherwise.

COMMANDS is the one table of them: a command's module is imported only when it runs,
so ``drawpipe --help`` stays instant (no torch, no matplotlib).
"""

import difflib
import sys

from drawpipe import __version__
from drawpipe.cli.launch import launch

# name -> (module with main(argv), one line of help), in the order a night runs them
COMMANDS = {
    "generate": ("drawpipe.cli.generate", "make the images (txt2img) from a nation x category queue"),
    "upscale": ("drawpipe.cli.upscale", "upscale GENERATIONS/ to 2048 px (img2img recipe)"),
    "segment": ("drawpipe.cli.segment", "cut every object out of UPSCALED_IMAGES/ (Segment Anything)"),
    "report": ("drawpipe.cli.report", "progress, ETA, costs; --html gallery, --csv table"),
    "review": ("drawpipe.cli.review", "the review page: accept or reject each image"),
    "export": ("drawpipe.cli.export", "the accepted images as a Hugging Face imagefolder"),
    "simulator": ("drawpipe.cli.simulator", "a stand-in for Draw Things' API, for trying things"),
    "status": ("drawpipe.cli.status", "every worker's live state on a share; pause, resume, drain"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: drawpipe COMMAND [OPTIONS]   (drawpipe COMMAND --help for its options; "
             "drawpipe --version)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {help_line}" for name, (_, help_line) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run ``drawpipe COMMAND ...``; the command's exit code (2 for an unknown one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"drawpipe {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{name}'{hint}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    # argparse names the program after sys.argv[0]: every usage line and error of the
    # command then says "drawpipe generate", the form the user typed.
    sys.argv[0] = f"drawpipe {name}"
    # Through launch: stop signals are handled before the command's imports (cli/launch.py).
    return launch(COMMANDS[name][0].rsplit(".", 1)[1], rest)
