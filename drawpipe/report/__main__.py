"""``python -m drawpipe.report``: see drawpipe/report/run.py."""

import sys

from drawpipe.cli.common import run_main
from drawpipe.report.run import main

sys.exit(run_main(main))
