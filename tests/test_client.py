"""The HTTP client against the real simulator on loopback: every failure kind."""

import contextlib
import hashlib
import io
import socket
import threading
import time

import pytest
from PIL import Image

from drawpipe.drawthings.client import ClientSettings, SdapiClient
from drawpipe.drawthings.simulator import Simulator
from drawpipe.errors import (MaybeStillDrawing, ServerRejected, ServerUnreachable, TransientError,
                             WrongSize)

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
    # The very bytes the simulator sent: no decode, no re-encode.
    assert simulator.requests[-1]["images_sha256"] == [hashlib.sha256(answer.png).hexdigest()]
    with Image.open(io.BytesIO(answer.png)) as image:
        assert image.size == (512, 512) and image.format == "PNG"


def posts(simulator) -> list[dict]:
    return [r for r in simulator.requests if r["method"] == "POST"]


@pytest.mark.parametrize("fault", ["500", "503", "truncate", "empty"])
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
    # Cut base64 fails to decode, or decodes to a PNG that stops short.
    ("truncate", ("the image is not valid base64 (truncated answer?)", "the PNG is damaged")),
    ("empty", 'the server returned no image (empty "images")'),
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


def test_a_read_timeout_is_never_sent_again():
    """The app may still be drawing it: a re-send would queue behind it and draw it twice."""
    with Simulator(slow_seconds=5) as simulator:
        simulator.queue_faults(["slow", "slow"])
        settings = ClientSettings(read_timeout_seconds=0.3, retries=3, backoff_seconds=0.01)
        client = SdapiClient(simulator.url, settings)
        with pytest.raises(MaybeStillDrawing) as failure:
            client.generate("txt2img", PAYLOAD, (512, 512))
        time.sleep(0.2)
        received = [r for r in simulator.requests if r["path"] == "/sdapi/v1/txt2img"]
    assert str(failure.value) == (
        f"{simulator.url}/sdapi/v1/txt2img: no answer within 0.3 s; Draw Things may still be "
        "drawing it, so this run does not send it again (a later run will). If its images "
        "take longer, raise --read-timeout-seconds (now 0.3).")
    assert failure.value.attempts == 1 and failure.value.retry_after_seconds == 0.6
    assert len(received) <= 1  # the one the app was still drawing; nothing queued behind it


def test_a_dropped_connection_is_never_sent_again(simulator):
    simulator.queue_faults(["drop"])
    client = SdapiClient(simulator.url, FAST)
    with pytest.raises(MaybeStillDrawing) as failure:
        client.generate("txt2img", PAYLOAD, (512, 512))
    assert str(failure.value) == (
        f"{simulator.url}/sdapi/v1/txt2img: the server closed the connection without "
        "answering; Draw Things may still be drawing it, so this run does not send it again "
        "(a later run will).")
    assert failure.value.attempts == 1
    assert [r["fault"] for r in posts(simulator)] == ["drop"]


def test_a_wrong_size_answer_fails_at_once_naming_both_sizes(simulator):
    simulator.queue_faults(["wrong_size"])
    client = SdapiClient(simulator.url, FAST)
    with pytest.raises(WrongSize) as failure:
        client.generate("txt2img", PAYLOAD, (512, 512))
    assert str(failure.value) == (
        f"{simulator.url}/sdapi/v1/txt2img: the image is 256x256 px, expected 512x512: the "
        "app's settings and the request disagree (not re-sent)")
    assert len(posts(simulator)) == 1


@contextlib.contextmanager
def unanswered_port():
    """A loopback port whose listen queue is full: a new connection is never made (the
    SYN is dropped), like a Mac asleep or a firewall that drops packets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
            fillers.append(filler)
        time.sleep(0.1)
        yield server.getsockname()[1]
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_a_connect_timeout_says_cannot_connect_and_is_retried():
    with unanswered_port() as port:
        settings = ClientSettings(connect_timeout_seconds=0.3, read_timeout_seconds=1800,
                                  retries=1, backoff_seconds=0.01)
        resent = []
        client = SdapiClient(f"http://127.0.0.1:{port}", settings, on_resend=resent.append)
        with pytest.raises(TransientError) as failure:
            client.generate("txt2img", PAYLOAD, (512, 512))
    assert str(failure.value) == (
        f"cannot connect to http://127.0.0.1:{port} (no connection within 0.3 s): is the Mac "
        "awake and Draw Things' API server on?")
    assert failure.value.attempts == 2 and len(resent) == 1


def test_every_resend_is_reported_with_its_reason(simulator):
    simulator.queue_faults(["503", "empty"])
    resent = []
    client = SdapiClient(simulator.url, FAST, on_resend=resent.append)
    answer = client.generate("txt2img", PAYLOAD, (512, 512))
    assert answer.attempts == 3
    assert resent == [
        f"re-sending (attempt 2 of 3, after 0.01 s) because: {simulator.url}/sdapi/v1/txt2img: "
        "HTTP 503 simulated fault 503",
        f"re-sending (attempt 3 of 3, after 0.02 s) because: {simulator.url}/sdapi/v1/txt2img: "
        'the server returned no image (empty "images")',
    ]


def test_a_stopping_run_cuts_the_wait_short_and_sends_nothing_more(simulator):
    simulator.queue_faults(["503", "503"])
    stopping = threading.Event()
    settings = ClientSettings(retries=4, backoff_seconds=30)
    client = SdapiClient(simulator.url, settings, sleep=stopping.wait)
    threading.Timer(0.3, stopping.set).start()
    started = time.monotonic()
    with pytest.raises(TransientError) as failure:
        client.generate("txt2img", PAYLOAD, (512, 512))
    assert time.monotonic() - started < 5
    assert str(failure.value).endswith("HTTP 503 simulated fault 503; not re-sent: the run is "
                                       "stopping")
    assert failure.value.attempts == 1 and len(posts(simulator)) == 1


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
