"""The report: how far each stage is, how long is left, what it cost; pictures.

    python -m drawpipe.report --root SHARE                  the figures, on the terminal
    python -m drawpipe.report --root SHARE --html           + SHARE/report/index.html and a page
                                                            per nation (report/nations/)
    python -m drawpipe.report --root SHARE --contact-sheets + SHARE/report/contact_sheets/*.png
    python -m drawpipe.report --root SHARE --csv [FILE]     + the per-image table (report/images.csv),
                                                            with quality signals (curate/quality.py)
    python -m drawpipe.report --root SHARE --queue q.json   + what generate.py still has to make

Modules: this one runs the report (run_report), counts the work left and makes the
per-image table; stats.py turns the logs into figures and ETAs; html.py makes
thumbnails, charts, the page and contact sheets (Pillow and matplotlib are imported
only there, only when needed). The logs and the folders are read by inventory.py
(load_logs, scan_inventory, read_metadata, read_cutout_labels, ReportCache); the command
line is
cli/report.py.

The report reads ``logs/`` and the image folders and never writes to them; all it
writes is under ``SHARE/report/`` and the ``--csv FILE`` named (nothing at all
without --html, --contact-sheets or --csv). ``report/cache.json`` remembers each
file's (size, mtime_ns) with what was read from it (PNG metadata) or made from it
(thumbnail), each chart's log files and each contact sheet's tiles, so a second run
reads and redraws only what changed.
Files are written atomically, and only when their content changed.

*Work left* per stage, counted in the folders (a listing, not claims: a job being
done right now still counts as left):

- generate: unknown, because generate.py's queue lives on the command line, not in
  the folder; with ``--queue FILE`` / ``--add NATION:CATEGORY:COUNT`` (as
  generate.py takes them), the images of that queue missing from GENERATIONS/.
- upscale: PNGs in GENERATIONS/ without ``UPSCALED_IMAGES/.../<stem>_upscaled.png``.
- segment: PNGs in UPSCALED_IMAGES/ without a ``CUTOUTS/.../<stem>/`` folder.

The ETA of each stage is that count at the combined recent rate of all hosts
(report/stats.py: "done" rows of the last ``--eta-window-minutes``, default 60, of
that stage's log); its energy (report/energy.py) is projected for the same count, and
``--grid-intensity G`` (gCO2e per kWh) adds CO2e.

*Review* (curate/verdicts.py): per stage, how many outputs belong to an accepted, a
rejected and a not yet reviewed take, and what REJECTED/ holds; the table's ``take``,
``verdict`` and ``verdict_reason`` columns; each image's verdict on its nation's page.
"""

import csv
import importlib.util
import io
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from drawpipe.curate.quality import CSV_COLUMNS as QUALITY_COLUMNS
from drawpipe.curate.quality import csv_fields as quality_fields
from drawpipe.curate.verdicts import NOT_REVIEWED, load_verdicts, review_states
from drawpipe.errors import UsageError
from drawpipe.files import HashCache, file_sha256, host_name, write_if_changed
from drawpipe.inventory import (STAGES, ImageEntry, Inventory, Logs, ReportCache, latest_done,
                                load_logs, read_cutout_labels, read_metadata, scan_inventory)
from drawpipe.layout import (CUTOUTS_FOLDER, GENERATIONS_FOLDER, REJECTED_FOLDER, REPORT_CACHE,
                             UPSCALED_FOLDER, image_name, logs_folder, natural_key, report_folder)
from drawpipe.pages import counted
from drawpipe.report.stats import (DEFAULT_ETA_WINDOW_SECONDS, build_stage_reports,
                                   format_summary, review_lines, review_table)
from drawpipe.stages.prompts import QueueItem

CSV_NAME = "images.csv"  # in report/


# --------------------------------------------------------------------------- per-image CSV

CSV_COLUMNS = ("image", "group", "generated", "take", "verdict", "verdict_reason", "seed",
               "prompt", "generate_seconds", "generate_host", "upscaled", "upscale_seconds",
               "upscale_host", "cutouts_folder", "cutouts", "segment_seconds", "segment_host",
               "failed", *QUALITY_COLUMNS)


def image_table(inventory: Inventory, logs: Logs, failures: dict[str, dict],
                quality: dict | None = None, review: dict | None = None) -> list[dict]:
    """One row per image across stages (CSV_COLUMNS): images with a file, and images
    only the logs know (a failed or since-deleted output). ``failures``: key ->
    {stage: LogRow} of outstanding failures; ``quality``: generated image path ->
    quality.Signals (their columns are empty for an image without); ``review``: key ->
    curate.verdicts.ReviewState (verdict: accepted, rejected, not reviewed)."""
    done = {stage: latest_done(logs.rows.get(stage, [])) for stage in STAGES}
    keys = set(inventory.entries)
    for rows in done.values():
        keys.update(rows)
    keys.update(failures)
    table = []
    for key in sorted(keys, key=natural_key):
        entry = inventory.entries.get(key) or ImageEntry(key)
        state = (review or {}).get(key, NOT_REVIEWED)
        row = {"image": entry.name, "group": entry.group,
               "generated": entry.generated.path if entry.generated else "",
               "take": entry.meta.get("take", "") if entry.generated else "",
               "verdict": state.word if entry.generated else "",
               "verdict_reason": state.verdict.reason if state.verdict else "",
               "upscaled": entry.upscaled.path if entry.upscaled else "",
               "cutouts_folder": entry.cutouts_folder or "",
               "cutouts": len(entry.cutouts) if entry.cutouts_folder else "",
               "prompt": entry.meta.get("prompt", "")}
        seed = entry.meta.get("seed", "")
        for stage in STAGES:
            logged = done[stage].get(key)
            row[f"{stage}_seconds"] = logged.seconds if logged and logged.seconds is not None else ""
            row[f"{stage}_host"] = logged.host if logged else ""
            if not seed and logged and logged.seed:
                seed = logged.seed
        row["seed"] = seed
        row["failed"] = "; ".join(f"{stage}: {failed.error or 'failed'}"
                                  for stage, failed in failures.get(key, {}).items())
        signals = (quality or {}).get(entry.generated.path) if entry.generated else None
        row.update(quality_fields(signals))
        table.append(row)
    return table


def table_csv(table: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue().encode("utf-8")


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ReportSettings:
    root: Path
    html: bool = False
    contact_sheets: bool = False
    csv_path: Path | None = None
    queue: tuple[QueueItem, ...] | None = None  # None: generate's work left is unknown
    eta_window_seconds: float = DEFAULT_ETA_WINDOW_SECONDS
    processes: int = 1  # for thumbnails and contact sheets
    cache_dir: Path | None = None  # this Mac's SHA-256 cache (files.HashCache), for verdicts
    grid_g_per_kwh: float | None = None  # --grid-intensity: adds CO2e to the energy

    @property
    def report_dir(self) -> Path:
        return report_folder(self.root)


def failures_by_image(root: Path, reports) -> dict[str, dict]:
    """key -> {stage: LogRow} of failed jobs whose output still does not exist."""
    found: dict[str, dict] = {}
    for report in reports:
        still = [row for row in report.failures if not os.path.lexists(root / row.output)]
        report.failures[:] = still
        for row in still:
            key = row.key or row.output
            found.setdefault(key, {})[report.stage] = row
    return found


def run_report(settings: ReportSettings, out=None, now: float | None = None) -> int:
    """Print the figures; write what ``settings`` asks for under report/. Returns 0."""
    out = out or sys.stdout
    now = time.time() if now is None else now
    root = settings.root
    logs = load_logs(logs_folder(root))
    inventory = scan_inventory(root)
    if logs.file_count == 0 and not inventory.entries:
        raise UsageError(f"nothing to report in {root}: no logs/*.csv and no images in "
                         f"{GENERATIONS_FOLDER}/, {UPSCALED_FOLDER}/ or {CUTOUTS_FOLDER}/ "
                         "(is --root the shared folder?)")
    reports = build_stage_reports(logs, work_left(root, inventory, settings.queue),
                                  settings.eta_window_seconds, settings.grid_g_per_kwh)
    failures = failures_by_image(root, reports)
    out.write(format_summary(root, logs, reports, settings.eta_window_seconds, now))
    out.write(f"\nin the folder: {inventory.count('generated'):,} generated, "
              f"{inventory.count('upscaled'):,} upscaled, {inventory.cutout_count:,} cut-outs "
              f"in {inventory.count('cutouts_folder'):,} folders\n")
    review, problems = review_by_key(root, inventory, settings.cache_dir)
    table_of_review = review_table(inventory, review, set_aside_counts(root))
    out.write(review_lines(table_of_review))
    for line in problems:
        out.write(f"note: {line}\n")
    if not (settings.html or settings.contact_sheets or settings.csv_path):
        return 0

    report_dir = settings.report_dir
    try:
        report_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {report_dir} ({exc.strerror or exc}): is the share "
                         "mounted read-write?") from None
    cache = ReportCache(report_dir / REPORT_CACHE)
    read_metadata(root, inventory, cache)
    read_cutout_labels(root, inventory, cache)
    try:
        if settings.html or settings.contact_sheets:
            from drawpipe.report import \
                html as report_html  # Pillow (and, for charts, matplotlib) only now

            kinds = None if settings.html else ("generated", "upscaled")
            made = report_html.update_thumbnails(root, report_dir, inventory, cache,
                                                 settings.processes, kinds)
            out.write(f"thumbnails: {made.made:,} made, {made.unchanged:,} unchanged"
                      + (f", {made.failed:,} unreadable" if made.failed else "")
                      + (f", {made.removed:,} removed" if made.removed else "") + "\n")
            if settings.contact_sheets:
                sheets = report_html.update_contact_sheets(report_dir, inventory, cache,
                                                             settings.processes)
                out.write(f"contact sheets: {sheets.made:,} made, {sheets.unchanged:,} unchanged "
                          f"in {report_dir / report_html.SHEETS_FOLDER}\n")
            if settings.html:
                charts = report_html.update_charts(report_dir, logs, cache)
                out.write(charts.sentence() + "\n")
                written = report_html.write_pages(report_dir, report_html.PageData(
                    root, inventory, logs, reports, failures, charts,
                    settings.eta_window_seconds, review, table_of_review), cache)
                out.write(f"pages: {written.made:,} written, {written.unchanged:,} unchanged"
                          + (f", {written.removed:,} removed" if written.removed else "")
                          + f"; open {report_dir / report_html.PAGE_NAME}\n")
        if settings.csv_path:
            table = image_table(inventory, logs, failures,
                                measure_quality(root, inventory, settings.processes, out), review)
            written = write_if_changed(settings.csv_path, table_csv(table))
            out.write(f"{'wrote' if written else 'unchanged:'} {settings.csv_path} "
                      f"({counted(len(table), 'image')})\n")
    finally:
        cache.save()
    return 0


def review_by_key(root: Path, inventory: Inventory, cache_dir: Path | None
                  ) -> tuple[dict, list[str]]:
    """({image key: curate.verdicts.ReviewState}, lines worth a note) of every generated
    image: every host's verdicts for the take there now. Only images someone reviewed
    are hashed, with this Mac's hash cache (a second report hashes nothing unchanged)."""
    verdicts = load_verdicts(root)
    verdicts.check_images(lambda image: (root / image).is_file())
    keys = {entry.generated.path: key for key, entry in inventory.entries.items()
            if entry.generated}
    with HashCache(cache_dir) if cache_dir else nullcontext() as hashes:
        states = review_states(verdicts, keys, lambda image: file_sha256(root / image, hashes))
    return {keys[image]: state for image, state in states.items()}, verdicts.problems


def set_aside_counts(root: Path) -> dict[str, int]:
    """What REJECTED/ holds, by the stage that made it (the review table's labels):
    takes set aside by generate.py and outputs set aside as stale."""
    rejected = scan_inventory(root / REJECTED_FOLDER)
    return {"generated": rejected.count("generated"), "upscaled": rejected.count("upscaled"),
            "cut out": rejected.count("cutouts_folder")}


def measure_quality(root: Path, inventory: Inventory, processes: int, out) -> dict | None:
    """Quality signals of every generated image (curate/quality.py, cached under report/quality/),
    or None, said in one line, when the curate extra (numpy, imagehash) is missing."""
    if importlib.util.find_spec("imagehash") is None or importlib.util.find_spec("numpy") is None:
        out.write("quality columns left empty: numpy and imagehash are not installed "
                  "(.venv/bin/pip install -e '.[curate]')\n")
        return None
    from drawpipe.curate.quality import update_signals  # numpy, imagehash and Pillow load only now

    files = [entry.generated for entry in inventory.entries.values() if entry.generated]
    run = update_signals(root, files, host_name(), processes)
    out.write(run.sentence() + "\n")
    for line in run.problems:
        out.write(line + "\n")
    return run.signals


def work_left(root: Path, inventory: Inventory, queue: list[QueueItem] | None
              ) -> dict[str, tuple[int | None, str]]:
    """stage -> (jobs left or None when unknown, how it was counted); see this module's docstring."""
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
        generate = (missing, f"of the {counted(len(planned), 'image')} in the queue not generated yet")
    upscale = sum(1 for entry in inventory.entries.values() if entry.generated and not entry.upscaled)
    segment = sum(1 for entry in inventory.entries.values()
                  if entry.upscaled and not entry.cutouts_folder)
    return {
        "generate": generate,
        "upscale": (upscale, f"of {counted(generated, 'generated image')} not upscaled yet"),
        "segment": (segment, f"of {counted(upscaled, 'upscaled image')} without cut-outs yet"),
    }
