"""The export: the reviewed dataset as a Hugging Face ``imagefolder``.

    python -m drawpipe.export --root SHARE --out DIR                       accepted images
    python -m drawpipe.export --root SHARE --out DIR --include-unreviewed  + the unreviewed
    python -m drawpipe.export --root SHARE --out DIR --cutouts-by-label    + cut-outs by name

(the command and its options: cli/export.py.)

Writes, into a new or empty DIR, every generated image whose current take was
accepted (curate/verdicts.py; with ``--include-unreviewed`` every take not rejected) with
its upscaled version and its cut-outs, in the share's own folder layout,
``DIR/metadata.jsonl`` (written last), one JSON object per image with the COLUMNS below,
and a dataset card, ``README.md`` in DIR, whose YAML declares every column's type::

    id                     France_family_1_take2: the image's stem and take, unique
    take                   1, 2, ...: which take of the file (curate/takes.py)
    file_name              GENERATIONS/France/family/France_family_1.png  (the "image" column)
    nation, category       France, family
    prompt, negative_prompt, seed, model, sampler, steps, size ("1024x1024")
                           from the PNG's own "drawpipe" text chunk (the request sent)
    sha256                 of the generated PNG: the take that was reviewed
    upscaled_file_name     UPSCALED_IMAGES/.../France_family_1_upscaled.png, or null
    cutouts_file_names     [CUTOUTS/.../France_family_1_upscaled_cutout_1.png, ...]
    cutout_boxes           [[x, y, width, height], ...] in the upscaled image's pixels
                           (cutouts.json), one per cut-out, in the same order
    cutout_labels, cutout_label_scores, cutout_runners_up, cutout_runner_up_scores
                           each cut-out's name (segment.py --label), its probability, the
                           next name and its probability, in the same order; null when
                           the cut-outs were made without --label
    verdict, verdict_reason, verdict_host, verdict_time      null when not reviewed
    generate_seconds, upscale_seconds, segment_seconds       from logs/<stage>-<host>.csv
    generate_energy_wh, upscale_energy_wh, segment_energy_wh
                           the Wh that made the image's output of each stage there now
                           (gross, its job's window), null where not measured or measured
                           only on the client side (energy_wh below)

``datasets.load_dataset(DIR)`` loads it with the declared types whatever the data
holds: ``file_name`` becomes the ``image`` column, ``upscaled_file_name`` an
``upscaled`` image column and ``cutouts_file_names`` a ``cutouts`` list of images, and
an export with no cut-out or no verdict has the same schema as one with them, so
exports of different days concatenate (``datasets.concatenate_datasets``). Without the
card, types would be guessed from the rows: an empty list is a list of nothing and a
column of nulls is null. ``pandas.read_json(..., lines=True)`` reads the metadata.

With ``--cutouts-by-label`` the cut-outs are also put in a folder per name,
``DIR/cutouts_by_label/<name>/`` (``<name> (unsure)/`` when the model did not trust
the name, ``(no label)/`` for cut-outs made without --label), for browsing: the same
files again (hard links where possible), not rows of the dataset.

Files are hard links when DIR is on the share's file system (no bytes copied;
do not edit them in place: the share's file is the same file), else copies. The
share is never written. A DIR that is not empty, or one inside the share, is
refused before anything is written.
"""

import errno
import json
import os
import re
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from drawpipe.curate.takes import recorded_take
from drawpipe.curate.verdicts import load_verdicts
from drawpipe.errors import ExportRefused
from drawpipe.files import HashCache, file_sha256, write_atomically
from drawpipe.inventory import STAGES, cutout_labels, latest_done, load_logs, scan_inventory
from drawpipe.layout import CUTOUTS_RECORD, logs_folder
from drawpipe.pages import counted
from drawpipe.png import read_text_chunks

METADATA_NAME = "metadata.jsonl"
CARD_NAME = "README.md"  # the dataset card: what datasets and the Hugging Face Hub read
BY_LABEL_FOLDER = "cutouts_by_label"  # --cutouts-by-label: a folder per name in it
UNLABELLED_FOLDER = "(no label)"
# Characters a folder name on macOS, SMB or Windows cannot hold, or that move it elsewhere.
_NOT_IN_FOLDER_NAMES = re.compile(r'[/\\:*?"<>|\x00-\x1f]')
# A hard link across file systems, or on one that has none (FAT, some SMB servers):
# copy instead, and stop trying to link.
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP,
                   errno.EACCES}


# ------------------------------------------------------------------------- the schema

# A column's type, as the dataset card declares it (datasets' feature names): "string",
# "int64", "float64", "image" (a file path in metadata.jsonl, an image when loaded), or
# ("list", TYPE). Every column may be null.
STRING, INT, FLOAT, IMAGE = "string", "int64", "float64", "image"


def list_of(kind) -> tuple:
    return ("list", kind)


# The columns of metadata.jsonl, in order: (key, type). The one place the export's schema
# is declared: a new column is one line here and one value in the row; the card is made
# from this table.
COLUMNS = (
    ("id", STRING), ("take", INT), ("file_name", IMAGE), ("nation", STRING),
    ("category", STRING), ("prompt", STRING), ("negative_prompt", STRING), ("seed", INT),
    ("model", STRING), ("sampler", STRING), ("steps", INT), ("size", STRING),
    ("sha256", STRING), ("upscaled_file_name", IMAGE), ("cutouts_file_names", list_of(IMAGE)),
    ("cutout_boxes", list_of(list_of(INT))), ("cutout_labels", list_of(STRING)),
    ("cutout_label_scores", list_of(FLOAT)), ("cutout_runners_up", list_of(STRING)),
    ("cutout_runner_up_scores", list_of(FLOAT)), ("verdict", STRING), ("verdict_reason", STRING),
    ("verdict_host", STRING), ("verdict_time", STRING), ("generate_seconds", FLOAT),
    ("upscale_seconds", FLOAT), ("segment_seconds", FLOAT), ("generate_energy_wh", FLOAT),
    ("upscale_energy_wh", FLOAT), ("segment_energy_wh", FLOAT),
)
REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "model", "sampler", "steps", "size")


def loaded_name(key: str, kind) -> str:
    """The column's name once loaded: datasets' imagefolder turns ``file_name`` into
    ``image``, ``upscaled_file_name`` into ``upscaled``, ``cutouts_file_names`` into
    ``cutouts``; other columns keep their key."""
    if IMAGE in (kind, kind[1] if isinstance(kind, tuple) else None):
        for suffix in ("_file_names", "_file_name"):
            if key.endswith(suffix):
                return key[:-len(suffix)]
        return "image"
    return key


def _feature_yaml(kind, indent: str) -> list[str]:
    """A type's YAML in a dataset card's feature list: "dtype: string", "list: image",
    "list:\n  list: int64"."""
    if isinstance(kind, tuple):
        inner = kind[1]
        if isinstance(inner, tuple):
            return [f"{indent}list:", *_feature_yaml(inner, indent + "  ")]
        return [f"{indent}list: {inner}"]
    return [f"{indent}dtype: {kind}"]


def features_yaml(indent: str) -> list[str]:
    """COLUMNS as a dataset card's ``features:`` list, each line indented by ``indent``."""
    lines = []
    for key, kind in COLUMNS:
        lines.append(f"{indent}- name: {loaded_name(key, kind)}")
        lines += _feature_yaml(kind, indent + "  ")
    return lines


def dataset_card(result: "ExportResult", root: Path) -> str:
    """The export's README.md. The types are declared twice, in the two places readers
    look: ``configs`` (a local folder loaded with datasets.load_dataset(DIR): the
    imagefolder builder takes a config's features and ignores dataset_info's) and
    ``dataset_info`` (the Hub's viewer)."""
    lines = ["---", "configs:", "- config_name: default", "  features:",
             *features_yaml("  "), "dataset_info:", "  features:", *features_yaml("  "),
             "---", f"# {root.name}: images made with drawpipe", "",
             f"{counted(result.exported, 'image')} ({result.accepted:,} accepted in review, "
             f"{result.unreviewed:,} not reviewed), {result.upscaled:,} upscaled, "
             f"{counted(result.cutouts, 'cut-out')}. One row per generated image; its columns "
             "and their meaning: drawpipe's README, \"Export\".", "",
             "```python", "import datasets", "", "dataset = datasets.load_dataset(\"DIR\")  "
             "# this folder", "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class ExportSettings:
    root: Path
    out: Path
    include_unreviewed: bool = False
    cache_dir: Path | None = None  # this Mac's SHA-256 cache (files.HashCache)
    cutouts_by_label: bool = False  # also DIR/cutouts_by_label/<name>/


@dataclass
class ExportResult:
    exported: int = 0
    accepted: int = 0
    unreviewed: int = 0
    left_rejected: int = 0
    left_unreviewed: int = 0
    linked: int = 0
    copied: int = 0
    upscaled: int = 0
    cutouts: int = 0
    label_folders: set[str] = field(default_factory=set)  # --cutouts-by-label
    problems: list[str] = field(default_factory=list)

    def sentence(self, out: Path, include_unreviewed: bool) -> str:
        kinds = f"{self.accepted:,} accepted" + (
            f", {self.unreviewed:,} not reviewed" if include_unreviewed else "")
        left = [f"{self.left_rejected:,} rejected"]
        if not include_unreviewed:
            left.append(f"{self.left_unreviewed:,} not reviewed (--include-unreviewed adds them)")
        grouped = (f"; the cut-outs also by label in {counted(len(self.label_folders), 'folder')} "
                   f"of {out / BY_LABEL_FOLDER}" if self.label_folders else "")
        return (f"exported {counted(self.exported, 'image')} ({kinds}) with {self.upscaled:,} "
                f"upscaled and {counted(self.cutouts, 'cut-out')} to {out}: "
                f"{counted(self.linked, 'file')} hard-linked, "
                f"{self.copied:,} copied; left out: {', '.join(left)}{grouped}")


def check_out_folder(root: Path, out: Path) -> None:
    """ExportRefused unless ``out`` is absent or an empty folder outside the share."""
    root, target = root.resolve(), out.resolve()
    if target == root or target.is_relative_to(root):
        raise ExportRefused(f"--out {out} is inside the shared folder {root}: the export never "
                            "writes into the share; choose a folder elsewhere")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportRefused(f"--out {out} is not empty: export into a new or empty folder "
                            "(nothing was written)")


def request_fields(texts: dict[str, str]) -> dict | None:
    """prompt ... size from the PNG's "drawpipe" chunk (its "request"); None without one."""
    try:
        request = json.loads(texts["drawpipe"])["request"]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(request, dict):
        return None
    width, height = request.get("width"), request.get("height")
    sampler = request.get("sampler", request.get("sampler_name"))
    fields = {"prompt": request.get("prompt"), "negative_prompt": request.get("negative_prompt"),
              "seed": request.get("seed"), "model": request.get("model"), "sampler": sampler,
              "steps": request.get("steps"),
              "size": f"{width}x{height}" if width and height else None}
    # Of the declared type or null, so that the dataset always loads (a request edited by
    # hand could hold anything).
    types = dict(COLUMNS)
    return {name: value if _is_of_type(value, types[name]) else None
            for name, value in fields.items()}


def _is_of_type(value, kind: str) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)  # the request's other fields are all text


def _cutouts(root: Path, folder: str | None,
             problems: list[str]) -> tuple[list[str], list, list[dict | None]]:
    """(cut-out files, their boxes, their labels or None) listed in ``folder``'s
    cutouts.json and present."""
    if not folder:
        return [], [], []
    try:
        record = json.loads((root / folder / CUTOUTS_RECORD).read_bytes())
        entries = record["cutouts"]
    except (OSError, ValueError, KeyError, TypeError):
        problems.append(f"{folder}/{CUTOUTS_RECORD} is missing or unreadable: its cut-outs are "
                        "left out")
        return [], [], []
    named = cutout_labels(record)[0]
    files, boxes, labels = [], [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        relative = f"{folder}/{entry['file']}"
        if (root / relative).is_file():
            files.append(relative)
            boxes.append(entry.get("bbox"))
            labels.append(named.get(entry["file"]))
        else:
            problems.append(f"{relative} is listed in {CUTOUTS_RECORD} but missing: left out")
    return files, boxes, labels


def _label_columns(labels: list[dict | None]) -> dict:
    """The cut-outs' label columns (COLUMNS), their items of the declared type or null;
    each column null when a cut-out has no label (made without segment.py --label: a
    folder's cut-outs are all named or none is). Not a list of nulls: datasets 5 cannot
    cast a list of nothing but nulls to a list of strings."""
    if not all(labels):
        return dict.fromkeys(("cutout_labels", "cutout_label_scores", "cutout_runners_up",
                              "cutout_runner_up_scores"))

    def value(label, name, kind):
        got = label.get(name) if label else None
        if kind == FLOAT:
            return float(got) if isinstance(got, (int, float)) and not isinstance(got, bool) \
                else None
        return got if isinstance(got, str) else None

    return {"cutout_labels": [value(label, "name", STRING) for label in labels],
            "cutout_label_scores": [value(label, "score", FLOAT) for label in labels],
            "cutout_runners_up": [value(label, "runner_up", STRING) for label in labels],
            "cutout_runner_up_scores": [value(label, "runner_up_score", FLOAT)
                                        for label in labels]}


def label_folder(label: dict | None) -> str:
    """The folder of a cut-out in ``cutouts_by_label/``: its name ("chair"), "chair
    (unsure)" when the model did not trust it, "(no label)" without one; characters no
    folder name can hold become "-"."""
    name = label.get("name") if label else None
    if not isinstance(name, str) or not name.strip():
        return UNLABELLED_FOLDER
    name = _NOT_IN_FOLDER_NAMES.sub("-", name).strip(" .") or "-"
    return name if label.get("trusted") else f"{name} (unsure)"


def energy_wh(done: dict, key: str) -> dict:
    """The energy columns of image ``key``: ``<stage>_energy_wh``, the gross Wh of the
    stage's latest "done" row (the job that made the output there now) when it was
    measured on the machine that made it (inventory.LogRow.image_wh), else None.
    ``done``: stage -> inventory.latest_done of its rows."""
    columns = {}
    for stage in STAGES:
        logged = done[stage].get(key)
        wh = logged.image_wh if logged is not None else None
        columns[f"{stage}_energy_wh"] = None if wh is None else round(wh, 6)
    return columns


class _Placer:
    """Hard-links files from the share into the export, or copies them once a link fails."""

    def __init__(self, root: Path, out: Path, result: ExportResult):
        self.root, self.out, self.result = root, out, result
        self.link = True

    def place(self, relative: str, target_relative: str | None = None) -> None:
        """The share's ``relative`` at the same path in the export (or ``target_relative``)."""
        target = self.out / (target_relative or relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.link:
            try:
                os.link(self.root / relative, target)
                self.result.linked += 1
                return
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                self.link = False
        shutil.copyfile(self.root / relative, target)
        self.result.copied += 1


def run_export(settings: ExportSettings, out=None) -> int:
    """Export (see the module docstring); returns 0. ExportRefused before writing when
    the folder is not usable or nothing is to be exported."""
    out = out or sys.stdout
    root = settings.root.resolve()
    check_out_folder(root, settings.out)
    inventory = scan_inventory(root)
    verdicts = load_verdicts(root)
    verdicts.check_images(lambda image: (root / image).is_file())
    result = ExportResult(problems=list(verdicts.problems))
    chosen = []
    with HashCache(settings.cache_dir) if settings.cache_dir else nullcontext() as hashes:
        for entry in inventory.entries.values():
            if not entry.generated:
                continue
            sha256 = file_sha256(root / entry.generated.path, hashes)
            verdict = verdicts.for_image(entry.generated.path, sha256)
            if verdict is not None and verdict.rejected:
                result.left_rejected += 1
            elif verdict is None and not settings.include_unreviewed:
                result.left_unreviewed += 1
            else:
                chosen.append((entry, sha256, verdict))
    if not chosen:
        raise ExportRefused(
            f"nothing to export from {root}: no generated image is accepted"
            + ("" if settings.include_unreviewed else " (review them with python -m "
               "drawpipe.review, or add --include-unreviewed)")
            + "; nothing was written")
    logs = load_logs(logs_folder(root))
    done = {stage: latest_done(logs.rows.get(stage, [])) for stage in STAGES}
    settings.out.mkdir(parents=True, exist_ok=True)
    placer = _Placer(root, settings.out, result)
    lines = []
    for entry, sha256, verdict in chosen:
        parts = entry.key.split("/")  # Nation/category/stem, as generate.py names them
        nation, category = (parts[0], parts[1]) if len(parts) >= 3 else (None, None)
        try:
            texts = read_text_chunks(root / entry.generated.path)
        except (OSError, ValueError):
            texts = {}
        fields = request_fields(texts)
        if fields is None:
            result.problems.append(f"{entry.generated.path} has no readable drawpipe request: its "
                                   "prompt, seed and settings are null")
            fields = dict.fromkeys(REQUEST_FIELDS)
        cutout_files, boxes, labels = _cutouts(root, entry.cutouts_folder, result.problems)
        placer.place(entry.generated.path)
        if entry.upscaled:
            placer.place(entry.upscaled.path)
            result.upscaled += 1
        for relative, label in zip(cutout_files, labels):
            placer.place(relative)
            if settings.cutouts_by_label:
                folder = label_folder(label)
                placer.place(relative, f"{BY_LABEL_FOLDER}/{folder}/{Path(relative).name}")
                result.label_folders.add(folder)
        result.cutouts += len(cutout_files)
        take = recorded_take(texts)
        row = {"id": f"{Path(entry.generated.path).stem}_take{take}", "take": take,
               "file_name": entry.generated.path, "nation": nation, "category": category,
               **fields, "sha256": sha256,
               "upscaled_file_name": entry.upscaled.path if entry.upscaled else None,
               "cutouts_file_names": cutout_files, "cutout_boxes": boxes,
               **_label_columns(labels),
               "verdict": verdict.verdict if verdict else None,
               "verdict_reason": verdict.reason if verdict else None,
               "verdict_host": verdict.host if verdict else None,
               "verdict_time": verdict.time if verdict else None}
        for stage in STAGES:
            logged = done[stage].get(entry.key)
            row[f"{stage}_seconds"] = logged.seconds if logged else None
        row.update(energy_wh(done, entry.key))
        lines.append(json.dumps({key: row[key] for key, _ in COLUMNS}, ensure_ascii=False) + "\n")
        result.exported += 1
        result.accepted += verdict is not None
        result.unreviewed += verdict is None
    write_atomically(settings.out / CARD_NAME, dataset_card(result, root).encode("utf-8"))
    # The metadata last, atomically: an export cut short has none, and reads as unfinished.
    write_atomically(settings.out / METADATA_NAME, "".join(lines).encode("utf-8"))
    for line in result.problems:
        out.write(f"note: {line}\n")
    out.write(result.sentence(settings.out, settings.include_unreviewed) + "\n")
    return 0
