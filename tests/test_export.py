"""python -m drawpipe.export: the reviewed images as an imagefolder that `datasets`
and pandas load as they are; the share untouched; bad folders refused in one line.

The share: France/family 1 accepted (upscaled, 2 cut-outs, logged), 2 rejected, 3
not reviewed, 4 accepted once but re-made since (its new take is not reviewed), and
Japan/working 1 accepted by another Mac.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_DIR
from PIL import Image

from drawpipe.curate.takes import seed_for
from drawpipe.curate.verdicts import append_verdict
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.simulator import encode_png, render_scene
from drawpipe.engine.energy import ENERGY_COLUMNS, EnergyReading
from drawpipe.engine.metrics import MetricsLog
from drawpipe.png import add_text_chunks

KEYS = ("France/family/France_family_1", "France/family/France_family_2",
        "France/family/France_family_3", "France/family/France_family_4",
        "Japan/working/Japan_working_1")
GEN = "GENERATIONS/{}.png".format
SIZE_PX = 128


def png(seed: int, size_px: int = SIZE_PX) -> bytes:
    return encode_png(render_scene(seed, "export", size_px, size_px))


def write_generated(root: Path, key: str, seed: int) -> str:
    stem = key.rsplit("/", 1)[1]
    payload = {"prompt": f"a photo for {stem}", "negative_prompt": "blurry, text",
               "seed": seed_for(stem), "model": "sd_xl_base_1.0_f16.ckpt", "width": 1024,
               "height": 1024, "steps": 30, "sampler": "DPM++ 2M Karras", "guidance_scale": 7}
    path = root / GEN(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(add_text_chunks(png(seed), provenance_chunks(payload)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def reviewed(share) -> Path:
    takes = {key: write_generated(share, key, number) for number, key in enumerate(KEYS, 1)}
    upscaled = share / "UPSCALED_IMAGES/France/family/France_family_1_upscaled.png"
    upscaled.parent.mkdir(parents=True)
    upscaled.write_bytes(png(1, 2 * SIZE_PX))
    folder = share / "CUTOUTS/France/family/France_family_1_upscaled"
    folder.mkdir(parents=True)
    cutouts = []
    for k, box in ((1, [10, 20, 60, 40]), (2, [100, 120, 30, 30])):
        name = f"France_family_1_upscaled_cutout_{k}.png"
        Image.new("RGBA", (box[2], box[3]), (200, 40 * k, 30, 255)).save(folder / name)
        cutouts.append({"file": name, "bbox": box, "area": box[2] * box[3]})
    (folder / "cutouts.json").write_text(json.dumps({"source": "x", "cutouts": cutouts}))
    # Energy: generate measured here (1800 J = 0.5 Wh), upscale on the client side of a
    # remote server only, segment logged before energy was.
    for stage, output, seconds, energy in (
            ("generate", GEN(KEYS[0]), 12.5, EnergyReading("apple-soc", "local", 1800.0,
                                                           {"gpu": 1800.0}, 5.0, 12.5)),
            ("upscale", "UPSCALED_IMAGES/France/family/France_family_1_upscaled.png", 40.0,
             EnergyReading("apple-soc", "client-side", 400.0, {"gpu": 400.0}, 5.0, 40.0)),
            ("segment", "CUTOUTS/France/family/France_family_1_upscaled", 6.25, None)):
        MetricsLog(share / "logs", stage, "mac-a",
                   extra_columns=ENERGY_COLUMNS if energy else ()).append(
            {"output": output, "status": "done", "seconds": seconds,
             **(energy.row() if energy else {})})
    append_verdict(share, "mac-a", GEN(KEYS[0]), takes[KEYS[0]], "accept")
    append_verdict(share, "mac-a", GEN(KEYS[1]), takes[KEYS[1]], "reject", "two heads")
    append_verdict(share, "mac-a", GEN(KEYS[3]), takes[KEYS[3]], "accept")
    write_generated(share, KEYS[3], 99)  # re-made: the accepted take is gone
    append_verdict(share, "mac-b", GEN(KEYS[4]), takes[KEYS[4]], "accept", "good")
    return share


def export(root: Path, out: Path, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drawpipe.export", "--root", str(root),
                           "--out", str(out), *args], capture_output=True, text=True,
                          cwd=PROJECT_DIR, timeout=120,
                          env={**os.environ, "DRAWPIPE_CACHE_DIR": str(out.parent / "cache"),
                               **(env or {})})


def test_accepted_images_load_with_datasets_and_pandas(reviewed, tmp_path):
    before = files_under(reviewed)
    out = tmp_path / "dataset"
    result = export(reviewed, out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"exported 2 images (2 accepted) with 1 upscaled and 2 cut-outs to {out}: 5 files "
        "hard-linked, 0 copied; left out: 1 rejected, 2 not reviewed (--include-unreviewed "
        "adds them)\n")
    assert files_under(reviewed) == before  # the share untouched
    exported = out / GEN(KEYS[0])
    assert exported.stat().st_ino == (reviewed / GEN(KEYS[0])).stat().st_ino  # a hard link

    import pandas

    frame = pandas.read_json(out / "metadata.jsonl", lines=True)
    assert list(frame["file_name"]) == [GEN(KEYS[0]), GEN(KEYS[4])]
    first = frame.iloc[0]
    assert (first["nation"], first["category"], first["seed"]) == ("France", "family",
                                                                    seed_for("France_family_1"))
    assert (first["prompt"], first["negative_prompt"]) == ("a photo for France_family_1", "blurry, text")
    assert (first["model"], first["sampler"], first["steps"], first["size"]) == (
        "sd_xl_base_1.0_f16.ckpt", "DPM++ 2M Karras", 30, "1024x1024")
    assert (first["verdict"], first["verdict_host"]) == ("accept", "mac-a")
    assert (first["generate_seconds"], first["upscale_seconds"], first["segment_seconds"]) == (
        12.5, 40.0, 6.25)
    assert first["generate_energy_wh"] == 0.5  # client side and not logged: not the image's
    assert pandas.isna(first["upscale_energy_wh"]) and pandas.isna(first["segment_energy_wh"])
    assert frame["generate_energy_wh"].isna().tolist() == [False, True]
    assert first["cutout_boxes"] == [[10, 20, 60, 40], [100, 120, 30, 30]]
    assert frame.iloc[1]["verdict_reason"] == "good" and pandas.isna(frame.iloc[1]["upscaled_file_name"])

    import datasets

    loaded = load(out, tmp_path)
    assert loaded.num_rows == 2
    assert loaded["id"] == ["France_family_1_take1", "Japan_working_1_take1"]
    row = loaded[0]
    assert row["image"].size == (SIZE_PX, SIZE_PX)
    assert row["upscaled"].size == (2 * SIZE_PX, 2 * SIZE_PX)
    assert [cutout.size for cutout in row["cutouts"]] == [(60, 40), (30, 30)]
    assert row["nation"] == "France" and row["verdict"] == "accept"
    assert loaded[1]["upscaled"] is None and loaded[1]["cutouts"] == []


def load(out: Path, tmp_path: Path):
    """The export as a dataset's user loads it: the folder, with its card."""
    import datasets

    return datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]


def test_exports_of_different_days_have_one_schema_and_concatenate(reviewed, tmp_path):
    """One export with cut-outs, verdicts and logs; one of a share with none of them (a
    first night, nothing reviewed yet): the same declared types, and they concatenate."""
    import datasets

    first = tmp_path / "monday"
    assert export(reviewed, first).returncode == 0
    other = tmp_path / "other" / "share"
    write_generated(other, "Peru/family/Peru_family_1", 7)
    second = tmp_path / "tuesday"
    result = export(other, second, "--include-unreviewed")
    assert result.returncode == 0, result.stderr
    row = json.loads((second / "metadata.jsonl").read_text())
    assert (row["cutouts_file_names"], row["verdict"], row["upscale_seconds"]) == ([], None, None)

    monday, tuesday = load(first, tmp_path), load(second, tmp_path)
    assert monday.features == tuesday.features
    features = tuesday.features
    assert features["cutouts"] == datasets.List(datasets.Image())
    assert features["upscaled"] == datasets.Image()
    assert features["cutout_boxes"] == datasets.List(datasets.List(datasets.Value("int64")))
    assert features["verdict"] == datasets.Value("string")
    assert features["segment_seconds"] == datasets.Value("float64")
    both = datasets.concatenate_datasets([monday, tuesday])
    assert both["id"] == ["France_family_1_take1", "Japan_working_1_take1", "Peru_family_1_take1"]
    assert both[2]["cutouts"] == [] and both[2]["verdict"] is None
    assert [cutout.size for cutout in both[0]["cutouts"]] == [(60, 40), (30, 30)]


def test_include_unreviewed_adds_the_new_take_never_the_rejected(reviewed, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()  # an empty folder is fine
    result = export(reviewed, out, "--include-unreviewed")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(row["file_name"], row["verdict"]) for row in rows] == [
        (GEN(KEYS[0]), "accept"), (GEN(KEYS[2]), None), (GEN(KEYS[3]), None),
        (GEN(KEYS[4]), "accept")]
    assert not (out / GEN(KEYS[1])).exists()
    assert "left out: 1 rejected\n" in result.stdout


def test_an_export_folder_that_is_not_empty_is_refused_and_untouched(reviewed, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = files_under(out)
    result = export(reviewed, out)
    assert result.returncode == 2
    assert result.stderr == (f"error: --out {out} is not empty: export into a new or empty "
                             "folder (nothing was written)\n")
    assert files_under(out) == before
    inside = reviewed / "export"
    result = export(reviewed, inside)
    assert result.returncode == 2
    assert result.stderr == (f"error: --out {inside} is inside the shared folder {reviewed}: the "
                             "export never writes into the share; choose a folder elsewhere\n")
    assert not inside.exists()


def test_nothing_accepted_is_one_line(share, tmp_path):
    write_generated(share, KEYS[0], 1)
    result = export(share, tmp_path / "dataset")
    assert result.returncode == 2
    assert result.stderr == (f"error: nothing to export from {share}: no generated image is "
                             "accepted (review them with python -m drawpipe.review, or add "
                             "--include-unreviewed); nothing was written\n")
    assert not (tmp_path / "dataset").exists()


def label_cutouts(root: Path) -> None:
    """Name France_family_1's cut-outs as segment.py --label does: a chair the model
    trusts, a lamp it does not; a wall left out as background."""
    record_path = root / "CUTOUTS/France/family/France_family_1_upscaled/cutouts.json"
    record = json.loads(record_path.read_text())
    for entry, (name, score, trusted) in zip(record["cutouts"], (("chair", 0.81, True),
                                                                   ("desk lamp", 0.3, False))):
        entry["label"] = {"name": name, "score": score, "trusted": trusted,
                          "runner_up": "table", "runner_up_score": 0.07,
                          "background": False, "background_score": 0.02}
    record["background"] = [{"bbox": [0, 0, 5, 5], "label": {"name": "wall", "score": 0.9}}]
    record_path.write_text(json.dumps(record))


def test_the_cutouts_names_are_columns_and_folders_by_label(reviewed, tmp_path):
    label_cutouts(reviewed)
    out = tmp_path / "dataset"
    result = export(reviewed, out, "--cutouts-by-label")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"; the cut-outs also by label in 2 folders of "
                                  f"{out / 'cutouts_by_label'}\n")
    first, other = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert first["cutout_labels"] == ["chair", "desk lamp"]
    assert first["cutout_label_scores"] == [0.81, 0.3]
    assert first["cutout_runners_up"] == ["table", "table"]
    assert first["cutout_runner_up_scores"] == [0.07, 0.07]
    assert other["cutout_labels"] == [] and other["cutout_label_scores"] == []
    grouped = {p.relative_to(out / "cutouts_by_label").as_posix()
               for p in (out / "cutouts_by_label").rglob("*.png")}
    assert grouped == {"chair/France_family_1_upscaled_cutout_1.png",
                       "desk lamp (unsure)/France_family_1_upscaled_cutout_2.png"}
    shared = reviewed / "CUTOUTS/France/family/France_family_1_upscaled"
    assert (out / "cutouts_by_label/chair/France_family_1_upscaled_cutout_1.png").stat().st_ino \
        == (shared / "France_family_1_upscaled_cutout_1.png").stat().st_ino  # a hard link

    import datasets

    loaded = load(out, tmp_path)  # the folders by label are not rows
    assert loaded.num_rows == 2
    assert loaded.features["cutout_labels"] == datasets.List(datasets.Value("string"))
    assert loaded.features["cutout_label_scores"] == datasets.List(datasets.Value("float64"))
    assert loaded[0]["cutout_labels"] == ["chair", "desk lamp"]
    assert [cutout.size for cutout in loaded[0]["cutouts"]] == [(60, 40), (30, 30)]


def test_cutouts_made_without_labels_have_no_names_and_one_folder(reviewed, tmp_path):
    out = tmp_path / "dataset"
    result = export(reviewed, out, "--cutouts-by-label")
    assert result.returncode == 0, result.stderr
    first = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert first["cutout_labels"] is None and first["cutout_runner_up_scores"] is None
    assert sorted(p.name for p in (out / "cutouts_by_label" / "(no label)").iterdir()) == [
        "France_family_1_upscaled_cutout_1.png", "France_family_1_upscaled_cutout_2.png"]
    assert load(out, tmp_path)[0]["cutout_labels"] is None


def test_label_folders_hold_no_character_a_folder_name_cannot():
    from drawpipe.curate.export import label_folder

    assert label_folder({"name": "chair", "trusted": True}) == "chair"
    assert label_folder({"name": "chair", "trusted": False}) == "chair (unsure)"
    assert label_folder({"name": "a/b: c?", "trusted": True}) == "a-b- c-"
    assert label_folder({"name": "..", "trusted": True}) == "-"
    assert label_folder(None) == label_folder({"name": ""}) == "(no label)"
