"""The report's pictures: thumbnails, charts, the static pages and contact sheets.

Everything is written under ``<root>/report/`` and linked relatively, so the folder
opens from the share on any Mac with no server and no internet::

    report/index.html                     figures, review, charts, failures, and a link
                                          to each nation's page (templates/report.html:
                                          inline CSS, no script, no remote URL)
    report/nations/<Nation>.html          that nation's images (templates/nation.html):
                                          a page loads only its own thumbnails, so the
                                          report stays quick at thousands of images
    report/thumbs/<source path>.jpg|.png  thumbnails (JPEG for photos, PNG for cut-outs)
    report/charts/<stage>.png             seconds per image, CPU %, RAM and power (W)
                                          over time, by host
    report/contact_sheets/<Nation>_<category>.png

Clicking a thumbnail opens the full-size original through a relative link
(``../GENERATIONS/...``): it works wherever the share's folders sit side by side.

What is redone on a second run (inventory.ReportCache remembers the rest):
- a thumbnail, when its source's (size, mtime_ns) changed or the thumbnail is gone;
  thumbnails of sources that are gone are deleted;
- a chart, when its stage's log files (name, size, mtime_ns) changed; matplotlib
  (slow to import) is imported only then;
- a contact sheet, when its tiles (sources, labels) changed;
- a page, when its bytes would differ (it holds nothing that changes by itself:
  no "generated at" clock time, except the index's snapshot of the workers' live state,
  shown only while some run or a control file is there); the page of a nation that is
  gone is deleted.

Pillow is imported inside functions: importing this module costs nothing.
"""

import hashlib
import importlib.util
import json
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from drawpipe import pages
from drawpipe.files import save_atomically, write_if_changed
from drawpipe.curate.verdicts import NOT_REVIEWED
from drawpipe.inventory import STAGES, ImageEntry, Logs, latest_done, status_view
from drawpipe.layout import natural_key
from drawpipe.pages import anchor, counted, cutout_names, cutouts_caption, meta_view
from drawpipe.report.energy import energy_notes, energy_table, power_over_time
from drawpipe.report.stats import (REVIEW_WORDS, StageReport, eta_sentence, format_time,
                                   summary_table)

PAGE_NAME = "index.html"
NATIONS_FOLDER = "nations"  # a page per nation: report/nations/<Nation>.html
TOP_LEVEL = "(top level)"  # the "nation" of images not in a nation's folder
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
CHART_VERSION = 3
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


def _save_in_place(path: Path, save) -> None:
    """``save(scratch)`` into report/'s folders (made when missing), then renamed in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(path, save)


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
            _save_in_place(Path(target), lambda path: image.save(path, image_format, **options))
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
    """Four panels sharing a time axis (UTC): seconds per image ("done" dots, failed
    crosses), the machine's mean CPU % and its mean used RAM per job, and its power while
    jobs ran (report/energy.py power_over_time) with its idle power; one colour per host."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 9.4), dpi=100, layout="constrained")
    seconds_axes, cpu_axes, ram_axes, power_axes = figure.subplots(4, 1, sharex=True)
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
    _draw_power(power_axes, rows, hosts, colours)
    seconds_axes.set_ylabel("seconds per image")
    cpu_axes.set_ylabel("CPU % (machine)")
    ram_axes.set_ylabel("RAM used (MB)")
    power_axes.set_xlabel("time (UTC)")
    for axes in (seconds_axes, cpu_axes, ram_axes, power_axes):
        axes.grid(True, alpha=0.3)
    if any(row.cpu_percent_mean is not None for row in rows):
        cpu_axes.set_ylim(bottom=0)
    locator = AutoDateLocator()
    power_axes.xaxis.set_major_locator(locator)
    power_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    seconds_axes.legend(loc="upper left", fontsize="small", ncols=min(4, 2 * len(hosts)))
    figure.suptitle(f"{stage}: every job, by host")
    _save_in_place(path, lambda temporary: figure.savefig(temporary, format="png"))


def _draw_power(axes, rows: list, hosts: list[str], colours: list[str]) -> None:
    """The power panel: per host its meter's W while jobs ran (dots) and the idle W its
    rows logged (dashes), "client side" for a Mac driving a remote server; the hosts
    without energy named, never drawn."""
    series = power_over_time(rows)
    for index, host in enumerate(hosts):
        power = series.get(host)
        if power is None:
            continue
        colour = colours[index % len(colours)]
        label = f"{host} (client side)" if power.client_side else host
        if power.busy:
            axes.plot(*zip(*[(_utc(t), w) for t, w in power.busy]), ".", markersize=5,
                      alpha=0.7, color=colour, label=label)
        if power.idle:
            axes.plot(*zip(*[(_utc(t), w) for t, w in power.idle]), "_", markersize=8,
                      alpha=0.5, color=colour, label=f"{host} idle")
    unmeasured = [host for host in hosts if host not in series]
    if unmeasured:
        axes.text(0.99, 0.95, "not measured on " + ", ".join(unmeasured),
                  transform=axes.transAxes, ha="right", va="top", color="0.45")
    if series:
        axes.set_ylim(bottom=0)
        axes.legend(loc="lower left", fontsize="small", ncols=min(4, 2 * len(series)))
    else:
        axes.set_yticks([])
    axes.set_ylabel("power (W, energy meter)")


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
    draw.text((16, 10), f"{group.replace('/', ' / ')}: {counted(len(tiles), 'image')}", fill="black",
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
    _save_in_place(path, lambda temporary: sheet.save(temporary, "PNG",
                                                         compress_level=PNG_COMPRESS_LEVEL))


def _fit(draw, text: str, font) -> str:
    while len(text) > 4 and draw.textlength(text, font=font) > SHEET_TILE_PX:
        text = text[:-4] + "..."
    return text


# --------------------------------------------------------------------------- the page
#
# The page is templates/report.html (Jinja2, autoescaped; drawpipe/pages.py); the functions
# below turn the report's data into the plain view dicts the templates show.


def _seconds(row) -> str:
    if row is None:
        return ""
    took = f"{row.seconds:,.1f} s" if row.seconds is not None else "done"
    return f"{took} on {row.host}"


def nation_of(group: str) -> str:
    """The nation of a group of images: its first folder ("France" of "France/family");
    images outside any folder are TOP_LEVEL's."""
    return group.partition("/")[0] or TOP_LEVEL


def nation_page(nation: str) -> str:
    """The nation's page, relative to report/: "nations/France.html"."""
    return f"{NATIONS_FOLDER}/{nation}.html"


def _thumbnail(image, cache, alt: str, up: str) -> dict | None:
    """{href, src, width, height, alt} of ``image``'s thumbnail; None when it has none.
    ``up``: the way from the page to report/ ("" for index.html, "../" for a nation's)."""
    cached = cache.get("thumbs", image.path)
    if not cached or cached[5] or not cached[2]:
        return None
    return {"href": f"{up}../{image.path}", "src": up + cached[4], "width": cached[2],
            "height": cached[3], "alt": alt}


def _figure(image, cache, label: str, caption: str, absent: str, up: str) -> dict:
    view = {"label": label, "caption": caption, "absent": absent}
    if image is not None:
        view.update(_thumbnail(image, cache, f"{label}: {image.path}", up)
                    or {"absent": f"cannot read {image.path}"})
    return view


def _item(entry, cache, done: dict, failures: dict, review, up: str) -> dict:
    """The gallery view of one image (templates/gallery.html's ``item``); ``review``: its
    curate.verdicts.ReviewState."""
    failed = failures.get(entry.key, {})
    if entry.cutouts_folder:
        tiles = []
        for k, cutout in enumerate(entry.cutouts, 1):
            names = cutout_names(entry, cutout, k)
            tile = _thumbnail(cutout, cache, names["alt"], up)
            if tile is not None:
                tiles.append({**tile, "name": names["name"], "title": names["title"]})
        cutouts = {"tiles": tiles, "absent": "no object found",
                   "caption": cutouts_caption(entry, _seconds(done["segment"].get(entry.key)))}
    else:
        cutouts = {"tiles": [], "caption": "cut-outs",
                   "absent": "segment failed" if "segment" in failed else "no cut-outs yet"}
    notes = [entry.meta["error"]] if entry.meta.get("error") else []
    notes += [f"{stage} failed on {row.host}, {format_time(row.end)}, attempt {row.attempt}: "
              f"{row.error or 'no message'}" for stage, row in failed.items()]
    return {
        "anchor": anchor("i-", entry.key), "failed": bool(failed),
        "generated": _figure(entry.generated, cache, "generated",
                             _seconds(done["generate"].get(entry.key)),
                             "generate failed" if "generate" in failed else "no generated image",
                             up),
        "upscaled": _figure(entry.upscaled, cache, "upscaled",
                            _seconds(done["upscale"].get(entry.key)),
                            "upscale failed" if "upscale" in failed else "not upscaled yet", up),
        "cutouts": cutouts, **meta_view(entry), "notes": notes,
        "review": {"word": review.word, "verdict": review.verdict.verdict if review.verdict else "",
                   "text": review.verdict.sentence() if review.verdict else "not reviewed"}
        if entry.generated else None,
        "earlier": review.earlier(entry.meta.get("take", 1)),
    }


def _energy_view(report: StageReport) -> dict | None:
    """The page's energy of one stage: {"table": rows of cells or [], "notes": [...]};
    None when no job was logged."""
    if report.energy is None or not (report.energy.figures or report.energy.not_measured):
        return None
    return {"table": energy_table(report.energy), "notes": energy_notes(report.energy)}


@dataclass(frozen=True)
class PageData:
    """What the report's pages show, besides the cache's thumbnails."""

    root: Path
    inventory: object
    logs: Logs
    reports: list
    failures: dict
    charts: Charts
    window_seconds: float
    review: dict  # key -> curate.verdicts.ReviewState
    review_table: dict


def render_pages(data: PageData, cache) -> dict[str, str]:
    """Every page of the report: {path relative to report/: HTML}. ``index.html`` holds
    the figures, charts, failures and review counts and links each nation's page;
    ``nations/<Nation>.html`` holds that nation's images (and loads only their
    thumbnails), so a dataset of thousands of images is many small pages."""
    inventory, logs = data.inventory, data.logs
    latest = max((row.end for rows in logs.rows.values() for row in rows), default=None)
    grouped = inventory.groups()
    for key in data.failures:
        if key not in inventory.entries:
            entry = ImageEntry(key)
            grouped.setdefault(entry.group, []).append(entry)
    by_nation: dict[str, list[str]] = {}
    for group in sorted(grouped, key=natural_key):
        by_nation.setdefault(nation_of(group), []).append(group)
    nations = sorted(by_nation, key=lambda nation: (nation == TOP_LEVEL, natural_key(nation)))
    common = {"root_name": data.root.name, "root": str(data.root), "latest": format_time(latest),
              "counts": {"generated": inventory.count("generated"),
                         "upscaled": inventory.count("upscaled"),
                         "cutouts": inventory.cutout_count},
              "notes": logs.skipped_lines()}
    done = {stage: latest_done(logs.rows.get(stage, [])) for stage in STAGES}

    def group_view(group: str) -> dict:
        """A nation and category: its figures and its images."""
        entries = sorted(grouped[group], key=lambda entry: natural_key(entry.key))
        sheet = cache.get("sheets", group)
        states = {entry.key: data.review.get(entry.key, NOT_REVIEWED) for entry in entries}
        words = [states[entry.key].word for entry in entries if entry.generated]
        return {"anchor": anchor("g-", group), "title": group.replace("/", " · ") or "(top)",
                "sheet": f"{SHEETS_FOLDER}/{sheet[1]}" if sheet else None,
                "count": len(entries),
                "upscaled": sum(1 for entry in entries if entry.upscaled),
                "cutouts": sum(len(entry.cutouts) for entry in entries),
                "review": {word: words.count(word) for word in REVIEW_WORDS},
                "images": [_item(entry, cache, done, data.failures, states[entry.key], "../")
                           for entry in entries]}

    pages_made, nation_links = {}, []
    for number, nation in enumerate(nations):
        neighbours = {"previous": nations[number - 1] if number else None,
                      "next": nations[number + 1] if number + 1 < len(nations) else None}
        groups = [group_view(group) for group in by_nation[nation]]
        pages_made[nation_page(nation)] = pages.render(
            "nation.html", **common, nation=nation, neighbours=neighbours, groups=groups)
        # The index links each group with its figures, without its images.
        nation_links.append({"nation": nation, "href": nation_page(nation),
                             "groups": [{key: value for key, value in view.items()
                                         if key != "images"} for view in groups]})
    stages = [{"name": report.stage,
               "table": summary_table(report.figures) if report.figures else None,
               "phases": report.phases,  # where the time went on gRPC servers
               "eta": eta_sentence(report, data.window_seconds),
               "energy": _energy_view(report)} for report in data.reports]
    failed_rows = [{"stage": row.stage,
                    "page": nation_page(nation_of(ImageEntry(row.key or row.output).group)),
                    "anchor": anchor("i-", row.key or row.output),
                    "output": row.output, "host": row.host, "time": format_time(row.end),
                    "attempt": row.attempt, "error": row.error or "no message"}
                   for report in data.reports for row in report.failures]
    pages_made[PAGE_NAME] = pages.render(
        "report.html", **common, stages=stages, charts=data.charts, failed_rows=failed_rows,
        review=data.review_table, nations=nation_links, status=_live_status(data.root))
    return pages_made


def _live_status(root: Path) -> dict | None:
    """A snapshot of the workers' live state (inventory.status_view) while any runs, or the
    control files say something; None otherwise, so an idle share's page stays the same."""
    status = status_view(root)
    return status if status["rows"] or status["lines"] else None


def write_pages(report_dir: Path, data: PageData, cache) -> Made:
    """Write the pages whose content changed; delete the pages of nations that are gone."""
    made = Made()
    rendered = render_pages(data, cache)
    for relative, page in rendered.items():
        if write_if_changed(report_dir / relative, page.encode("utf-8")):
            made.made += 1
        else:
            made.unchanged += 1
    for relative in _existing_files(report_dir / NATIONS_FOLDER, report_dir):
        if relative not in rendered and relative.endswith(".html"):
            (report_dir / relative).unlink(missing_ok=True)
            made.removed += 1
    return made
