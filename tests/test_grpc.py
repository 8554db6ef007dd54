"""Draw Things' gRPC API as a second transport: the tensor format, the request FlatBuffer,
and the client against the gRPC simulator on loopback (grpcio both sides), beside the
HTTP client against the HTTP simulator."""

import base64
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import wait_for
from drawpipe.bundled import DEFAULT_RECIPE, TXT2IMG_TEMPLATE
from drawpipe.drawthings import grpc_request, tensors
from drawpipe.drawthings.client import ClientSettings, SdapiClient
from drawpipe.drawthings.grpc_client import (Cancelled, GrpcClient, GrpcRequestRefused,
                                             GrpcSettings, check_files_exist, missing_files,
                                             shared_secret_from_environment)
from drawpipe.drawthings.grpc_simulator import GrpcSimulator, start_process
from drawpipe.drawthings.payloads import without_notes
from drawpipe.drawthings.simulator import Simulator, stop_process
from drawpipe.drawthings.transport import probe_protocol
from drawpipe.errors import ServerUnreachable, TransientError, UsageError, WrongSize
from drawpipe.stages.upscale import load_recipe, plan_chain

FAST = GrpcSettings(connect_timeout_seconds=2, retries=0, backoff_seconds=0.01)
PAYLOAD = {"model": "sd_xl_base_1.0_f16.ckpt", "prompt": "a test", "seed": 7, "width": 512,
           "height": 512, "steps": 4}


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def grpc_simulator():
    with GrpcSimulator() as simulator:
        yield simulator


# --------------------------------------------------------------------------- the tensor format


@pytest.mark.parametrize("codec", ["raw", "zip", "fpzip"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.uint8])
def test_the_tensor_codec_round_trips(codec, dtype):
    # A smooth picture, as images are: every codec shrinks it.
    ramp = np.linspace(-1, 1, 40 * 24 * 3).reshape(1, 40, 24, 3)
    array = ramp.astype(dtype) if dtype != np.uint8 else ((ramp + 1) * 2).astype(np.uint8)
    data = tensors.encode_tensor(array, codec)
    identifier = int.from_bytes(data[:4], "little")
    # fpzip is for floating point only; a codec that does not shrink falls back to raw.
    # fpzip is for floating point (s4nnc's [.zip, .fpzip] zips the rest).
    assert identifier == {"raw": 0, "zip": 0x217, "fpzip": 0x217 if dtype == np.uint8 else 0xF7217}[codec]
    decoded = tensors.decode_tensor(data)
    assert decoded.shape == array.shape and decoded.dtype == array.dtype
    assert np.array_equal(decoded, array)


def test_a_tensor_header_is_ccvs_param_struct():
    data = tensors.encode_tensor(np.zeros((1, 64, 128, 3), np.float16), "raw")
    header = np.frombuffer(data[:68], "<u4")
    # identifier 0, CPU memory, NHWC, Float16, reserved, dims 1 64 128 3, the rest 0
    assert list(header[:9]) == [0, 1, 2, 0x20000, 0, 1, 64, 128, 3]
    assert list(header[9:]) == [0] * 8
    assert len(data) == 68 + 64 * 128 * 3 * 2


@pytest.mark.parametrize("data, message", [
    (b"\x00" * 10, "10 bytes, shorter than a tensor header (68)"),
    (tensors.encode_tensor(np.zeros((1, 8, 8, 3), np.float16), "raw")[:-10],
     "374 bytes of data for 192 elements of 2 bytes (cut off?)"),
    (b"\x11\x11\x00\x00" + tensors.encode_tensor(np.zeros((2,), np.float16), "raw")[4:],
     "codec identifier 0x1111 is not raw, zip or fpzip"),
])
def test_a_damaged_tensor_says_why(data, message):
    with pytest.raises(tensors.TensorFormatError) as caught:
        tensors.decode_tensor(data)
    assert str(caught.value) == message


def test_pixels_convert_as_the_app_does():
    every_byte = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    # The app's RGB -> Float16 -> RGB truncates: some bytes come back one lower.
    lossy = tensors.rgb_from_image_tensor(tensors.image_tensor(every_byte))
    assert 0 < int((lossy != every_byte).sum()) and int((every_byte - lossy).max()) == 1
    # The simulator's two directions are exact.
    assert np.array_equal(tensors.rgb_from_request_tensor(tensors.image_tensor(every_byte)),
                          every_byte)
    assert np.array_equal(tensors.rgb_from_image_tensor(tensors.tensor_decoding_to(every_byte)),
                          every_byte)
    # Values outside -1..1 clamp; not finite -> 0 (ImageConverter.swift:566-571).
    odd = np.array([[[-2.0, 3.0, np.nan]]], np.float16)
    assert tensors.rgb_from_image_tensor(odd).tolist() == [[[0, 255, 0]]]


# --------------------------------------------------------------------------- the request


def template() -> dict:
    payload = without_notes(json.loads(TXT2IMG_TEMPLATE.read_text()))
    return {**payload, "prompt": payload["prompt"].replace("{prompt}", "a family"), "seed": 42}


def test_the_configuration_flatbuffer_holds_the_templates_values():
    payload = {**template(), "loras": [{"file": "tcd_sd_xl_base_1.0_lora_f16.ckpt", "weight": 1,
                                        "mode": "Base"}],
               "controls": [{"file": "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt",
                             "weight": 0.5, "guidanceStart": 0, "guidanceEnd": 1,
                             "noPrompt": False, "globalAveragePooling": False,
                             "downSamplingRate": 1, "controlImportance": "control",
                             "inputOverride": "Tile", "targetBlocks": ["a"]}],
               "restore_faces": True, "sampler": "TCD", "seed_mode": "Scale Alike"}
    built = grpc_request.build_request("txt2img", payload)
    configuration = grpc_request.read_configuration(built.message.configuration)
    table = grpc_request.grpc_table()["enumerations"]
    assert configuration["start_width"] == payload["width"] // 64
    assert configuration["hires_fix_start_width"] == payload["hires_fix_width"] // 64
    assert configuration["seed"] == 42 and configuration["steps"] == payload["steps"]
    assert configuration["strength"] == 1.0  # txt2img (HTTPAPIServer.swift:89-91)
    assert configuration["sampler"] == table["SamplerType"]["values"]["TCD"] == 9
    assert configuration["seed_mode"] == 2
    assert configuration["model"] == payload["model"]
    assert configuration["refiner_model"] == payload["refiner_model"]
    assert configuration["face_restoration"] == "restoreformer_v1.0_f16.ckpt"
    assert configuration["id"] == 1
    assert configuration["loras"] == [{"file": "tcd_sd_xl_base_1.0_lora_f16.ckpt", "weight": 1.0,
                                       "mode": 1}]
    control = configuration["controls"][0]
    assert (control["control_mode"], control["input_override"], control["target_blocks"]) == \
        (2, 15, ["a"])
    # Left out, a field takes the app's default configuration (Defaults.swift).
    assert configuration["refiner_start"] == pytest.approx(payload.get("refiner_start", 0.85))
    assert configuration["stage_2_steps"] == 10
    assert built.message.prompt == payload["prompt"] and built.message.chunked
    assert not built.message.HasField("image") and list(built.message.contents) == []


def test_an_init_image_travels_as_a_content_addressed_tensor():
    rgb = np.random.default_rng(2).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    payload = {**PAYLOAD, "width": 192, "height": 128, "strength": 0.5,
               "init_images": [base64.b64encode(buffer.getvalue()).decode()]}
    message = grpc_request.build_request("img2img", payload).message
    import hashlib

    assert len(message.image) == 32 and message.image == hashlib.sha256(message.contents[0]).digest()
    tensor = tensors.decode_tensor(message.contents[0])
    assert tensor.shape == (1, 128, 192, 3) and tensor.dtype == np.float16
    assert np.array_equal(tensors.rgb_from_request_tensor(tensor), rgb)


@pytest.mark.parametrize("mode, payload, message", [
    ("txt2img", {**PAYLOAD, "face_restoration": "x"},
     'grpc://127.0.0.1:9: Draw Things would refuse the request (Unrecognized keys: '
     '["face_restoration"]) — fix the payload template or recipe and run again; nothing was sent'),
    ("txt2img", {key: value for key, value in PAYLOAD.items() if key != "seed"},
     "grpc://127.0.0.1:9: Draw Things would refuse the request (send seed: over gRPC nothing "
     "stands in for it (Draw Things' default is a random seed)) — fix the payload template or "
     "recipe and run again; nothing was sent"),
    ("img2img", {**PAYLOAD, "strength": 0.5},
     "grpc://127.0.0.1:9: Draw Things would refuse the request (img2img over gRPC needs exactly "
     "one init image (there is no canvas to draw on)) — fix the payload template or recipe and "
     "run again; nothing was sent"),
])
def test_a_request_the_app_would_refuse_is_not_sent(mode, payload, message):
    client = GrpcClient("grpc://127.0.0.1:9", FAST)  # nothing listens: nothing may be sent
    with pytest.raises(GrpcRequestRefused) as caught:
        client.generate(mode, payload, None)
    assert str(caught.value) == message
    client.close()


# --------------------------------------------------------------------------- end to end


def test_generate_and_upscale_give_the_same_pixels_over_grpc_and_http(grpc_simulator):
    """The generate stage's request and the default recipe's chain, over both transports."""
    with Simulator() as http_simulator:
        http = SdapiClient(http_simulator.url, ClientSettings(retries=0))
        grpc_client = GrpcClient(grpc_simulator.url, FAST)
        images = {}
        for name, client in (("http", http), ("grpc", grpc_client)):
            configuration = client.check_server()
            generated = client.generate("txt2img", template(), (1024, 1024)).png
            recipe = load_recipe(DEFAULT_RECIPE)
            png = generated
            for step in plan_chain(recipe, (1024, 1024), 42, configuration):
                request = {**step.payload, "init_images": [base64.b64encode(png).decode()]}
                png = client.generate("img2img", request, step.expected_size).png
            images[name] = (pixels(generated), pixels(png))
        grpc_client.close()
    assert images["grpc"][0].shape == (1024, 1024, 3) and images["grpc"][1].shape == (2048, 2048, 3)
    assert np.array_equal(images["grpc"][0], images["http"][0])
    assert np.array_equal(images["grpc"][1], images["http"][1])
    generations = [r for r in grpc_simulator.requests if r["method"] == "GenerateImage"]
    assert [r["status"] for r in generations] == ["ok"] * 3
    assert generations[-1]["init_size"] == [2048, 2048] and generations[-1]["chunks"] > 1


def test_files_exist_names_what_the_server_lacks():
    with GrpcSimulator(missing_files=["4x_ultrasharp_f16.ckpt"]) as simulator:
        client = GrpcClient(simulator.url, FAST)
        recipe = load_recipe(DEFAULT_RECIPE)
        payloads = [(template(), "payloads/txt2img.json")] + [
            (step.payload, recipe.where(number)) for number, step in enumerate(recipe.steps, 1)]
        missing = missing_files(client, payloads)
        assert [(m.file, m.kind) for m in missing] == [("4x_ultrasharp_f16.ckpt", "upscaler")]
        with pytest.raises(UsageError) as caught:
            check_files_exist(client, payloads)
        assert str(caught.value) == (
            f"{simulator.url} has no upscaler file 4x_ultrasharp_f16.ckpt, which "
            f"{recipe.where(1)} names: download it in Draw Things, or put it in gRPCServerCLI's "
            "models folder; nothing was sent")
        asked = [r for r in simulator.requests if r["method"] == "FilesExist"][-1]
        assert "sd_xl_refiner_1.0_f16.ckpt" in asked["files"]
        assert "tcd_sd_xl_base_1.0_lora_f16.ckpt" in asked["files"]
        assert not [r for r in simulator.requests if r["method"] == "GenerateImage"]
        client.close()


def test_progress_reaches_the_callback_step_by_step(grpc_simulator):
    seen = []
    client = GrpcClient(grpc_simulator.url, FAST, on_progress=seen.append)
    answer = client.generate("txt2img", {**PAYLOAD, "steps": 5}, (512, 512))
    sampling = [(p.step, p.steps) for p in seen if p.stage == "sampling"]
    assert sampling == [(k, 5) for k in range(6)]
    assert [p.stage for p in seen][0] == "text encoding" and seen[-1].stage == "image decoding"
    assert list(answer.stage_seconds) == ["text encoding", "sampling", "image decoding", "transfer"]
    client.close()


def test_cancel_stops_the_server_drawing_and_returns_nothing():
    with GrpcSimulator(latency_seconds=20) as simulator:
        client = GrpcClient(simulator.url, FAST)
        sampling = threading.Event()
        outcome = {}

        def run():
            try:
                client.generate("txt2img", {**PAYLOAD, "steps": 30}, (512, 512),
                                on_progress=lambda p: p.stage == "sampling" and sampling.set())
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        assert sampling.wait(20)
        client.cancel("lease lost")
        worker.join(10)
        assert time.monotonic() - started < 10  # not the 20 s the image takes
        assert isinstance(outcome["error"], Cancelled)
        assert str(outcome["error"]) == (f"{simulator.url}: cancelled (lease lost); the server "
                                         "stopped drawing it")
        assert outcome["error"].retry_after_seconds == 0
        entry = wait_for(lambda: [r for r in simulator.requests if r["method"] == "GenerateImage"])[0]
        assert entry["status"] == "cancelled" and entry["cancelled_at"].startswith("sampling")
        assert entry["chunks"] == 0
        client.close()


def test_a_cancel_during_a_re_send_wait_sends_nothing_more(grpc_simulator):
    grpc_simulator.queue_faults(["empty"])
    waiting = threading.Event()

    def sleep(seconds):
        waiting.set()
        time.sleep(0.5)
        return False

    client = GrpcClient(grpc_simulator.url, GrpcSettings(retries=2, backoff_seconds=0.5),
                        sleep=sleep)
    canceller = threading.Thread(target=lambda: waiting.wait(10) and client.cancel("lease lost"))
    canceller.start()
    with pytest.raises(Cancelled) as caught:
        client.generate("txt2img", PAYLOAD, (512, 512))
    canceller.join()
    assert str(caught.value) == f"{grpc_simulator.url}: cancelled (lease lost) before it was sent"
    assert caught.value.attempts == 1  # the first call; the second was never made
    assert len([r for r in grpc_simulator.requests if r["method"] == "GenerateImage"]) == 1
    assert client.cancel("after") is False  # outside generate(): nothing to stop
    assert client.generate("txt2img", PAYLOAD, (512, 512)).attempts == 1  # a cancel does not linger
    client.close()


def test_silence_past_the_timeout_cancels_the_call():
    with GrpcSimulator(latency_seconds=60) as simulator:
        client = GrpcClient(simulator.url, GrpcSettings(retries=0, start_timeout_seconds=0.5))
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            client.generate("txt2img", {**PAYLOAD, "steps": 2}, (512, 512))
        assert time.monotonic() - started < 5
        assert str(caught.value) == (
            f"{simulator.url}: no message within 0.5 s; the call was cancelled, so the server "
            "stopped drawing it (raise --read-timeout-seconds if it queues behind other clients' "
            "images or loads a model)")
        entry = wait_for(lambda: [r for r in simulator.requests if r["method"] == "GenerateImage"])[0]
        assert entry["status"] == "cancelled" and entry["signposts"] == []
        client.close()


@pytest.mark.parametrize("fault, error, message", [
    ("empty", TransientError, "{url}: the server ended the call without an image (the generation "
                              "failed or was cancelled on the server; its log says why)"),
    ("wrong_size", WrongSize, "{url}: the image is 256x256 px, expected 512x512: the server's "
                              "settings and the request disagree (not re-sent)"),
])
def test_a_stream_without_the_right_image_is_a_clear_error(grpc_simulator, fault, error, message):
    grpc_simulator.queue_faults([fault])
    client = GrpcClient(grpc_simulator.url, FAST)
    with pytest.raises(error) as caught:
        client.generate("txt2img", PAYLOAD, (512, 512))
    assert str(caught.value) == message.format(url=grpc_simulator.url)
    client.close()


def test_a_missing_model_is_a_failed_call_re_sent_with_backoff():
    with GrpcSimulator(missing_files=["sd_xl_base_1.0_f16.ckpt"]) as simulator:
        resent = []
        client = GrpcClient(simulator.url, GrpcSettings(retries=1, backoff_seconds=0.01),
                            on_resend=resent.append)
        with pytest.raises(TransientError) as caught:
            client.generate("txt2img", PAYLOAD, (512, 512))
        assert str(caught.value) == (f"{simulator.url}: the server failed the call (INTERNAL: "
                                     "unknown error processing request); its log says why")
        assert caught.value.attempts == 2 and len(resent) == 1
        client.close()


# --------------------------------------------------------------------------- TLS, secret, protocol


def test_tls_with_the_servers_certificate_and_the_mismatches():
    with GrpcSimulator(tls=True) as simulator, GrpcSimulator() as plain:
        trusted = GrpcSettings(connect_timeout_seconds=2, retries=0,
                               certificate_path=simulator.certificate_path)
        client = GrpcClient(simulator.url, trusted)
        client.check_server()
        assert client.generate("txt2img", PAYLOAD, (512, 512)).png.startswith(b"\x89PNG")
        client.close()
        address = simulator.url.split("://")[1]
        cases = [
            (GrpcClient(simulator.url, FAST),  # trusts Draw Things' root, not this certificate
             f"{simulator.url}: its TLS certificate is not one Draw Things' root certificate "
             "signed for the name \"localhost\": give the certificate it serves (or its root) to "
             "trust instead"),
            (GrpcClient(f"grpc://{address}", FAST),
             f"grpc://{address} serves gRPC over TLS: use grpcs://{address}"),
            (GrpcClient(plain.url.replace("grpc://", "grpcs://"), trusted),
             f"{plain.url.replace('grpc://', 'grpcs://')} serves gRPC without TLS: use {plain.url}"),
        ]
        for client, message in cases:
            with pytest.raises(ServerUnreachable) as caught:
                client.check_server()
            assert str(caught.value) == message
            client.close()


def test_the_shared_secret_is_required_and_checked():
    with GrpcSimulator(shared_secret="s3cret") as simulator:
        missing = GrpcClient(simulator.url, FAST)
        wrong = GrpcClient(simulator.url, GrpcSettings(
            retries=0, shared_secret="nope", shared_secret_source="the environment variable DT_KEY"))
        right = GrpcClient(simulator.url, GrpcSettings(retries=0, shared_secret="s3cret"))
        needs = (f"{simulator.url} needs a shared secret: put the one it was started with "
                 "(gRPCServerCLI --shared-secret, or the app's API Server settings) in an "
                 "environment variable and name it with --shared-secret-env NAME (or "
                 "shared_secret_env in the profile)")
        refused = (f"{simulator.url} refused the shared secret from the environment variable "
                   "DT_KEY: set it to the one the server was started with")
        for client, message in ((missing, needs), (wrong, refused)):
            for call in (client.check_server, lambda: client.files_exist(["a.ckpt"]),
                         lambda: client.generate("txt2img", PAYLOAD, (512, 512))):
                with pytest.raises(ServerUnreachable) as caught:
                    call()
                assert str(caught.value) == message
        right.check_server()
        assert right.generate("txt2img", PAYLOAD, (512, 512)).attempts == 1
        assert {r["status"] for r in simulator.requests if r["method"] == "GenerateImage"} == \
            {"refused", "ok"}
        for client in (missing, wrong, right):
            client.close()
    with pytest.raises(UsageError) as caught:
        shared_secret_from_environment("DRAWPIPE_TEST_NO_SUCH_SECRET", {})
    assert str(caught.value).startswith("the environment variable DRAWPIPE_TEST_NO_SUCH_SECRET is "
                                        "not set: export DRAWPIPE_TEST_NO_SUCH_SECRET=SECRET")


def test_an_http_server_named_as_grpc_and_what_each_port_speaks(grpc_simulator, simulator):
    address = simulator.url.split("://")[1]
    client = GrpcClient(f"grpc://{address}", FAST)
    with pytest.raises(ServerUnreachable) as caught:
        client.check_server()
    host, port = address.split(":")
    assert str(caught.value) == (
        f"grpc://{address} speaks HTTP/1.1, not gRPC: it is Draw Things' HTTP API server; use "
        f"--server http://{address}, or set the app's API Server to gRPC")
    client.close()
    grpc_host, grpc_port = grpc_simulator.url.split("://")[1].split(":")
    assert probe_protocol(host, int(port)) == "http1"
    assert probe_protocol(grpc_host, int(grpc_port)) == "grpc"
    with GrpcSimulator(tls=True) as tls:
        assert probe_protocol(grpc_host, int(tls.url.rsplit(":", 1)[1])) == "tls"
    client = GrpcClient(f"grpc://{grpc_host}:9", FAST)
    with pytest.raises(ServerUnreachable) as caught:
        client.check_server()
    assert str(caught.value).startswith(f"cannot reach grpc://{grpc_host}:9 (no connection): start "
                                        "Draw Things with its API server set to gRPC")
    client.close()


def test_the_simulator_runs_as_a_process_with_tls_and_a_secret(tmp_path):
    certificate = tmp_path / "server.pem"
    env_name = "DRAWPIPE_TEST_GRPC_SECRET"
    os.environ[env_name] = "k"
    try:
        process, url, path = start_process("--tls", "--certificate-out", certificate,
                                           "--shared-secret-env", env_name, "--latency", "0.1")
    finally:
        del os.environ[env_name]
    try:
        assert url.startswith("grpcs://127.0.0.1:") and path == certificate and certificate.is_file()
        client = GrpcClient(url, GrpcSettings(retries=0, shared_secret="k", certificate_path=path))
        assert len(client.check_server()) > 80
        assert pixels(client.generate("txt2img", PAYLOAD, (512, 512)).png).shape == (512, 512, 3)
        client.close()
    finally:
        stop_process(process)
    assert process.returncode == 0


def test_the_grpc_table_fits_the_generated_code_and_the_api_table():
    from drawpipe.drawthings import api
    from drawpipe.drawthings.generated.config import GenerationConfiguration

    table = grpc_request.grpc_table()
    # Derived from the same upstream commit as the HTTP API table.
    assert table["upstream"]["draw-things-community"]["commit"] == \
        api.api_table().upstream["draw-things-community"]["commit"]
    keys = {field.get("key") for field in table["fields"]} - {None}
    # Every key but the one the HTTP API cannot send sets a field.
    assert keys - set(api.api_table().parameters) == {"stage_2_steps", "restore_faces"}
    assert set(api.api_table().parameters) - keys == {"prompt", "negative_prompt"}
    for field in table["fields"]:
        if not field.get("deprecated"):
            assert hasattr(GenerationConfiguration, "Add" + grpc_request._python_name(field["field"]))
        if "key" in field:  # each with the line of Invocation.swift that sets it
            assert field["source"].startswith("Libraries/Invocation/Sources/Invocation.swift:")
