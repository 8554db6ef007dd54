"""``python -m drawpipe COMMAND``: the drawpipe command (cli/commands.py)."""

import sys

from drawpipe.cli.launch import launch  # first: stop signals are handled from here on

if __name__ == "__main__":
    sys.exit(launch("commands", sys.argv[1:]))
