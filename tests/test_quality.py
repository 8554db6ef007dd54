"""Quality signals (drawpipe/curate/quality.py) on images with known answers: a sharp
photo-like picture from the simulator, a Gaussian-blurred copy, an over-exposed
copy, an under-exposed one, a near-duplicate in the same folder and the same picture
in another nation's folder; the per-host cache on the share; the report's CSV columns."""

import csv
import json
import subprocess
import sys

import pytest
from conftest import PROJECT_DIR
from PIL import Image, ImageEnhance, ImageFilter

from drawpipe.curate.quality import (BLURRY_LAPLACIAN_VARIANCE, CSV_COLUMNS,
                                     NEAR_DUPLICATE_MAX_DISTANCE, measure_png, suspect_reasons,
                                     update_signals)
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.simulator import encode_png, render_scene
from drawpipe.inventory import scan_inventory
from drawpipe.png import add_text_chunks

SIZE_PX = 1024  # the generated size: the thresholds are set for it


def scene(seed: int) -> Image.Image:
    return render_scene(seed, f"a family at home, scene {seed}", SIZE_PX, SIZE_PX)


def save(root, relative: str, picture: Image.Image) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"prompt": relative, "seed": 1, "model": "sd_xl_base_1.0_f16.ckpt",
               "width": SIZE_PX, "height": SIZE_PX}
    path.write_bytes(add_text_chunks(encode_png(picture), provenance_chunks(payload)))
    return relative


def near_copy(picture: Image.Image) -> Image.Image:
    """The same picture slightly cropped and re-scaled: what a re-used seed gives."""
    return picture.crop((12, 12, SIZE_PX - 12, SIZE_PX - 12)).resize((SIZE_PX, SIZE_PX))


@pytest.fixture
def known(share):
    """A share whose images each have one known defect (or none)."""
    sharp = scene(1)
    return {
        "sharp": save(share, "GENERATIONS/France/family/France_family_1.png", sharp),
        "other": save(share, "GENERATIONS/France/family/France_family_2.png", scene(2)),
        "blurred": save(share, "GENERATIONS/Spain/family/Spain_family_1.png",
                        sharp.filter(ImageFilter.GaussianBlur(3))),
        "bright": save(share, "GENERATIONS/Italy/family/Italy_family_1.png",
                       ImageEnhance.Brightness(scene(3)).enhance(2.4)),
        "dark": save(share, "GENERATIONS/Chile/family/Chile_family_1.png",
                     ImageEnhance.Brightness(scene(4)).enhance(0.12)),
        "duplicate": save(share, "GENERATIONS/France/family/France_family_3.png", near_copy(sharp)),
        "elsewhere": save(share, "GENERATIONS/France/working/France_working_1.png", near_copy(sharp)),
    }


def signals_of(root):
    files = [entry.generated for entry in scan_inventory(root).entries.values()]
    return update_signals(root, files, "mac-a")


def test_each_defect_is_found_and_said_with_its_figure(share, known):
    run = signals_of(share)
    signals = run.signals
    reasons = {name: suspect_reasons(signals[path]) for name, path in known.items()}
    assert reasons["other"] == []
    assert reasons["elsewhere"] == []  # the same picture, but another nation and category
    assert reasons["sharp"] == [f"near-duplicate of France_family_3.png "
                                f"(distance {signals[known['sharp']].near_duplicate_distance})"]
    assert reasons["duplicate"][0].startswith("near-duplicate of France_family_1.png (distance ")
    assert signals[known["sharp"]].near_duplicate_distance <= 4 < NEAR_DUPLICATE_MAX_DISTANCE
    blurred = signals[known["blurred"]]
    assert signals[known["sharp"]].laplacian_variance > 4 * BLURRY_LAPLACIAN_VARIANCE
    assert blurred.laplacian_variance < BLURRY_LAPLACIAN_VARIANCE / 4
    assert reasons["blurred"] == [f"blurry: Laplacian variance {blurred.laplacian_variance:.0f} < 50"]
    bright = signals[known["bright"]]
    assert bright.highlights_clipped_fraction > 0.5
    assert reasons["bright"][0] == (f"over-exposed: {bright.highlights_clipped_fraction * 100:.0f} % "
                                    "clipped highlights > 10 %")
    dark = signals[known["dark"]]
    # A dark picture has little contrast, so it reads as blurry as well (the Laplacian's
    # variance grows with contrast squared).
    assert reasons["dark"] == [f"blurry: Laplacian variance {dark.laplacian_variance:.0f} < 50",
                               f"too dark: mean luminance {dark.luminance_mean:.0f} < 40"]
    assert all(0 <= item.saturation_mean <= 1 and len(item.phash) == 16 for item in signals.values())
    assert (run.measured, run.cached) == (7, 0)


def test_a_second_run_opens_no_image_and_another_host_reuses_the_cache(share, known):
    signals_of(share)
    cache = share / "report/quality/mac-a.json"
    assert set(json.loads(cache.read_text())["images"]) == set(known.values())
    files = [entry.generated for entry in scan_inventory(share).entries.values()]
    again = update_signals(share, files, "mac-a")
    assert (again.measured, again.cached) == (0, 7)
    # Another Mac reads mac-a's file and writes only its own.
    other_mac = update_signals(share, files, "mac-b")
    assert (other_mac.measured, other_mac.cached) == (0, 7)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["mac-a.json", "mac-b.json"]
    # A re-made take (new bytes, new mtime) is measured again; the others are not.
    save(share, known["blurred"], scene(1))
    files = [entry.generated for entry in scan_inventory(share).entries.values()]
    third = update_signals(share, files, "mac-a")
    assert (third.measured, third.cached) == (1, 6)
    assert suspect_reasons(third.signals[known["blurred"]]) == []


def test_a_damaged_png_is_a_reason_not_an_error():
    signals = measure_png(b"\x89PNG\r\n\x1a\nnot really", "GENERATIONS/a/b/x.png")
    assert signals.error and suspect_reasons(signals)[0].startswith("unreadable: cannot decode")


def test_report_csv_gains_the_quality_columns(share, known):
    result = subprocess.run([sys.executable, "-m", "drawpipe.report", "--root", str(share), "--csv",
                             "--processes", "1"],
                            capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "quality signals: 7 images (0 from the cache, 7 measured), 5 suspect" in result.stdout
    rows = {row["image"]: row for row in csv.DictReader((share / "report/images.csv").open())}
    assert set(CSV_COLUMNS) <= set(rows["France_family_1"])
    assert rows["Spain_family_1"]["suspect"].startswith("blurry: Laplacian variance ")
    assert float(rows["Spain_family_1"]["laplacian_variance"]) < BLURRY_LAPLACIAN_VARIANCE
    assert rows["France_family_3"]["near_duplicate_of"] == known["sharp"]
    assert rows["France_family_2"]["suspect"] == ""


def test_a_process_pool_measures_the_same_as_one_process(share):
    base = render_scene(5, "pool", 256, 256)
    for number in range(1, 21):  # above POOL_MIN_TASKS: measured in the pool
        save(share, f"GENERATIONS/Peru/family/Peru_family_{number}.png",
             base.rotate(number * 3) if number % 2 else base)
    files = [entry.generated for entry in scan_inventory(share).entries.values()]
    alone = update_signals(share, files, "mac-a", processes=1, write_cache=False)
    pooled = update_signals(share, files, "mac-a", processes=2)
    assert pooled.measured == 20 and pooled.signals == alone.signals
