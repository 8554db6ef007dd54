"""``python -m drawpipe.simulator``: the simulator's command line (drawthings/simulator.py)."""

import sys

from drawpipe.drawthings.simulator import main

if __name__ == "__main__":
    sys.exit(main())
