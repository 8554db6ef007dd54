"""What the report knows: the logs' figures and ETAs, and what is in the folders.

Logs and figures:

    load_logs(logs_dir)          every stage's rows, parsed, with what was skipped and why
    LogRow                       one job as logged (times in epoch seconds)
    stage_figures(rows)          [HostFigures per host ..., HostFigures of all hosts]
    estimate_eta(rows, left, W)  Eta: work left at the combined recent throughput
    outstanding_failures(rows)   the jobs whose latest row is a failure
    latest_done(rows)            image key -> its latest "done" row
    image_key(relative_path)     "France/family/France_family_1" for any stage's output
    percentile(values, fraction) linear interpolation between closest ranks
    format_summary(...)          the plain-text report

Folders (read only; nothing here writes outside report/):

    scan_inventory(root)         Inventory: each image's generated, upscaled and cut-out files
    read_metadata(root, inv, c)  prompt, seed, model ... from each PNG's text chunks, cached
    work_left(root, inv, queue)  stage -> (jobs left or None, how it was counted)
    ReportCache                  report/cache.json: what was read or made, by (size, mtime_ns)
    write_if_changed(path, data) atomic write, skipped when the file already holds ``data``

Definitions (the README's "Report" section says the same):

- *done*, *failed*, *duplicate*: rows with that status. A "duplicate" is work a
  worker finished after another had already written the output: wasted, not done.
- *retried*: rows with ``attempt`` > 1 (the client retried within the job), plus
  "done" rows of a job that has an earlier "failed" row on any host (a re-run
  retried it). A row counts once.
- *seconds per image* (mean, p50, p95): the ``seconds`` of "done" rows; percentiles
  interpolate linearly between closest ranks (numpy's default): p95 of [10, 10, 20]
  is 10 + 0.9 x 10 = 19.
- *busy time* of a host: the union of its jobs' intervals [time_utc - seconds,
  time_utc] (time_utc is written when a job ends), every status counted: parallel
  workers of one host are not double-counted and idle gaps (a night off) are not
  counted. *Throughput* = done / busy time, in images per hour; the all-hosts
  throughput uses the union over all hosts.
- *CPU %* and *RAM MB*: mean of the rows' ``cpu_percent_mean`` / ``ram_mb_mean``;
  peak the highest ``cpu_percent_peak`` / ``ram_mb_peak``, or a row's mean where its
  layout had no peak (a lower bound of it), so a peak is never below a mean. Rows of
  every status count: a failed job loaded the machine too. *DT CPU s*: the Draw
  Things process's CPU seconds per job (``server_cpu_seconds``), mean and total over
  the rows that logged it (only a server on the logging Mac is measured).
- *ETA*: ``left / rate``, where rate is the combined rate of all hosts over a recent
  window: the "done" rows that ended within the last W seconds of the stage's log
  (default one hour, up to the latest row of the stage, not "now", so a report run
  after the Macs stopped still says how fast they were), divided by the window's
  length, which starts no earlier than the first job of the logs (a run started 20
  minutes ago is measured over those 20 minutes).

Skipped input: a line cut off by a crash or with the wrong number of fields
(metrics.read_logs counts those), and a row without a usable time_utc, status or
output. Rows of an older layout (a file without some of today's columns) are read;
only the figures of the missing columns are left out, and the report names them.
"""

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .generation import GENERATIONS_FOLDER, image_name
from .metrics import COMMON_COLUMNS, host_name, read_logs
from .pngmeta import read_text_chunks
from .prompts import QueueItem
from .segmentation import CUTOUTS_FOLDER, RECORD_NAME
from .upscaling import UPSCALED_FOLDER

STAGES = ("generate", "upscale", "segment")
CACHE_VERSION = 1
DEFAULT_ETA_WINDOW_SECONDS = 3600.0
ALL_HOSTS = "all hosts"

# first folder of a job's output -> what ends the image's name in it (case-insensitive)
_KEY_SUFFIXES = {
    "GENERATIONS": ".png",
    "UPSCALED_IMAGES": "_upscaled.png",
    "CUTOUTS": "_upscaled",
}
_REQUIRED_COLUMNS = ("time_utc", "status", "output")


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
    if folder != "CUTOUTS" and lowered.endswith(".png"):
        return rest[:-4]
    return rest


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

    @property
    def start(self) -> float:
        return self.end - (self.seconds or 0.0)

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
            said.append(f"skipped {_count(self.lines_skipped, 'line')} cut off by a crash or "
                        "malformed")
        if self.rows_skipped:
            said.append(f"skipped {_count(self.rows_skipped, 'row')} without a usable "
                        "time_utc, status or output")
        if self.older_layout_rows:
            said.append(f"{_count(self.older_layout_rows, 'row')} of an older layout without "
                        f"{', '.join(sorted(self.missing_columns))}: read, those figures left out")
        return said


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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
    """Read ``<logs_dir>/<stage>-*.csv`` of every stage (metrics.read_logs), never writing."""
    logs_dir = Path(logs_dir)
    logs = Logs(rows={}, files={})
    common = set(COMMON_COLUMNS)
    for stage in stages:
        raw_rows, skipped = read_logs(logs_dir, stage)
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
        if logs_dir.is_dir():
            for path in sorted(logs_dir.glob(f"{stage}-*.csv")):
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
    )


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` (0..1) quantile, interpolating linearly between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals, in seconds."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


@dataclass
class HostFigures:
    """One host's (or all hosts') figures for one stage; None where nothing was logged."""

    host: str
    done: int
    failed: int
    retried: int
    duplicate: int
    seconds_mean: float | None
    seconds_p50: float | None
    seconds_p95: float | None
    busy_seconds: float
    images_per_hour: float | None
    cpu_percent_mean: float | None
    cpu_percent_peak: float | None
    ram_mb_mean: float | None
    ram_mb_peak: float | None
    server_cpu_seconds_mean: float | None
    server_cpu_seconds_total: float | None
    first_start: float
    last_end: float


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _retried_rows(rows: list[LogRow]) -> set[int]:
    """ids of the rows counted as retried (see the module docstring)."""
    retried = set()
    failed_before: set[str] = set()
    for row in rows:  # sorted by end time
        if row.attempt > 1:
            retried.add(id(row))
        if row.status == "failed":
            failed_before.add(row.output)
        elif row.status == "done" and row.output in failed_before:
            retried.add(id(row))
    return retried


def _figures(host: str, rows: list[LogRow], retried: set[int]) -> HostFigures:
    done = [row for row in rows if row.status == "done"]
    seconds = [row.seconds for row in done if row.seconds is not None]
    busy = busy_seconds([(row.start, row.end) for row in rows])

    def present(name):
        return [value for row in rows if (value := getattr(row, name)) is not None]

    server = present("server_cpu_seconds")
    # A row without a peak (older layout) still bounds it from below with its mean.
    peaks_cpu = [row.cpu_percent_peak if row.cpu_percent_peak is not None else row.cpu_percent_mean
                 for row in rows if row.cpu_percent_peak is not None or row.cpu_percent_mean is not None]
    peaks_ram = [row.ram_mb_peak if row.ram_mb_peak is not None else row.ram_mb_mean
                 for row in rows if row.ram_mb_peak is not None or row.ram_mb_mean is not None]
    return HostFigures(
        host=host,
        done=len(done),
        failed=sum(row.status == "failed" for row in rows),
        retried=sum(id(row) in retried for row in rows),
        duplicate=sum(row.status == "duplicate" for row in rows),
        seconds_mean=_mean(seconds),
        seconds_p50=percentile(seconds, 0.50),
        seconds_p95=percentile(seconds, 0.95),
        busy_seconds=busy,
        images_per_hour=len(done) / busy * 3600 if busy > 0 else None,
        cpu_percent_mean=_mean(present("cpu_percent_mean")),
        cpu_percent_peak=max(peaks_cpu) if peaks_cpu else None,
        ram_mb_mean=_mean(present("ram_mb_mean")),
        ram_mb_peak=max(peaks_ram) if peaks_ram else None,
        server_cpu_seconds_mean=_mean(server),
        server_cpu_seconds_total=sum(server) if server else None,
        first_start=min(row.start for row in rows),
        last_end=max(row.end for row in rows),
    )


def stage_figures(rows: list[LogRow]) -> list[HostFigures]:
    """One HostFigures per host (sorted by name), then one for all hosts together;
    [] without rows. ``rows``: one stage's rows sorted by end time."""
    if not rows:
        return []
    retried = _retried_rows(rows)
    by_host: dict[str, list[LogRow]] = defaultdict(list)
    for row in rows:
        by_host[row.host].append(row)
    figures = [_figures(host, by_host[host], retried) for host in sorted(by_host)]
    figures.append(_figures(ALL_HOSTS, rows, retried))
    return figures


@dataclass
class Eta:
    """``left`` jobs at ``images_per_hour`` (all hosts, measured over [window_start,
    window_end]); ``seconds`` None when left or the rate is unknown or the rate is 0."""

    left: int | None
    images_per_hour: float | None
    window_start: float | None
    window_end: float | None
    done_in_window: int

    @property
    def seconds(self) -> float | None:
        if self.left is None or not self.images_per_hour:
            return None
        return self.left / self.images_per_hour * 3600


def estimate_eta(rows: list[LogRow], left: int | None,
                 window_seconds: float = DEFAULT_ETA_WINDOW_SECONDS) -> Eta:
    """The ETA of ``left`` jobs at the rate of all hosts over the last ``window_seconds``
    of ``rows`` (one stage's rows): done rows ending in (end - W, end], over
    end - max(end - W, the first job's start)."""
    if not rows:
        return Eta(left, None, None, None, 0)
    window_end = max(row.end for row in rows)
    window_start = max(window_end - window_seconds, min(row.start for row in rows))
    done = sum(1 for row in rows if row.status == "done" and window_end - window_seconds < row.end)
    span = window_end - window_start
    rate = done / span * 3600 if span > 0 else None
    return Eta(left, rate, window_start, window_end, done)


def outstanding_failures(rows: list[LogRow]) -> list[LogRow]:
    """The latest row of each job whose latest row is "failed" (a later done or
    duplicate row of the same output clears it), oldest first."""
    latest: dict[str, LogRow] = {}
    for row in rows:
        if row.status in ("done", "failed", "duplicate"):
            latest[row.output] = row
    return sorted((row for row in latest.values() if row.status == "failed"),
                  key=lambda row: row.end)


def latest_done(rows: list[LogRow]) -> dict[str, LogRow]:
    """image key -> the latest "done" row of that image (one stage's rows)."""
    found = {}
    for row in rows:
        if row.status == "done":
            key = row.key
            if key is not None:
                found[key] = row
    return found


# --------------------------------------------------------------------------- files


def temporary_name(name: str) -> str:
    """A hidden name beside ``name`` no other process on any Mac uses (host and pid):
    two people may run the report on one share at the same time."""
    return f".{name}.{host_name()}-{os.getpid()}.tmp"


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly that;
    True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(temporary_name(path.name))
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return True


class ReportCache:
    """``report/cache.json``: {"version", section: {key: value}} for the sections
    "meta" (PNG path -> [size, mtime_ns, metadata]), "thumbs" (source path -> [size,
    mtime_ns, width_px, height_px, error]), "charts" (stage -> log files signature) and
    "sheets" (group -> tiles signature). A missing, damaged or older cache is empty."""

    SECTIONS = ("meta", "thumbs", "charts", "sheets")

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


# --------------------------------------------------------------------------- inventory


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
    meta: dict = field(default_factory=dict)  # prompt, negative_prompt, seed, model, size ...

    @property
    def group(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


def natural_key(text: str) -> list:
    """"France_family_10" after "France_family_9"."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", text)]


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
        pngs = [file for file in files if _is_png(file.name)]
        if relative_dir == CUTOUTS_FOLDER or not (pngs or any(f.name == RECORD_NAME for f in files)):
            continue
        entry = entry_for(image_key(relative_dir))
        entry.cutouts_folder = relative_dir
        cutouts = [image for file in pngs if (image := _image_file(relative_dir, file))]
        entry.cutouts = sorted(cutouts, key=lambda image: natural_key(image.path))
    ordered = sorted(entries, key=natural_key)
    return Inventory({key: entries[key] for key in ordered})


# --------------------------------------------------------------------------- metadata

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
    """What the gallery shows of an image, from its PNG text chunks (pngmeta): the
    "parameters" infotext; for an upscaled image without it, "drawpipe-source"'s copy
    of its source's infotext; the "drawpipe" JSON request fills what both lack."""
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
        request = json.loads(texts.get("drawpipe", "{}")).get("request") or {}
    except (ValueError, AttributeError):
        request = {}
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


# --------------------------------------------------------------------------- work left


def work_left(root: Path, inventory: Inventory, queue: list[QueueItem] | None
              ) -> dict[str, tuple[int | None, str]]:
    """stage -> (jobs left or None when unknown, how it was counted); see the module docstring."""
    generated = inventory.count("generated")
    upscaled = inventory.count("upscaled")
    if queue is None:
        generate = (None, "unknown (generate.py's queue is not kept in the folder: give the same "
                          "--queue FILE or --add NATION:CATEGORY:COUNT to count it)")
    else:
        planned = [f"{item.nation}/{item.category}/{Path(image_name(item.nation, item.category, n)).stem}"
                   for item in queue for n in range(1, item.count + 1)]
        missing = sum(1 for key in planned
                      if key not in inventory.entries or not inventory.entries[key].generated)
        generate = (missing, f"of the {len(planned):,} images in the queue not generated yet")
    upscale = sum(1 for entry in inventory.entries.values() if entry.generated and not entry.upscaled)
    segment = sum(1 for entry in inventory.entries.values()
                  if entry.upscaled and not entry.cutouts_folder)
    return {
        "generate": generate,
        "upscale": (upscale, f"of {generated:,} generated images not upscaled yet"),
        "segment": (segment, f"of {upscaled:,} upscaled images without cut-outs yet"),
    }


# --------------------------------------------------------------------------- text


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


def format_time(epoch_seconds: float | None) -> str:
    if epoch_seconds is None:
        return "-"
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fixed(value: float | None, decimals: int = 1) -> str:
    return "-" if value is None else f"{value:,.{decimals}f}"


def _pair(mean: float | None, peak: float | None) -> str:
    return f"{_fixed(mean, 0)} / {_fixed(peak, 0)}"


# (heading, value from HostFigures, right-aligned)
SUMMARY_COLUMNS = (
    ("host", lambda f: f.host),
    ("done", lambda f: f"{f.done:,}"),
    ("failed", lambda f: f"{f.failed:,}"),
    ("retried", lambda f: f"{f.retried:,}"),
    ("s/img mean", lambda f: _fixed(f.seconds_mean)),
    ("p50", lambda f: _fixed(f.seconds_p50)),
    ("p95", lambda f: _fixed(f.seconds_p95)),
    ("img/h", lambda f: _fixed(f.images_per_hour)),
    ("CPU % mean/peak", lambda f: _pair(f.cpu_percent_mean, f.cpu_percent_peak)),
    ("RAM MB mean/peak", lambda f: _pair(f.ram_mb_mean, f.ram_mb_peak)),
    ("DT CPU s job/total", lambda f: f"{_fixed(f.server_cpu_seconds_mean)} / "
                                     f"{_fixed(f.server_cpu_seconds_total, 0)}"),
)


def summary_table(figures: list[HostFigures]) -> list[list[str]]:
    """Rows of cells (the heading row first) for the text and HTML tables."""
    return [[heading for heading, _ in SUMMARY_COLUMNS]] + [
        [value(figure) for _, value in SUMMARY_COLUMNS] for figure in figures]


@dataclass
class StageReport:
    """What the report says about one stage."""

    stage: str
    figures: list[HostFigures]
    left: int | None  # jobs whose input exists and output does not; None: unknown
    left_note: str  # how ``left`` was counted, e.g. "of 2,000 generated images"
    eta: Eta
    failures: list[LogRow]  # outstanding failures


def build_stage_reports(logs: Logs, left: dict[str, tuple[int | None, str]],
                        window_seconds: float = DEFAULT_ETA_WINDOW_SECONDS) -> list[StageReport]:
    reports = []
    for stage in STAGES:
        rows = logs.rows.get(stage, [])
        count, note = left.get(stage, (None, ""))
        reports.append(StageReport(stage, stage_figures(rows), count, note,
                                   estimate_eta(rows, count, window_seconds),
                                   outstanding_failures(rows)))
    return reports


def eta_sentence(report: StageReport, window_seconds: float) -> str:
    """"left: 120 generated images not upscaled yet; ETA 1 h 05 min at 110.0 img/h ..."."""
    if report.left is None:
        return f"left: {report.left_note}"
    left = f"left: {report.left:,} {report.left_note}"
    if report.left == 0:
        return f"{left}; nothing to wait for"
    eta = report.eta
    window = f"all hosts, the last {window_seconds / 60:g} min of its log"
    if eta.window_end is None:
        return f"{left}; ETA unknown (no rows logged yet)"
    if not eta.images_per_hour:
        return f"{left}; ETA unknown (no image finished in the {window})"
    return (f"{left}; ETA {format_duration(eta.seconds)} at {eta.images_per_hour:,.1f} img/h "
            f"({window}, up to {format_time(eta.window_end)})")


def _aligned(table: list[list[str]], indent: str) -> list[str]:
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width)
                                              for cell, width in zip(row[1:], widths[1:])]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_summary(root: Path, logs: Logs, reports: list[StageReport], window_seconds: float,
                   now: float) -> str:
    """The plain-text report: a header, then per stage its table, failures, what is
    left and the ETA."""
    latest = max((row.end for rows in logs.rows.values() for row in rows), default=None)
    lines = [f"drawpipe report for {root}"]
    if latest is None:
        lines.append("no job logged yet in logs/")
    else:
        age = f", {format_duration(now - latest)} ago" if now >= latest else ""
        lines.append(f"read {_count(logs.row_count, 'row')} from {_count(logs.file_count, 'log file')}"
                     f" (latest {format_time(latest)}{age})")
        if now - latest > window_seconds:
            lines.append("note: nothing was logged in the last "
                         f"{format_duration(window_seconds)}; is anything running?")
    lines.extend(logs.skipped_lines())
    for report in reports:
        lines.append("")
        lines.append(report.stage)
        if report.figures:
            lines.extend(_aligned(summary_table(report.figures), "  "))
            everyone = report.figures[-1]
            if everyone.duplicate:
                lines.append(f"  {_count(everyone.duplicate, 'job')} done twice (another "
                             "worker had finished it first)")
        else:
            lines.append("  no job logged")
        if report.failures:
            lines.append(f"  still failed: {len(report.failures):,} (their last try failed; "
                         "the same command retries them)")
        lines.append("  " + eta_sentence(report, window_seconds))
    return "\n".join(lines) + "\n"
