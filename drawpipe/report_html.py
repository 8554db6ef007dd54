"""The report's pictures: thumbnails, charts, the static page and contact sheets.

Everything is written under ``<root>/report/`` and linked relatively, so the folder
opens from the share on any Mac with no server and no internet::

    report/index.html                     the page (inline CSS, no script, no remote URL)
    report/thumbs/<source path>.jpg|.png  thumbnails (JPEG for photos, PNG for cut-outs)
    report/charts/<stage>.png             seconds per image, CPU %, RAM over time, by host
    report/contact_sheets/<Nation>_<category>.png

Clicking a thumbnail opens the full-size original through a relative link
(``../GENERATIONS/...``): it works wherever the share's folders sit side by side.

What is redone on a second run (report_data.ReportCache remembers the rest):
- a thumbnail, when its source's (size, mtime_ns) changed or the thumbnail is gone;
  thumbnails of sources that are gone are deleted;
- a chart, when its stage's log files (name, size, mtime_ns) changed; matplotlib
  (slow to import) is imported only then;
- a contact sheet, when its tiles (sources, labels) changed;
- the page, when its bytes would differ (it holds nothing that changes by itself:
  no "generated at" clock time).

Pillow is imported inside functions: importing this module costs nothing.
"""

import hashlib
import html
import importlib.util
import json
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from .report_data import ImageEntry, natural_key, temporary_name, write_if_changed
from .report_stats import (STAGES, Logs, StageReport, eta_sentence, format_time, latest_done,
                           summary_table)

PAGE_NAME = "index.html"
THUMBS_FOLDER = "thumbs"
CHARTS_FOLDER = "charts"
SHEETS_FOLDER = "contact_sheets"
# kind -> (longest side px, Pillow format, file extension)
THUMB_SPECS = {
    "generated": (320, "JPEG", ".jpg"),
    "upscaled": (320, "JPEG", ".jpg"),
    "cutout": (160, "PNG", ".png"),
}
# Bump to redraw every chart / sheet after changing how they are drawn.
CHART_VERSION = 2
SHEET_VERSION = 1
SHEET_TILE_PX = 240
SHEET_LABEL_PX = 40
SHEET_HEADER_PX = 44
SHEET_MAX_COLUMNS = 6
# Fewer thumbnails than this are made in this process: a pool's start-up costs more.
POOL_MIN_TASKS = 24
# zlib level of the PNGs written here: level 1 encodes a 4 MP contact sheet ~4x faster
# than Pillow's default 6 for ~13 % more bytes (bench/report.py).
PNG_COMPRESS_LEVEL = 1


@dataclass
class Made:
    made: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0


def _write_atomically(path: Path, save) -> None:
    """``save(temporary_path)`` then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(temporary_name(path.name))
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- thumbnails


def thumbnail_path(source: str, kind: str) -> str:
    """"GENERATIONS/France/family/France_family_1.png" -> "thumbs/GENERATIONS/France/
    family/France_family_1.jpg" (relative to report/)."""
    stem = source[:-4] if source.lower().endswith(".png") else source
    return f"{THUMBS_FOLDER}/{stem}{THUMB_SPECS[kind][2]}"


def make_thumbnail(task: tuple[str, str, str]) -> tuple[int, int, str | None]:
    """(source file, thumbnail file, kind) -> (width_px, height_px, None), or
    (0, 0, why) when the source cannot be read. Runs in pool processes."""
    from PIL import Image

    source, target, kind = task
    longest, image_format, _ = THUMB_SPECS[kind]
    try:
        with Image.open(source) as image:
            # reducing_gap: decode-time reduction first, then a cheap resample.
            image.thumbnail((longest, longest), Image.Resampling.LANCZOS, reducing_gap=2.0)
            if image_format == "JPEG":
                image = image.convert("RGB")
            elif image.mode not in ("RGBA", "RGB", "LA", "L"):
                image = image.convert("RGBA")
            options = ({"quality": 85} if image_format == "JPEG"
                       else {"compress_level": PNG_COMPRESS_LEVEL})
            _write_atomically(Path(target), lambda path: image.save(path, image_format, **options))
            return image.width, image.height, None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return 0, 0, f"{type(exc).__name__}: {exc}"


def _map(function, tasks: list, processes: int, pool_min_tasks: int) -> list:
    """[function(task) for task in tasks], in a pool of up to ``processes`` processes
    when there are at least ``pool_min_tasks`` tasks."""
    if len(tasks) < pool_min_tasks or processes <= 1:
        return [function(task) for task in tasks]
    workers = min(processes, math.ceil(len(tasks) / max(1, pool_min_tasks // 4)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, tasks,
                             chunksize=max(1, min(64, len(tasks) // (workers * 4)))))


def _existing_files(folder: Path, relative_to: Path) -> set[str]:
    """Relative paths of the files under ``folder``: one listing per folder, no stat
    per file (cheap on SMB)."""
    found = set()
    for directory, _, files in os.walk(folder):
        prefix = Path(directory).relative_to(relative_to).as_posix()
        found.update(f"{prefix}/{name}" for name in files)
    return found


def update_thumbnails(root: Path, report_dir: Path, inventory, cache, processes: int = 1,
                      kinds: tuple[str, ...] | None = None) -> Made:
    """Make the missing or outdated thumbnails of ``inventory``'s images (only of
    ``kinds`` when given); delete those whose source is gone. The cache's "thumbs"
    entry of a source: [size, mtime_ns, width_px, height_px, thumbnail path, error]."""
    result = Made()
    existing = _existing_files(report_dir / THUMBS_FOLDER, report_dir)
    tasks, pending = [], []
    every_source = set()
    for image, kind in inventory.files():
        every_source.add(image.path)
        if kinds is not None and kind not in kinds:
            continue
        target = thumbnail_path(image.path, kind)
        cached = cache.get("thumbs", image.path)
        if (cached and cached[0] == image.size and cached[1] == image.mtime_ns
                and cached[4] == target and (cached[5] or target in existing)):
            result.unchanged += 1
            result.failed += bool(cached[5])
            continue
        tasks.append((str(root / image.path), str(report_dir / target), kind))
        pending.append((image, target))
    outcomes = _map(make_thumbnail, tasks, processes, POOL_MIN_TASKS)
    for (image, target), (width, height, error) in zip(pending, outcomes):
        cache.put("thumbs", image.path, [image.size, image.mtime_ns, width, height, target, error])
        result.made += error is None
        result.failed += error is not None
    gone = {key: cache.get("thumbs", key) for key in cache.sections["thumbs"]
            if key not in every_source}
    cache.keep_only("thumbs", every_source)
    for entry in gone.values():
        if entry and entry[4] in existing:
            (report_dir / entry[4]).unlink(missing_ok=True)
            result.removed += 1
    return result


# --------------------------------------------------------------------------- charts


@dataclass
class Charts:
    paths: dict[str, str] = field(default_factory=dict)  # stage -> path relative to report/
    drawn: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing_reason: str | None = None

    def sentence(self) -> str:
        if self.missing_reason:
            return f"charts: not drawn ({self.missing_reason})"
        return f"charts: {len(self.drawn)} drawn, {len(self.unchanged)} unchanged"


def update_charts(report_dir: Path, logs: Logs, cache) -> Charts:
    """report/charts/<stage>.png for every stage with rows, redrawn only when that
    stage's log files changed."""
    charts = Charts()
    to_draw = []
    for stage in STAGES:
        if not logs.rows.get(stage):
            if cache.get("charts", stage) is not None:  # its logs are gone: so is its chart
                (report_dir / CHARTS_FOLDER / f"{stage}.png").unlink(missing_ok=True)
                cache.keep_only("charts", set(cache.sections["charts"]) - {stage})
            continue
        relative = f"{CHARTS_FOLDER}/{stage}.png"
        signature = [CHART_VERSION, logs.files.get(stage, [])]
        signature = json.loads(json.dumps(signature))  # tuples -> lists, as the cache holds them
        if cache.get("charts", stage) == signature and (report_dir / relative).is_file():
            charts.unchanged.append(stage)
            charts.paths[stage] = relative
        else:
            to_draw.append((stage, relative, signature))
    if to_draw:
        # matplotlib is slow to import: only draw_stage_chart imports it, only when due.
        if importlib.util.find_spec("matplotlib") is None:
            charts.missing_reason = ("matplotlib is not installed: .venv/bin/pip install "
                                     "matplotlib, then run the report again")
            return charts
        for stage, relative, signature in to_draw:
            draw_stage_chart(stage, logs.rows[stage], report_dir / relative)
            cache.put("charts", stage, signature)
            charts.drawn.append(stage)
            charts.paths[stage] = relative
    return charts


def _utc(epoch_seconds: float) -> datetime:
    # naive UTC: matplotlib's date axis then labels UTC whatever the Mac's time zone
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).replace(tzinfo=None)


def draw_stage_chart(stage: str, rows: list, path: Path) -> None:
    """Three panels sharing a time axis (UTC): seconds per image ("done" dots, failed
    crosses), the machine's mean CPU % and its mean used RAM per job; one colour per host."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7.2), dpi=100, layout="constrained")
    seconds_axes, cpu_axes, ram_axes = figure.subplots(3, 1, sharex=True)
    colours = [f"C{n}" for n in range(10)]
    hosts = sorted({row.host for row in rows})
    for index, host in enumerate(hosts):
        colour = colours[index % len(colours)]
        mine = [row for row in rows if row.host == host]
        done = [row for row in mine if row.status == "done" and row.seconds is not None]
        failed = [row for row in mine if row.status == "failed" and row.seconds is not None]
        seconds_axes.scatter([_utc(r.end) for r in done], [r.seconds for r in done], s=9,
                             color=colour, label=host)
        if failed:
            seconds_axes.scatter([_utc(r.end) for r in failed], [r.seconds for r in failed],
                                 s=30, marker="x", color=colour, label=f"{host} failed")
        for axes, name in ((cpu_axes, "cpu_percent_mean"), (ram_axes, "ram_mb_mean")):
            points = [(_utc(r.end), value) for r in mine if (value := getattr(r, name)) is not None]
            if points:
                # Dots, not lines: hosts overlap in time and a night has thousands of jobs.
                axes.plot(*zip(*points), ".", markersize=5, alpha=0.7, color=colour, label=host)
    for axes, name in ((cpu_axes, "cpu_percent_mean"), (ram_axes, "ram_mb_mean")):
        if not any(getattr(row, name) is not None for row in rows):
            axes.text(0.5, 0.5, f"not logged ({name})", transform=axes.transAxes,
                      ha="center", va="center", color="0.45")
            axes.set_yticks([])
    seconds_axes.set_ylabel("seconds per image")
    cpu_axes.set_ylabel("CPU % (machine)")
    ram_axes.set_ylabel("RAM used (MB)")
    ram_axes.set_xlabel("time (UTC)")
    for axes in (seconds_axes, cpu_axes, ram_axes):
        axes.grid(True, alpha=0.3)
    if any(row.cpu_percent_mean is not None for row in rows):
        cpu_axes.set_ylim(bottom=0)
    locator = AutoDateLocator()
    ram_axes.xaxis.set_major_locator(locator)
    ram_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    seconds_axes.legend(loc="upper left", fontsize="small", ncols=min(4, 2 * len(hosts)))
    figure.suptitle(f"{stage}: every job, by host")
    _write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))


# --------------------------------------------------------------------------- contact sheets


def sheet_name(group: str) -> str:
    """"France/family" -> "France_family.png"."""
    return re.sub(r"[^\w.-]+", "_", group.replace("/", "_")).strip("_") + ".png" if group else "top.png"


def _tile_labels(entry) -> tuple[str, str]:
    """("France_family_3 (not upscaled)", "seed 3236871110, 2 cut-outs")."""
    details = []
    if entry.meta.get("seed"):
        details.append(f"seed {entry.meta['seed']}")
    if entry.cutouts_folder:
        details.append(f"{len(entry.cutouts)} cut-outs")
    return entry.name + ("" if entry.upscaled else " (not upscaled)"), ", ".join(details)


def update_contact_sheets(report_dir: Path, inventory, cache, processes: int = 1) -> Made:
    """One PNG grid per group (nation/category) from the thumbnails (the upscaled one
    where made, else the generated one), each tile labelled; redrawn only when its
    tiles changed. The cache's "sheets" entry: [signature, file name]."""
    result = Made()
    groups = inventory.groups()
    tasks, due = [], []
    for group, entries in groups.items():
        tiles = []
        for entry in entries:
            image = entry.upscaled or entry.generated
            cached = cache.get("thumbs", image.path) if image else None
            if cached and not cached[5]:
                tiles.append((cached[4], _tile_labels(entry), image.size, image.mtime_ns))
        name = sheet_name(group)
        if not tiles:
            continue
        digest = hashlib.sha256(json.dumps([SHEET_VERSION, tiles]).encode()).hexdigest()
        path = report_dir / SHEETS_FOLDER / name
        if cache.get("sheets", group) == [digest, name] and path.is_file():
            result.unchanged += 1
            continue
        tasks.append((group, [(report_dir / tile[0], tile[1]) for tile in tiles], path))
        due.append((group, [digest, name]))
    _map(_draw_contact_sheet_task, tasks, processes, 4)
    for group, entry in due:
        cache.put("sheets", group, entry)
        result.made += 1
    names = {group: cache.get("sheets", group)[1] for group in cache.sections["sheets"]}
    for group in cache.keep_only("sheets", groups):
        (report_dir / SHEETS_FOLDER / names[group]).unlink(missing_ok=True)
        result.removed += 1
    return result


def _draw_contact_sheet_task(task) -> None:
    draw_contact_sheet(*task)


def draw_contact_sheet(group: str, tiles: list[tuple[Path, tuple[str, str]]], path: Path) -> None:
    """A white grid of SHEET_TILE_PX cells (image centred, two label lines below) under
    a title line; ``tiles``: (thumbnail file, (line 1, line 2))."""
    from PIL import Image, ImageDraw, ImageFont

    columns = min(SHEET_MAX_COLUMNS, max(1, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_width, cell_height = SHEET_TILE_PX + 16, SHEET_TILE_PX + SHEET_LABEL_PX + 16
    sheet = Image.new("RGB", (columns * cell_width + 16, SHEET_HEADER_PX + rows * cell_height),
                      "white")
    draw = ImageDraw.Draw(sheet)
    title_font = ImageFont.load_default(size=22)
    label_font = ImageFont.load_default(size=13)
    draw.text((16, 10), f"{group.replace('/', ' / ')}: {len(tiles)} images", fill="black",
              font=title_font)
    for index, (thumbnail, (line1, line2)) in enumerate(tiles):
        left = 16 + (index % columns) * cell_width
        top = SHEET_HEADER_PX + (index // columns) * cell_height
        draw.rectangle((left - 1, top - 1, left + SHEET_TILE_PX, top + SHEET_TILE_PX),
                       fill="#eeeeee")
        try:
            with Image.open(thumbnail) as picture:
                picture.thumbnail((SHEET_TILE_PX, SHEET_TILE_PX))
                sheet.paste(picture.convert("RGB"), (left + (SHEET_TILE_PX - picture.width) // 2,
                                                     top + (SHEET_TILE_PX - picture.height) // 2))
        except OSError:
            draw.text((left + 8, top + 8), "cannot read", fill="red", font=label_font)
        draw.text((left, top + SHEET_TILE_PX + 5), _fit(draw, line1, label_font), fill="black",
                  font=label_font)
        draw.text((left, top + SHEET_TILE_PX + 22), _fit(draw, line2, label_font), fill="#555555",
                  font=label_font)
    _write_atomically(path, lambda temporary: sheet.save(temporary, "PNG",
                                                         compress_level=PNG_COMPRESS_LEVEL))


def _fit(draw, text: str, font) -> str:
    while len(text) > 4 and draw.textlength(text, font=font) > SHEET_TILE_PX:
        text = text[:-4] + "..."
    return text


# --------------------------------------------------------------------------- the page

_CSS = """
:root { color-scheme: light; --line: #d9d9de; --muted: #6b6b75; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, BlinkMacSystemFont, "Helvetica Neue", Arial,
       sans-serif; color: #1d1d22; background: #f6f6f8; }
header, main { max-width: 1500px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 0 0 4px; }
.muted, figcaption { color: var(--muted); }
.note { color: var(--bad); }
table { border-collapse: collapse; background: white; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, .failures td { text-align: left; }
.failures td.error { white-space: normal; max-width: 640px; }
tr.total td { font-weight: 600; }
h3.stage { margin: 18px 0 2px; font-size: 16px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 12px; }
.charts img { width: 100%; height: auto; background: white; border: 1px solid var(--line); }
.failures th, .failures td { text-align: left; }
nav.groups { columns: 4 220px; background: white; border: 1px solid var(--line); padding: 8px 16px; }
nav.groups div { break-inside: avoid; }
section.group { margin-top: 24px; }
.item { display: flex; flex-wrap: wrap; gap: 12px; background: white; border: 1px solid var(--line);
        border-radius: 6px; padding: 10px; margin: 10px 0; }
.item.failed { border-color: var(--bad); }
figure { margin: 0; width: 244px; }
figure .frame { width: 244px; height: 244px; display: flex; align-items: center;
                justify-content: center; background: #ececf0; border-radius: 4px; }
figure img { max-width: 240px; max-height: 240px; width: auto; height: auto; display: block; }
.empty { color: var(--muted); padding: 8px; text-align: center; }
.cutouts { width: 330px; }
.cutouts .tiles { display: flex; flex-wrap: wrap; align-content: flex-start; gap: 4px;
                  height: 244px; overflow-y: auto; }
.cutouts .tiles.none { align-items: center; justify-content: center; background: #ececf0;
                       border-radius: 4px; }
.cutouts .tiles a { width: 76px; height: 76px; display: flex; align-items: center;
                    justify-content: center; border-radius: 3px;
                    background: repeating-conic-gradient(#ddd 0 25%, #fff 0 50%) 0 0 / 12px 12px; }
.cutouts img { max-width: 76px; max-height: 76px; width: auto; height: auto; display: block; }
.meta { flex: 1; min-width: 260px; }
.prompt { white-space: pre-wrap; margin: 4px 0; }
details { margin: 4px 0; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _url(relative: str) -> str:
    return quote(relative, safe="/")


def _anchor(prefix: str, key: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "-", key)


def _seconds(row) -> str:
    if row is None:
        return ""
    took = f"{row.seconds:,.1f} s" if row.seconds is not None else "done"
    return f"{took} on {row.host}"


def _thumbnail(image, cache, alt: str, link_prefix: str = "../") -> str | None:
    cached = cache.get("thumbs", image.path)
    if not cached or cached[5] or not cached[2]:
        return None
    return (f'<a href="{_url(link_prefix + image.path)}"><img src="{_url(cached[4])}" '
            f'width="{cached[2]}" height="{cached[3]}" loading="lazy" alt="{_e(alt)}"></a>')


def _figure(image, cache, label: str, caption: str, absent: str) -> str:
    if image is None:
        inner = f'<div class="empty">{_e(absent)}</div>'
    else:
        inner = _thumbnail(image, cache, f"{label}: {image.path}") or (
            f'<div class="empty">cannot read {_e(image.path)}</div>')
    return (f'<figure><div class="frame">{inner}</div>'
            f'<figcaption>{_e(label)}{" · " + _e(caption) if caption else ""}</figcaption></figure>')


def _item(entry, cache, done: dict, failures: dict) -> str:
    failed = failures.get(entry.key, {})
    parts = [f'<article class="item{" failed" if failed else ""}" id="{_anchor("i-", entry.key)}">']
    parts.append(_figure(entry.generated, cache, "generated", _seconds(done["generate"].get(entry.key)),
                         "generate failed" if "generate" in failed else "no generated image"))
    parts.append(_figure(entry.upscaled, cache, "upscaled", _seconds(done["upscale"].get(entry.key)),
                         "upscale failed" if "upscale" in failed else "not upscaled yet"))
    if entry.cutouts_folder:
        tiles = "".join(
            tile for k, cutout in enumerate(entry.cutouts, 1)
            if (tile := _thumbnail(cutout, cache, f"cut-out {k}")) is not None)
        segment = _seconds(done["segment"].get(entry.key))
        if not tiles:
            tiles = '<div class="empty">no object found</div>'
        parts.append(f'<div class="cutouts"><div class="tiles{"" if entry.cutouts else " none"}">'
                     f'{tiles}</div><figcaption>{len(entry.cutouts)} cut-outs'
                     f'{" · " + _e(segment) if segment else ""}</figcaption></div>')
    else:
        absent = "segment failed" if "segment" in failed else "no cut-outs yet"
        parts.append(f'<div class="cutouts"><div class="tiles none"><div class="empty">{absent}'
                     '</div></div><figcaption>cut-outs</figcaption></div>')
    meta = entry.meta
    facts = [f"seed {meta['seed']}" if meta.get("seed") else None, meta.get("model"),
             meta.get("size"), f"{meta['steps']} steps" if meta.get("steps") else None,
             meta.get("sampler"), f"CFG {meta['cfg_scale']}" if meta.get("cfg_scale") else None]
    parts.append(f'<div class="meta"><h3>{_e(entry.name)}</h3>')
    parts.append(f'<div class="muted">{_e(" · ".join(fact for fact in facts if fact))}</div>')
    if meta.get("prompt"):
        parts.append(f'<p class="prompt">{_e(meta["prompt"])}</p>')
    if meta.get("negative_prompt"):
        parts.append(f'<details><summary>negative prompt</summary><p class="prompt">'
                     f'{_e(meta["negative_prompt"])}</p></details>')
    if meta.get("error"):
        parts.append(f'<p class="note">{_e(meta["error"])}</p>')
    for stage, row in failed.items():
        parts.append(f'<p class="note">{_e(stage)} failed on {_e(row.host)}, '
                     f'{_e(format_time(row.end))}, attempt {row.attempt}: {_e(row.error or "no message")}</p>')
    parts.append("</div></article>")
    return "".join(parts)


def _table(cells: list[list[str]], total_last: bool = True) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in cells[0])
    rows = []
    for index, row in enumerate(cells[1:], 1):
        total = ' class="total"' if total_last and index == len(cells) - 1 else ""
        rows.append(f"<tr{total}>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_page(root: Path, inventory, logs: Logs, reports: list[StageReport], failures: dict,
                charts: Charts, window_seconds: float, cache) -> str:
    """The whole page as a string (see the module docstring)."""
    latest = max((row.end for rows in logs.rows.values() for row in rows), default=None)
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>drawpipe report: {_e(root.name)}</title><style>{_CSS}</style></head><body>",
           f"<header><h1>drawpipe report: {_e(root.name)}</h1>",
           f'<div class="muted">{_e(root)} · logs up to {_e(format_time(latest))} · '
           f"{inventory.count('generated'):,} generated, {inventory.count('upscaled'):,} upscaled, "
           f"{inventory.cutout_count:,} cut-outs</div>"]
    out.extend(f'<div class="note">{_e(line)}</div>' for line in logs.skipped_lines())
    out.append("</header><main><h2>Progress</h2>")
    for report in reports:
        out.append(f'<h3 class="stage">{_e(report.stage)}</h3>')
        if report.figures:
            out.append(_table(summary_table(report.figures)))
        else:
            out.append('<div class="muted">no job logged</div>')
        out.append(f"<div>{_e(eta_sentence(report, window_seconds))}</div>")
    if charts.paths or charts.missing_reason:
        out.append('<h2>Charts</h2><div class="charts">')
        if charts.missing_reason:
            out.append(f'<div class="note">charts not drawn: {_e(charts.missing_reason)}</div>')
        out.extend(f'<img src="{_url(path)}" alt="{_e(stage)} chart">'
                   for stage, path in charts.paths.items())
        out.append("</div>")
    failed_rows = [row for report in reports for row in report.failures]
    if failed_rows:
        cells = "".join(
            f'<tr><td>{_e(row.stage)}</td><td><a href="#{_anchor("i-", row.key or row.output)}">'
            f'{_e(row.output)}</a></td><td>{_e(row.host)}</td><td>{_e(format_time(row.end))}</td>'
            f'<td>{row.attempt}</td><td class="error">{_e(row.error or "no message")}</td></tr>'
            for row in failed_rows)
        out.append(f'<h2>Failed jobs ({len(failed_rows):,})</h2><p class="muted">Their last try '
                   "failed and no output exists; running the same command again retries them.</p>"
                   '<table class="failures"><tr><th>stage</th><th>job</th><th>host</th>'
                   f"<th>time</th><th>attempts</th><th>error</th></tr>{cells}</table>")

    groups = inventory.groups()
    for key in failures:
        if key not in inventory.entries:
            entry = ImageEntry(key)
            groups.setdefault(entry.group, []).append(entry)
    done = {stage: latest_done(logs.rows.get(stage, [])) for stage in STAGES}
    ordered = sorted(groups, key=natural_key)
    out.append("<h2>Images</h2><nav class=\"groups\">")
    out.extend(f'<div><a href="#{_anchor("g-", group)}">{_e(group.replace("/", " · ") or "(top)")}'
               f'</a> <span class="muted">{len(groups[group])}</span></div>' for group in ordered)
    out.append("</nav>")
    for group in ordered:
        entries = sorted(groups[group], key=lambda entry: natural_key(entry.key))
        sheet = cache.get("sheets", group)
        link = (f' · <a href="{_url(SHEETS_FOLDER + "/" + sheet[1])}">contact sheet</a>'
                if sheet else "")
        upscaled = sum(1 for entry in entries if entry.upscaled)
        cutouts = sum(len(entry.cutouts) for entry in entries)
        out.append(f'<section class="group" id="{_anchor("g-", group)}">'
                   f'<h2>{_e(group.replace("/", " · ") or "(top)")}</h2>'
                   f'<div class="muted">{len(entries)} images, {upscaled} upscaled, '
                   f"{cutouts} cut-outs{link}</div>")
        out.extend(_item(entry, cache, done, failures) for entry in entries)
        out.append("</section>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def write_page(report_dir: Path, root: Path, inventory, logs: Logs, reports, failures,
               charts: Charts, window_seconds: float, cache) -> bool:
    """Write report/index.html when its content changed; True when written."""
    page = render_page(root, inventory, logs, reports, failures, charts, window_seconds, cache)
    return write_if_changed(report_dir / PAGE_NAME, page.encode("utf-8"))
