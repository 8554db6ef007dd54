#!/usr/bin/env python3
"""Write MobileSAM's checkpoint layout (every state_dict key and its tensor shape) to JSON,
for the tests to build a random-weight checkpoint in MobileSAM's own layout without the
39 MB file.

    python tools/mobile_sam_layout.py mobile_sam.pt tests/data/mobile_sam_layout.json

Any checkpoint in MobileSAM's layout will do: the official mobile_sam.pt, or the one
../shared/sam_real/ rebuilds (whose layout its obtain.sh checks by loading it strictly
into MobileSAM's own TinyViT).
"""

import json
import sys

import torch


def main(argv) -> int:
    source, target = argv
    state = torch.load(source, map_location="cpu", weights_only=True)
    layout = {key: list(value.shape) for key, value in state.items()}
    with open(target, "w") as stream:
        json.dump(layout, stream, indent=0)
        stream.write("\n")
    print(f"{len(layout)} tensors -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
