"""The dataset's folders and file names: the on-disk contract, in one place.

    <root>/
      GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png           generate.py
      UPSCALED_IMAGES/<same folders>/<stem>_upscaled.png                     upscale.py
      CUTOUTS/<same folders>/<stem>_upscaled/<stem>_upscaled_cutout_<k>.png  segment.py
                                            /cutouts.json
      REJECTED/<any of the above, "_take<k>" added to the name>              takes.py
      logs/<stage>-<host>.csv      one CSV per stage and host (engine/metrics.py)
      reviews/<host>.jsonl         one verdict file per host (curate/verdicts.py)
      report/                      what python -m drawpipe.report writes
      .claims/<stage>/<output>.claim   who works on what (engine/claims.py)
"""

import re
from pathlib import Path

GENERATIONS_FOLDER = "GENERATIONS"
UPSCALED_FOLDER = "UPSCALED_IMAGES"
CUTOUTS_FOLDER = "CUTOUTS"
REJECTED_FOLDER = "REJECTED"
LOGS_FOLDER = "logs"
REVIEWS_FOLDER = "reviews"
REPORT_FOLDER = "report"
UPSCALED_SUFFIX = "_upscaled"  # added to a generated image's stem
CUTOUTS_RECORD = "cutouts.json"  # in each cut-out folder


def image_name(nation: str, category: str, number: int) -> str:
    """``France``, ``family``, 3 -> ``France_family_3.png``."""
    return f"{nation}_{category}_{number}.png"


def upscaled_path(root: Path, generated: Path) -> Path:
    """GENERATIONS/<folders>/<stem>.png -> UPSCALED_IMAGES/<folders>/<stem>_upscaled.png."""
    relative = Path(generated).relative_to(Path(root) / GENERATIONS_FOLDER)
    return Path(root) / UPSCALED_FOLDER / relative.parent / (relative.stem + UPSCALED_SUFFIX
                                                             + ".png")


def cutouts_path(root: Path, upscaled: Path) -> Path:
    """UPSCALED_IMAGES/<folders>/<stem>.png -> the folder CUTOUTS/<folders>/<stem>/."""
    relative = Path(upscaled).relative_to(Path(root) / UPSCALED_FOLDER)
    return Path(root) / CUTOUTS_FOLDER / relative.parent / relative.stem


def generated_for_upscaled(root: Path, upscaled: Path) -> Path | None:
    """The generated image an upscaled one was made from, by name; None when the name
    is not ``<stem>_upscaled.png``."""
    relative = Path(upscaled).relative_to(Path(root) / UPSCALED_FOLDER)
    if not relative.stem.endswith(UPSCALED_SUFFIX):
        return None
    stem = relative.stem[:-len(UPSCALED_SUFFIX)]
    return Path(root) / GENERATIONS_FOLDER / relative.parent / (stem + ".png")


def natural_key(text: str) -> list:
    """"France_family_10" after "France_family_9"."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", text)]
