"""The dataset's folders and file names: the on-disk contract, in one place.

    <root>/
      GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png           generate.py
      UPSCALED_IMAGES/<same folders>/<stem>_upscaled.png                     upscale.py
      CUTOUTS/<same folders>/<stem>_upscaled/<stem>_upscaled_cutout_<k>.png  segment.py
                                            /cutouts.json
                                            /<stem>_upscaled_cutout_<k>_parts/
                                               <stem>_upscaled_cutout_<k>_part_<j>.png
                                               (granularity "all": each object's parts)
      REJECTED/<any of the above, "_take<k>" added to the name>   curate/takes.py
      logs/<stage>-<host>.csv      one CSV per stage and host (engine/metrics.py)
      reviews/<host>.jsonl         one verdict file per host (curate/verdicts.py)
      report/                      what python -m drawpipe.report writes (report/): index.html,
                                   nations/<Nation>.html, thumbs/, charts/, contact_sheets/
        cache.json                 what it read or made of each file (inventory.py ReportCache)
        quality/<host>.json        quality signals measured by each host (curate/quality.py;
                                   the review page measures them too)
      .claims/<stage>/<output>.claim   who works on what (engine/claims.py)
      .drawpipe/                   what runs keep beside the dataset (engine/status.py, control.py)
        status/<host>-<pid>-<stage>.json   each running process's live status, rewritten
                                   every few seconds, removed when it exits cleanly
        pause                      while it exists no worker starts a job
        drain/<host>, drain/<host>-<pid>   that Mac (or that one run) finishes and exits 0
        priority.json              nations, categories or re-makes to do first

Every module that names a folder or a file of the share takes it from here;
inventory.py lists what is there.
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
CLAIMS_FOLDER = ".claims"
CONTROL_FOLDER = ".drawpipe"  # hidden: what runs keep beside the dataset
QUALITY_FOLDER = "quality"  # in REPORT_FOLDER
REPORT_CACHE = "cache.json"  # in REPORT_FOLDER
UPSCALED_SUFFIX = "_upscaled"  # added to a generated image's stem
CUTOUTS_RECORD = "cutouts.json"  # in each cut-out folder
IMAGE_FOLDERS = (GENERATIONS_FOLDER, UPSCALED_FOLDER, CUTOUTS_FOLDER)  # the stages' outputs


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


def cutout_name(stem: str, number: int) -> str:
    """``France_family_1_upscaled``, 2 -> ``France_family_1_upscaled_cutout_2.png``."""
    return f"{stem}_cutout_{number}.png"


def cutout_parts_folder(stem: str, number: int) -> str:
    """The sub-folder of cut-out ``number``'s parts in its cut-out folder (granularity
    "all"): ``France_family_1_upscaled``, 2 -> ``France_family_1_upscaled_cutout_2_parts``."""
    return f"{stem}_cutout_{number}_parts"


def part_name(stem: str, number: int, part: int) -> str:
    """Part ``part`` of cut-out ``number``: ``France_family_1_upscaled``, 2, 1 ->
    ``France_family_1_upscaled_cutout_2_part_1.png``."""
    return f"{stem}_cutout_{number}_part_{part}.png"


STATUS_FOLDER = "status"  # in CONTROL_FOLDER
PAUSE_FILE = "pause"  # in CONTROL_FOLDER
DRAIN_FOLDER = "drain"  # in CONTROL_FOLDER
PRIORITY_FILE = "priority.json"  # in CONTROL_FOLDER


def control_folder(root: Path) -> Path:
    """``<root>/.drawpipe``: runs' status and the control files a user writes."""
    return Path(root) / CONTROL_FOLDER


def status_folder(root: Path) -> Path:
    return control_folder(root) / STATUS_FOLDER


def status_name(host: str, pid: int, stage: str) -> str:
    """One running process's status file: ``mac-a``, 4242, ``upscale`` -> ``mac-a-4242-upscale.json``."""
    return f"{host}-{pid}-{stage}.json"


def pause_path(root: Path) -> Path:
    return control_folder(root) / PAUSE_FILE


def drain_path(root: Path, name: str) -> Path:
    """The drain file of a host (``mac-a``: all its runs) or of one run (``mac-a-4242``)."""
    return control_folder(root) / DRAIN_FOLDER / name


def priority_path(root: Path) -> Path:
    return control_folder(root) / PRIORITY_FILE


def logs_folder(root: Path) -> Path:
    return Path(root) / LOGS_FOLDER


def log_name(stage: str, host: str, set_aside: str = "") -> str:
    """One stage's log of one host: ``upscale``, ``mac-a`` -> ``upscale-mac-a.csv``; one
    set aside (another column layout) adds ``set_aside`` (``.20261122T140920``) before
    ``.csv``."""
    return f"{stage}-{host}{set_aside}.csv"


def log_pattern(stage: str) -> str:
    """A glob of every log of ``stage``: each host's, and those set aside (rotated)."""
    return f"{stage}-*.csv"


def reviews_path(root: Path, host: str) -> Path:
    """The verdict file of ``host``: ``<root>/reviews/<host>.jsonl``."""
    return Path(root) / REVIEWS_FOLDER / f"{host}.jsonl"


def report_folder(root: Path) -> Path:
    return Path(root) / REPORT_FOLDER


def quality_folder(root: Path) -> Path:
    """Where each host keeps the quality signals it measured (shared: measured once).
    In report/ with the report's other caches: the report and the review page both
    measure, and a report run writes nothing outside report/."""
    return Path(root) / REPORT_FOLDER / QUALITY_FOLDER


# first folder of a stage's output -> what ends the image's name in it (case-insensitive)
_KEY_SUFFIXES = {
    GENERATIONS_FOLDER: ".png",
    UPSCALED_FOLDER: UPSCALED_SUFFIX + ".png",
    CUTOUTS_FOLDER: UPSCALED_SUFFIX,
}


def image_key(relative_path: str) -> str | None:
    """The image a stage's output belongs to: sub-folders and the generated image's stem.

    "GENERATIONS/France/family/France_family_1.png", "UPSCALED_IMAGES/France/family/
    France_family_1_upscaled.png" and "CUTOUTS/France/family/France_family_1_upscaled"
    all give "France/family/France_family_1"; a path outside the three folders None.
    """
    folder, _, rest = relative_path.partition("/")
    suffix = _KEY_SUFFIXES.get(folder)
    if suffix is None or not rest:
        return None
    lowered = rest.lower()
    if lowered.endswith(suffix):
        return rest[: -len(suffix)]
    if folder != CUTOUTS_FOLDER and lowered.endswith(".png"):
        return rest[:-4]
    return rest


def natural_key(text: str) -> list:
    """"France_family_10" after "France_family_9"."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", text)]
