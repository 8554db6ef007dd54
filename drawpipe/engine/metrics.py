"""CPU/RAM sampling while a request runs, and the per-host CSV logs.

    ResourceSampler      context manager: samples whole-machine CPU % and used RAM in
                         a background thread (the server does the work, so the
                         client's own process says nothing), and the Draw Things
                         process's CPU seconds and RSS when it runs on this machine
    ResourceUsage        what a sampler measured over one job
    find_process(name)   the local server process, cached across jobs
    MetricsLog           appends one row per job to <logs>/<stage>-<host>.csv
    read_logs(logs, stg) every host's rows of one stage, merged (log_files lists them,
                         read_log_files reads a list)

A host names its log with files.host_name(); the file names come from layout.py.

Each host writes only its own CSV file (docs/DESIGN.md: no shared writable files); every
row is one ``write`` of one complete line to a file opened with O_APPEND, so
processes of one host appending at once never interleave within a line.
"""

import csv
import io
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from drawpipe.layout import log_name, log_pattern

MIB = 1024 * 1024


# ---------------------------------------------------------------- server process

# The cache holds the server's Process across jobs, so the process table is scanned
# once, not per job. A name that matched nothing is not looked up again for
# _NOT_FOUND_SECONDS (a scan reads every process's command line: milliseconds).
_NOT_FOUND_SECONDS = 30.0
_found: dict[str, psutil.Process] = {}
_not_found_until: dict[str, float] = {}
_cache_lock = threading.Lock()


def find_process(name: str) -> psutil.Process | None:
    """The running process called ``name``, or None.

    Matches, case-insensitively and never this process: first the process name or
    its executable's base name equal to ``name`` (the app: "Draw Things"); only when
    no process matches that way, any process with a command-line argument
    containing ``name``. The result is cached and checked with ``is_running()``
    (which also catches a reused pid) on each call; a miss is remembered for 30 s.
    """
    key = name.casefold()
    with _cache_lock:
        process = _found.get(key)
        if process is not None:
            try:
                if process.is_running():
                    return process
            except psutil.Error:
                pass
            del _found[key]
        if _not_found_until.get(key, 0.0) > time.monotonic():
            return None
        process = _scan_for(key)
        if process is None:
            _not_found_until[key] = time.monotonic() + _NOT_FOUND_SECONDS
        else:
            _found[key] = process
            _not_found_until.pop(key, None)
        return process


def _scan_for(key: str) -> psutil.Process | None:
    by_argument = None
    own_pid = os.getpid()
    for process in psutil.process_iter(["name", "exe", "cmdline"]):
        if process.pid == own_pid:
            continue
        info = process.info
        names = (info.get("name") or "", os.path.basename(info.get("exe") or ""))
        if any(candidate.casefold() == key for candidate in names):
            return process
        if by_argument is None and any(key in str(arg).casefold() for arg in info.get("cmdline") or ()):
            by_argument = process
    return by_argument


def _forget(name: str, process: psutil.Process) -> None:
    with _cache_lock:
        if _found.get(name.casefold()) is process:
            del _found[name.casefold()]


# ---------------------------------------------------------------- sampling


@dataclass
class ResourceUsage:
    """What the machine did while one job ran.

    ``cpu_percent_*``: whole-machine CPU busy %, 0..100 (all cores together); the
    mean is over the whole job, the peak the highest interval. ``ram_mb_*``:
    whole-machine used RAM (total - available) in MiB. ``server_cpu_seconds``: CPU
    seconds (user + system) the server process used during the job;
    ``server_rss_mb``: its peak resident memory in MiB; both None when the process
    was not found, is not local, or vanished or denied access mid-job.
    ``process_rss_mb``: the peak resident memory of this process, in MiB.
    ``samples``: readings taken (one at start, one per interval, one at stop); CPU %
    comes from the ``samples - 1`` intervals between them.
    """

    cpu_percent_mean: float | None
    cpu_percent_peak: float | None
    ram_mb_mean: float | None
    ram_mb_peak: float | None
    server_cpu_seconds: float | None
    server_rss_mb: float | None
    process_rss_mb: float
    samples: int


def _busy_and_total(times) -> tuple[float, float]:
    """(busy, total) CPU seconds from psutil.cpu_times(), summed over cores.

    Linux counts guest time inside user/nice, so it is left out of the total;
    iowait is idle time (as psutil.cpu_percent counts it).
    """
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class ResourceSampler:
    """Samples whole-machine CPU % and used RAM in a background thread while a
    request runs; with ``server_process_name`` ("Draw Things") also that process's
    CPU time and RSS, when it runs on this machine.

        with ResourceSampler(0.5, "Draw Things") as sampler:
            answer = client.generate("txt2img", payload, expected_size)
        usage = sampler.result()

    A reading is taken on entry, every ``interval_seconds`` and on exit, so a job
    shorter than the interval still gets one CPU figure computed from
    ``psutil.cpu_times()`` deltas (never psutil's meaningless first 0.0). Exit
    stops the thread at once (an Event, not a sleep). Sampling never raises: a
    server process that exits or denies access gives None server figures.
    """

    def __init__(self, interval_seconds: float = 0.5, server_process_name: str | None = None):
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be > 0 (was {interval_seconds})")
        self.interval_seconds = interval_seconds
        self.server_process_name = server_process_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: list[tuple[float, float]] = []  # (busy, total) seconds per reading
        self._ram_mib: list[float] = []
        self._server: psutil.Process | None = None
        self._server_cpu_seconds: list[float] = []
        self._server_rss_mib: list[float] = []
        self._server_lost = False
        self._process = psutil.Process()
        self._process_rss_mib = 0.0

    def __enter__(self) -> "ResourceSampler":
        if self._thread is not None:
            raise RuntimeError("a ResourceSampler is used for one job only")
        if self.server_process_name:
            self._server = find_process(self.server_process_name)
        self._read()
        self._thread = threading.Thread(target=self._run, name="ResourceSampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self._read()

    def _read(self) -> None:
        self._cpu.append(_busy_and_total(psutil.cpu_times()))
        memory = psutil.virtual_memory()
        self._ram_mib.append((memory.total - memory.available) / MIB)
        self._process_rss_mib = max(self._process_rss_mib, self._process.memory_info().rss / MIB)
        if self._server is None or self._server_lost:
            return
        try:
            with self._server.oneshot():
                cpu = self._server.cpu_times()
                rss = self._server.memory_info().rss
        except psutil.Error:  # NoSuchProcess, AccessDenied, ZombieProcess
            self._server_lost = True
            _forget(self.server_process_name, self._server)
            return
        self._server_cpu_seconds.append(cpu.user + cpu.system)
        self._server_rss_mib.append(rss / MIB)

    def result(self) -> ResourceUsage:
        """The figures so far (call after the ``with`` block for the whole job)."""
        percents = []
        for (busy0, total0), (busy1, total1) in zip(self._cpu, self._cpu[1:]):
            if total1 > total0:
                percents.append(_percent(busy1 - busy0, total1 - total0))
        cpu_mean = None
        if len(self._cpu) >= 2 and self._cpu[-1][1] > self._cpu[0][1]:
            cpu_mean = _percent(self._cpu[-1][0] - self._cpu[0][0], self._cpu[-1][1] - self._cpu[0][1])
        ram = self._ram_mib
        server_ok = not self._server_lost and len(self._server_cpu_seconds) >= 2
        return ResourceUsage(
            cpu_percent_mean=cpu_mean,
            cpu_percent_peak=max(percents) if percents else None,
            ram_mb_mean=sum(ram) / len(ram) if ram else None,
            ram_mb_peak=max(ram) if ram else None,
            server_cpu_seconds=self._server_cpu_seconds[-1] - self._server_cpu_seconds[0] if server_ok else None,
            server_rss_mb=max(self._server_rss_mib) if server_ok else None,
            process_rss_mb=self._process_rss_mib,
            samples=len(self._cpu),
        )


def _percent(busy: float, total: float) -> float:
    return min(100.0, max(0.0, 100.0 * busy / total))


# ---------------------------------------------------------------- CSV logs

COMMON_COLUMNS = (
    "time_utc", "host", "worker", "stage", "input", "output", "status", "attempt", "seconds", "seed",
    "cpu_percent_mean", "cpu_percent_peak", "ram_mb_mean", "ram_mb_peak", "server_cpu_seconds",
    "server_rss_mb", "error",
)

ERROR_MAX_CHARS = 500
# No field holds image data by construction; this catches one that would.
VALUE_MAX_CHARS = 2000

# unit word in a column name ("ram_mb_peak", "server_cpu_seconds") -> decimals of its floats
_DECIMALS_BY_UNIT = {"seconds": 3, "percent": 1, "mb": 1}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def format_time_utc(epoch_seconds: float) -> str:
    """1795356560.1234 -> "2026-11-22T14:09:20.123Z" (ISO 8601, UTC, milliseconds)."""
    milliseconds = int(round(epoch_seconds * 1000))
    seconds, millis = divmod(milliseconds, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _format_value(column: str, value) -> str:
    if value is None:
        return ""
    if column == "time_utc" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_time_utc(value)
    if isinstance(value, float):
        decimals = next((_DECIMALS_BY_UNIT[w] for w in column.split("_") if w in _DECIMALS_BY_UNIT), None)
        text = repr(value) if decimals is None else f"{value:.{decimals}f}"
    else:
        text = str(value)
    # One row is one line: a newline in a message or a file name becomes a space.
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if column == "error" and len(text) > ERROR_MAX_CHARS:
        text = text[: ERROR_MAX_CHARS - 3] + "..."
    if len(text) > VALUE_MAX_CHARS:
        raise ValueError(
            f"metrics column {column!r} got a {len(text)}-character value (limit {VALUE_MAX_CHARS}): "
            "image data or another blob does not belong in the log"
        )
    return text


def _csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


class MetricsLog:
    """Appends one row per job to ``<logs_dir>/<stage>-<host>.csv``.

    Each host writes only its own file; ``read_logs`` merges them. ``columns`` is
    COMMON_COLUMNS + ``extra_columns``. ``logs_dir`` is created if missing.

    The first append of a log checks an existing file: one whose header is another
    layout is renamed to ``<stage>-<host>.<UTC yyyymmddTHHMMSS>.csv`` (``-1``, ``-2``
    ... if taken) and a new one started; a last line cut off by a crash gets its
    newline. A file found empty (or removed) gets the header on any append. The
    workers of one process append one at a time; two processes on one Mac starting
    the file at once may both write the header, and readers skip the second.
    """

    def __init__(self, logs_dir: Path, stage: str, host: str, extra_columns: tuple[str, ...] = ()):
        for label, name in (("stage", stage), ("host", host)):
            if not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"metrics {label} {name!r} must be letters, digits, '_' or '-'")
        columns = COMMON_COLUMNS + tuple(extra_columns)
        if len(set(columns)) != len(columns):
            raise ValueError(f"metrics extra columns {extra_columns!r} repeat a column")
        self.logs_dir = Path(logs_dir)
        self.stage = stage
        self.host = host
        self.columns = columns
        self.path = self.logs_dir / log_name(stage, host)
        self._header = _csv_line(columns).encode("utf-8")
        self._checked = False  # header and last line of an existing file checked
        # Worker threads share this log: one append at a time, so two of them cannot
        # both find the file empty and both write the header.
        self._lock = threading.Lock()
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        """Append one row: one complete line in one ``write`` on an O_APPEND file.

        ``row`` maps column names to values; missing columns are empty, ``time_utc``
        defaults to now (an epoch float is formatted as "2026-11-22T14:09:20.123Z"),
        ``host`` and ``stage`` to this log's. Floats are rounded (seconds 3 decimals,
        percents and MiB 1), None is empty, ``error`` is one line of at most 500
        characters. Raises ValueError for an unknown column or a value over 2,000
        characters (programming errors).
        """
        unknown = sorted(set(row) - set(self.columns))
        if unknown:
            raise ValueError(f"unknown metrics columns {unknown} (known: {', '.join(self.columns)})")
        values = {"time_utc": time.time(), "host": self.host, "stage": self.stage, **row}
        line = _csv_line([_format_value(column, values.get(column)) for column in self.columns]).encode("utf-8")
        with self._lock:
            self._write(line)

    def _write(self, line: bytes) -> None:
        for _ in range(3):  # after a rotation, once more with the new file
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    _write_all(fd, self._header + line)
                    self._checked = True
                    return
                prefix = b""
                if not self._checked:
                    if os.pread(fd, len(self._header), 0) != self._header:
                        os.close(fd)
                        fd = None
                        self._rotate()
                        continue
                    # A machine crash can leave a last line without its newline: end
                    # it first, so the new row is a line of its own (the broken one is
                    # skipped on read). Checked once: this log's own writes are whole
                    # lines, and a reader racing another process's write can see a
                    # line not yet complete.
                    if _ends_without_newline(fd, size):
                        prefix = b"\n"
                _write_all(fd, prefix + line)
                self._checked = True
                return
            finally:
                if fd is not None:
                    os.close(fd)
        raise OSError(f"could not append to {self.path}: it keeps being replaced")

    def _rotate(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for n in range(100):
            target = self.path.with_name(
                log_name(self.stage, self.host, f".{stamp}{f'-{n}' if n else ''}"))
            if target.exists():
                continue
            try:
                os.rename(self.path, target)
            except FileNotFoundError:  # another process of this host rotated it first
                pass
            return


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # only on a full disk or a signal; a regular file takes it whole
        data = data[written:]
        written = os.write(fd, data)


# How long a line without its newline must stay so before it is taken for a crash's
# remnant: another process's append that crosses a page boundary is briefly seen cut
# short (the file's size grows page by page), and must not get a newline of its own.
TORN_LINE_SETTLE_SECONDS = 0.05


def _ends_without_newline(fd: int, size: int) -> bool:
    """Whether the file's last line, ``size`` bytes in, lacks its newline and is not
    being written right now (the file stays that size for a moment)."""
    if os.pread(fd, 1, size - 1) == b"\n":
        return False
    time.sleep(TORN_LINE_SETTLE_SECONDS)
    return os.fstat(fd).st_size == size


def read_logs(logs_dir: Path, stage: str) -> tuple[list[dict], int]:
    """(rows, skipped): every row of every ``<stage>-*.csv`` in ``logs_dir`` (each
    host's file and rotated old ones), sorted by time_utc, and how many lines were
    skipped (a half-written line, a wrong field count, bytes that are not CSV).

    Each file is read by its own header, so rows of an older layout have that
    layout's keys. Values are the strings as written ("" for missing). A repeated
    header line (two processes starting a file at once) is not a row and not counted.
    A missing folder gives ([], 0).
    """
    return read_log_files(log_files(logs_dir, stage), stage)


def log_files(logs_dir: Path, stage: str) -> list[Path]:
    """Every ``<stage>-*.csv`` in ``logs_dir``, sorted; [] when there is no such folder."""
    logs_dir = Path(logs_dir)
    return sorted(logs_dir.glob(log_pattern(stage))) if logs_dir.is_dir() else []


def read_log_files(paths: list[Path], stage: str) -> tuple[list[dict], int]:
    """(rows, skipped) of the given log files of ``stage`` (read_logs, for a caller that
    listed the folder already)."""
    rows: list[dict] = []
    skipped = 0
    for path in paths:
        file_rows, file_skipped = _read_log(path, stage)
        rows.extend(file_rows)
        skipped += file_skipped
    rows.sort(key=lambda row: row.get("time_utc") or "")
    return rows, skipped


def _read_log(path: Path, stage: str) -> tuple[list[dict], int]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1]:  # no newline at the end: the last line was cut off mid-write
        broken_tail = 1
    else:
        broken_tail = 0
    lines.pop()  # the "" after the final newline, or the cut-off line
    if not lines:
        return [], broken_tail
    header_line = lines[0]
    header = _parse_line(header_line)
    if not header:
        return [], len(lines) + broken_tail
    rows, skipped = [], broken_tail
    for line in lines[1:]:
        if not line or line == header_line:
            continue
        fields = _parse_line(line)
        if fields is None or len(fields) != len(header):
            skipped += 1
            continue
        row = dict(zip(header, fields))
        # "<stage>-*.csv" also matches a stage whose name starts with "<stage>-".
        if row.get("stage", stage) in (stage, ""):
            rows.append(row)
    return rows, skipped


def _parse_line(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=True))
    except (csv.Error, StopIteration):
        return None
