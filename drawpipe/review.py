"""``python -m drawpipe.review``: the review page (cli/review.py; the page: curate/review.py)."""

import sys

from drawpipe.cli.review import main

if __name__ == "__main__":
    sys.exit(main())
