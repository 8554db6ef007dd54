"""``python -m drawpipe.simulator``: Draw Things' HTTP API, or with ``--grpc`` its gRPC
API, simulated (cli/simulator.py)."""

import sys

from drawpipe.cli.simulator import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
