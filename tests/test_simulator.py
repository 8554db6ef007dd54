"""The simulator answers like Draw Things' HTTP API: a real server on loopback, real requests."""

import base64
import binascii
import http.client
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from drawpipe.drawthings.api import api_table
from drawpipe.drawthings.simulator import Simulator, default_app_configuration

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
SMALL_BODY = {"prompt": "a red ball on a table", "seed": 42, "width": 256, "height": 192}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def simulator():
    with Simulator() as running:
        yield running


def post(sim, path, body, timeout=10):
    return requests.post(sim.url + path, json=body, timeout=timeout)


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def png_base64_of(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_base64(size, colour=(200, 30, 30)) -> str:
    return png_base64_of(Image.new("RGB", size, colour))


def control(file: str, weight: float = 0.5, input_override: str = "") -> dict:
    """A ``controls`` entry with every field the app's decoder requires."""
    return {"file": file, "weight": weight, "guidanceStart": 0.0, "guidanceEnd": 1.0,
            "noPrompt": False, "globalAveragePooling": False, "downSamplingRate": 1.0,
            "controlImportance": "balanced", "inputOverride": input_override, "targetBlocks": []}


def is_complete_png(text: str) -> bool:
    try:
        decode_png(text)
    except (binascii.Error, OSError, SyntaxError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- GET routes


def test_get_root_and_options_list_every_parameter_with_its_value(simulator):
    root = requests.get(simulator.url + "/", timeout=5)
    options = requests.get(simulator.url + "/sdapi/v1/options", timeout=5)

    assert root.status_code == options.status_code == 200
    assert root.headers["Content-Type"] == "application/json"
    assert root.json() == options.json() == default_app_configuration()
    assert list(root.json()) == list(api_table().parameters)  # allParameters() order
    assert len(root.json()) == 83
    assert root.json()["prompt"] == "" and root.json()["upscaler"] is None
    assert root.json()["model"] == "sd_xl_base_1.0_f16.ckpt"
    assert (root.json()["width"], root.json()["height"]) == (1024, 1024)


def test_an_older_app_lists_fewer_keys_and_refuses_them():
    with Simulator(missing_keys=["tea_cache", "cfg_zero_star"]) as older:
        listed = requests.get(older.url + "/", timeout=5).json()
        refused = post(older, TXT2IMG, {**SMALL_BODY, "tea_cache": False})

    assert "tea_cache" not in listed and "cfg_zero_star" not in listed and "steps" in listed
    assert refused.status_code == 422
    assert refused.json()["detail"] == 'Unrecognized keys: ["tea_cache"]'


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/interrupt"),
     ("GET", "/sdapi/v1/txt2img"), ("POST", "/")],
)
def test_anything_else_is_a_bare_404(simulator, method, path):
    response = requests.request(method, simulator.url + path, json={}, timeout=5)

    assert response.status_code == 404
    assert response.content == b""


# --------------------------------------------------------------------------- txt2img


def test_txt2img_answers_exactly_one_png_of_the_requested_size(simulator):
    response = post(simulator, TXT2IMG, SMALL_BODY)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["images"] and len(body["images"]) == 1
    assert decode_png(body["images"][0]).size == (256, 192)


def test_slashes_in_the_answer_are_escaped_like_swift_does(simulator):
    response = post(simulator, TXT2IMG, SMALL_BODY)
    image = response.json()["images"][0]

    assert "/" in image  # a PNG this size always has one; otherwise the test proves nothing
    assert response.text.count("\\/") == image.count("/")
    assert "/" not in response.text.replace("\\/", "")


def test_same_seed_and_prompt_give_the_same_image_and_another_seed_does_not(simulator):
    first = post(simulator, TXT2IMG, SMALL_BODY).json()["images"][0]
    again = post(simulator, TXT2IMG, SMALL_BODY).json()["images"][0]
    other_seed = post(simulator, TXT2IMG, {**SMALL_BODY, "seed": 43}).json()["images"][0]

    assert first == again
    assert other_seed != first


def test_keys_left_out_take_the_app_configuration(simulator):
    simulator.app_configuration.update(width=320, height=128, seed=7)

    response = post(simulator, TXT2IMG, {"prompt": "a blue cup"})

    assert decode_png(response.json()["images"][0]).size == (320, 128)
    entry = simulator.requests[-1]
    assert (entry["width"], entry["height"], entry["seed"]) == (320, 128, 7)


def test_the_full_app_configuration_is_itself_a_valid_body_but_for_its_own_alias_keys(simulator):
    # Parameters.swift lists compression_artifacts (and three more) as their own alias,
    # so the server counts their key twice: GET / shows them, no request may send them.
    answer = requests.get(simulator.url + "/", timeout=5).json()
    own_alias = [p.key for p in api_table().parameters.values() if not p.sendable]
    assert own_alias == ["compression_artifacts", "compression_artifacts_quality",
                         "color_calibration", "expand_prompt_to_json"]
    body = {key: value for key, value in answer.items() if key not in own_alias}

    assert post(simulator, TXT2IMG, {**body, **SMALL_BODY}).status_code == 200
    refused = post(simulator, TXT2IMG, {**SMALL_BODY, "color_calibration": "none"})
    assert refused.json()["detail"] == ('More than one key for color_calibration specified (must '
                                        'only specify one of ["color_calibration", '
                                        '"color_calibration"])')


def test_aliases_and_integral_floats_are_accepted(simulator):
    body = {**SMALL_BODY, "cfg_scale": 7, "sampler_index": "Euler a", "steps": 30.0,
            "n_iter": 2, "firstphase_width": 512, "refiner_model": None}

    response = post(simulator, TXT2IMG, body)

    assert response.status_code == 200
    assert len(response.json()["images"]) == 2


def test_null_keeps_the_apps_number_and_clears_a_string(simulator):
    simulator.app_configuration.update(steps=12, upscaler="4x_ultrasharp_f16.ckpt",
                                       upscaler_scale=2)

    kept = post(simulator, TXT2IMG, {**SMALL_BODY, "steps": None})
    cleared = post(simulator, TXT2IMG, {**SMALL_BODY, "upscaler": None})

    assert kept.status_code == cleared.status_code == 200
    assert decode_png(kept.json()["images"][0]).size == (512, 384)  # the app's upscaler ran
    assert decode_png(cleared.json()["images"][0]).size == (256, 192)  # nil: no upscaler


def test_sizes_are_floored_to_a_multiple_of_64_without_an_error(simulator):
    response = post(simulator, TXT2IMG, {**SMALL_BODY, "width": 1000, "height": 130})

    assert response.status_code == 200
    assert decode_png(response.json()["images"][0]).size == (960, 128)


@pytest.mark.parametrize("scale, size", [(2, (512, 384)), (4, (1024, 768)), (0, (1024, 768)),
                                         (1, (1024, 768)), (3, (1024, 768))])
def test_upscaler_scale_2_and_4_set_the_factor_and_0_1_3_mean_the_native_x4(simulator, scale,
                                                                                 size):
    body = {**SMALL_BODY, "upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": scale}

    response = post(simulator, TXT2IMG, body)

    assert decode_png(response.json()["images"][0]).size == size


def test_a_native_x2_upscaler_at_scale_0_doubles(simulator):
    body = {**SMALL_BODY, "upscaler": "realesrgan_x2plus_f16.ckpt", "upscaler_scale": 0}

    assert decode_png(post(simulator, TXT2IMG, body).json()["images"][0]).size == (512, 384)


def test_a_model_is_found_by_file_or_display_name_and_refused_otherwise(simulator):
    by_file = post(simulator, TXT2IMG, {**SMALL_BODY, "model": "juggernaut_xl_v9_q6p_q8p.ckpt"})
    by_name = post(simulator, TXT2IMG, {**SMALL_BODY, "model": "Juggernaut XL v9 (8-bit)"})
    unknown = post(simulator, TXT2IMG, {**SMALL_BODY, "model": "juggernaut.safetensors"})

    assert by_file.status_code == by_name.status_code == 200
    assert simulator.requests[1]["applied"]["model"] == "juggernaut_xl_v9_q6p_q8p.ckpt"
    assert unknown.status_code == 422
    assert unknown.json()["detail"] == ('Unrecognized model name "juggernaut.safetensors" (see '
                                        '--help for a list of available models)')


def test_a_missing_lora_or_upscaler_file_is_reported_and_a_missing_refiner_ignored():
    with Simulator(missing_files=["4x_ultrasharp_f16.ckpt", "sd_xl_refiner_1.0_f16.ckpt"]) as sim:
        lora = post(sim, TXT2IMG, {**SMALL_BODY, "loras": [{"file": "detail.ckpt", "weight": 1}]})
        upscaler = post(sim, TXT2IMG, {**SMALL_BODY, "upscaler": "4x_ultrasharp_f16.ckpt"})
        refiner = post(sim, TXT2IMG, {**SMALL_BODY, "refiner_model": "sd_xl_refiner_1.0_f16.ckpt"})

    assert lora.json() == {"error": "HTTPException", "body": "", "errors": "",
                           "detail": "Missing file: detail.ckpt (in CLI, see --help to see the "
                                     "lists of files)"}
    assert upscaler.json()["detail"] == ("Missing file: 4x_ultrasharp_f16.ckpt (in CLI, see "
                                         "--help to see the lists of files)")
    assert refiner.status_code == 200
    assert sim.requests[-1]["applied"]["refiner"] is None
    assert sim.requests[-1]["dropped"] == [
        {"kind": "refiner", "index": None, "file": "sd_xl_refiner_1.0_f16.ckpt",
         "reason": "not_installed"}]


def test_controlnets_and_loras_of_another_family_are_dropped_without_a_word(simulator):
    # SDXL model, SD 1.x tile ControlNet and LoRA: the app answers 200 and ignores both.
    body = {**SMALL_BODY, "model": "juggernaut_xl_v9_q6p_q8p.ckpt",
            "controls": [control("controlnet_tile_1.x_v1.1_f16.ckpt")],
            "loras": [{"file": "tcd_sd_v1.5_lora_f16.ckpt", "weight": 1}]}

    response = post(simulator, TXT2IMG, body)

    assert response.status_code == 200
    entry = simulator.requests[-1]
    assert entry["applied"]["controls"] == [] and entry["applied"]["loras"] == []
    assert [(d["kind"], d["file"], d["reason"]) for d in entry["dropped"]] == [
        ("lora", "tcd_sd_v1.5_lora_f16.ckpt", "family"),
        ("control", "controlnet_tile_1.x_v1.1_f16.ckpt", "family")]


def test_a_union_controlnet_needs_its_input_override(simulator):
    union = "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt"
    body = {**SMALL_BODY, "model": "juggernaut_xl_v9_q6p_q8p.ckpt",
            "loras": [{"file": "tcd_sd_xl_base_1.0_lora_f16.ckpt", "weight": 1}]}

    post(simulator, TXT2IMG, {**body, "controls": [control(union, input_override="")]})
    post(simulator, TXT2IMG, {**body, "controls": [control(union, input_override="TILE")]})

    without, with_tile = simulator.requests
    assert without["applied"]["controls"] == [] and without["dropped"][0]["reason"] == "no_modifier"
    assert with_tile["applied"] == {
        "model": "juggernaut_xl_v9_q6p_q8p.ckpt", "refiner": None, "upscaler": None,
        "upscale_factor": 1, "loras": ["tcd_sd_xl_base_1.0_lora_f16.ckpt"], "controls": [union]}
    assert with_tile["dropped"] == []


# --------------------------------------------------------------------------- 422 details

SAMPLER_OPTIONS = json.dumps(list(api_table().parameters["sampler"].options))


def decoding(kind: str, path: str, description: str) -> str:
    """Swift's DecodingError description for a top-level key."""
    return (f'{kind}(Swift.DecodingError.Context(codingPath: [JSONKey(intValue: nil, '
            f'stringValue: "{path}")], debugDescription: "{description}", underlyingError: nil))')


@pytest.mark.parametrize(
    "extra, detail",
    [
        ({"override_settings": {}}, 'Unrecognized keys: ["override_settings"]'),
        ({"override_settings": {}, "alwayson_scripts": {}},
         'Unrecognized keys: ["override_settings", "alwayson_scripts"]'),
        ({"face_restoration": None}, 'Unrecognized keys: ["face_restoration"]'),
        ({"cfg_scale": 7, "guidance_scale": 7},
         'More than one key for guidance specified (must only specify one of '
         '["guidance_scale", "cfg_scale"])'),
        ({"sampler_name": "TCD", "sampler_index": "TCD"},
         'More than one key for sampler specified (must only specify one of '
         '["sampler", "sampler_name", "sampler_index"])'),
        ({"steps": 0}, "Value for steps must be between 1 and 150, inclusive (was 0)"),
        ({"shift": 9.5}, "Value for shift must be between 0.1 and 8.0, inclusive (was 9.5)"),
        ({"guidance_scale": 60}, "Value for guidance must be between 0.0 and 50.0, inclusive "
                                 "(was 60.0)"),
        ({"width": 64}, "Value for width must be between 128 and 8192, inclusive (was 64)"),
        ({"seed": -2}, "Value for seed must be between -1 and 4294967295, inclusive (was -2)"),
        ({"hires_fix_width": 4096}, "Value for hires_first_pass_width must be between 128 and "
                                    "2048, inclusive (was 4096)"),
        ({"sampler": "Euler"}, f"Invalid value for sampler (options: {SAMPLER_OPTIONS})"),
        ({"sampler_name": "Euler"}, f"Invalid value for sampler_name (options: {SAMPLER_OPTIONS})"),
        ({"seed_mode": None},
         'valueNotFound(Swift.String, Swift.DecodingError.Context(codingPath: [JSONKey(intValue: '
         'nil, stringValue: "seed_mode")], debugDescription: "Expected String value but found '
         'null instead.", underlyingError: nil))'),
        ({"steps": "abc"},
         'typeMismatch(Swift.Int, Swift.DecodingError.Context(codingPath: [JSONKey(intValue: nil, '
         'stringValue: "steps")], debugDescription: "Expected to decode Int but found a string '
         'instead.", underlyingError: nil))'),
        ({"steps": 30.5}, decoding("dataCorrupted", "steps",
                                   "Parsed JSON number <30.5> does not fit in Int.")),
        ({"hires_fix": 1},
         'typeMismatch(Swift.Bool, Swift.DecodingError.Context(codingPath: [JSONKey(intValue: nil, '
         'stringValue: "hires_fix")], debugDescription: "Expected to decode Bool but found number '
         'instead.", underlyingError: nil))'),
        ({"prompt": None}, "Missing prompt"),
        ({"model": None}, "Missing 'model' parameter"),
        ({"init_images": []}, "init_images is not supported for text-to-image"),
        ({"upscaler": "4x/ultrasharp.ckpt"}, "Model names may not have any '/' or '' characters "
                                             "in them"),
    ],
)
def test_bad_bodies_get_422_with_the_apps_detail(simulator, extra, detail):
    response = post(simulator, TXT2IMG, {**SMALL_BODY, **extra})

    assert response.status_code == 422
    assert response.json() == {"error": "HTTPException", "detail": detail, "body": "",
                               "errors": ""}


def test_a_control_entry_needs_every_field_and_ignores_unknown_ones(simulator):
    entry = control("controlnet_tile_1.x_v1.1_f16.ckpt")
    del entry["targetBlocks"]
    missing = post(simulator, TXT2IMG, {**SMALL_BODY, "controls": [entry]})
    extra = post(simulator, TXT2IMG, {
        **SMALL_BODY, "model": "sd_v1.5_f16.ckpt",
        "controls": [{**control("controlnet_tile_1.x_v1.1_f16.ckpt"), "strength": 2}]})

    assert missing.status_code == 422
    assert missing.json()["detail"].startswith('keyNotFound(CodingKeys(stringValue: "targetBlocks"')
    assert extra.status_code == 200
    assert simulator.requests[-1]["applied"]["controls"] == ["controlnet_tile_1.x_v1.1_f16.ckpt"]


def test_the_checks_run_in_the_apps_order(simulator):
    # Unknown keys are found after every parameter decoded; a bad range before them.
    both = post(simulator, TXT2IMG, {**SMALL_BODY, "steps": 0, "bogus": 1})
    # init_images are decoded before any parameter.
    image_first = post(simulator, IMG2IMG, {**SMALL_BODY, "steps": 0, "init_images": ["AAAA"]})

    assert both.json()["detail"] == "Value for steps must be between 1 and 150, inclusive (was 0)"
    assert image_first.json()["detail"] == "Data in init_images did not represent a valid image"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b"", b'{"steps": NaN}'])
def test_a_body_that_is_not_a_json_object_gets_422(simulator, raw):
    response = requests.post(simulator.url + TXT2IMG, data=raw, timeout=5)

    assert response.status_code == 422
    assert response.json()["detail"].startswith(("dataCorrupted(", "typeMismatch("))


def test_rejected_requests_are_logged_but_do_not_use_scripted_faults(simulator):
    simulator.queue_faults(["500"])

    assert post(simulator, TXT2IMG, {"steps": 0}).status_code == 422
    assert post(simulator, TXT2IMG, SMALL_BODY).status_code == 500
    statuses = [(entry["status"], entry["fault"]) for entry in simulator.requests]
    assert statuses == [(422, None), (500, "500")]


# --------------------------------------------------------------------------- img2img


def img2img_body(init_images, **extra):
    return {"prompt": "a red ball", "seed": 5, "width": 256, "height": 192, "strength": 0.3,
            "init_images": init_images, **extra}


def base64_error(index: int = 0) -> str:
    return ('dataCorrupted(Swift.DecodingError.Context(codingPath: [JSONKey(intValue: nil, '
            f'stringValue: "init_images"), _CodingKey(stringValue: "Index {index}", intValue: '
            f'{index})], debugDescription: "Encountered Data is not valid Base64.", '
            'underlyingError: nil))')


@pytest.mark.parametrize(
    "init_images, detail",
    [
        ([png_base64((128, 192))], "init_images width doesn't match 128 from the parameter 256"),
        ([png_base64((256, 128))], "init_images height doesn't match 128 from the parameter 192"),
        ([png_base64((128, 128))], "init_images height doesn't match 128 from the parameter 192"),
        (["data:image/png;base64," + png_base64((256, 192))], base64_error()),
        ([base64.encodebytes(base64.b64decode(png_base64((256, 192)))).decode()], base64_error()),
        ([base64.b64encode(b"GIF89a not really").decode()],
         "Data in init_images did not represent a valid image"),
        ([png_base64((256, 192))[:200]], "Data in init_images did not represent a valid image"),
    ],
)
def test_img2img_rejects_bad_init_images(simulator, init_images, detail):
    response = post(simulator, IMG2IMG, img2img_body(init_images))

    assert response.status_code == 422
    assert response.json()["detail"] == detail


@pytest.mark.parametrize("init_images", [None, [png_base64((256, 192))] * 2])
def test_img2img_without_exactly_one_init_image_silently_uses_the_canvas(simulator, init_images):
    body = img2img_body(init_images)
    if init_images is None:
        del body["init_images"]

    response = post(simulator, IMG2IMG, body)

    assert response.status_code == 200
    assert simulator.requests[-1]["init_source"] == "canvas"


def test_img2img_answers_an_altered_image_of_the_same_size(simulator):
    init = png_base64((256, 192))

    response = post(simulator, IMG2IMG, img2img_body([init]))

    assert response.status_code == 200
    answer = decode_png(response.json()["images"][0])
    assert answer.size == (256, 192)
    assert answer.convert("RGB").tobytes() != decode_png(init).convert("RGB").tobytes()
    assert simulator.requests[-1]["init_size"] == [256, 192]
    assert "init_images" not in simulator.requests[-1]["payload"]


def test_img2img_at_strength_0_with_an_upscaler_is_the_init_image_enlarged(simulator):
    init = decode_png(post(simulator, TXT2IMG, SMALL_BODY).json()["images"][0]).convert("RGB")
    body = img2img_body([png_base64_of(init)], strength=0,
                        upscaler="4x_ultrasharp_f16.ckpt", upscaler_scale=2)

    response = post(simulator, IMG2IMG, body)

    answer = decode_png(response.json()["images"][0])
    assert answer.size == (512, 384)
    assert answer.tobytes() == init.resize((512, 384), Image.LANCZOS).tobytes()



# --------------------------------------------------------------------------- connections


def test_one_connection_is_kept_alive_across_answers_and_errors(simulator):
    connection = http.client.HTTPConnection(simulator.host, simulator.port, timeout=10)
    try:
        answers = []
        for method, path, body in [
            ("GET", "/", None),
            ("POST", TXT2IMG, json.dumps({"steps": 0})),
            ("POST", "/sdapi/v1/interrupt", "{}"),
            ("POST", TXT2IMG, json.dumps(SMALL_BODY)),
        ]:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"})
            if not answers:
                first_socket = connection.sock
            response = connection.getresponse()
            response.read()
            answers.append(response.status)
            assert connection.sock is first_socket  # not closed and reopened
        assert answers == [200, 422, 404, 200]
    finally:
        connection.close()


def test_a_client_that_gives_up_does_not_break_the_server():
    with Simulator(latency_seconds=0.5) as sim:
        with pytest.raises(requests.ReadTimeout):
            post(sim, TXT2IMG, SMALL_BODY, timeout=(2, 0.1))

        assert post(sim, TXT2IMG, SMALL_BODY).status_code == 200
        assert [entry["status"] for entry in sim.requests] == [200, 200]


# --------------------------------------------------------------------------- one at a time


def test_concurrent_requests_are_processed_one_at_a_time():
    with Simulator(latency_seconds=0.3) as sim:
        statuses = []
        threads = [
            threading.Thread(target=lambda s=seed: statuses.append(
                post(sim, TXT2IMG, {**SMALL_BODY, "seed": s}).status_code))
            for seed in range(3)
        ]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began

        assert statuses == [200, 200, 200]
        assert elapsed >= 0.9
        intervals = sorted((entry["started"], entry["finished"]) for entry in sim.requests)
        for (_, finished), (started, _) in zip(intervals, intervals[1:]):
            assert started >= finished
        assert all(finished - started >= 0.3 for started, finished in intervals)


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["500", "503"])
def test_a_server_error_fault_answers_that_status(simulator, kind):
    simulator.queue_faults([kind])

    response = post(simulator, TXT2IMG, SMALL_BODY)

    assert response.status_code == int(kind)
    assert post(simulator, TXT2IMG, SMALL_BODY).status_code == 200  # only the next POST


def test_a_drop_fault_closes_the_connection_without_an_answer(simulator):
    simulator.queue_faults(["drop"])

    with pytest.raises(requests.ConnectionError):
        post(simulator, TXT2IMG, SMALL_BODY)

    assert simulator.requests[-1]["status"] is None
    assert simulator.requests[-1]["fault"] == "drop"
    assert post(simulator, TXT2IMG, SMALL_BODY).status_code == 200


def test_a_truncate_fault_answers_200_with_half_an_image(simulator):
    simulator.queue_faults(["truncate"])

    response = post(simulator, TXT2IMG, SMALL_BODY)

    assert response.status_code == 200
    assert not is_complete_png(response.json()["images"][0])


def test_an_empty_fault_answers_200_with_no_images(simulator):
    simulator.queue_faults(["empty"])

    response = post(simulator, TXT2IMG, SMALL_BODY)

    assert response.status_code == 200
    assert response.json() == {"images": []}


def test_a_wrong_size_fault_answers_half_the_size(simulator):
    simulator.queue_faults(["wrong_size"])

    response = post(simulator, TXT2IMG, SMALL_BODY)

    assert decode_png(response.json()["images"][0]).size == (128, 96)


def test_a_slow_fault_trips_the_client_read_timeout_and_stop_is_still_prompt():
    sim = Simulator(slow_seconds=30).start()
    try:
        sim.queue_faults(["slow"])
        with pytest.raises(requests.ReadTimeout):
            post(sim, TXT2IMG, SMALL_BODY, timeout=(2, 0.3))
    finally:
        began = time.monotonic()
        sim.stop()
    assert time.monotonic() - began < 2


def test_random_faults_follow_the_fault_rate_and_kinds():
    with Simulator(fault_rate=1.0, fault_kinds=("503",)) as sim:
        assert post(sim, TXT2IMG, SMALL_BODY).status_code == 503
        assert requests.get(sim.url + "/", timeout=5).status_code == 200  # GETs never fault


def test_unknown_fault_kinds_are_refused():
    with pytest.raises(ValueError):
        Simulator(fault_kinds=("teapot",))


# --------------------------------------------------------------------------- request log


def test_every_request_is_logged_to_the_jsonl_file_as_it_happens(tmp_path):
    log_path = tmp_path / "requests.jsonl"
    with Simulator(request_log_path=log_path) as sim:
        requests.get(sim.url + "/", timeout=5)
        post(sim, TXT2IMG, SMALL_BODY)
        post(sim, TXT2IMG, {"steps": 0})

        lines = [json.loads(line) for line in log_path.read_text().splitlines()]

    assert lines == sim.requests
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", "/", 200), ("POST", TXT2IMG, 200), ("POST", TXT2IMG, 422)
    ]
    generated = lines[1]
    assert generated["keys"] == sorted(SMALL_BODY)
    assert generated["payload"] == SMALL_BODY
    assert (generated["seed"], generated["prompt"]) == (42, SMALL_BODY["prompt"])
    assert (generated["width"], generated["height"], generated["init_size"]) == (256, 192, None)
    assert generated["time"] <= generated["started"] <= generated["finished"]
    assert lines[2]["detail"] == "Value for steps must be between 1 and 150, inclusive (was 0)"


# --------------------------------------------------------------------------- command line


def test_the_command_line_prints_its_url_serves_and_exits_0_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "drawpipe.simulator", "--port", "0"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first_line = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()))
        reader.start()
        reader.join(timeout=10)
        assert first_line, "the simulator printed nothing within 10 s"
        prefix = "drawpipe simulator listening on "
        assert first_line[0].startswith(prefix + "http://127.0.0.1:")
        url = first_line[0][len(prefix):].strip()

        assert requests.get(url + "/", timeout=5).json()["steps"] == 30

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
