"""``python -m drawpipe.status``: the night at a glance, pause, resume and drain (cli/status.py)."""

import sys

from drawpipe.cli.launch import launch  # first: stop signals are handled from here on

if __name__ == "__main__":
    sys.exit(launch("status", sys.argv[1:]))
