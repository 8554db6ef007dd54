"""What is on a share: the stages' images and cut-outs, their metadata, the verdict
files and the logs. Read only; the one place that walks the share's folders.

    scan_inventory(root)          Inventory: each image's generated, upscaled and cut-out files
    read_metadata(root, inv, c)   prompt, seed, model ... from each PNG's text chunks, cached
    read_cutout_labels(root, inv, c)   each cut-out's name (segment.py --label), cached
    cutout_labels(record)         the same from one cutouts.json's content
    image_metadata(texts)         the same from one PNG's text chunks
    ReportCache                   report/cache.json: what was read or made of each file, by
                                  (size, mtime_ns) (the report writes it; the review page reads it)
    recorded_source(output)       RecordedSource: the input an output records it was made from
                                  (and, cut-outs, the settings they were made with)
    verdict_files(root)           every host's reviews/<host>.jsonl (curate/verdicts.py reads them)
    load_logs(logs_dir)           Logs: every stage's rows (engine/metrics.py read_log_files), parsed
                                  (their energy columns too: engine/energy.py ENERGY_COLUMNS)
    latest_done(rows)             image key -> its latest "done" row
    worker_rows(share_status)     each running worker's live state (engine/status.py), as the
                                  status command and the pages show it
    status_view(root)             the same with the control files, for the pages' panel
    counted(n, noun), format_duration(seconds)   numbers as the report and the pages say them

The folders and names come from layout.py. Walking skips hidden entries (scratch
outputs, ``.claims``, ``.drawpipe``); a folder that is missing or unreadable is empty.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from drawpipe.drawthings.signposts import PHASE_COLUMNS
from drawpipe.engine.energy import COMPONENTS, LOCAL
from drawpipe.engine.metrics import COMMON_COLUMNS, log_files, read_log_files
from drawpipe.engine.control import read_control
from drawpipe.engine.status import ShareStatus, read_statuses, worker_lines
from drawpipe.files import write_if_changed
from drawpipe.layout import (CUTOUTS_FOLDER, CUTOUTS_RECORD, GENERATIONS_FOLDER, REVIEWS_FOLDER,
                             UPSCALED_FOLDER, image_key, natural_key)
from drawpipe.pages import counted
from drawpipe.png import read_text_chunks

STAGES = ("generate", "upscale", "segment")
J_PER_WH = 3600.0
CACHE_VERSION = 2  # 2: image metadata holds the take
_REQUIRED_COLUMNS = ("time_utc", "status", "output")


# --------------------------------------------------------------------------- images


@dataclass(slots=True)
class ImageFile:
    path: str  # relative to the root, "/"-separated
    size: int
    mtime_ns: int


@dataclass
class ImageEntry:
    """One image across the stages: ``key`` "France/family/France_family_1"."""

    key: str
    generated: ImageFile | None = None
    upscaled: ImageFile | None = None
    cutouts_folder: str | None = None  # "CUTOUTS/France/family/France_family_1_upscaled"
    cutouts: list[ImageFile] = field(default_factory=list)
    cutouts_record: ImageFile | None = None  # the folder's cutouts.json
    meta: dict = field(default_factory=dict)  # prompt, negative_prompt, seed, model, size ...
    # read_cutout_labels: each named cut-out's label (cut-out path -> {"name", "score",
    # "trusted", "runner_up", "runner_up_score"}), the names of those left out as background
    cutout_labels: dict = field(default_factory=dict)
    background: list = field(default_factory=list)

    @property
    def group(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


@dataclass
class Inventory:
    entries: dict[str, ImageEntry]  # by key, in natural order

    def count(self, attribute: str) -> int:
        return sum(1 for entry in self.entries.values() if getattr(entry, attribute))

    @property
    def cutout_count(self) -> int:
        return sum(len(entry.cutouts) for entry in self.entries.values())

    def groups(self) -> dict[str, list[ImageEntry]]:
        grouped: dict[str, list[ImageEntry]] = {}
        for entry in self.entries.values():
            grouped.setdefault(entry.group, []).append(entry)
        return grouped

    def files(self):
        """(ImageFile, kind) of every image: kind "generated", "upscaled" or "cutout"."""
        for entry in self.entries.values():
            if entry.generated:
                yield entry.generated, "generated"
            if entry.upscaled:
                yield entry.upscaled, "upscaled"
            for cutout in entry.cutouts:
                yield cutout, "cutout"


def _walk(root: Path, folder: str):
    """(folder relative to root, [non-hidden file DirEntry]) for ``folder`` and every
    non-hidden folder under it (scratch outputs and .claims start with a dot)."""
    stack = [folder]
    while stack:
        relative = stack.pop()
        try:
            with os.scandir(root / relative) as listing:
                entries = [entry for entry in listing if not entry.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        files = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(f"{relative}/{entry.name}")
                elif entry.is_file():
                    files.append(entry)
            except OSError:
                continue
        yield relative, files


def _image_file(relative_dir: str, entry: os.DirEntry) -> ImageFile | None:
    try:
        stat = entry.stat()
    except OSError:
        return None
    return ImageFile(f"{relative_dir}/{entry.name}", stat.st_size, stat.st_mtime_ns)


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png")


def scan_inventory(root: Path) -> Inventory:
    """What is in GENERATIONS/, UPSCALED_IMAGES/ and CUTOUTS/ (one listing each, a
    stat per image; nothing is opened)."""
    entries: dict[str, ImageEntry] = {}

    def entry_for(key):
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = ImageEntry(key)
        return entry

    for folder, attribute in ((GENERATIONS_FOLDER, "generated"), (UPSCALED_FOLDER, "upscaled")):
        for relative_dir, files in _walk(root, folder):
            for file in files:
                if _is_png(file.name):
                    image = _image_file(relative_dir, file)
                    if image is not None:
                        setattr(entry_for(image_key(image.path)), attribute, image)
    for relative_dir, files in _walk(root, CUTOUTS_FOLDER):
        # A cut-out folder is one with a cutouts.json: the sub-folders of the objects' parts
        # (granularity "all") are not, and neither are the sub-folders of the images.
        record = next((file for file in files if file.name == CUTOUTS_RECORD), None)
        if record is None:
            continue
        pngs = [file for file in files if _is_png(file.name)]
        entry = entry_for(image_key(relative_dir))
        entry.cutouts_folder = relative_dir
        entry.cutouts_record = _image_file(relative_dir, record)
        cutouts = [image for file in pngs if (image := _image_file(relative_dir, file))]
        entry.cutouts = sorted(cutouts, key=lambda image: natural_key(image.path))
    ordered = sorted(entries, key=natural_key)
    return Inventory({key: entries[key] for key in ordered})


# --------------------------------------------------------------------------- metadata


class ReportCache:
    """``report/cache.json``: {"version", section: {key: value}} for the sections
    "meta" (PNG path -> [size, mtime_ns, metadata]), "thumbs" (source path -> [size,
    mtime_ns, width_px, height_px, error]), "charts" (stage -> log files signature),
    "sheets" (group -> tiles signature) and "labels" (cutouts.json path -> [size,
    mtime_ns, {"labels": {file: label}, "background": [names]}]). A missing, damaged or
    older cache is empty."""

    SECTIONS = ("meta", "thumbs", "charts", "sheets", "labels")

    def __init__(self, path: Path):
        self.path = path
        self.changed = False
        data = {}
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            pass
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            data = {}
        self.sections = {name: data.get(name) if isinstance(data.get(name), dict) else {}
                         for name in self.SECTIONS}

    def get(self, section: str, key: str):
        return self.sections[section].get(key)

    def put(self, section: str, key: str, value) -> None:
        if self.sections[section].get(key) != value:
            self.sections[section][key] = value
            self.changed = True

    def keep_only(self, section: str, keys) -> list[str]:
        """Forget the keys of ``section`` not in ``keys``; returns the forgotten ones."""
        gone = [key for key in self.sections[section] if key not in keys]
        for key in gone:
            del self.sections[section][key]
        self.changed = self.changed or bool(gone)
        return gone

    def save(self) -> None:
        if self.changed:
            data = {"version": CACHE_VERSION, **self.sections}
            write_if_changed(self.path, json.dumps(data, separators=(",", ":")).encode())
            self.changed = False


# A1111's infotext field: "Key: value" or "Key: "quoted, value"" up to the next comma.
_FIELD = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_FIELD_NAMES = {"Seed": "seed", "Model": "model", "Size": "size", "Steps": "steps",
                "Sampler": "sampler", "CFG scale": "cfg_scale"}


def parse_infotext(text: str) -> dict:
    """The A1111 "parameters" text -> {"prompt", "negative_prompt", "seed", "model",
    "size", "steps", "sampler", "cfg_scale"} (those present, as strings)."""
    lines = text.strip("\n").split("\n")
    fields = {}
    if len(lines) > 1 and len(_FIELD.findall(lines[-1])) >= 3:
        for name, value in _FIELD.findall(lines.pop()):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            if name.strip() in _FIELD_NAMES:
                fields[_FIELD_NAMES[name.strip()]] = value.strip()
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    meta = {"prompt": "\n".join(prompt).strip()}
    if negative:
        meta["negative_prompt"] = "\n".join(negative).strip()
    meta.update(fields)
    return meta


def image_metadata(texts: dict[str, str]) -> dict:
    """What the gallery shows of an image, from its PNG text chunks (png.py): the
    "parameters" infotext; for an upscaled image without it, "drawpipe-source"'s copy
    of its source's infotext; the "drawpipe" JSON request fills what both lack, and
    gives the take (curate/takes.py) of a generated image."""
    meta = {}
    if texts.get("parameters"):
        meta = parse_infotext(texts["parameters"])
    else:
        try:
            source = json.loads(texts.get("drawpipe-source", "{}"))
        except ValueError:
            source = {}
        if isinstance(source, dict) and isinstance(source.get("parameters"), str):
            meta = parse_infotext(source["parameters"])
    try:
        record = json.loads(texts.get("drawpipe", "{}"))
        request = record.get("request") or {}
    except (ValueError, AttributeError):
        record, request = {}, {}
    take = record.get("take") if isinstance(record, dict) else None
    if "drawpipe" in texts:  # a generated image: its take (1 unless it records another)
        meta["take"] = take if isinstance(take, int) and take >= 1 else 1
    if isinstance(request, dict):
        for key in ("prompt", "negative_prompt", "seed", "model"):
            if not meta.get(key) and request.get(key) not in (None, ""):
                meta[key] = str(request[key])
        if "size" not in meta and request.get("width") and request.get("height"):
            meta["size"] = f"{request['width']}x{request['height']}"
    return meta


def read_metadata(root: Path, inventory: Inventory, cache: ReportCache) -> int:
    """Fill each entry's ``meta`` from its generated PNG (else its upscaled one), read
    only when not cached for the file's (size, mtime_ns); returns the files read."""
    read = 0
    used = set()
    for entry in inventory.entries.values():
        image = entry.generated or entry.upscaled
        if image is None:
            continue
        used.add(image.path)
        cached = cache.get("meta", image.path)
        if cached and cached[0] == image.size and cached[1] == image.mtime_ns:
            entry.meta = cached[2]
            continue
        try:
            entry.meta = image_metadata(read_text_chunks(root / image.path))
        except (OSError, ValueError) as exc:
            entry.meta = {"error": f"cannot read its metadata: {exc}"}
        read += 1
        cache.put("meta", image.path, [image.size, image.mtime_ns, entry.meta])
    cache.keep_only("meta", used)
    return read


# The fields of a cut-out's label (sam/labels.py Label.record) that pages and exports show.
LABEL_FIELDS = ("name", "score", "trusted", "runner_up", "runner_up_score")


def cutout_labels(record: dict) -> tuple[dict, list]:
    """({cut-out file name: its label's LABEL_FIELDS}, [names of the objects left out as
    background]) from a cutouts.json's content; ({}, []) for cut-outs made without
    segment.py --label (or a record not ours)."""
    labels, background = {}, []
    entries = record.get("cutouts") if isinstance(record, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(label, dict) and isinstance(entry.get("file"), str):
            labels[entry["file"]] = {name: label.get(name) for name in LABEL_FIELDS}
    dropped = record.get("background") if isinstance(record, dict) else None
    for entry in dropped if isinstance(dropped, list) else []:
        label = entry.get("label") if isinstance(entry, dict) else None
        if isinstance(label, dict) and isinstance(label.get("name"), str):
            background.append(label["name"])
    return labels, background


def read_cutout_labels(root: Path, inventory: Inventory, cache: ReportCache) -> int:
    """Fill each entry's ``cutout_labels`` (by cut-out path) and ``background`` from its
    cutouts.json, read only when not cached for the file's (size, mtime_ns); returns the
    files read. An unreadable record names nothing."""
    read = 0
    used = set()
    for entry in inventory.entries.values():
        record = entry.cutouts_record
        if record is None:
            continue
        used.add(record.path)
        cached = cache.get("labels", record.path)
        if cached and cached[0] == record.size and cached[1] == record.mtime_ns:
            found = cached[2]
        else:
            try:
                labels, background = cutout_labels(json.loads((root / record.path).read_bytes()))
            except (OSError, ValueError):
                labels, background = {}, []
            found = {"labels": labels, "background": background}
            read += 1
            cache.put("labels", record.path, [record.size, record.mtime_ns, found])
        folder = entry.cutouts_folder
        entry.cutout_labels = {f"{folder}/{name}": label for name, label in found["labels"].items()}
        entry.background = list(found["background"])
    cache.keep_only("labels", used)
    return read


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedSource:
    """What a later-stage output records of the input it was made from."""

    sha256: str | None  # hex SHA-256 of the input's bytes
    take: int | None  # the input's take (an upscaled image records it; cut-outs do not)
    # cut-outs: the settings that decide what they are (cutouts.json's "made_with":
    # granularity, labels); None for an upscaled image, or cut-outs made before
    # drawpipe recorded them (stages/segment.py says what those were made with)
    made_with: dict | None = None


def recorded_source(output: Path) -> RecordedSource | None:
    """The input an output records, or None (made before drawpipe recorded one, gone,
    or not readable as ours). ``output``: an upscaled PNG (its ``drawpipe-source``
    text: {"sha256", "take"}) or a cut-out folder, or its cutouts.json
    ({"source_sha256", "made_with"}). Other OSErrors than a missing file propagate:
    "cannot tell" is not "records nothing"."""
    output = Path(output)
    try:
        if output.name == CUTOUTS_RECORD or output.is_dir():
            record_file = output if output.name == CUTOUTS_RECORD else output / CUTOUTS_RECORD
            record = json.loads(record_file.read_bytes())
            fields = ("source_sha256", None)
        else:
            record = json.loads(read_text_chunks(output).get("drawpipe-source", "{}"))
            fields = ("sha256", "take")
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    sha256 = record.get(fields[0])
    take = record.get(fields[1]) if fields[1] else None
    made_with = record.get("made_with") if fields[1] is None else None
    return RecordedSource(sha256 if isinstance(sha256, str) else None,
                          take if isinstance(take, int) and not isinstance(take, bool)
                          and take >= 1 else None,
                          made_with if isinstance(made_with, dict) else None)


def verdict_files(root: Path) -> list[Path]:
    """Every host's verdict file, ``<root>/reviews/*.jsonl``, sorted; [] without the folder."""
    folder = Path(root) / REVIEWS_FOLDER
    try:
        return sorted(path for path in folder.iterdir()
                      if path.suffix == ".jsonl" and not path.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


# --------------------------------------------------------------------------- logs


@dataclass(slots=True)
class LogRow:
    stage: str
    host: str
    end: float  # epoch seconds (time_utc: written when the job ended)
    seconds: float | None
    status: str
    attempt: int
    output: str  # the job key: output path relative to the root
    input: str
    seed: str
    cpu_percent_mean: float | None
    cpu_percent_peak: float | None
    ram_mb_mean: float | None
    ram_mb_peak: float | None
    server_cpu_seconds: float | None
    error: str
    # The job's energy (engine/energy.py ENERGY_COLUMNS): ``energy_j`` its window's gross
    # energy, None when not measured (no meter, a failed read, an older log);
    # ``energy_scope`` "local" (the image was made here: its energy) or "client-side";
    # ``energy_components_j`` component ("cpu", "gpu", "ane", "dram") -> J, those measured;
    # ``idle_w`` the machine's idle power then; ``energy_logged``: the row's log has the
    # energy columns (False: written before drawpipe logged energy).
    energy_j: float | None = None
    energy_meter: str | None = None
    energy_scope: str | None = None
    energy_components_j: dict[str, float] = field(default_factory=dict)
    idle_w: float | None = None
    energy_logged: bool = False
    # {signposts.PHASE_COLUMNS column: seconds} the server spent per stage of the request
    # (gRPC servers only; {} for a job of an HTTP server)
    phase_seconds: dict = field(default_factory=dict)

    @property
    def start(self) -> float:
        return self.end - (self.seconds or 0.0)

    @property
    def gross_wh(self) -> float | None:
        """The window's energy in Wh (None: not measured)."""
        return None if self.energy_j is None else self.energy_j / J_PER_WH

    @property
    def net_wh(self) -> float | None:
        """Gross less idle power x seconds, in Wh, at least 0 (a job measured below idle
        caused nothing above it); None without an idle figure."""
        if self.energy_j is None or self.idle_w is None or self.seconds is None:
            return None
        return max(0.0, self.energy_j - self.idle_w * self.seconds) / J_PER_WH

    @property
    def image_wh(self) -> float | None:
        """The gross Wh this job's image cost, when measured where it was made (scope
        "local"); None for client-side or unmeasured rows."""
        return self.gross_wh if self.energy_scope == LOCAL else None

    @property
    def key(self) -> str | None:
        return image_key(self.output)


@dataclass
class Logs:
    """Every stage's usable rows (sorted by end time) and what was left out.

    ``files``: (name, size, mtime_ns) of each stage's CSV files, to tell whether the
    logs changed since the last report (charts are redrawn only then).
    """

    rows: dict[str, list[LogRow]]
    files: dict[str, list[tuple[str, int, int]]]
    lines_skipped: int = 0  # half-written or malformed lines
    rows_skipped: int = 0  # rows without a usable time_utc, status or output
    older_layout_rows: int = 0  # read, but without some of today's columns
    missing_columns: set[str] = field(default_factory=set)

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def file_count(self) -> int:
        return sum(len(files) for files in self.files.values())

    def skipped_lines(self) -> list[str]:
        """What was not read, as sentences for the report (empty when all was read)."""
        said = []
        if self.lines_skipped:
            said.append(f"skipped {counted(self.lines_skipped, 'line')} cut off by a crash or "
                        "malformed")
        if self.rows_skipped:
            said.append(f"skipped {counted(self.rows_skipped, 'row')} without a usable "
                        "time_utc, status or output")
        if self.older_layout_rows:
            said.append(f"{counted(self.older_layout_rows, 'row')} of an older layout without "
                        f"{', '.join(sorted(self.missing_columns))}: read, those figures left out")
        return said


def format_duration(seconds: float | None) -> str:
    """4500 -> "1 h 15 min"; 59 -> "59 s"; 200000 -> "2 d 7 h"."""
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_time_utc(text: str) -> float | None:
    """"2026-11-22T14:09:20.123Z" -> epoch seconds; None when it is not such a time."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def load_logs(logs_dir: Path, stages: tuple[str, ...] = STAGES) -> Logs:
    """Read ``<logs_dir>/<stage>-*.csv`` of every stage (metrics.read_log_files), never
    writing; each stage's files are listed once, for their rows and their sizes."""
    logs_dir = Path(logs_dir)
    logs = Logs(rows={}, files={})
    common = set(COMMON_COLUMNS)
    for stage in stages:
        paths = log_files(logs_dir, stage)  # listed once: for the rows and the file list
        raw_rows, skipped = read_log_files(paths, stage)
        logs.lines_skipped += skipped
        parsed = []
        for raw in raw_rows:
            missing = common.difference(raw)
            if missing:
                logs.older_layout_rows += 1
                logs.missing_columns |= missing
            row = _parse_row(stage, raw)
            if row is None:
                logs.rows_skipped += 1
            else:
                parsed.append(row)
        parsed.sort(key=lambda row: row.end)
        logs.rows[stage] = parsed
        files = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((path.name, stat.st_size, stat.st_mtime_ns))
        logs.files[stage] = files
    return logs


def _parse_row(stage: str, raw: dict) -> LogRow | None:
    if any(not raw.get(column) for column in _REQUIRED_COLUMNS):
        return None
    end = parse_time_utc(raw["time_utc"])
    if end is None:
        return None
    attempt = _number(raw.get("attempt"))
    return LogRow(
        stage=stage,
        host=raw.get("host") or "?",
        end=end,
        seconds=_number(raw.get("seconds")),
        status=raw["status"],
        attempt=int(attempt) if attempt is not None and attempt >= 1 else 1,
        output=raw["output"],
        input=raw.get("input", ""),
        seed=raw.get("seed", ""),
        cpu_percent_mean=_number(raw.get("cpu_percent_mean")),
        cpu_percent_peak=_number(raw.get("cpu_percent_peak")),
        ram_mb_mean=_number(raw.get("ram_mb_mean")),
        ram_mb_peak=_number(raw.get("ram_mb_peak")),
        server_cpu_seconds=_number(raw.get("server_cpu_seconds")),
        error=raw.get("error", ""),
        **_energy_fields(raw),
        phase_seconds={column: value for column in PHASE_COLUMNS
                       if (value := _number(raw.get(column))) is not None},
    )


def _energy_fields(raw: dict) -> dict:
    """LogRow's energy fields from a row's energy columns (absent in older logs)."""
    energy_j = _number(raw.get("energy_j"))
    if energy_j is None or energy_j < 0:
        return {"energy_logged": "energy_j" in raw}
    components = {component: value for component in COMPONENTS
                  if (value := _number(raw.get(f"energy_{component}_j"))) is not None}
    return {"energy_j": energy_j, "energy_meter": raw.get("energy_meter") or None,
            "energy_scope": raw.get("energy_scope") or LOCAL,
            "energy_components_j": components, "idle_w": _number(raw.get("idle_w")),
            "energy_logged": True}


def latest_done(rows: list[LogRow]) -> dict[str, LogRow]:
    """image key -> the latest "done" row of that image (one stage's rows)."""
    found = {}
    for row in rows:
        if row.status == "done":
            key = row.key
            if key is not None:
                found[key] = row
    return found


# --------------------------------------------------------------------------- live status


def worker_rows(share_status: ShareStatus) -> list[dict]:
    """One dict of text per worker (engine/status.py worker_lines), silent ones last:
    process, stage, server, state, doing, for, done, failed, per_hour, last_error, silent,
    notes."""
    rows = []
    for line in sorted(worker_lines(share_status), key=lambda line: (line.silent, line.process,
                                                                     line.stage, line.server)):
        rows.append({
            "process": line.process, "stage": line.stage, "server": line.server,
            "state": line.state, "doing": line.doing,
            "for": format_duration(line.for_seconds) if line.for_seconds is not None else "-",
            "done": f"{line.done:,}", "failed": f"{line.failed:,}",
            "per_hour": f"{line.images_per_hour:,.1f}" if line.images_per_hour else "-",
            "last_error": line.last_error or "-", "silent": line.silent,
            "notes": list(line.notes)})
    return rows


def status_view(root: Path) -> dict:
    """The workers' live state and what the control files say, for the panel of the review
    page and the report's snapshot (templates/status_panel.html): rows, lines, as_of."""
    share = read_statuses(root)
    return {"rows": worker_rows(share), "lines": read_control(root).lines() + share.problems,
            "as_of": datetime.fromtimestamp(share.now, timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC")}
