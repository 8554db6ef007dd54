"""upscale.py end to end: real subprocesses, real simulators on loopback, real files.

Most tests use 256 px inputs and a copy of the bundled recipe declaring a 512 px
output (the same two steps, a quarter of the pixels) so that the many-worker tests
stay fast; one test runs the bundled recipe at the real 1024 -> 2048 size.
"""

import csv
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import (FAST_RETRY_ARGS, PROJECT_DIR, make_old, png_files, run_script, start_script,
                      wait_for)
from PIL import Image

from drawpipe.curate.takes import seed_for
from drawpipe.drawthings import api as drawthings
from drawpipe.drawthings.simulator import (Simulator, default_app_configuration, encode_png,
                                           render_scene)
from drawpipe.engine.claims import ClaimStore
from drawpipe.errors import InputFileError
from drawpipe.png import inspect_png, read_text_chunks
from drawpipe.stages.upscale import load_recipe, plan_chain

BUNDLED = PROJECT_DIR / "payloads" / "creative_upscale.json"
DEFAULT_APP_CONFIGURATION = default_app_configuration()
BUNDLED_FAST = PROJECT_DIR / "payloads" / "upscale_fast.json"
OLD_SECONDS = 600  # older than the 60 s settle time: an incomplete file is damaged, not in progress


# --------------------------------------------------------------------------- helpers


def png_bytes(stem: str, side_px: int) -> bytes:
    return encode_png(render_scene(seed_for(stem), stem, side_px, side_px))


def add_input(share: Path, relative: str, side_px: int = 256, age_seconds: float = 0) -> Path:
    """A generated-looking PNG at GENERATIONS/<relative>, written like generate.py does
    (temporary name, then rename)."""
    path = share / "GENERATIONS" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(png_bytes(path.stem, side_px))
    os.replace(temporary, path)
    if age_seconds:
        make_old(path, age_seconds)
    return path


def add_raw_input(share: Path, relative: str, data: bytes, age_seconds: float = 0) -> Path:
    path = share / "GENERATIONS" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_seconds:
        make_old(path, age_seconds)
    return path


def small_recipe(tmp_path: Path, edit=None) -> Path:
    """The bundled two-step recipe, declaring 512 px: for 256 px inputs."""
    recipe = json.loads(BUNDLED.read_text())
    recipe["output_width"] = recipe["output_height"] = 512
    if edit is not None:
        edit(recipe)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def upscale(share: Path, *args, **kwargs):
    return run_script("upscale.py", "--root", share, *FAST_RETRY_ARGS, *args, **kwargs)


def start_upscale(share: Path, *args):
    return start_script("upscale.py", "--root", share, *FAST_RETRY_ARGS, *args)


def img2img(*simulators) -> list[dict]:
    return [r for sim in simulators for r in sim.requests
            if r["path"] == "/sdapi/v1/img2img" and r["status"] == 200]


def sent_per_step(*simulators) -> Counter:
    """(seed, init image side px) -> answered requests: one key per image and step."""
    return Counter((r["seed"], r["init_size"][0]) for r in img2img(*simulators))


def upscaled(share: Path) -> list[str]:
    return [p.relative_to(share).as_posix() for p in png_files(share / "UPSCALED_IMAGES")]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
        return image.size


def leftovers(share: Path) -> list[Path]:
    """Temporary files or claims a run must not leave behind."""
    temporary = list(share.rglob(".*.tmp"))
    claims = list((share / ".claims").rglob("*.claim*")) if (share / ".claims").exists() else []
    return temporary + claims


def metrics_rows(share: Path) -> list[dict]:
    rows = []
    for log in sorted((share / "logs").glob("upscale-*.csv")):
        rows += list(csv.DictReader(log.open()))
    return rows


# --------------------------------------------------------------------------- recipes


def test_bundled_recipes_send_every_field_that_matters():
    creative, fast = load_recipe(BUNDLED), load_recipe(BUNDLED_FAST)
    assert [len(creative.steps), len(fast.steps)] == [2, 1]
    assert creative.output_size == fast.output_size == (2048, 2048)
    for step in creative.steps + fast.steps:
        payload = step.payload
        assert payload["refiner_model"] is None and payload["hires_fix"] is False
        assert payload["model"] == "juggernaut_xl_v9_q6p_q8p.ckpt"
        assert payload["restore_faces"] is False
        assert "upscaler" in payload and "upscaler_scale" in payload
        assert "width" not in payload and "height" not in payload  # from the init image
    upscale_step, refine_step = (step.payload for step in creative.steps)
    assert (upscale_step["upscaler"], upscale_step["upscaler_scale"], upscale_step["strength"]) \
        == ("4x_ultrasharp_f16.ckpt", 2, 0.0)
    assert refine_step["strength"] == 0.3 and refine_step["upscaler"] is None
    assert refine_step["tiled_diffusion"] and refine_step["tiled_decoding"]
    assert [refine_step[f"{kind}_tile_{side}"] for kind in ("diffusion", "decoding")
            for side in ("width", "height", "overlap")] == [1024, 1024, 128] * 2
    (control,) = refine_step["controls"]
    assert set(control) == set(drawthings.api_table().entry_types["JSControl"])
    assert control["weight"] == 0.5 and control["inputOverride"] == "tile"


def test_chain_sizes_follow_the_init_image_and_must_end_at_the_declared_size():
    recipe = load_recipe(BUNDLED)
    chain = plan_chain(recipe, (1024, 1024), 77, DEFAULT_APP_CONFIGURATION)
    assert [(s.payload["width"], s.payload["height"]) for s in chain] == [(1024, 1024), (2048, 2048)]
    assert [s.expected_size for s in chain] == [(2048, 2048), (2048, 2048)]
    assert [s.payload["seed"] for s in chain] == [77, 77]
    with pytest.raises(ValueError, match="creative_upscale.json makes 1024x1024 px from a 512x512 "
                                         "px input, not the 2048x2048 it declares"):
        plan_chain(recipe, (512, 512), 77, DEFAULT_APP_CONFIGURATION)
    # The app floors sizes to a multiple of 64: 1000 px comes back 960 x 2.
    with pytest.raises(ValueError, match="makes 1920x1920 px from a 1000x1000 px input"):
        plan_chain(recipe, (1000, 1000), 77, DEFAULT_APP_CONFIGURATION)
    with pytest.raises(ValueError, match=r"step 1 \(upscale 2x\) would be refused: "
                                         "Value for width must be between 128 and 8192"):
        plan_chain(recipe, (64, 64), 77, DEFAULT_APP_CONFIGURATION)


def test_a_step_leaving_the_upscaler_out_takes_the_apps(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"steps": [{"payload": {"strength": 0.2}}]}))
    app = {**DEFAULT_APP_CONFIGURATION, "upscaler": "realesrgan_x2plus_f16.ckpt",
           "upscaler_scale": 2}
    (step,) = plan_chain(load_recipe(path), (1024, 1024), 1, app)
    assert step.name == "step 1" and step.expected_size == (2048, 2048)


@pytest.mark.parametrize("recipe, message", [
    ([], 'a recipe must be a JSON object {"steps": [...]}'),
    ({"steps": []}, '"steps" must be a non-empty list of {"name": ..., "payload": {...}}'),
    ({"steps": [{"payload": {}}], "output_widht": 512},
     'unknown key "output_widht" (expected steps, output_width, output_height; '
     'keys starting with "_" are notes)'),
    ({"steps": [{"name": "a", "payload": {}}, {"name": "b", "payload": {"cfg_scal": 5}}]},
     'step 2 (b): "cfg_scal" is not a key of Draw Things\' HTTP API'),
    ({"steps": [{"name": "a", "payload": {"steps": 0}}]},
     "step 1 (a): Value for steps must be between 1 and 150, inclusive (was 0)"),
    ({"steps": [{"name": "a", "payload": {"init_images": []}}]},
     'step 1 (a): remove "init_images": the chain sets init_images'),
    ({"steps": [{"name": "a", "payload": {"seed": 5}}]},
     'step 1 (a): remove "seed": the seed comes from each input\'s file name'),
    ({"steps": [{"name": "a", "prompt": "x", "payload": {}}]},
     'step 1 (a): unknown key "prompt" (expected name, payload'),
    ({"steps": [{"name": "a", "payload": {}}], "output_width": "2048"},
     '"output_width" must be a whole number of pixels, 64..16384'),
])
def test_malformed_recipes_name_the_file_and_the_step(tmp_path, recipe, message):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(InputFileError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_inspect_png_tells_incomplete_from_not_a_png():
    png = png_bytes("x", 64)
    assert inspect_png(png).problem is None and inspect_png(png).size == (64, 64)
    cases = {
        b"": ("empty file (0 bytes)", True),
        png[:5]: ("only the first 5 bytes of a PNG", True),
        png[: len(png) // 2]: (f"truncated: no IEND end marker in its {len(png) // 2} bytes", True),
        b"\xff\xd8\xff\xe0JFIF": ("not a PNG file: a JPEG image", False),
        b"hello, world\n": ("not a PNG file: text", False),
    }
    for data, (problem, incomplete) in cases.items():
        check = inspect_png(data)
        assert (check.problem, check.incomplete) == (problem, incomplete)


# --------------------------------------------------------------------------- end to end


def test_two_step_chain_makes_2048_px_pngs_with_provenance_and_a_rerun_sends_nothing(share):
    """The bundled recipe at full size; two servers in one process share the images."""
    for relative in ("France/family/France_family_1.png", "Japan/working/Japan_working_1.png"):
        add_input(share, relative, side_px=1024)
    with Simulator() as first, Simulator() as second:
        result = upscale(share, "--server", first.url, "--server", second.url)
        assert result.returncode == 0, result.stderr
        assert "upscale: 2 made, 0 already done, 0 made by other workers, 0 failed, 0 left of 2" \
            in result.stdout
        rerun = upscale(share, "--server", first.url)
        requests = img2img(first, second)
    assert rerun.returncode == 0 and "0 made, 2 already done" in rerun.stdout
    assert upscaled(share) == ["UPSCALED_IMAGES/France/family/France_family_1_upscaled.png",
                               "UPSCALED_IMAGES/Japan/working/Japan_working_1_upscaled.png"]
    seeds = {seed_for("France_family_1"), seed_for("Japan_working_1")}
    # Each image once per step, every step with the image's file-name seed.
    assert sent_per_step(first, second) == {(seed, side): 1 for seed in seeds for side in (1024, 2048)}
    for request in requests:
        step = 1 if request["init_size"] == [1024, 1024] else 2
        assert [request["width"], request["height"]] == request["init_size"]
        assert request["output_size"] == [2048, 2048]
        assert (request["payload"]["upscaler"] is not None) == (step == 1)
        assert request["payload"]["tiled_diffusion"] == (step == 2)
        # The app really uses the SDXL ControlNet and LoRA: none is dropped.
        assert request["dropped"] == []
        assert request["applied"]["controls"] == (
            ["controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt"] if step == 2 else [])
        assert request["applied"]["loras"] == (
            ["tcd_sd_xl_base_1.0_lora_f16.ckpt"] if step == 2 else [])

    output = share / "UPSCALED_IMAGES/France/family/France_family_1_upscaled.png"
    assert size_of(output) == (2048, 2048)
    texts = read_text_chunks(output)
    seed = seed_for("France_family_1")
    assert f"Seed: {seed}, Size: 2048x2048, Model: juggernaut_xl_v9_q6p_q8p.ckpt, " \
           "Denoising strength: 0.3" in texts["parameters"]
    record = json.loads(texts["drawpipe"])
    assert [step["name"] for step in record["steps"]] == ["upscale 2x", "refine 2048"]
    assert [step["request"]["width"] for step in record["steps"]] == [1024, 2048]
    sent_last = [r for r in requests if r["seed"] == seed and r["init_size"] == [2048, 2048]]
    assert record["request"] == sent_last[0]["payload"]  # what was sent, without the image
    assert json.loads(texts["drawpipe-source"])["input"] \
        == "GENERATIONS/France/family/France_family_1.png"
    assert "init_images" not in texts["drawpipe"] and len(texts["drawpipe"]) < 10_000

    rows = metrics_rows(share)
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:
        assert row["steps"] == "2" and len(row["step_seconds"].split(";")) == 2
        assert row["recipe"] == "creative_upscale.json" and row["step_attempts"] == "1;1"
        assert row["seed"] == str(seed_for(Path(row["input"]).stem))
        assert len(",".join(row.values())) < 1000  # no base64 in the log
    assert leftovers(share) == []


def test_a_recipe_without_width_and_height_takes_them_from_each_input(share):
    """The app's window is at 512 x 512: the requests must not take its size."""
    add_input(share, "Peru/family/Peru_family_1.png", side_px=1024)
    with Simulator(app_configuration={"width": 512, "height": 512}) as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe", "upscale_fast.json")
        (request,) = img2img(simulator)
    assert result.returncode == 0, result.stderr
    assert (request["width"], request["height"], request["output_size"]) == (1024, 1024, [2048, 2048])
    assert size_of(share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png") == (2048, 2048)


def test_a_422_from_a_wrong_step_stops_the_run_with_the_servers_detail(share, tmp_path):
    def fix_step_two_at_256(recipe):
        recipe["steps"][1]["payload"].update(width=256, height=256)
        recipe["output_width"] = recipe["output_height"] = 256

    recipe = small_recipe(tmp_path, fix_step_two_at_256)
    for number in (1, 2, 3):
        add_input(share, f"Peru/family/Peru_family_{number}.png")
    with Simulator() as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe", recipe)
        posts = [r for r in simulator.requests if r["method"] == "POST"]
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {simulator.url}/sdapi/v1/img2img rejected step 2 (refine 2048) of recipe.json "
        "(HTTP 422): init_images height doesn't match 512 from the parameter 256 — fix the recipe "
        "or the app's settings and run again")
    assert "Traceback" not in result.stderr
    assert [r["status"] for r in posts] == [200, 422]  # stopped at once: nothing else sent
    assert upscaled(share) == [] and leftovers(share) == []


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_on_one_folder_send_each_image_once_per_step(share, tmp_path, workers):
    recipe = small_recipe(tmp_path)
    stems = [f"Peru_family_{n}" for n in range(1, 7)]
    for stem in stems:
        add_input(share, f"Peru/family/{stem}.png")
    simulators = [Simulator(latency_seconds=0.2).start() for _ in range(workers)]
    try:
        processes = [start_upscale(share, "--server", sim.url, "--recipe", recipe,
                                   "--poll-seconds", "0.1") for sim in simulators]
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for sim in simulators:
            sim.stop()
    assert [p.returncode for p in processes] == [0] * workers, outputs
    assert sent_per_step(*simulators) == {
        (seed_for(stem), side): 1 for stem in stems for side in (256, 512)}
    assert sum(1 for sim in simulators if img2img(sim)) >= 2  # the work was shared
    made = [int(out.split("upscale: ")[1].split(" made")[0]) for out, _ in outputs]
    assert sum(made) == 6
    for out, _ in outputs:
        assert "0 failed, 0 left of 6" in out
    assert len(upscaled(share)) == 6
    assert all(size_of(p) == (512, 512) for p in png_files(share / "UPSCALED_IMAGES"))
    assert leftovers(share) == []


def test_a_killed_workers_image_is_finished_by_another_after_its_lease(share, tmp_path):
    recipe = small_recipe(tmp_path)
    for number in (1, 2, 3):
        add_input(share, f"Peru/family/Peru_family_{number}.png")
    lease = ["--lease-seconds", "2", "--poll-seconds", "0.1", "--recipe", recipe]
    with Simulator(latency_seconds=1.5) as slow, Simulator(latency_seconds=0.1) as fast:
        crashing = start_upscale(share, "--server", slow.url, *lease)
        wait_for(lambda: img2img(slow))  # step 1 of image 1 answered: mid-image
        crashing.send_signal(signal.SIGKILL)
        crashing.wait()
        claim = share / ".claims/upscale/UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png.claim"
        assert claim.exists()
        helper = upscale(share, "--server", fast.url, *lease)
    assert helper.returncode == 0, helper.stderr
    assert "3 made" in helper.stdout
    assert sent_per_step(fast) == {(seed_for(f"Peru_family_{n}"), side): 1
                                   for n in (1, 2, 3) for side in (256, 512)}
    assert len(upscaled(share)) == 3 and leftovers(share) == []


def test_a_crash_between_steps_is_resumed_from_the_input(share, tmp_path):
    recipe = small_recipe(tmp_path)
    add_input(share, "Peru/family/Peru_family_1.png")
    with Simulator(latency_seconds=1.0) as simulator:
        crashing = start_upscale(share, "--server", simulator.url, "--recipe", recipe)
        wait_for(lambda: img2img(simulator))  # step 1 answered, step 2 about to be sent
        crashing.send_signal(signal.SIGKILL)
        crashing.wait()
        result = upscale(share, "--server", simulator.url, "--recipe", recipe,
                         "--lease-seconds", "1.5", "--poll-seconds", "0.1")
        steps = sent_per_step(simulator)
    assert result.returncode == 0, result.stderr
    seed = seed_for("Peru_family_1")
    assert steps[(seed, 256)] == 2  # the intermediate image was never stored: step 1 again
    assert size_of(share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png") == (512, 512)
    # Nothing but the input and the output: no intermediate, no temporary file.
    pngs = sorted(p.relative_to(share).as_posix() for p in share.rglob("*.png*"))
    assert pngs == ["GENERATIONS/Peru/family/Peru_family_1.png",
                    "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"]
    assert leftovers(share) == []


def test_watch_picks_up_new_images_and_ctrl_c_finishes_the_one_in_flight(share, tmp_path):
    recipe = small_recipe(tmp_path)
    add_input(share, "Peru/family/Peru_family_1.png")
    done = share / "UPSCALED_IMAGES/Peru/family"
    with Simulator(latency_seconds=0.5) as simulator:
        watcher = start_upscale(share, "--server", simulator.url, "--recipe", recipe, "--watch",
                                "--poll-seconds", "0.1")
        wait_for(lambda: (done / "Peru_family_1_upscaled.png").exists())
        add_input(share, "Chile/working/Chile_working_1.png")  # generate.py made another
        wait_for(lambda: (share / "UPSCALED_IMAGES/Chile/working/Chile_working_1_upscaled.png")
                 .exists())
        add_input(share, "Peru/family/Peru_family_2.png")
        seed = seed_for("Peru_family_2")
        wait_for(lambda: (seed, 256) in sent_per_step(simulator))  # in flight: step 2 next
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 130, err
    assert "stopping: finishing the images in flight" in err and "Traceback" not in err
    assert (f"watching {share / 'GENERATIONS'} for new images (every 0.1 s); Ctrl-C stops, after "
            "the images in flight\n") in out
    assert "interrupted; run the same command again to continue" in out
    assert "3 made" in out
    assert size_of(done / "Peru_family_2_upscaled.png") == (512, 512)
    assert leftovers(share) == []


def test_unusable_inputs_are_reported_and_never_sent(share, tmp_path):
    recipe = small_recipe(tmp_path)
    good = [add_input(share, f"Peru/family/Peru_family_{n}.png") for n in (1, 2)]
    png = png_bytes("damaged", 256)
    idat = png.index(b"IDAT")
    flipped = png[: idat + 20] + bytes([png[idat + 20] ^ 0xFF]) + png[idat + 21:]
    bad = {
        "Peru/family/a_empty.png": b"",
        "Peru/family/b_notes.png": b"not a picture\n",
        "Peru/family/c_photo.png": b"\xff\xd8\xff\xe0" + bytes(2000),
        "Peru/family/d_truncated.png": png[: len(png) // 2],
    }
    for relative, data in bad.items():
        add_raw_input(share, relative, data, age_seconds=OLD_SECONDS)
    add_raw_input(share, "Peru/family/e_damaged.png", flipped, age_seconds=OLD_SECONDS)
    add_raw_input(share, "Peru/family/readme.txt", b"notes\n")
    with Simulator() as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe", recipe)
        sent_seeds = {seed for seed, _ in sent_per_step(simulator)}
    assert result.returncode == 1, result.stderr
    assert sent_seeds == {seed_for(p.stem) for p in good}  # nothing else was sent
    for line in [
        "skipped: GENERATIONS/Peru/family/a_empty.png: empty file (0 bytes) (never sent)",
        "skipped: GENERATIONS/Peru/family/b_notes.png: not a PNG file: text (never sent)",
        "skipped: GENERATIONS/Peru/family/c_photo.png: not a PNG file: a JPEG image (never sent)",
        "skipped: GENERATIONS/Peru/family/d_truncated.png: truncated: no IEND end marker in its "
        f"{len(png) // 2} bytes (never sent)",
    ]:
        assert line in result.stderr
    assert "failed: UPSCALED_IMAGES/Peru/family/e_damaged_upscaled.png: " \
           "GENERATIONS/Peru/family/e_damaged.png is not a usable PNG (damaged PNG" in result.stderr
    assert "upscale: 2 made, 0 already done, 0 made by other workers, 1 failed, 1 left of 3" \
        in result.stdout
    assert "4 input(s) skipped, not usable PNG images (never sent):" in result.stdout
    assert "1 file(s) under GENERATIONS/ are not .png and were ignored" in result.stdout
    assert upscaled(share) == [f"UPSCALED_IMAGES/Peru/family/Peru_family_{n}_upscaled.png"
                               for n in (1, 2)]
    assert leftovers(share) == []


def test_a_png_still_being_written_is_not_sent_until_complete(share, tmp_path):
    recipe = small_recipe(tmp_path)
    add_input(share, "Peru/family/Peru_family_1.png")
    late = png_bytes("Peru_family_2", 256)
    partial = add_raw_input(share, "Peru/family/Peru_family_2.png", late[: len(late) // 3])
    empty = add_raw_input(share, "Peru/family/Peru_family_3.png", b"")
    with Simulator() as simulator:
        worker = start_upscale(share, "--server", simulator.url, "--recipe", recipe,
                               "--poll-seconds", "0.1")
        wait_for(lambda: len(img2img(simulator)) == 2)  # the complete one
        time.sleep(1.0)
        assert worker.poll() is None  # still waiting for the other two
        assert len(img2img(simulator)) == 2  # and sent nothing of them
        # The copy goes on and ends. (Not open(..., "ab"): O_APPEND through the FUSE SMB
        # client of ../shared/smb fails with EIO.)
        with open(partial, "r+b") as stream:
            stream.seek(0, os.SEEK_END)
            stream.write(late[len(late) // 3:])
        empty.write_bytes(png_bytes("Peru_family_3", 256))
        out, err = worker.communicate(timeout=60)
        steps = sent_per_step(simulator)
    assert worker.returncode == 0, err
    assert "waiting: UPSCALED_IMAGES/Peru/family/Peru_family_2_upscaled.png: " \
           "GENERATIONS/Peru/family/Peru_family_2.png looks half-written (truncated" in err
    assert "3 made" in out
    assert steps == {(seed_for(f"Peru_family_{n}"), side): 1 for n in (1, 2, 3) for side in (256, 512)}
    assert leftovers(share) == []


def test_dry_run_shows_to_do_done_and_claimed_by_whom_and_sends_nothing(share):
    add_input(share, "Peru/family/Peru_family_1.png")
    add_input(share, "Peru/family/Peru_family_2.png")
    add_input(share, "Chile/working/Chile_working_1.png")
    add_raw_input(share, "Chile/working/broken.png", b"", age_seconds=OLD_SECONDS)
    done = share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"
    done.parent.mkdir(parents=True)
    done.write_bytes(png_bytes("done", 64))
    other_mac = ClaimStore(share, "upscale", "studio-4242-0", lease_seconds=120)
    other_mac.prepare()
    other_mac.try_claim("UPSCALED_IMAGES/Chile/working/Chile_working_1_upscaled.png")
    result = upscale(share, "--server", "http://127.0.0.1:9", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("payloads/creative_upscale.json: 2 step(s) (upscale 2x, refine 2048) -> "
                             "2048x2048 px")
    claimed = lines.pop(2)
    assert re.fullmatch(r"    UPSCALED_IMAGES/Chile/working/Chile_working_1_upscaled\.png: "
                        r"claimed by studio-4242-0 \([01] s ago\)", claimed), claimed
    assert lines[1:] == [
        "  Chile/working: 0 to upscale, 0 already done, 1 claimed",
        "  Peru/family: 1 to upscale, 1 already done",
        "  skipped: GENERATIONS/Chile/working/broken.png: empty file (0 bytes)",
        f"dry run: 2 image(s) to upscale, 1 already done, 1 skipped, into "
        f"{share.resolve() / 'UPSCALED_IMAGES'}; nothing was sent",
    ]
    assert not (share / "logs").exists()


def test_unknown_recipe_is_one_line_listing_the_bundled_ones(share):
    result = upscale(share, "--recipe", "nowhere.json", "--server", "http://127.0.0.1:9")
    assert result.returncode == 2
    bundled = ("creative_upscale, creative_upscale_script, creative_upscale_script_400, "
               "upscale_fast")
    assert result.stderr == ("error: --recipe nowhere.json: no such file, and no bundled recipe "
                             f"of that name (bundled: {bundled})\n")
    result = upscale(share, "--recipe", "upscale_fats", "--server", "http://127.0.0.1:9")
    assert result.stderr == ("error: --recipe upscale_fats: no such file, and no bundled recipe "
                             f"of that name (did you mean upscale_fast? bundled: {bundled})\n")


# --------------------------------------------------------------------------- other recipes, overrides


def test_the_400_percent_recipe_makes_4096_px_and_applies_every_lora_and_controlnet(share):
    add_input(share, "Peru/family/Peru_family_1.png", side_px=1024)
    with Simulator() as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe",
                         "creative_upscale_script_400")
        requests = img2img(simulator)
    assert result.returncode == 0, result.stderr
    assert size_of(share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png") == (4096, 4096)
    assert [(r["init_size"], r["output_size"]) for r in requests] == [
        ([1024, 1024], [2048, 2048]), ([2048, 2048], [4096, 4096]), ([4096, 4096], [4096, 4096])]
    script_loras = ["add_more_details__detail_enhancer___tweaker__lora_f16.ckpt",
                    "sdxl_render_v2.0_lora_f16.ckpt", "tcd_sd_v1.5_lora_f16.ckpt"]
    for request in requests[1:]:
        assert request["dropped"] == []
        assert request["applied"]["model"] == "juggernaut_reborn_q6p_q8p.ckpt"
        assert request["applied"]["loras"] == script_loras
        assert request["applied"]["controls"] == ["controlnet_tile_1.x_v1.1_f16.ckpt"]


def test_set_overrides_every_step_sending_a_key_or_one_named_step(share, tmp_path):
    add_input(share, "Peru/family/Peru_family_1.png")
    with Simulator() as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe", small_recipe(tmp_path),
                         "--set", "guidance_scale=2", "--set", "refine 2048:steps=12",
                         "--set", "1:negative_prompt=blurry")
        first, second = (r["payload"] for r in img2img(simulator))
    assert result.returncode == 0, result.stderr
    assert "override --set guidance_scale=2: step(s) 1, 2" in result.stdout
    assert "override --set refine 2048:steps=12: step(s) 2" in result.stdout
    assert first["guidance_scale"] == second["guidance_scale"] == 2
    assert (first["steps"], second["steps"]) == (8, 12)
    assert (first["negative_prompt"], second["negative_prompt"]) == ("blurry", "")
    record = json.loads(read_text_chunks(png_files(share / "UPSCALED_IMAGES")[0])["drawpipe"])
    assert record["overrides"] == ["guidance_scale=2", "refine 2048:steps=12",
                                   "1:negative_prompt=blurry"]


@pytest.mark.parametrize("option, message", [
    ("hires_fix_width=512", "--set hires_fix_width=512: no step of recipe.json sends "
                            "hires_fix_width; add it to one step with --set "
                            "STEP:hires_fix_width=512 (steps: 1 'upscale 2x', 2 'refine 2048')"),
    ("3:steps=12", "--set 3:steps=12: recipe.json has no step \"3\" (steps: 1 'upscale 2x', "
                   "2 'refine 2048')"),
    ("2:strength=1.5", "--set 2:strength=1.5: Value for strength must be between 0.0 and 1.0, "
                       "inclusive (was 1.5)"),
    ("refine 2048:model=juggernaut_reborn_q6p_q8p.ckpt",
     "{recipe}: step 2 (refine 2048) with --set: loras[0]: the app would ignore "
     "tcd_sd_xl_base_1.0_lora_f16.ckpt without a word: it is a sdxl_base_v0.9 LoRA and "
     "juggernaut_reborn_q6p_q8p.ckpt is v1; use tcd_sd_v1.5_lora_f16.ckpt"),
])
def test_a_bad_override_stops_before_anything_is_sent(share, tmp_path, option, message):
    add_input(share, "Peru/family/Peru_family_1.png")
    recipe = small_recipe(tmp_path)
    with Simulator() as simulator:
        result = upscale(share, "--server", simulator.url, "--recipe", recipe, "--set", option)
        sent = simulator.requests
    assert (result.returncode, result.stderr) == (2, f"error: {message.format(recipe=recipe)}\n")
    assert sent == [] and not (share / "UPSCALED_IMAGES").exists()


# --------------------------------------------------------------- --watch retries, clocks


def test_watch_tries_a_failed_job_again_after_a_pause_and_reports_the_retries(share, tmp_path):
    recipe = small_recipe(tmp_path)
    add_input(share, "Peru/family/Peru_family_1.png")
    with Simulator() as simulator:
        simulator.queue_faults(["503", "503", "503"])  # every attempt of the first try
        watcher = start_upscale(share, "--server", simulator.url, "--recipe", recipe, "--watch",
                                "--poll-seconds", "0.1", "--watch-retry-seconds", "0.5")
        output = share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"
        wait_for(output.exists)
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
        answered = [r["time"] for r in img2img(simulator)]
        failed = [r["time"] for r in simulator.requests if r["status"] == 503]
    assert watcher.returncode == 130, err
    assert "failed: UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png: step 1" in err
    assert answered[0] - failed[-1] >= 0.5  # the pause before the job's second try
    assert "upscale: 1 made, 0 already done, 0 made by other workers, 0 failed, 0 left of 1" in out
    assert "retries: 2 request(s) re-sent, 1 failed job(s) tried again" in out
    assert size_of(output) == (512, 512) and leftovers(share) == []


def test_watch_waits_well_beyond_the_read_timeout_before_resending_a_dropped_job(share, tmp_path):
    recipe = small_recipe(tmp_path)
    add_input(share, "Peru/family/Peru_family_1.png")
    with Simulator() as simulator:
        simulator.queue_faults(["drop"])
        watcher = start_upscale(share, "--server", simulator.url, "--recipe", recipe, "--watch",
                                "--poll-seconds", "0.1", "--watch-retry-seconds", "0.1",
                                "--read-timeout-seconds", "1")
        output = share / "UPSCALED_IMAGES/Peru/family/Peru_family_1_upscaled.png"
        wait_for(output.exists)
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
        posts = [r for r in simulator.requests if r["method"] == "POST"]
    assert watcher.returncode == 130, err
    assert "Draw Things may still be drawing it, so this run does not send it again" in err
    assert posts[0]["fault"] == "drop"
    assert posts[1]["time"] - posts[0]["time"] >= 2.0  # twice the read timeout
    assert len(posts) == 3  # the dropped one, then the two steps once each


def test_the_settle_check_uses_the_file_servers_clock(tmp_path):
    """A half-written input, modified 10 minutes ago by this Mac's clock but a second
    ago by the file server's (the clocks disagree): it is waited for, not rejected."""
    from drawpipe.errors import BadInput, JobDeferred
    from drawpipe.stages.upscale import read_input
    path = add_raw_input(tmp_path, "x.png", png_bytes("x", 64)[:100], age_seconds=600)
    modified = path.stat().st_mtime
    with pytest.raises(JobDeferred, match=r"x.png looks half-written \(truncated.*modified 1 s ago"):
        read_input(path, "x.png", 60, now=lambda: modified + 1)
    with pytest.raises(BadInput):
        read_input(path, "x.png", 60, now=lambda: modified + 61)
    with pytest.raises(BadInput):
        read_input(path, "x.png", 60)  # this Mac's clock: 10 minutes
