"""``python -m drawpipe COMMAND``: the drawpipe command (cli/commands.py)."""

import sys

from drawpipe.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
