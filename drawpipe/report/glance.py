"""The night at a glance: every worker's live state, the control files, and the share's
totals and ETA, on one screen (python -m drawpipe.status; the report's snapshot).

    take_glance(root, window_seconds) -> Glance   read it all once
    format_glance(glance, width) -> str           the screen: one line per worker, then the
                                                  control files, then each stage's totals

The workers come from their status files (engine/status.py read_statuses, rows by
inventory.worker_rows); the control files from engine/control.py read_control; the
totals and ETAs are the report's own figures (report/stats.py build_stage_reports and
eta_sentence over the logs, report/build.py work_left over the folders). Only
generate's queue is not in the folder: while a generate run is live, its status file
says how much of its queue is left.
"""

from dataclasses import dataclass
from pathlib import Path

from drawpipe.engine.control import ShareControl, read_control
from drawpipe.engine.status import ShareStatus, read_statuses
from drawpipe.inventory import STAGES, Inventory, load_logs, scan_inventory, worker_rows
from drawpipe.layout import logs_folder
from drawpipe.report.build import work_left
from drawpipe.report.stats import (DEFAULT_ETA_WINDOW_SECONDS, StageReport, estimate_eta,
                                   eta_sentence, format_time)

# (heading, row key, right-aligned) of the worker table
COLUMNS = (("worker", "process", False), ("stage", "stage", False), ("server", "server", False),
           ("now", "doing", False), ("for", "for", True), ("done", "done", True),
           ("failed", "failed", True), ("img/h", "per_hour", True),
           ("last error", "last_error", False))


# A cell of the worker table is cut to this many characters on the terminal (the pages
# show it whole): one long line must not push the other columns off the screen.
CELL_CHARACTERS = 72


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass
class Glance:
    root: Path
    statuses: ShareStatus
    rows: list[dict]  # inventory.worker_rows
    control: ShareControl
    inventory: Inventory
    reports: list[StageReport]  # what is left and the ETA only (take_glance)
    window_seconds: float
    problems: list[str]


def take_glance(root: Path, window_seconds: float = DEFAULT_ETA_WINDOW_SECONDS) -> Glance:
    statuses = read_statuses(root)
    inventory = scan_inventory(root)
    logs = load_logs(logs_folder(root))
    left = work_left(root, inventory, None)
    queue_left = generate_left(statuses)
    if queue_left is not None:
        left["generate"] = queue_left
    # Only what the screen shows of each stage (eta_sentence): what is left and the ETA,
    # not the report's figures, phases and energy (this runs every --watch refresh).
    reports = []
    for stage in STAGES:
        count, note = left.get(stage, (None, ""))
        eta = estimate_eta(logs.rows.get(stage, []), count, window_seconds)
        reports.append(StageReport(stage, [], [], count, note, eta, []))
    return Glance(root, statuses, worker_rows(statuses), read_control(root), inventory,
                  reports, window_seconds, statuses.problems + logs.skipped_lines())


def generate_left(statuses: ShareStatus) -> tuple[int, str] | None:
    """(images left, how counted) of the queue of the most recently written live generate
    run, or None when none is live (generate's queue lives on its command line)."""
    live = [process for process in statuses.processes
            if process.content.get("stage") == "generate" and not process.silent
            and isinstance(process.content.get("counts"), dict)]
    if not live:
        return None
    counts = min(live, key=lambda process: process.age_seconds).content["counts"]
    try:
        total = int(counts["total"])
        done = int(counts["already_done"]) + int(counts["made"]) + int(counts["by_others"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0, total - done), f"of the {total:,} images in a running generate.py's queue not made yet"


def format_glance(glance: Glance, width: int | None = None) -> str:
    """The screen. ``width``: cut each line to it (a terminal's), None to keep them whole."""
    statuses = glance.statuses
    silent = sum(1 for row in glance.rows if row["silent"])
    lines = [f"drawpipe status of {glance.root} at {format_time(statuses.now)}"
             + (" (ages by this Mac's clock: the share could not be written)"
                if statuses.clock != "the file server's" else "")]
    if glance.rows:
        lines.append(f"{len(glance.rows)} worker{'s' if len(glance.rows) != 1 else ''}"
                     + (f", {silent} silent" if silent else "") + ":")
        table = [[heading for heading, _, _ in COLUMNS]] + [
            [_cut(str(row[key]), CELL_CHARACTERS) for _, key, _ in COLUMNS] for row in glance.rows]
        widths = [max(len(cells[n]) for cells in table) for n in range(len(COLUMNS) - 1)]
        for cells in table:
            lines.append("  " + "  ".join(
                cell.rjust(widths[n]) if COLUMNS[n][2] else cell.ljust(widths[n])
                for n, cell in enumerate(cells[:-1])) + "  " + cells[-1])
        notes = sorted({note for row in glance.rows for note in row["notes"]})
        lines.extend(f"  {note}" for note in notes)
    else:
        lines.append("no worker is running on this share (no status file in .drawpipe/status/)")
    lines.extend(glance.control.lines())
    lines.extend(glance.problems)
    inventory = glance.inventory
    lines.append(f"share: {inventory.count('generated'):,} generated, "
                 f"{inventory.count('upscaled'):,} upscaled, {inventory.cutout_count:,} cut-outs "
                 f"in {inventory.count('cutouts_folder'):,} folders")
    for report in glance.reports:
        lines.append(f"  {report.stage:<8}  {eta_sentence(report, glance.window_seconds)}")
    if width:
        lines = [_cut(line, width) for line in lines]
    return "\n".join(lines) + "\n"
