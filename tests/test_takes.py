"""Rejected images re-made, later stages kept consistent: the whole pipeline, like make.

Real scripts on a real share: generate.py against the simulator, upscale.py with a
small copy of the default recipe, segment.py with a tiny random-weight SAM; verdicts
written through curate/verdicts.py as the review page writes them.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import FAST_RETRY_ARGS, PROJECT_DIR, run_script, start_script

from drawpipe.curate.takes import RECORDED_SOURCES_CACHE, Freshness, Takes, seed_for, set_aside
from drawpipe.curate.verdicts import append_verdict
from drawpipe.drawthings.simulator import Simulator
from drawpipe.files import file_sha256
from drawpipe.inventory import RecordedSource
from drawpipe.png import read_text_chunks
from drawpipe.sam.models import save_random_checkpoint

SMALL = ["--set", "width=256", "--set", "height=256", "--set", "hires_fix=false"]
SAM_ARGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
            "--box-nms-thresh", "1.0", "--keep-background", "--min-area-fraction", "0",
            "--max-cutouts", "2", "--no-progress"]
IMAGE = "GENERATIONS/Peru/family/Peru_family_{}.png"
UPSCALED = "UPSCALED_IMAGES/Peru/family/Peru_family_{}_upscaled.png"
CUTOUTS = "CUTOUTS/Peru/family/Peru_family_{}_upscaled"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint("vit_tiny", tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth")


@pytest.fixture
def small_recipe(tmp_path) -> Path:
    recipe = json.loads((PROJECT_DIR / "payloads" / "creative_upscale.json").read_text())
    recipe["output_width"] = recipe["output_height"] = 512
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def generate(share, simulator, count=3, *extra):
    return run_script("generate.py", "--root", share, "--server", simulator.url, *FAST_RETRY_ARGS,
                      "--add", f"Peru:family:{count}", *SMALL, *extra)


def upscale(share, simulator, recipe):
    return run_script("upscale.py", "--root", share, "--server", simulator.url, "--recipe", recipe,
                      *FAST_RETRY_ARGS)


def segment(share, checkpoint):
    return run_script("segment.py", "--root", share, "--checkpoint", checkpoint, *SAM_ARGS)


def reject(share: Path, number: int, reason: str = "six fingers", host: str = "mac-a") -> str:
    image = IMAGE.format(number)
    sha256 = file_sha256(share / image)
    append_verdict(share, host, image, sha256, "reject", reason)
    return sha256


def posted(simulator, path: str = "/sdapi/v1/txt2img") -> list[dict]:
    return [r for r in simulator.requests if r["path"] == path and r["status"] == 200]


def recorded(path: Path) -> dict:
    return json.loads(read_text_chunks(path)["drawpipe"])


def test_generate_remakes_exactly_the_rejected_images_with_the_next_takes_seed(share, simulator):
    assert generate(share, simulator).returncode == 0
    first_take = (share / IMAGE.format(2)).read_bytes()
    reject(share, 2)
    append_verdict(share, "mac-b", IMAGE.format(1), file_sha256(share / IMAGE.format(1)), "accept")
    before = len(posted(simulator))

    result = generate(share, simulator)

    assert result.returncode == 0, result.stderr
    remade = posted(simulator)[before:]
    assert [r["seed"] for r in remade] == [seed_for("Peru_family_2", take=2)]
    assert seed_for("Peru_family_2", take=2) != seed_for("Peru_family_2")
    assert "1 made, 2 already done" in result.stdout
    assert (f"rejected: {IMAGE.format(2)} (take 1) moved to "
            "REJECTED/GENERATIONS/Peru/family/Peru_family_2_take1.png; making take 2"
            in result.stderr)
    assert (share / "REJECTED/GENERATIONS/Peru/family/Peru_family_2_take1.png").read_bytes() \
        == first_take
    assert recorded(share / IMAGE.format(2))["take"] == 2
    assert recorded(share / IMAGE.format(2))["request"]["seed"] == seed_for("Peru_family_2",
                                                                             take=2)

    again = generate(share, simulator)
    assert again.returncode == 0 and len(posted(simulator)) == before + 1  # nothing more

    # Take 2 rejected too: take 3, and take 2 joins take 1 in REJECTED/.
    reject(share, 2, host="mac-b")
    assert generate(share, simulator).returncode == 0
    assert posted(simulator)[-1]["seed"] == seed_for("Peru_family_2", take=3)
    assert sorted(p.name for p in (share / "REJECTED/GENERATIONS/Peru/family").iterdir()) == [
        "Peru_family_2_take1.png", "Peru_family_2_take2.png"]


def test_two_workers_remake_a_rejected_image_once_with_the_same_request(share, tmp_path):
    with Simulator() as simulator:
        assert generate(share, simulator, 2).returncode == 0
    reject(share, 1)
    reject(share, 2)
    copy = tmp_path / "other_mac"
    shutil.copytree(share, copy)
    with Simulator(latency_seconds=0.3) as one, Simulator(latency_seconds=0.3) as two, \
            Simulator() as elsewhere:
        workers = [start_script("generate.py", "--root", share, "--server", sim.url,
                                *FAST_RETRY_ARGS, "--add", "Peru:family:2", *SMALL)
                   for sim in (one, two)]
        for worker in workers:
            worker.communicate(timeout=60)
        # Another Mac with its own copy of the folder sends the identical requests.
        assert generate(copy, elsewhere, 2).returncode == 0
        sent = posted(one) + posted(two)
        sent_elsewhere = posted(elsewhere)
    assert [worker.returncode for worker in workers] == [0, 0]
    assert sorted(r["seed"] for r in sent) == sorted(
        seed_for(f"Peru_family_{n}", take=2) for n in (1, 2))
    assert sorted((r["seed"], r["prompt"]) for r in sent) == sorted(
        (r["seed"], r["prompt"]) for r in sent_elsewhere)
    assert len(list((share / "REJECTED/GENERATIONS/Peru/family").iterdir())) == 2


def test_later_stages_follow_the_new_take_and_a_second_run_does_nothing(
        share, simulator, small_recipe, tiny_checkpoint):
    assert generate(share, simulator).returncode == 0
    assert upscale(share, simulator, small_recipe).returncode == 0
    assert segment(share, tiny_checkpoint).returncode == 0
    old_upscaled = (share / UPSCALED.format(2)).read_bytes()
    reject(share, 2)

    # Before generate runs again, upscale and segment leave the rejected take alone.
    for result in (upscale(share, simulator, small_recipe), segment(share, tiny_checkpoint)):
        assert result.returncode == 0, result.stderr
        assert "1 image(s) rejected in review left out" in result.stdout
        assert "0 made, 2 already done" in result.stdout

    assert generate(share, simulator).returncode == 0
    rejected = share / "REJECTED"
    assert (rejected / "UPSCALED_IMAGES/Peru/family/Peru_family_2_upscaled_take1.png"
            ).read_bytes() == old_upscaled
    assert (rejected / "CUTOUTS/Peru/family/Peru_family_2_upscaled_take1/cutouts.json").exists()
    assert not (share / UPSCALED.format(2)).exists() and not (share / CUTOUTS.format(2)).exists()

    before = len(posted(simulator, "/sdapi/v1/img2img"))
    upscaled = upscale(share, simulator, small_recipe)
    cut = segment(share, tiny_checkpoint)
    assert "1 made, 2 already done" in upscaled.stdout, upscaled.stderr
    assert "1 made, 2 already done" in cut.stdout, cut.stderr
    img2img = posted(simulator, "/sdapi/v1/img2img")[before:]
    assert [r["seed"] for r in img2img] == [seed_for("Peru_family_2", take=2)] * 2
    source = json.loads(read_text_chunks(share / UPSCALED.format(2))["drawpipe-source"])
    assert source["sha256"] == file_sha256(share / IMAGE.format(2)) and source["take"] == 2
    record = json.loads((share / CUTOUTS.format(2) / "cutouts.json").read_text())
    assert record["source_sha256"] == file_sha256(share / UPSCALED.format(2))

    # Nothing is missing or stale any more: every stage does nothing.
    for result in (generate(share, simulator), upscale(share, simulator, small_recipe),
                   segment(share, tiny_checkpoint)):
        assert "0 made, 3 already done" in result.stdout


def test_dry_runs_say_what_review_changed(share, simulator, small_recipe):
    """After a reject: generate.py's dry run says the take goes to REJECTED/ and is made
    again; upscale.py's and segment.py's count the rejected image apart, never as done."""
    assert generate(share, simulator).returncode == 0
    assert upscale(share, simulator, small_recipe).returncode == 0
    reject(share, 2)

    dry = generate(share, simulator, 3, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert ("  Peru/family: 0 to make, 1 to re-make (rejected in review), 2 already done\n"
            f"    {IMAGE.format(2)}: rejected in review: take 1 will be set aside to REJECTED/ "
            "(with what upscale.py and segment.py made of it) and re-made as take 2\n"
            f"dry run: 1 image(s) to make into {share / 'GENERATIONS'} (1 of them re-made: "
            "rejected in review); nothing was sent\n") in dry.stdout
    dry = run_script("upscale.py", "--root", share, "--recipe", small_recipe, "--dry-run")
    assert ("  Peru/family: 0 to upscale, 2 already done, 1 rejected in review (left out until "
            "generate.py makes their next take)\n") in dry.stdout
    assert ("dry run: 0 image(s) to upscale, 2 already done, 1 rejected in review (upscaled "
            "once generate.py has made their next take), 0 skipped") in dry.stdout
    dry = run_script("segment.py", "--root", share, "--checkpoint", share.parent / "sam_vit_b.pth",
                     "--dry-run")
    assert (f"dry run: 2 image(s) to segment into {share / 'CUTOUTS'}, 0 already done, 1 rejected "
            "in review (cut out once generate.py and upscale.py have made their next take)"
            ) in dry.stdout
    assert not (share / "REJECTED").exists()  # a dry run moves nothing


def test_an_input_changed_by_hand_makes_its_outputs_stale(share, simulator, small_recipe,
                                                           tiny_checkpoint):
    assert generate(share, simulator, 2).returncode == 0
    assert upscale(share, simulator, small_recipe).returncode == 0
    assert segment(share, tiny_checkpoint).returncode == 0
    # Someone replaces image 1 (another picture, same name): what was made of it is stale.
    shutil.copyfile(share / IMAGE.format(2), share / IMAGE.format(1))

    dry = run_script("upscale.py", "--root", share, "--recipe", small_recipe, "--dry-run")
    assert ("  Peru/family: 0 to upscale, 1 to redo, 1 already done\n"
            f"    {UPSCALED.format(1)}: made from an older input: it will be set aside to "
            "REJECTED/ and made again from the one there now\n") in dry.stdout
    upscaled = upscale(share, simulator, small_recipe)
    cut = segment(share, tiny_checkpoint)

    assert "1 made, 1 already done" in upscaled.stdout, upscaled.stderr
    assert "1 made, 1 already done" in cut.stdout, cut.stderr
    assert (share / "REJECTED/UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled_take1.png"
            ).exists()
    assert (share / "REJECTED/CUTOUTS/Peru/family/Peru_family_1_upscaled_take1").is_dir()
    assert "0 made, 2 already done" in upscale(share, simulator, small_recipe).stdout


def test_a_take_already_in_rejected_is_kept_and_the_next_number_used(share, simulator):
    assert generate(share, simulator, 1).returncode == 0
    stray = share / "REJECTED/GENERATIONS/Peru/family/Peru_family_1_take1.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a copy someone left here")
    reject(share, 1)

    result = generate(share, simulator, 1)

    assert result.returncode == 0, result.stderr
    assert stray.read_bytes() == b"a copy someone left here"
    assert (f"rejected: {IMAGE.format(1)} (take 2) moved to "
            "REJECTED/GENERATIONS/Peru/family/Peru_family_1_take2.png; making take 3"
            in result.stderr)
    assert recorded(share / IMAGE.format(1))["take"] == 3


def test_set_aside_never_overwrites_what_is_in_rejected(tmp_path):
    (tmp_path / "GENERATIONS").mkdir()
    for content in (b"first", b"second"):
        (tmp_path / "GENERATIONS/a.png").write_bytes(content)
        set_aside(tmp_path, "GENERATIONS/a.png", 1)
    assert (tmp_path / "REJECTED/GENERATIONS/a_take1.png").read_bytes() == b"first"
    assert (tmp_path / "REJECTED/GENERATIONS/a_take1_2.png").read_bytes() == b"second"
    assert set_aside(tmp_path, "GENERATIONS/gone.png", 1) is None


def test_a_verdict_for_an_image_that_is_gone_is_one_line(share, simulator):
    assert generate(share, simulator, 1).returncode == 0
    append_verdict(share, "mac-a", IMAGE.format(9), "0" * 64, "reject", "")

    result = generate(share, simulator, 1)

    assert result.returncode == 0
    gone = [line for line in result.stderr.splitlines() if "Peru_family_9" in line]
    assert len(gone) == 1 and gone[0].startswith("warning: ")


def test_what_a_cutout_folder_records_is_read_once_per_version_of_its_record(tmp_path):
    """Takes.recorded: the source and the settings (made_with) of a cut-out folder, from
    this Mac's cache while cutouts.json is unchanged (size, mtime); a cache entry an older
    drawpipe wrote (the hash alone, as text) is read again, as it may say less."""
    root, cache = tmp_path / "share", tmp_path / "cache"
    folder = root / "CUTOUTS/Peru/family/Peru_family_1_upscaled"
    folder.mkdir(parents=True)
    record_path = folder / "cutouts.json"
    record_path.write_text(json.dumps({"source_sha256": "a" * 64,
                                       "made_with": {"granularity": "objects"}}))
    first = Takes(root, Freshness(cache))
    assert first.recorded(folder) == RecordedSource("a" * 64, None, {"granularity": "objects"})
    first.save()
    # Same size and modification time, other content: the cache answers.
    stat = record_path.stat()
    record_path.write_text(json.dumps({"source_sha256": "b" * 64,
                                       "made_with": {"granularity": "all"}}).ljust(stat.st_size))
    assert record_path.stat().st_size == stat.st_size
    os.utime(record_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert Takes(root, Freshness(cache)).recorded(folder).made_with == {"granularity": "objects"}
    # An older drawpipe's entry for the same version: the file is read.
    cached = json.loads((cache / RECORDED_SOURCES_CACHE).read_text())
    for entry in cached["files"].values():
        entry[2] = "a" * 64
    (cache / RECORDED_SOURCES_CACHE).write_text(json.dumps(cached))
    again = Takes(root, Freshness(cache)).recorded(folder)
    assert again == RecordedSource("b" * 64, None, {"granularity": "all"})
    # A folder made before drawpipe recorded its settings; one that records nothing.
    record_path.write_text(json.dumps({"source_sha256": "c" * 64}))
    assert Takes(root, Freshness(cache)).recorded(folder) == RecordedSource("c" * 64, None, None)
    record_path.write_text("not json")
    assert Takes(root, Freshness(cache)).recorded(folder) is None
