"""``python -m drawpipe.report``: the report (cli/report.py; the report itself: report/build.py)."""

import sys

from drawpipe.cli.report import main

sys.exit(main())
