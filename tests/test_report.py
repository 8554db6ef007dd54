"""python -m drawpipe.report: figures from fixture logs, work left and ETA, the page,
thumbnails, charts, contact sheets and the CSV, and the page in headless Chromium.

The fixture share (``dataset``) holds small real PNGs carrying the same provenance
chunks the scripts write, and per-host CSV logs written by hand so that every
figure can be computed by hand (the numbers in the comments). Their times are
T0 + n seconds, T0 = 2026-05-01 10:00:00 UTC.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import LOAD_ALL_IMAGES, PageWatch, browser, skip_reason
from conftest import PROJECT_DIR, write_labelled_cutouts
from PIL import Image

from drawpipe.curate.takes import seed_for, set_aside
from drawpipe.curate.verdicts import append_verdict
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.engine.metrics import COMMON_COLUMNS
from drawpipe.files import file_sha256
from drawpipe.inventory import LogRow, load_logs, parse_infotext
from drawpipe.png import add_text_chunks
from drawpipe.report.stats import (busy_seconds, estimate_eta, format_duration, percentile,
                                   stage_figures)

T0 = 1777629600.0  # 2026-05-01T10:00:00Z
PROMPT = "a French family at dinner, photorealistic"


def at(seconds: float) -> str:
    moment = time.gmtime(T0 + seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + ".000Z"


# --------------------------------------------------------------------------- fixtures


def write_png(path: Path, size_px: int, colour, payload: dict | None = None, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new(mode, (size_px, size_px), colour).save(buffer, "PNG")
    data = buffer.getvalue()
    if payload is not None:
        data = add_text_chunks(data, provenance_chunks(payload))
    path.write_bytes(data)


def txt2img_payload(stem: str, prompt: str) -> dict:
    return {"prompt": prompt, "negative_prompt": "blurry, text", "seed": seed_for(stem),
            "model": "sd_xl_base_1.0_f16.ckpt", "width": 1024, "height": 1024, "steps": 30,
            "sampler": "DPM++ 2M Karras", "guidance_scale": 7.5}


IMAGES = {  # group -> numbers generated
    "France/family": (1, 2, 3),
    "Japan/working": (1, 2),
}
UPSCALED = ("France/family/France_family_1", "France/family/France_family_2",
            "Japan/working/Japan_working_1")
CUTOUTS = {"France/family/France_family_1": 2, "Japan/working/Japan_working_1": 1}


def build_images(root: Path) -> None:
    colours = iter([(200, 60, 40), (40, 120, 200), (60, 160, 80), (220, 180, 40), (120, 60, 160)])
    for group, numbers in IMAGES.items():
        nation, category = group.split("/")
        for number in numbers:
            stem = f"{nation}_{category}_{number}"
            prompt = PROMPT if nation == "France" else "Japanese workers, photorealistic"
            write_png(root / "GENERATIONS" / group / f"{stem}.png", 64, next(colours),
                      txt2img_payload(stem, f"{prompt}, image {number}"))
    for key in UPSCALED:
        write_png(root / "UPSCALED_IMAGES" / f"{key}_upscaled.png", 128, (90, 90, 90))
    for key, count in CUTOUTS.items():
        folder = root / "CUTOUTS" / f"{key}_upscaled"
        stem = folder.name
        for k in range(1, count + 1):
            write_png(folder / f"{stem}_cutout_{k}.png", 48, (255, 0, 0, 255), mode="RGBA")
        (folder / "cutouts.json").write_text(json.dumps({"cutouts": [{}] * count}))


def write_log(path: Path, header, rows, tail: str = "") -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(column, "") for column in header])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue() + tail)


def row(end, output, status="done", attempt=1, seconds=None, **values) -> dict:
    return {"time_utc": at(end), "output": output, "status": status, "attempt": attempt,
            "seconds": seconds, **values}


GEN = "GENERATIONS/{}.png".format
UP = "UPSCALED_IMAGES/{}_upscaled.png".format
CUT = "CUTOUTS/{}_upscaled".format
OLD_LAYOUT = ("time_utc", "host", "worker", "stage", "input", "output", "status", "attempt",
              "seconds", "seed", "cpu_percent_mean", "ram_mb_mean")


def build_logs(root: Path) -> None:
    logs = root / "logs"
    # mac-a, today's layout plus a column no reader knows; its last line cut off by a crash.
    mac_a = dict(host="mac-a", stage="generate", worker="mac-a-1-0", server="http://127.0.0.1:7860",
                 gpu_temp="61")
    write_log(logs / "generate-mac-a.csv", COMMON_COLUMNS + ("server", "gpu_temp"), [
        row(10, GEN("France/family/France_family_1"), seconds=10, seed=111, cpu_percent_mean=40,
            cpu_percent_peak=60, ram_mb_mean=1000, ram_mb_peak=1100, server_cpu_seconds=8, **mac_a),
        row(20, GEN("France/family/France_family_2"), seconds=10, cpu_percent_mean=50,
            cpu_percent_peak=70, ram_mb_mean=1200, ram_mb_peak=1300, server_cpu_seconds=9, **mac_a),
        row(50, GEN("France/family/France_family_3"), "failed", attempt=3, seconds=30,
            cpu_percent_mean=20, cpu_percent_peak=30, ram_mb_mean=900, ram_mb_peak=950,
            error="HTTP 500 from http://127.0.0.1:7860/sdapi/v1/txt2img", **mac_a),
        row(70, GEN("France/family/France_family_3"), attempt=2, seconds=20, cpu_percent_mean=60,
            cpu_percent_peak=90, ram_mb_mean=1400, ram_mb_peak=1500, server_cpu_seconds=10, **mac_a),
    ], tail=f"{at(90)},mac-a,mac-a-1-0,generate,,GENERATIONS/Fr")
    # mac-b, an older layout (no peaks, no server CPU, no error column) and a broken line.
    mac_b = dict(host="mac-b", stage="generate", worker="mac-b-1-0")
    write_log(logs / "generate-mac-b.csv", OLD_LAYOUT, [
        row(30, GEN("Japan/working/Japan_working_1"), seconds=30, seed=222, cpu_percent_mean=80,
            ram_mb_mean=2000, **mac_b),
        row(60, GEN("Japan/working/Japan_working_2"), seconds=30, cpu_percent_mean=70,
            ram_mb_mean=2200, **mac_b),
    ], tail="garbage,line\n" + ",".join(str(v) for v in (
        at(120), "mac-b", "mac-b-1-0", "generate", "", GEN("Japan/working/Japan_working_3"),
        "done", 1, 60, 333, 90, 2100)) + "\n")
    upscale = COMMON_COLUMNS + ("server", "recipe", "steps", "step_seconds", "step_attempts")
    write_log(logs / "upscale-mac-a.csv", upscale, [
        row(200, UP("France/family/France_family_1"), seconds=40, host="mac-a", stage="upscale"),
        row(240, UP("France/family/France_family_2"), seconds=40, host="mac-a", stage="upscale"),
        row(300, UP("France/family/France_family_3"), "failed", attempt=5, seconds=60, host="mac-a",
            stage="upscale", error="step 2 (refine) of upscale.json: HTTP 503 from the server"),
    ])
    write_log(logs / "upscale-mac-b.csv", upscale, [
        row(260, UP("Japan/working/Japan_working_1"), seconds=50, host="mac-b", stage="upscale"),
    ])
    segment = COMMON_COLUMNS + ("model_seconds", "cutout_seconds", "masks_found",
                                "cutouts_written", "peak_rss_mb", "device")
    write_log(logs / "segment-mac-a.csv", segment, [
        row(400, CUT("France/family/France_family_1"), seconds=5, host="mac-a", stage="segment"),
        row(420, CUT("Japan/working/Japan_working_1"), seconds=6, host="mac-a", stage="segment"),
    ])


@pytest.fixture
def dataset(share) -> Path:
    """A share with 5 generated images (2 groups), 3 upscaled, 2 cut-out folders and logs."""
    build_images(share)
    build_logs(share)
    return share


def run_report(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drawpipe.report", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT_DIR, timeout=timeout)


def files_under(folder: Path, skip: str | None = None) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``folder``."""
    found = {}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not (skip and relative.startswith(skip)):
            stat = path.stat()
            found[relative] = (stat.st_size, stat.st_mtime_ns)
    return found


# --------------------------------------------------------------------------- figures


def test_figures_match_hand_computed_values(dataset):
    logs = load_logs(dataset / "logs")
    # The cut-off last line of mac-a and "garbage,line" of mac-b.
    assert logs.lines_skipped == 2
    assert logs.rows_skipped == 0
    assert logs.older_layout_rows == 3
    assert logs.missing_columns == {"cpu_percent_peak", "ram_mb_peak", "server_cpu_seconds",
                                    "server_rss_mb", "error"}
    a, b, everyone = stage_figures(logs.rows["generate"])
    assert (a.host, b.host, everyone.host) == ("mac-a", "mac-b", "all hosts")
    # mac-a: 3 done, 1 failed; retried: the failed row (attempt 3) and the done row that
    # followed it (attempt 2, and its job had failed before).
    assert (a.done, a.failed, a.retried) == (3, 1, 2)
    assert a.seconds_mean == pytest.approx(40 / 3)  # 10, 10, 20
    assert a.seconds_p50 == 10
    assert a.seconds_p95 == pytest.approx(19.0)  # 10 + 0.9 x (20 - 10)
    assert a.busy_seconds == 70  # [0,10] [10,20] [20,50] [50,70]
    assert a.images_per_hour == pytest.approx(3 / 70 * 3600)  # 154.3
    assert a.cpu_percent_mean == pytest.approx(42.5)  # (40 + 50 + 20 + 60) / 4
    assert a.cpu_percent_peak == 90
    assert a.ram_mb_mean == pytest.approx(1125)
    assert a.ram_mb_peak == 1500
    assert a.server_cpu_seconds_mean == pytest.approx(9.0)  # 8, 9, 10: the failed row has none
    assert a.server_cpu_seconds_total == pytest.approx(27.0)
    # mac-b (older layout): no peaks (its means stand in), no Draw Things figures.
    assert (b.done, b.failed, b.retried) == (3, 0, 0)
    assert b.seconds_mean == pytest.approx(40.0)  # 30, 30, 60
    assert b.seconds_p95 == pytest.approx(57.0)  # 30 + 0.9 x 30
    assert b.images_per_hour == pytest.approx(90.0)  # 3 in [0, 120]
    assert b.cpu_percent_mean == pytest.approx(80.0)
    assert (b.cpu_percent_peak, b.ram_mb_peak, b.server_cpu_seconds_mean) == (90, 2200, None)
    # All hosts: seconds 10 10 20 30 30 60; busy = union [0, 120].
    assert (everyone.done, everyone.failed, everyone.retried) == (6, 1, 2)
    assert everyone.seconds_mean == pytest.approx(160 / 6)
    assert everyone.seconds_p50 == pytest.approx(25.0)
    assert everyone.seconds_p95 == pytest.approx(52.5)  # position 4.75: 30 + 0.75 x 30
    assert everyone.images_per_hour == pytest.approx(180.0)
    assert everyone.cpu_percent_mean == pytest.approx(410 / 7)
    assert everyone.ram_mb_mean == pytest.approx(10800 / 7)
    assert (everyone.cpu_percent_peak, everyone.ram_mb_peak) == (90, 2200)


def test_percentile_busy_time_and_durations():
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert busy_seconds([(0, 10), (5, 15), (20, 30)]) == 25
    assert busy_seconds([]) == 0
    assert format_duration(59) == "59 s"
    assert format_duration(93.3) == "2 min"
    assert format_duration(4500) == "1 h 15 min"
    assert format_duration(200000) == "2 d 7 h"


def logged(end, seconds, status="done", host="h"):
    return LogRow("upscale", host, T0 + end, seconds, status, 1, f"UPSCALED_IMAGES/x{end}.png",
                  "", "", None, None, None, None, None, "")


def test_eta_is_left_over_the_combined_rate_of_the_window():
    rows = [logged(100, 100, host="a"), logged(200, 100, host="a"), logged(150, 50, host="b"),
            logged(3700, 100, host="a"), logged(3650, 50, "failed", host="b")]
    # Window of 3600 s up to 3700: done rows ending after 100 -> 200, 150, 3700 (3 rows);
    # the window starts at max(3700 - 3600, first start 0) = 100: 3 in 3600 s = 3 img/h.
    eta = estimate_eta(rows, left=6, window_seconds=3600)
    assert (eta.window_start, eta.window_end) == (T0 + 100, T0 + 3700)
    assert eta.done_in_window == 3
    assert eta.images_per_hour == pytest.approx(3.0)
    assert eta.seconds == pytest.approx(6 / 3 * 3600)
    # A run younger than the window is measured from its first job's start (0):
    # 3 done in 200 s = 54 img/h; 9 left -> 600 s.
    young = estimate_eta(rows[:3], left=9, window_seconds=3600)
    assert young.images_per_hour == pytest.approx(54.0)
    assert young.seconds == pytest.approx(600.0)
    assert estimate_eta(rows, left=None).seconds is None
    assert estimate_eta([], left=5).seconds is None
    assert estimate_eta([logged(10, 10, "failed")], left=5).seconds is None


def test_cli_prints_figures_work_left_and_eta(dataset):
    result = run_report("--root", dataset, "--add", "France:family:3", "--add", "Japan:working:3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "read 13 rows from 5 log files" in out
    assert "skipped 2 lines cut off by a crash or malformed" in out
    assert ("3 rows of an older layout without cpu_percent_peak, error, ram_mb_peak, "
            "server_cpu_seconds, server_rss_mb: read, those figures left out") in out
    lines = out.splitlines()
    mac_a = next(line for line in lines if line.strip().startswith("mac-a"))
    assert mac_a.split()[:8] == ["mac-a", "3", "1", "2", "13.3", "10.0", "19.0", "154.3"]
    assert "42 / 90" in mac_a and "1,125 / 1,500" in mac_a and mac_a.endswith("9.0 / 27")
    # generate: 6 queued, 5 present; 6 done in 120 s = 180 img/h -> 1 left = 20 s.
    assert ("left: 1 of the 6 images in the queue not generated yet; ETA 20 s at 180.0 img/h"
            in out)
    # upscale: France_family_3 and Japan_working_2 left; 3 done in [160, 300]: 140 s.
    assert "left: 2 of 5 generated images not upscaled yet; ETA 2 min at 77.1 img/h" in out
    # segment: France_family_2; 2 done in [395, 420].
    assert "left: 1 of 3 upscaled images without cut-outs yet; ETA 12 s at 288.0 img/h" in out
    assert "still failed: 1" in out  # the upscale of France_family_3
    assert "in the folder: 5 generated, 3 upscaled, 3 cut-outs in 2 folders" in out
    assert not (dataset / "report").exists()  # the text report writes nothing


def test_generate_left_is_unknown_without_a_queue(dataset):
    result = run_report("--root", dataset, "--eta-window-minutes", "1")
    assert result.returncode == 0, result.stderr
    assert "left: unknown (generate.py's queue is not kept in the folder" in result.stdout
    # 60 s window of upscale, up to 300: rows ending after 240 -> 260 (done), 300 (failed).
    assert "ETA 2 min at 60.0 img/h" in result.stdout


@pytest.mark.parametrize("make_root, message", [
    (lambda tmp: tmp / "absent", "error: root folder {root} does not exist (is the share mounted?)"),
    (lambda tmp: tmp, "error: nothing to report in {root}: no logs/*.csv and no images in "
                      "GENERATIONS/, UPSCALED_IMAGES/ or CUTOUTS/ (is --root the shared folder?)"),
])
def test_a_root_with_nothing_is_a_one_line_error(tmp_path, make_root, message):
    root = make_root(tmp_path)
    result = run_report("--root", root, "--html")
    assert result.returncode == 2
    assert result.stderr == message.format(root=root) + "\n"
    assert not (root / "report").exists()


def test_infotext_is_parsed_like_a1111():
    text = ('a family, at dinner\nsecond line\nNegative prompt: blurry\n'
            'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 12345, Size: 1024x1024, '
            'Model: sd_xl_base_1.0_f16.ckpt, Refiner: "a, b"')
    meta = parse_infotext(text)
    assert meta == {"prompt": "a family, at dinner\nsecond line", "negative_prompt": "blurry",
                    "steps": "30", "sampler": "DPM++ 2M Karras", "cfg_scale": "7.5",
                    "seed": "12345", "size": "1024x1024", "model": "sd_xl_base_1.0_f16.ckpt"}


# --------------------------------------------------------------------------- html, caching


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.hrefs, self.ids = [], [], set()

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if "src" in attributes:
            self.sources.append(attributes["src"])
        if "href" in attributes:
            self.hrefs.append(attributes["href"])


def test_html_page_thumbnails_charts_and_relative_links(dataset):
    before = files_under(dataset)
    result = run_report("--root", dataset, "--html", "--contact-sheets", "--csv",
                        "--processes", "1")
    assert result.returncode == 0, result.stderr
    report = dataset / "report"
    assert "thumbnails: 11 made, 0 unchanged" in result.stdout  # 5 + 3 + 3 cut-outs
    assert "charts: 3 drawn" in result.stdout
    # Nothing outside report/ was written.
    assert files_under(dataset, skip="report/") == before

    index = (report / "index.html").read_text()
    assert "step 2 (refine) of upscale.json: HTTP 503 from the server" in index
    france = (report / "nations/France.html").read_text()
    assert PROMPT in france and f"seed {seed_for('France_family_1')}" in france
    assert "Japanese workers" not in france and "Japanese workers" in (
        report / "nations/Japan.html").read_text()
    sources = {}
    for name in ("index.html", "nations/France.html", "nations/Japan.html"):
        page = (report / name).read_text()
        assert "http://" not in page.replace("http://127.0.0.1:7860", "")  # no remote URL
        links = Links()
        links.feed(page)
        folder = (report / name).parent
        sources[name] = links.sources
        for source in links.sources:
            assert not urlparse(source).scheme and not source.startswith("/")
            target = (folder / unquote(source)).resolve()
            assert target.is_relative_to(report.resolve()) and target.is_file(), source
        for href in links.hrefs:
            assert not urlparse(href).scheme and not href.startswith("/"), href
            path, _, fragment = href.partition("#")
            target = (folder / unquote(path)).resolve() if path else (report / name).resolve()
            # A page of the report, an asset under report/, or a full-size original in the
            # share's image folders; an anchor exists on the page it names.
            assert target.is_file(), href
            assert target.is_relative_to(report.resolve()) or target.relative_to(
                dataset.resolve()).parts[0] in ("GENERATIONS", "UPSCALED_IMAGES", "CUTOUTS"), href
            if fragment:
                ids = Links()
                ids.feed(target.read_text())
                assert fragment in ids.ids, href
    # The index shows the charts only; each nation's page its own thumbnails.
    assert len(sources["index.html"]) == 3
    assert len(sources["nations/France.html"]) == 3 + 2 + 2  # generated, upscaled, cut-outs
    assert len(sources["nations/Japan.html"]) == 2 + 1 + 1

    with Image.open(report / "thumbs/GENERATIONS/France/family/France_family_1.jpg") as thumb:
        assert thumb.size == (64, 64) and thumb.format == "JPEG"
    with Image.open(report / "thumbs/CUTOUTS/France/family/France_family_1_upscaled/"
                             "France_family_1_upscaled_cutout_2.png") as thumb:
        assert thumb.mode == "RGBA"
    for stage in ("generate", "upscale", "segment"):
        with Image.open(report / "charts" / f"{stage}.png") as chart:
            assert chart.size == (1000, 940)  # four panels: seconds, CPU, RAM, W
    # One sheet per nation and category: 3 and 2 tiles in one row.
    with Image.open(report / "contact_sheets" / "France_family.png") as sheet:
        assert sheet.size == (16 + 3 * 256, 44 + 296)
    assert (report / "contact_sheets" / "Japan_working.png").is_file()


def test_second_run_touches_only_what_changed(dataset):
    arguments = ("--root", dataset, "--html", "--contact-sheets", "--processes", "1")
    assert run_report(*arguments).returncode == 0
    report = dataset / "report"
    first = files_under(report)
    again = run_report(*arguments)
    assert again.returncode == 0, again.stderr
    assert "thumbnails: 0 made, 11 unchanged" in again.stdout
    assert "charts: 0 drawn, 3 unchanged" in again.stdout
    assert (f"pages: 0 written, 3 unchanged; open {report / 'index.html'}\n") in again.stdout
    assert files_under(report) == first  # not one file rewritten

    # A source replaced (same name, other pixels): only its thumbnail and what shows it.
    source = dataset / "UPSCALED_IMAGES/Japan/working/Japan_working_1_upscaled.png"
    write_png(source, 96, (10, 200, 10))
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    # A log row appended to segment's log: only its chart.
    with open(dataset / "logs/segment-mac-a.csv", "a") as log:
        log.write(f"{at(430)},mac-a,w,segment,,{CUT('France/family/France_family_2')},failed,1,"
                  "2.0,,,,,,,,SAM ran out of memory,,,,,,\n")
    third = run_report(*arguments)
    assert third.returncode == 0, third.stderr
    assert "thumbnails: 1 made, 10 unchanged" in third.stdout
    assert "charts: 1 drawn, 2 unchanged" in third.stdout
    changed = {path for path, version in files_under(report).items() if first.get(path) != version}
    # The index lists the new failure, France's page shows it, Japan's the new thumbnail.
    assert changed == {"thumbs/UPSCALED_IMAGES/Japan/working/Japan_working_1_upscaled.jpg",
                       "charts/segment.png", "contact_sheets/Japan_working.png",
                       "index.html", "nations/France.html", "nations/Japan.html", "cache.json"}
    assert "pages: 3 written, 0 unchanged" in third.stdout
    with Image.open(report / "thumbs/UPSCALED_IMAGES/Japan/working/Japan_working_1_upscaled.jpg") as thumb:
        assert thumb.size == (96, 96)

    # A source removed: its thumbnail goes too.
    (dataset / "GENERATIONS/Japan/working/Japan_working_2.png").unlink()
    fourth = run_report(*arguments)
    assert "1 removed" in fourth.stdout
    assert not (report / "thumbs/GENERATIONS/Japan/working/Japan_working_2.jpg").exists()
    # A nation gone altogether: its page goes too.
    for folder in ("GENERATIONS", "UPSCALED_IMAGES", "CUTOUTS"):
        shutil.rmtree(dataset / folder / "Japan")
    fifth = run_report(*arguments)
    assert fifth.returncode == 0, fifth.stderr
    assert "pages: 2 written, 0 unchanged, 1 removed" in fifth.stdout
    assert sorted(p.name for p in (report / "nations").iterdir()) == ["France.html"]


def test_matplotlib_is_imported_only_to_redraw_charts(dataset):
    probe = ("import sys; from drawpipe.cli.report import main; main(sys.argv[1:]); "
             "print('matplotlib' in sys.modules)")

    def imported(*args):
        result = subprocess.run([sys.executable, "-c", probe, "--root", str(dataset), *args],
                                capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[-1]

    assert imported() == "False"  # the text report
    assert imported("--html", "--processes", "1") == "True"  # charts drawn
    assert imported("--html", "--processes", "1") == "False"  # nothing changed


def test_csv_has_one_row_per_image_across_stages(dataset):
    result = run_report("--root", dataset, "--csv", dataset / "table.csv")
    assert result.returncode == 0, result.stderr
    rows = {row["image"]: row for row in csv.DictReader((dataset / "table.csv").open())}
    # 5 images in the folder + Japan_working_3, only in generate's log (its file is gone).
    assert sorted(rows) == ["France_family_1", "France_family_2", "France_family_3",
                            "Japan_working_1", "Japan_working_2", "Japan_working_3"]
    first = rows["France_family_1"]
    assert first["generated"] == "GENERATIONS/France/family/France_family_1.png"
    assert first["seed"] == str(seed_for("France_family_1"))  # from the PNG, not the log
    assert first["prompt"] == f"{PROMPT}, image 1"
    assert (first["generate_seconds"], first["generate_host"]) == ("10.0", "mac-a")
    assert (first["upscale_seconds"], first["upscale_host"]) == ("40.0", "mac-a")
    assert (first["cutouts"], first["segment_seconds"], first["segment_host"]) == ("2", "5.0", "mac-a")
    third = rows["France_family_3"]
    assert third["generate_seconds"] == "20.0" and third["upscaled"] == ""
    assert third["failed"] == "upscale: step 2 (refine) of upscale.json: HTTP 503 from the server"
    gone = rows["Japan_working_3"]
    assert (gone["generated"], gone["generate_host"], gone["seed"]) == ("", "mac-b", "333")
    assert rows["France_family_2"]["cutouts"] == ""  # not segmented yet (0 would be "none found")


def test_the_report_knows_the_review(dataset):
    """Verdicts per stage, REJECTED/ counted, a verdict column in the table, and on the
    pages each image's verdict and why the take before it was rejected."""
    def sha256(key):
        return file_sha256(dataset / GEN(key))

    append_verdict(dataset, "mac-a", GEN("France/family/France_family_1"),
                   sha256("France/family/France_family_1"), "accept")
    append_verdict(dataset, "mac-a", GEN("France/family/France_family_2"),
                   sha256("France/family/France_family_2"), "reject", "two heads")
    # Japan_working_1 was rejected on mac-b and generate.py made take 2.
    japan = "Japan/working/Japan_working_1"
    append_verdict(dataset, "mac-b", GEN(japan), sha256(japan), "reject", "blurry")
    set_aside(dataset, GEN(japan), 1)
    write_png(dataset / GEN(japan), 64, (1, 2, 3))
    (dataset / GEN(japan)).write_bytes(add_text_chunks(
        (dataset / GEN(japan)).read_bytes(),
        provenance_chunks(txt2img_payload("Japan_working_1", "again"), take=2)))

    result = run_report("--root", dataset, "--html", "--csv", "--processes", "1")
    assert result.returncode == 0, result.stderr
    assert ("review (the take there now; earlier takes are in REJECTED/):\n"
            "  generated      5: 1 accepted, 1 rejected, 3 not reviewed; 1 set aside in REJECTED/\n"
            "  upscaled       3: 1 accepted, 1 rejected, 1 not reviewed; 0 set aside in REJECTED/\n"
            "  cut out        2: 1 accepted, 0 rejected, 1 not reviewed; 0 set aside in REJECTED/\n"
            ) in result.stdout
    rows = {row["image"]: row for row in csv.DictReader(
        (dataset / "report/images.csv").open())}
    assert (rows["France_family_1"]["verdict"], rows["France_family_1"]["take"]) == ("accepted", "1")
    assert (rows["France_family_2"]["verdict"], rows["France_family_2"]["verdict_reason"]) == (
        "rejected", "two heads")
    assert (rows["Japan_working_1"]["verdict"], rows["Japan_working_1"]["take"]) == (
        "not reviewed", "2")
    assert rows["Japan_working_3"]["verdict"] == ""  # only in the logs: no file to review

    index = (dataset / "report/index.html").read_text()
    assert ("<tr><td>generated</td><td>5</td><td>1</td><td>1</td><td>3</td><td>1</td></tr>"
            in index)
    france = (dataset / "report/nations/France.html").read_text()
    assert re.search(r'<div class="verdict reject">rejected by mac-a, [0-9: -]+ UTC: two '
                     r'heads</div>', france)
    japan_page = (dataset / "report/nations/Japan.html").read_text()
    assert re.search(r'<p class="earlier">take 1 rejected by mac-b, [0-9: -]+ UTC: blurry</p>',
                     japan_page)
    assert "take 2 · seed " in japan_page


def test_damaged_image_is_reported_not_fatal(dataset):
    (dataset / "GENERATIONS/France/family/France_family_2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_report("--root", dataset, "--html", "--processes", "1")
    assert result.returncode == 0, result.stderr
    assert "1 unreadable" in result.stdout
    page = (dataset / "report/nations/France.html").read_text()
    assert "cannot read GENERATIONS/France/family/France_family_2.png" in page


# --------------------------------------------------------------------------- the browser


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_pages_in_headless_chromium(dataset, tmp_path):
    """The index links every nation; a nation's page shows its images only and loads
    only their thumbnails; its pager leads to the next nation and back."""
    result = run_report("--root", dataset, "--html", "--contact-sheets", "--processes", "1")
    assert result.returncode == 0, result.stderr
    screenshot = tmp_path / "report.png"
    report_url = (dataset / "report").resolve().as_uri()
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        watch = PageWatch(page)
        page.goto(f"{report_url}/index.html")
        images = page.evaluate(LOAD_ALL_IMAGES)
        assert len(images) == 3 and all(width > 0 for _, width in images)  # the charts only
        nations = page.locator("nav.nations .nation > a")
        assert nations.all_inner_texts() == ["France", "Japan"]
        assert [f"{report_url}/{href}" for href in nations.evaluate_all(
            "links => links.map(link => link.getAttribute('href'))")] == [
            f"{report_url}/nations/France.html", f"{report_url}/nations/Japan.html"]

        watch.requested_urls.clear()
        nations.nth(1).click()
        page.wait_for_url("**/nations/Japan.html")
        images = page.evaluate(LOAD_ALL_IMAGES)
        page.screenshot(path=screenshot, full_page=True)
        shown = page.locator("article.item h3").all_inner_texts()
        assert shown == ["Japan_working_1", "Japan_working_2"]
        assert len(images) == 4 and all(width > 0 for _, width in images)  # 2 + 1 + 1 cut-out
        thumbs = [url for url in watch.requested_urls if "/thumbs/" in url]
        assert len(thumbs) == 4 and all("/Japan/" in url for url in thumbs), thumbs
        assert all(url.startswith(report_url) for url in watch.requested_urls)
        page.locator("a[rel=prev]").click()
        page.wait_for_url("**/nations/France.html")
        assert page.locator("article.item h3").all_inner_texts() == [
            "France_family_1", "France_family_2", "France_family_3"]
        page.locator("text=all nations").click()
        page.wait_for_url("**/index.html")
    assert watch.errors == []
    with Image.open(screenshot) as shot:
        assert shot.width == 1400
    if os.environ.get("DRAWPIPE_KEEP_SCREENSHOT"):
        Path(os.environ["DRAWPIPE_KEEP_SCREENSHOT"]).write_bytes(screenshot.read_bytes())


def test_csv_is_never_written_into_logs_or_image_folders(dataset):
    target = dataset / "logs" / "table.csv"
    result = run_report("--root", dataset, "--csv", target)
    assert result.returncode == 2
    assert result.stderr == (f"error: --csv {target}: the report never writes into logs/; "
                             "choose a file elsewhere (default: report/images.csv)\n")
    assert not target.exists()


def test_the_gallery_names_the_cutouts(dataset):
    folder = dataset / CUT("France/family/France_family_1")
    stem = folder.name
    write_labelled_cutouts(folder, [("chair", 0.8123, True, "table", 0.0712),
                                    ("table", 0.31, False, "desk", 0.2)], ["wall"])
    result = run_report("--root", dataset, "--html", "--processes", "1")
    assert result.returncode == 0, result.stderr
    page = (dataset / "report/nations/France.html").read_text()
    assert ' title="chair 0.81 (runner-up: table 0.07)"' in page
    assert 'alt="cut-out 1: chair"' in page and '<span class="name">chair</span>' in page
    assert '<span class="name">table?</span>' in page
    assert "2 cut-outs · " in page and " · 1 left out as background: wall" in page
    japan = (dataset / "report/nations/Japan.html").read_text()
    assert 'class="name"' not in japan  # cut-outs made without --label: no names
    # The labels are read once per version of cutouts.json (the report's cache).
    cache = json.loads((dataset / "report/cache.json").read_text())
    assert cache["labels"][f"{CUT('France/family/France_family_1')}/cutouts.json"][2] == {
        "labels": {f"{stem}_cutout_1.png": {"name": "chair", "score": 0.8123, "trusted": True,
                                            "runner_up": "table", "runner_up_score": 0.0712},
                   f"{stem}_cutout_2.png": {"name": "table", "score": 0.31, "trusted": False,
                                            "runner_up": "desk", "runner_up_score": 0.2}},
        "background": ["wall"]}
