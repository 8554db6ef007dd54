"""The API table derived from Draw Things' source, and the checks that read it.

Facts below were read by hand in the upstream files the table names (the commit is
in the table's ``upstream``); the tests hold the derived table to them.
"""

import ast
import json
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, png_files, run_script

from drawpipe.bundled import TXT2IMG_TEMPLATE
from drawpipe.drawthings.api import api_table, decode_body, output_size, resolve_extras
from drawpipe.drawthings.payloads import check_payload
from drawpipe.drawthings.simulator import Simulator
from drawpipe.errors import InputFileError

PAYLOADS = PROJECT_DIR / "payloads"
TEMPLATES = sorted(PAYLOADS.glob("*.json"))


# --------------------------------------------------------------------------- the table


def test_the_table_names_its_upstream_commits():
    upstream = api_table().upstream
    assert set(upstream) == {"draw-things-community", "community-models"}
    for stamp in upstream.values():
        assert len(stamp["commit"]) == 40 and stamp["date"][:2] == "20"


def test_every_key_of_all_parameters_in_order():
    # Parameters.swift allParameters(): 83 parameters, model first, expand_prompt_to_json last.
    keys = list(api_table().parameters)
    assert len(keys) == 83
    assert keys[:5] == ["model", "width", "height", "seed", "guidance_scale"]
    assert keys[-1] == "expand_prompt_to_json"
    assert "face_restoration" not in keys and "restore_faces" not in keys
    assert api_table().extra_keys == ("restore_faces", "init_images")  # ServerModels.swift


@pytest.mark.parametrize("key, kind, low, high", [
    ("width", "int", 128, 8192),
    ("seed", "int", -1, 4294967295),
    ("steps", "int", 1, 150),
    ("guidance_scale", "double", 0.0, 50.0),
    ("shift", "double", 0.1, 8.0),
    ("hires_fix_width", "int", 128, 2048),
    ("diffusion_tile_width", "int", 128, 2048),
    ("diffusion_tile_overlap", "int", 64, 1024),
    ("upscaler_scale", "int", 0, 4),
    ("image_guidance", "double", 0.0, 25.0),
    ("crop_top", "int", 0, 1024),
])
def test_ranges(key, kind, low, high):
    parameter = api_table().parameters[key]
    assert (parameter.type, parameter.range) == (kind, (low, high))


def test_the_twenty_samplers_and_four_seed_modes():
    samplers = api_table().parameters["sampler"].options
    assert len(samplers) == 20
    assert samplers[0] == "DPM++ 2M Karras" and samplers[-1] == "TCD Trailing"
    assert "TCD" in samplers and "Euler a" in samplers
    assert api_table().parameters["seed_mode"].options == (
        "Legacy", "Torch CPU Compatible", "Scale Alike", "NVIDIA GPU Compatible")


def test_aliases():
    aliases = {alias: parameter.key for parameter in api_table().parameters.values()
               for alias in parameter.aliases if alias != parameter.key}
    assert aliases == {
        "cfg_scale": "guidance_scale", "n_iter": "batch_count", "sampler_name": "sampler",
        "sampler_index": "sampler", "denoising_strength": "strength", "enable_hr": "hires_fix",
        "firstphase_width": "hires_fix_width", "firstphase_height": "hires_fix_height",
        "upscaler_scale_factor": "upscaler_scale"}


def test_null_rules_follow_the_parameter_types():
    parameters = api_table().parameters
    assert parameters["steps"].null == parameters["hires_fix"].null == "keeps"
    assert parameters["loras"].null == "keeps"
    assert parameters["upscaler"].null == parameters["prompt"].null == "sets_nil"
    assert parameters["sampler"].null == "rejected"


@pytest.mark.parametrize("kind, file, family", [
    ("models", "sd_xl_base_1.0_f16.ckpt", "sdxl_base_v0.9"),
    ("models", "sd_xl_refiner_1.0_f16.ckpt", "sdxl_refiner_v0.9"),
    ("models", "juggernaut_xl_v9_q6p_q8p.ckpt", "sdxl_base_v0.9"),
    ("models", "juggernaut_reborn_q6p_q8p.ckpt", "v1"),
    ("controlnets", "controlnet_tile_1.x_v1.1_f16.ckpt", "v1"),
    ("controlnets", "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt", "sdxl_base_v0.9"),
    ("loras", "tcd_sd_xl_base_1.0_lora_f16.ckpt", "sdxl_base_v0.9"),
    ("loras", "tcd_sd_v1.5_lora_f16.ckpt", "v1"),
    ("loras", "sdxl_render_v2.0_lora_f16.ckpt", "v1"),  # an SD 1.5 LoRA, whatever its name
])
def test_model_families(kind, file, family):
    assert api_table().family(kind, file) == family


def test_upscaler_factors():
    files = api_table().files["upscalers"]
    assert files["4x_ultrasharp_f16.ckpt"]["scale_factor"] == 4
    assert files["realesrgan_x2plus_f16.ckpt"]["scale_factor"] == 2


def test_no_module_keeps_a_second_list_of_keys():
    """The old hand-written table named 52 keys; nothing in the package may list more
    than a handful of keys again (the simulator's window values name 15)."""
    keys = set(api_table().json_keys)
    for module in sorted((PROJECT_DIR / "drawpipe").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
                elements = node.keys if isinstance(node, ast.Dict) else node.elts
                named = {e.value for e in elements
                         if isinstance(e, ast.Constant) and e.value in keys}
                assert len(named) <= 16, f"{module.name}:{node.lineno} lists {len(named)} keys"


# --------------------------------------------------------------------------- decoding


def test_output_size_floors_to_64_and_applies_the_upscaler():
    assert output_size({"width": 1000, "height": 1024}) == (960, 1024)
    assert output_size({"width": 1024, "height": 1024, "upscaler": "4x_ultrasharp_f16.ckpt",
                        "upscaler_scale": 0}) == (4096, 4096)
    assert output_size({"width": 1024, "height": 1024, "upscaler": "4x_ultrasharp_f16.ckpt",
                        "upscaler_scale": 2}) == (2048, 2048)


def test_a_body_decodes_to_parameter_keys_with_the_null_rules_applied():
    decoded = decode_body({"cfg_scale": 5, "steps": None, "upscaler": None, "restore_faces": False})
    assert decoded.values == {"guidance_scale": 5.0, "upscaler": None}
    assert decoded.sent_as == {"guidance_scale": "cfg_scale", "steps": "steps",
                               "upscaler": "upscaler"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_bundled_template_and_recipe_is_valid_and_complete(path):
    data = json.loads(path.read_text())
    recipe = isinstance(data.get("steps"), list)
    payloads = [step["payload"] for step in data["steps"]] if recipe else [data]
    for payload in payloads:
        payload = {k: v for k, v in payload.items() if not k.startswith("_")}
        assert check_payload(payload, path.name) == []
        assert payload["restore_faces"] is False
        for key in ("model", "steps", "sampler", "seed_mode", "guidance_scale", "strength",
                    "loras", "controls", "upscaler", "hires_fix", "refiner_model"):
            assert key in payload, f"{path.name} leaves {key} to the app's window"


# --------------------------------------------------------------------------- what the app drops


XL = {"model": "juggernaut_xl_v9_q6p_q8p.ckpt"}
TILE_1X = {"file": "controlnet_tile_1.x_v1.1_f16.ckpt", "weight": 0.5, "inputOverride": ""}
UNION = "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt"


def test_an_sd1_controlnet_on_an_sdxl_model_is_refused_naming_a_file_of_the_right_family():
    with pytest.raises(InputFileError) as caught:
        check_payload({**XL, "controls": [{**full_control(TILE_1X)}]}, "t.json")
    assert str(caught.value) == (
        "t.json: controls[0]: the app would ignore controlnet_tile_1.x_v1.1_f16.ckpt without a "
        "word: it is a v1 ControlNet and juggernaut_xl_v9_q6p_q8p.ckpt is sdxl_base_v0.9; use "
        f'{UNION} with "inputOverride": "tile" (a union ControlNet of that family)')


def test_an_sd1_lora_on_an_sdxl_model_is_refused_naming_its_sdxl_twin():
    with pytest.raises(InputFileError) as caught:
        check_payload({**XL, "loras": [{"file": "tcd_sd_v1.5_lora_f16.ckpt", "weight": 1}]},
                      "t.json")
    assert str(caught.value) == (
        "t.json: loras[0]: the app would ignore tcd_sd_v1.5_lora_f16.ckpt without a word: it is "
        "a v1 LoRA and juggernaut_xl_v9_q6p_q8p.ckpt is sdxl_base_v0.9; use "
        "tcd_sd_xl_base_1.0_lora_f16.ckpt")


def test_a_union_controlnet_without_input_override_is_refused():
    with pytest.raises(InputFileError, match=r'controls\[0\]: .* conditions on nothing: the app '
                                             r'would ignore it; set its "inputOverride" to one of '
                                             r'"Custom", "Depth"'):
        check_payload({**XL, "controls": [full_control({"file": UNION, "weight": 0.5,
                                                         "inputOverride": ""})]}, "t.json")


def test_what_cannot_be_checked_is_a_warning():
    warnings = check_payload({**XL, "width": 1000, "refiner_model": "my_refiner.ckpt",
                              "loras": [{"file": "my_style_lora.ckpt", "weight": 1, "mode": "bas"}]},
                             "t.json")
    assert warnings == [
        "t.json: width 1000 is not a multiple of 64: the app uses 960",
        't.json: loras[0].mode "bas" is not one of all, base, refiner: the app uses "all"',
        "t.json: refiner_model my_refiner.ckpt is not in drawpipe's table of Draw Things files; "
        "the app ignores an unknown refiner without a word",
        "t.json: loras[0]: my_style_lora.ckpt is not in drawpipe's table of Draw Things LoRAs: "
        "its model family cannot be checked",
    ]


def test_an_sdxl_refiner_may_carry_its_own_lora():
    resolution = resolve_extras({"model": "sd_xl_base_1.0_f16.ckpt",
                                 "refiner_model": "sd_xl_refiner_1.0_f16.ckpt",
                                 "loras": [{"file": "lcm_sd_xl_refiner_1.0_lora_f16.ckpt"}]})
    assert resolution.dropped == [] and resolution.refiner == "sd_xl_refiner_1.0_f16.ckpt"


def full_control(fields: dict) -> dict:
    return {"guidanceStart": 0.0, "guidanceEnd": 1.0, "noPrompt": False,
            "globalAveragePooling": False, "downSamplingRate": 1.0,
            "controlImportance": "balanced", "targetBlocks": [], **fields}


# --------------------------------------------------------------------------- generate.py


def generate(share: Path, *args):
    return run_script("generate.py", "--root", share, "--no-progress", "--add", "Peru:family:2",
                      *args)


def template_with(share: Path, **changes) -> Path:
    payload = json.loads((PAYLOADS / "txt2img.json").read_text())
    payload.update(changes)
    path = share.parent / "template.json"
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"face_restoration": None},
     '"face_restoration" is not a key of Draw Things\' HTTP API (draw-things-community {commit}): '
     'the app answers Unrecognized keys: ["face_restoration"]; did you mean "face_restoration" -> '
     '"restore_faces"?'),
    ({"cfg_scale": 7},
     'More than one key for guidance specified (must only specify one of '
     '["guidance_scale", "cfg_scale"])'),
    ({"steps": 151}, "Value for steps must be between 1 and 150, inclusive (was 151)"),
    ({"sampler": "Euler"}, "Invalid value for sampler (options: {samplers}); did you mean "
                           "'Euler a'?"),
    ({"sampler": "Heun"}, "Invalid value for sampler (options: {samplers})"),  # nothing close
    ({"seed_mode": "Random"},
     'Invalid value for seed_mode (options: ["Legacy", "Torch CPU Compatible", "Scale Alike", '
     '"NVIDIA GPU Compatible"])'),
    ({"loras": [{"file": "tcd_sd_v1.5_lora_f16.ckpt", "weight": 1}]},
     "loras[0]: the app would ignore tcd_sd_v1.5_lora_f16.ckpt without a word: it is a v1 LoRA "
     "and sd_xl_base_1.0_f16.ckpt is sdxl_base_v0.9; use tcd_sd_xl_base_1.0_lora_f16.ckpt"),
])
def test_a_bad_template_ends_before_anything_is_sent(share, simulator, changes, message):
    path = template_with(share, **changes)
    result = generate(share, "--server", simulator.url, "--payload", path)

    expected = message.format(commit=api_table().upstream["draw-things-community"]["commit"][:12],
                              samplers=json.dumps(list(api_table().parameters["sampler"].options)))
    assert (result.returncode, result.stderr) == (2, f"error: {path}: {expected}\n")
    assert simulator.requests == [] and list(share.iterdir()) == []


def test_a_key_the_running_app_lacks_stops_the_run_before_the_first_request(share):
    with Simulator(missing_keys=["tea_cache"]) as older_app:
        result = generate(share, "--server", older_app.url)
        sent = [r for r in older_app.requests if r["method"] == "POST"]

    template = TXT2IMG_TEMPLATE
    assert (result.returncode, result.stderr) == (2, (
        f'error: {template}: "tea_cache" is not a key of the Draw Things app at {older_app.url} '
        "(its GET / does not list it: the app is older than this template): update Draw Things, "
        f'or remove "tea_cache" from {template}\n'))
    assert sent == [] and list(share.iterdir()) == []


def test_settings_only_the_window_can_change_are_reported(share):
    with Simulator(app_configuration={"color_calibration": "lab"}) as app:
        result = generate(share, "--server", app.url)
    assert result.returncode == 0, result.stderr
    assert (f'warning: the app at {app.url} has color_calibration "lab" set in its window, and '
            "requests cannot change it (the server refuses that key): every image gets it; set "
            'it to "none" in Draw Things if that is not meant') in result.stderr.splitlines()


def test_set_overrides_reach_the_request_and_the_provenance(share, simulator):
    result = generate(share, "--server", simulator.url, "--set", "steps=12",
                      "--set", "sampler=Euler a", "--set", "cfg_scale=4.5")
    assert result.returncode == 0, result.stderr
    assert "overrides: --set steps=12, --set sampler=Euler a, --set cfg_scale=4.5" in result.stdout
    for request in simulator.requests[1:]:  # after GET /
        payload = request["payload"]
        assert (payload["steps"], payload["sampler"], payload["guidance_scale"]) == (12, "Euler a",
                                                                                     4.5)
        assert "cfg_scale" not in payload  # the template's key is replaced, not doubled
    from drawpipe.png import read_text_chunks
    record = json.loads(read_text_chunks(png_files(share / "GENERATIONS")[0])["drawpipe"])
    assert record["overrides"] == ["steps=12", "sampler=Euler a", "cfg_scale=4.5"]


@pytest.mark.parametrize("option, message", [
    ("stpes=12", '--set stpes=12: "stpes" is not a key of Draw Things\' HTTP API; did you mean '
                 'steps?'),
    ("steps=0", "--set steps=0: Value for steps must be between 1 and 150, inclusive (was 0)"),
    ("steps=many", '--set steps=many: steps must be a whole number, not "many"'),
    ("sampler=Euler", "--set sampler=Euler: Invalid value for sampler (options: {samplers})"),
    ("seed=5", "--set seed=5: seed cannot be set: the seed comes from each file's name (use "
               "--seed-offset for another take)"),
    ("steps", "--set steps: expected KEY=VALUE"),  # generate.py has no steps
    ("sampler=Euler A", "--set sampler=Euler A: Invalid value for sampler (options: {samplers}); "
                        "did you mean 'Euler a'?"),
    ("2:steps=12", "--set 2:steps=12: generate.py has one template, no steps: use --set "
                   "KEY=VALUE"),
    ("controls=[{\"file\": \"controlnet_tile_1.x_v1.1_f16.ckpt\", \"weight\": 1}]",
     "--set controls=[{\"file\": \"controlnet_tile_1.x_v1.1_f16.ckpt\", \"weight\": 1}]: "
     "controls[0] needs \"guidanceStart\""),
])
def test_a_bad_override_is_refused_before_anything_is_sent(share, simulator, option, message):
    result = generate(share, "--server", simulator.url, "--set", option)

    samplers = json.dumps(list(api_table().parameters["sampler"].options))
    assert result.returncode == 2
    assert result.stderr.startswith("error: " + message.replace("{samplers}", samplers))
    assert len(result.stderr.splitlines()) == 1
    assert simulator.requests == [] and list(share.iterdir()) == []


def test_a_key_and_its_alias_on_the_command_line_are_refused(share, simulator):
    result = generate(share, "--server", simulator.url, "--set", "guidance_scale=5",
                      "--set", "cfg_scale=6")
    assert result.returncode == 2
    assert result.stderr == (
        "error: --set cfg_scale=6: cfg_scale and guidance_scale name the same setting "
        "(guidance_scale), already given by --set guidance_scale=5; Draw Things refuses a key "
        "sent with its alias: set it once, under one name\n")
    assert simulator.requests == [] and list(share.iterdir()) == []
    # The same name twice: the later value stands, as for any option given twice.
    result = generate(share, "--dry-run", "--set", "cfg_scale=5", "--set", "cfg_scale=6")
    assert result.returncode == 0, result.stderr


def test_dry_run_shows_the_overrides(share):
    result = generate(share, "--server", "http://127.0.0.1:9", "--dry-run", "--set", "steps=12")
    assert result.returncode == 0, result.stderr
    assert "overrides: --set steps=12" in result.stdout


# --------------------------------------------------------------------------- recipes


def test_a_recipe_step_mixing_families_is_refused_at_load(share, tmp_path, simulator):
    recipe = json.loads((PAYLOADS / "creative_upscale.json").read_text())
    recipe["steps"][1]["payload"]["controls"][0].update(file="controlnet_tile_1.x_v1.1_f16.ckpt",
                                                       inputOverride="")
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(recipe))

    result = run_script("upscale.py", "--root", share, "--server", simulator.url, "--recipe", path)

    assert (result.returncode, result.stderr) == (2, (
        f"error: {path}: step 2 (refine 2048): controls[0]: the app would ignore "
        "controlnet_tile_1.x_v1.1_f16.ckpt without a word: it is a v1 ControlNet and "
        "juggernaut_xl_v9_q6p_q8p.ckpt is sdxl_base_v0.9; use "
        f'{UNION} with "inputOverride": "tile" (a union ControlNet of that family)\n'))
    assert simulator.requests == []


@pytest.mark.parametrize("name, steps, size", [
    ("creative_upscale.json", 2, 2048), ("creative_upscale_script.json", 2, 2048),
    ("creative_upscale_script_400.json", 3, 4096), ("upscale_fast.json", 1, 2048)])
def test_each_recipe_plans_to_its_declared_size(name, steps, size):
    from drawpipe.drawthings.simulator import default_app_configuration
    from drawpipe.stages.upscale import load_recipe, plan_chain

    recipe = load_recipe(PAYLOADS / name)
    chain = plan_chain(recipe, (1024, 1024), 7, default_app_configuration())
    assert len(chain) == steps and chain[-1].expected_size == recipe.output_size == (size, size)
