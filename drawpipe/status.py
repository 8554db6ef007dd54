"""``python -m drawpipe.status``: the night at a glance, pause, resume and drain (cli/status.py)."""

import sys

from drawpipe.cli.common import run_main
from drawpipe.cli.status import main

if __name__ == "__main__":
    sys.exit(run_main(main))
