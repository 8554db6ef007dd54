"""``python -m drawpipe.export``: the export (cli/export.py; the export itself: curate/export.py)."""

import sys

from drawpipe.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
