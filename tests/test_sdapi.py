"""The HTTP client against the real simulator on loopback: every failure kind."""

import io
import socket

import pytest
from PIL import Image

from drawpipe.errors import ServerRejected, ServerUnreachable, TransientError
from drawpipe.sdapi import ClientSettings, SdapiClient
from drawpipe.simulator import Simulator

FAST = ClientSettings(connect_timeout_seconds=2, read_timeout_seconds=10, retries=2,
                      backoff_seconds=0.01, backoff_cap_seconds=0.02)
PAYLOAD = {"prompt": "a test", "seed": 7, "width": 512, "height": 512, "steps": 4}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_returns_the_servers_png_bytes_untouched(simulator):
    client = SdapiClient(simulator.url, FAST)
    answer = client.generate("txt2img", PAYLOAD, (512, 512))
    assert answer.attempts == 1
    # Same request straight from the simulator's renderer: byte-identical, no re-encode.
    again = client.generate("txt2img", PAYLOAD, (512, 512))
    assert again.png == answer.png
    with Image.open(io.BytesIO(answer.png)) as image:
        assert image.size == (512, 512) and image.format == "PNG"


@pytest.mark.parametrize("fault", ["500", "503", "drop", "truncate", "empty", "wrong_size"])
def test_transient_fault_is_retried(simulator, fault):
    simulator.queue_faults([fault])
    client = SdapiClient(simulator.url, FAST)
    answer = client.generate("txt2img", PAYLOAD, (512, 512))
    assert answer.attempts == 2
    posts = [r for r in simulator.requests if r["method"] == "POST"]
    assert [r["fault"] for r in posts] == [fault, None]


@pytest.mark.parametrize("fault, message", [
    ("500", "HTTP 500"),
    ("503", "HTTP 503"),
    ("drop", "the server closed the connection without answering"),
    # Cut base64 fails to decode, or decodes to a PNG that stops short.
    ("truncate", ("the image is not valid base64 (truncated answer?)", "the PNG is damaged")),
    ("empty", 'the server returned no image (empty "images")'),
    ("wrong_size", "the image is 256x256 px, expected 512x512"),
])
def test_persistent_fault_fails_the_job_after_the_retries(simulator, fault, message):
    simulator.queue_faults([fault] * 3)
    client = SdapiClient(simulator.url, FAST)
    with pytest.raises(TransientError) as failure:
        client.generate("txt2img", PAYLOAD, (512, 512))
    accepted = message if isinstance(message, tuple) else (message,)
    assert any(text in str(failure.value) for text in accepted), str(failure.value)
    assert str(failure.value).startswith(simulator.url + "/sdapi/v1/txt2img: ")
    assert failure.value.attempts == 3
    assert len([r for r in simulator.requests if r["method"] == "POST"]) == 3


def test_read_timeout_is_a_transient_failure():
    with Simulator(slow_seconds=5) as simulator:
        simulator.queue_faults(["slow", "slow"])
        settings = ClientSettings(read_timeout_seconds=0.3, retries=1, backoff_seconds=0.01)
        client = SdapiClient(simulator.url, settings)
        with pytest.raises(TransientError, match=r"no answer within 0.3 s \(raise "
                                                 r"read_timeout_seconds"):
            client.generate("txt2img", PAYLOAD, (512, 512))


def test_422_is_not_retried_and_carries_the_servers_detail(simulator):
    client = SdapiClient(simulator.url, FAST)
    with pytest.raises(ServerRejected) as rejection:
        client.generate("txt2img", {**PAYLOAD, "steps": 0}, (512, 512))
    assert rejection.value.detail == "Value for steps must be between 1 and 150, inclusive (was 0)"
    assert str(rejection.value) == (
        f"{simulator.url}/sdapi/v1/txt2img rejected the request (HTTP 422): Value for steps "
        "must be between 1 and 150, inclusive (was 0) — fix the payload template or the "
        "app's settings and run again")
    assert len(simulator.requests) == 1


def test_preflight_returns_the_app_configuration(simulator):
    configuration = SdapiClient(simulator.url, FAST).check_server()
    assert configuration["model"] == simulator.app_configuration["model"]


def test_preflight_names_the_url_and_how_to_enable_the_api():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable) as failure:
        SdapiClient(url, FAST).check_server()
    assert str(failure.value) == (
        f"cannot reach {url} (connection refused): start Draw Things and turn on its HTTP "
        "API server (Settings > API Server: protocol HTTP, port 7860), or pass the right "
        "--server URL")


def test_connection_refused_mid_batch_is_transient():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransientError, match="connection refused"):
        SdapiClient(url, FAST).generate("txt2img", PAYLOAD, (512, 512))
