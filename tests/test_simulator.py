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

from drawpipe import drawthings
from drawpipe.simulator import DEFAULT_APP_CONFIGURATION, Simulator

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


def is_complete_png(text: str) -> bool:
    try:
        decode_png(text)
    except (binascii.Error, OSError, SyntaxError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- GET routes


def test_get_root_and_options_return_the_app_configuration(simulator):
    root = requests.get(simulator.url + "/", timeout=5)
    options = requests.get(simulator.url + "/sdapi/v1/options", timeout=5)

    assert root.status_code == options.status_code == 200
    assert root.headers["Content-Type"] == "application/json"
    assert root.json() == options.json() == DEFAULT_APP_CONFIGURATION
    expected_keys = set(drawthings.PARAMETERS) - {"prompt", "negative_prompt", "init_images"}
    assert set(root.json()) == expected_keys
    assert root.json()["model"] == "sd_xl_base_1.0_f16.ckpt"
    assert (root.json()["width"], root.json()["height"]) == (1024, 1024)


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/interrupt"),
     ("GET", "/sdapi/v1/txt2img"), ("POST", "/")],
)
def test_anything_else_is_404_with_a_json_body(simulator, method, path):
    response = requests.request(method, simulator.url + path, json={}, timeout=5)

    assert response.status_code == 404
    assert response.json() == {
        "error": "Not Found", "detail": f"No route for {method} {path}", "status": 404
    }


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


def test_the_full_app_configuration_is_itself_a_valid_body(simulator):
    body = {**requests.get(simulator.url + "/", timeout=5).json(), **SMALL_BODY}

    assert post(simulator, TXT2IMG, body).status_code == 200


def test_aliases_and_integral_floats_are_accepted(simulator):
    body = {**SMALL_BODY, "cfg_scale": 7, "sampler_name": "Euler a", "steps": 30.0,
            "n_iter": 2, "refiner_model": None}

    response = post(simulator, TXT2IMG, body)

    assert response.status_code == 200
    assert len(response.json()["images"]) == 2


def test_an_upscaler_at_factor_2_doubles_the_size(simulator):
    body = {**SMALL_BODY, "upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2}

    response = post(simulator, TXT2IMG, body)

    assert decode_png(response.json()["images"][0]).size == (512, 384)


def test_an_upscaler_at_factor_0_is_off(simulator):
    body = {**SMALL_BODY, "upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 0}

    response = post(simulator, TXT2IMG, body)

    assert decode_png(response.json()["images"][0]).size == (256, 192)


# --------------------------------------------------------------------------- 422 details

SAMPLER_OPTIONS = json.dumps(list(drawthings.SAMPLERS))


@pytest.mark.parametrize(
    "extra, detail",
    [
        ({"override_settings": {}}, 'Unrecognized keys: ["override_settings"]'),
        ({"override_settings": {}, "alwayson_scripts": {}},
         'Unrecognized keys: ["alwayson_scripts", "override_settings"]'),
        ({"cfg_scale": 7, "guidance_scale": 7},
         'Duplicate keys: "cfg_scale" is an alias of "guidance_scale"'),
        ({"steps": 0}, "Value for Steps must be between 1 and 150, inclusive (was 0)"),
        ({"shift": 9.5}, "Value for Shift must be between 0.1 and 8, inclusive (was 9.5)"),
        ({"width": 1000}, "Value for Width must be a multiple of 64 (was 1000)"),
        ({"sampler": "Euler"}, f"Invalid value for sampler (options: {SAMPLER_OPTIONS})"),
        ({"steps": "abc"}, 'Invalid type for steps (expected int, was "abc")'),
        ({"steps": 30.5}, "Invalid type for steps (expected int, was 30.5)"),
        ({"hires_fix": 1}, "Invalid type for hires_fix (expected bool, was 1)"),
        ({"upscaler": 4}, "Invalid type for upscaler (expected string or null, was 4)"),
        ({"loras": {}}, "Invalid type for loras (expected array, was {})"),
        ({"controls": [{"file": "tile.ckpt", "strength": 1}]},
         'Unrecognized keys in controls[0]: ["strength"]'),
        ({"loras": ["detail.safetensors"]},
         'Invalid type for loras[0] (expected object, was "detail.safetensors")'),
        ({"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 3},
         "Value for Upscaler Scale Factor must be one of [0, 2, 4] when an upscaler is set "
         "(was 3)"),
        ({"init_images": []}, "init_images is only accepted by /sdapi/v1/img2img"),
    ],
)
def test_bad_bodies_get_422_with_the_apps_detail(simulator, extra, detail):
    response = post(simulator, TXT2IMG, {**SMALL_BODY, **extra})

    assert response.status_code == 422
    assert response.json() == {"error": "Unprocessable Entity", "detail": detail, "status": 422}


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b"", b'{"steps": NaN}'])
def test_a_body_that_is_not_a_json_object_gets_422(simulator, raw):
    response = requests.post(simulator.url + TXT2IMG, data=raw, timeout=5)

    assert response.status_code == 422
    assert response.json()["detail"].startswith("Invalid JSON body: ")


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


@pytest.mark.parametrize(
    "init_images, detail",
    [
        ([png_base64((128, 192))], "init_images width doesn't match (image 128, request 256)"),
        ([png_base64((256, 128))], "init_images height doesn't match (image 128, request 192)"),
        (["data:image/png;base64," + png_base64((256, 192))],
         'init_images[0] must be plain base64, without a "data:" prefix'),
        ([base64.encodebytes(base64.b64decode(png_base64((256, 192)))).decode()],
         "init_images[0] must be plain base64, without line breaks"),
        ([png_base64((256, 192))] * 2, "init_images must hold exactly one image (was 2)"),
        ([base64.b64encode(b"GIF89a not really").decode()],
         "init_images[0] is not a valid image"),
        ([png_base64((256, 192))[:200]], "init_images[0] is not a valid image"),
        ("abc", 'Invalid type for init_images (expected array of strings, was "abc")'),
    ],
)
def test_img2img_rejects_bad_init_images(simulator, init_images, detail):
    response = post(simulator, IMG2IMG, img2img_body(init_images))

    assert response.status_code == 422
    assert response.json()["detail"] == detail


def test_img2img_without_init_images_is_rejected(simulator):
    body = img2img_body(None)
    del body["init_images"]

    assert post(simulator, IMG2IMG, body).status_code == 422


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
    assert response.json()["status"] == int(kind)
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
    assert lines[2]["detail"] == "Value for Steps must be between 1 and 150, inclusive (was 0)"


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
