"""What the report knows from the logs: each stage's figures and ETAs.

The logs are read and parsed by inventory.py (load_logs: LogRow, one job as logged,
times in epoch seconds; latest_done); the folders too (scan_inventory).

Figures:

    stage_figures(rows)          [HostFigures per host ..., HostFigures of all hosts]
    phase_table(rows)            where the time went on gRPC servers, per host: the
                                 seconds per stage of the request (signposts.py)
    estimate_eta(rows, left, W)  Eta: work left at the combined recent throughput
    outstanding_failures(rows)   the jobs whose latest row is a failure
    energy_lines(energy)         a stage's energy (report/energy.py) as text lines
    percentile(values, fraction) linear interpolation between closest ranks
    format_summary(...)          the plain-text report

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
- *where the time went*: over the "done" rows that logged seconds per stage of the
  request (jobs of gRPC servers: text encoding, with the queue and model loading, image
  encoding, sampling, decoding, face restoration, upscaling, transfer), the mean seconds
  per image of each stage and its share of their sum; a recipe's steps are summed.
- *ETA*: ``left / rate``, where rate is the combined rate of all hosts over a recent
  window: the "done" rows that ended within the last W seconds of the stage's log
  (default one hour, up to the latest row of the stage, not "now", so a report run
  after the Macs stopped still says how fast they were), divided by the window's
  length, which starts no earlier than the first job of the logs (a run started 20
  minutes ago is measured over those 20 minutes).

*Energy* per stage and host (Wh per image gross and net, so far, projected, CO2e) is
report/energy.py's, whose docstring gives its definitions.

Skipped input: a line cut off by a crash or with the wrong number of fields
(metrics.read_logs counts those), and a row without a usable time_utc, status or
output. Rows of an older layout (a file without some of today's columns) are read;
only the figures of the missing columns are left out, and the report names them.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from drawpipe.curate.verdicts import NOT_REVIEWED
from drawpipe.drawthings.signposts import PHASE_COLUMNS
from drawpipe.inventory import STAGES, LogRow, Logs, format_duration
from drawpipe.pages import counted
from drawpipe.report.energy import StageEnergy, energy_notes, energy_table, stage_energy
from drawpipe.settings import default

DEFAULT_ETA_WINDOW_SECONDS = default("eta_window_minutes") * 60
ALL_HOSTS = "all hosts"


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


def phase_table(rows: list[LogRow]) -> list[list[str]]:
    """Rows of cells (the heading row first): per host (sorted), then all hosts, the
    images whose "done" row logged seconds per stage, and each stage's mean seconds per
    image with its share of their sum ("41.2 (78 %)"); only stages some row logged.
    [] when no row logged any (HTTP servers only)."""
    timed = [row for row in rows if row.status == "done" and row.phase_seconds]
    if not timed:
        return []
    columns = [column for column in PHASE_COLUMNS if any(column in row.phase_seconds
                                                         for row in timed)]
    by_host: dict[str, list[LogRow]] = defaultdict(list)
    for row in timed:
        by_host[row.host].append(row)
    groups = [(host, by_host[host]) for host in sorted(by_host)] + [(ALL_HOSTS, timed)]
    table = [["host", "images"] + [column.removesuffix("_seconds").replace("_", " ")
                                   for column in columns]]
    for host, group in groups:
        means = {column: sum(row.phase_seconds.get(column, 0.0) for row in group) / len(group)
                 for column in columns}
        total = sum(means.values())
        table.append([host, f"{len(group):,}"] + [
            f"{means[column]:,.1f} ({means[column] / total * 100:.0f} %)" if total else "-"
            for column in columns])
    return table


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


# --------------------------------------------------------------------------- text


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
    phases: list[list[str]]  # phase_table: where the time went on gRPC servers
    left: int | None  # jobs whose input exists and output does not; None: unknown
    left_note: str  # how ``left`` was counted, e.g. "of 2,000 generated images"
    eta: Eta
    failures: list[LogRow]  # outstanding failures
    energy: StageEnergy | None = None  # report/energy.py


def build_stage_reports(logs: Logs, left: dict[str, tuple[int | None, str]],
                        window_seconds: float = DEFAULT_ETA_WINDOW_SECONDS,
                        grid_g_per_kwh: float | None = None) -> list[StageReport]:
    """One StageReport per stage; ``grid_g_per_kwh`` (the user's grid intensity, or
    None) adds CO2e to the energy."""
    reports = []
    for stage in STAGES:
        rows = logs.rows.get(stage, [])
        count, note = left.get(stage, (None, ""))
        reports.append(StageReport(stage, stage_figures(rows), phase_table(rows), count, note,
                                   estimate_eta(rows, count, window_seconds),
                                   outstanding_failures(rows),
                                   stage_energy(stage, rows, count, grid_g_per_kwh)))
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
        lines.append(f"read {counted(logs.row_count, 'row')} from {counted(logs.file_count, 'log file')}"
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
                lines.append(f"  {counted(everyone.duplicate, 'job')} done twice (another "
                             "worker had finished it first)")
            if report.phases:
                lines.append("  where the time went on gRPC servers (mean s per image, share):")
                lines.extend(_aligned(report.phases, "    "))
        else:
            lines.append("  no job logged")
        if report.failures:
            lines.append(f"  still failed: {len(report.failures):,} (their last try failed; "
                         "the same command retries them)")
        lines.append("  " + eta_sentence(report, window_seconds))
        lines.extend(energy_lines(report.energy))
    return "\n".join(lines) + "\n"


def energy_lines(energy: StageEnergy | None) -> list[str]:
    """A stage's energy for the terminal: the table and its notes, or the notes alone
    ("energy: not measured on ..."); nothing when no job was logged."""
    if energy is None:
        return []
    table, notes = energy_table(energy), energy_notes(energy)
    if not table:
        return [f"  energy: {note}" for note in notes]
    return (["  energy (Wh per image; gross: the meter's whole reading, net: less idle power):"]
            + _aligned(table, "    ") + [f"    {note}" for note in notes])


# --------------------------------------------------------------------------- review

REVIEW_WORDS = ("accepted", "rejected", "not reviewed")  # curate.verdicts.ReviewState.word
# stage -> the inventory attribute that says an image has that stage's output
_STAGE_OUTPUTS = {"generated": "generated", "upscaled": "upscaled", "cut out": "cutouts_folder"}


def review_table(inventory, review: dict, set_aside: dict[str, int]) -> dict:
    """The review's figures: per stage, how many outputs there are of accepted, rejected
    and not reviewed takes (an upscaled image or cut-outs count with the take they were
    made from); ``set_aside``: stage -> what REJECTED/ holds of it."""
    rows = []
    for label, attribute in _STAGE_OUTPUTS.items():
        words = [review.get(entry.key, NOT_REVIEWED).word
                 for entry in inventory.entries.values() if getattr(entry, attribute)]
        rows.append({"stage": label, "total": len(words),
                     **{word: words.count(word) for word in REVIEW_WORDS},
                     "set_aside": set_aside.get(label, 0)})
    return {"rows": rows, "words": REVIEW_WORDS}


def review_lines(table: dict) -> str:
    """The review's figures for the terminal, one line per stage."""
    lines = ["review (the take there now; earlier takes are in REJECTED/):"]
    for row in table["rows"]:
        lines.append(f"  {row['stage']:<9} {row['total']:>6,}: "
                     + ", ".join(f"{row[word]:,} {word}" for word in table["words"])
                     + f"; {row['set_aside']:,} set aside in REJECTED/")
    return "\n".join(lines) + "\n"
