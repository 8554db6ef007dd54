"""HTTP client for Draw Things' A1111-style ``sdapi`` endpoints.

One ``requests.Session`` per client (one per server), an explicit timeout on
every call, and the re-send loop both transports share (transport.send_with_resends).
What a call returns is the server's PNG *bytes*, checked (signature, chunk CRCs via
``Image.verify()``, pixel size) but never decoded into pixels and re-encoded. Every
JobFailed raised carries ``attempts``, the requests sent. ``sampled_process(url,
settings)``: the app's process name when the server is this machine, for the engine's
CPU and RAM readings. The interface is the gRPC client's too (grpc_client.py), so a
stage takes either (drawthings/backends.py chooses): ``check_server()``,
``generate(mode, payload, expected_size, on_progress=None)``, ``cancel(reason)`` (the
HTTP API cannot cancel: nothing happens), ``close()``.

Failure kinds, as the caller sees them (see errors.py):
  ServerUnreachable  preflight ``GET /`` failed: URL wrong, app closed, API server off,
                     or the port speaks gRPC (transport.probe_protocol says so);
                     ServerNotAnswering when nothing answered at all (backends.probe_server
                     is the quarantine's one look)
  ServerRejected     HTTP 422: a configuration error; never retried
  TransientError     the app is not drawing this request (any more): connection
                     refused or not made in time, 5xx, an empty ``images`` list, a
                     damaged answer or one cut off after its headers; re-sent with
                     backoff (each re-send logged with its reason), then raised
  MaybeStillDrawing  no answer within the read timeout, or the connection closed or
                     reset after the request was sent: Draw Things cannot be
                     interrupted and runs one POST at a time, so a re-send would queue
                     behind the request it may still be drawing and make the image
                     twice. Never re-sent by this client; its ``retry_after_seconds``
                     (twice the read timeout) tells the engine when it may be sent again
  WrongSize          the answer's pixel size differs from the request's: settings that
                     disagree, which a re-send would repeat; never re-sent
"""

import binascii
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pybase64
import requests
import urllib3

from drawpipe.errors import (MaybeStillDrawing, ServerNotAnswering, ServerRejected,
                             ServerUnreachable, TransientError, WrongSize, network_reason)
from drawpipe.drawthings.transport import ImageAnswer, probe_protocol, send_with_resends
from drawpipe.png import verified_size
from drawpipe.settings import default

ENABLE_API_HINT = (
    "start Draw Things and turn on its HTTP API server (Settings > API Server: "
    "protocol HTTP, port 7860), or pass the right --server URL"
)

ROUTES = {"txt2img": "/sdapi/v1/txt2img", "img2img": "/sdapi/v1/img2img"}


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout_seconds: float = default("connect_timeout_seconds")
    # A 2048 px tiled pass can take many minutes and the server answers only at the end.
    read_timeout_seconds: float = default("read_timeout_seconds")
    # Extra attempts after the first, for transient failures only.
    retries: int = default("retries")
    backoff_seconds: float = default("backoff_seconds")  # first wait; doubles each time
    backoff_cap_seconds: float = 60.0
    # Whose CPU and RAM are logged while a request runs, when the server is this machine.
    server_process_name: str | None = default("server_process_name")


class SdapiClient:
    """Talks to one Draw Things (or compatible) server, e.g. ``http://127.0.0.1:7860``.

    ``sleep(seconds)``: the wait before a re-send; it returns True when it was cut
    short because the run is stopping (``threading.Event.wait`` does), and then the
    job is not re-sent. ``on_resend(line)``: told about every re-send and its reason.
    ``before_send()``: called just before every request, re-sends included; whatever
    it raises (the engine's JobLost: the job is no longer ours) ends the call unsent.
    """

    def __init__(self, base_url: str, settings: ClientSettings = ClientSettings(),
                 sleep=time.sleep, on_resend=None, before_send=None):
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.session = requests.Session()
        self._sleep = sleep
        self._on_resend = on_resend
        self._before_send = before_send

    def close(self) -> None:
        self.session.close()

    def check_server(self) -> dict:
        """``GET /``: the app's current configuration (flat JSON); ServerNotAnswering
        when no answer comes (refused, timed out, a 5xx), ServerUnreachable when what
        answers is not Draw Things' API."""
        url = self.base_url + "/"
        try:
            response = self.session.get(url, timeout=(self.settings.connect_timeout_seconds, 30))
        except requests.RequestException as exc:
            other = self._other_protocol()
            if other is not None:
                raise ServerUnreachable(other) from None  # a gRPC or TLS port: configuration
            raise ServerNotAnswering(
                f"cannot reach {self.base_url} ({network_reason(exc)}): {ENABLE_API_HINT}"
            ) from None
        if response.status_code >= 500:
            raise ServerNotAnswering(
                f"{url} answered HTTP {response.status_code}: the server is failing; "
                + ENABLE_API_HINT)
        if response.status_code != 200:
            raise ServerUnreachable(
                f"{url} answered HTTP {response.status_code}, not Draw Things' API: "
                + ENABLE_API_HINT
            )
        try:
            configuration = response.json()
        except ValueError:
            configuration = None
        if not isinstance(configuration, dict):
            raise ServerUnreachable(
                f"{url} did not answer with Draw Things' configuration JSON: {ENABLE_API_HINT}"
            )
        return configuration

    def _other_protocol(self) -> str | None:
        """When ``GET /`` failed: a line saying the port speaks gRPC (or TLS), else None."""
        parts = urlsplit(self.base_url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        host = parts.hostname or ""
        speaks = probe_protocol(host, port, self.settings.connect_timeout_seconds)
        if speaks == "grpc":
            return (f"{self.base_url} speaks gRPC, not Draw Things' HTTP API: use --server "
                    f"grpc://{parts.netloc}, or set the app's API Server to HTTP")
        if speaks == "tls" and parts.scheme == "http":
            return (f"{self.base_url} serves TLS, not plain HTTP: a gRPC server over TLS "
                    f"(gRPCServerCLI's default) is --server grpcs://{parts.netloc}")
        return None

    def cancel(self, reason: str = "cancelled") -> bool:
        """Nothing: Draw Things' HTTP API cannot interrupt a request (it runs on). False."""
        return False

    def generate(self, mode: str, payload: dict, expected_size: tuple[int, int] | None,
                 on_progress=None) -> ImageAnswer:
        """POST ``payload`` to txt2img/img2img; retry transient failures.

        ``expected_size``: (width, height) in px the answer must have, or None to
        accept any size. ``on_progress``: never called (HTTP streams no progress).
        Raises ServerRejected at once on 422; MaybeStillDrawing or WrongSize at once;
        TransientError when the retries are used up or the run is stopping (each
        JobFailed says in ``attempts`` how many requests were sent).
        """
        url = self.base_url + ROUTES[mode]
        body = json.dumps(payload).encode()
        started = time.monotonic()
        png, attempts = send_with_resends(
            lambda attempt: self._post_once(url, body, expected_size, attempt), self.settings,
            self._sleep, self._on_resend, self._before_send)
        return ImageAnswer(png, attempts, time.monotonic() - started)

    def _post_once(self, url: str, body: bytes, expected_size, attempt: int) -> bytes:
        """One request; what it raises carries ``attempt``, its number (1 = the first)."""
        settings = self.settings
        try:
            response = self.session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds),
                # Streamed and read in one call: requests' own .content reads 10 KiB
                # chunks and joins them, about 3x the CPU for an 8 MB answer.
                stream=True,
            )
        except requests.ConnectTimeout:
            raise TransientError(
                f"cannot connect to {self.base_url} (no connection within "
                f"{settings.connect_timeout_seconds:g} s): is the Mac awake and Draw Things' "
                "API server on?", attempt) from None
        except requests.ReadTimeout:
            raise self._maybe_still_drawing(
                url, f"no answer within {settings.read_timeout_seconds:g} s", attempt) from None
        except requests.RequestException as exc:
            if _never_connected(exc):
                raise TransientError(f"cannot connect to {self.base_url} ({network_reason(exc)})",
                                     attempt) from None
            # The request went out and the answer did not come back.
            raise self._maybe_still_drawing(url, network_reason(exc), attempt) from None
        try:
            # Headers arrived, so the app has finished drawing (it answers only at the
            # end): a failure now loses the answer, not the app's time; re-sending is safe.
            content = response.raw.read(decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"{url}: the answer was cut off ({network_reason(exc)})",
                                 attempt) from None
        if response.status_code == 422:
            raise ServerRejected(url, _error_detail(content))
        if response.status_code != 200:
            raise TransientError(f"{url}: HTTP {response.status_code} {_error_detail(content)}",
                                 attempt)
        # Parse the JSON, never slice bytes: Swift escapes "/" as "\/" inside strings.
        try:
            images = json.loads(content)["images"]
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"{url}: the answer is not {{\"images\": [...]}} JSON",
                                 attempt) from None
        if not images:
            raise TransientError(f"{url}: the server returned no image (empty \"images\")",
                                 attempt)
        return checked_png(images[0], expected_size, url, attempt)

    def _maybe_still_drawing(self, url: str, what: str, attempt: int) -> MaybeStillDrawing:
        read_timeout_seconds = self.settings.read_timeout_seconds
        hint = (" If its images take longer, raise --read-timeout-seconds (now "
                f"{read_timeout_seconds:g})." if what.startswith("no answer") else "")
        return MaybeStillDrawing(
            f"{url}: {what}; Draw Things may still be drawing it, so this run does not send "
            f"it again (a later run will).{hint}", attempt,
            # Well beyond the read timeout: the app cannot be asked whether it is done.
            retry_after_seconds=2 * read_timeout_seconds)


_LOOPBACK_HOSTS = ("localhost", "127.", "[::1]", "0.0.0.0")


def sampled_process(base_url: str, settings: ClientSettings) -> str | None:
    """The server's process name when ``base_url`` is this machine (its CPU and RAM can
    then be sampled; settings.server_process_name), else None."""
    host_part = base_url.split("://", 1)[-1]
    return settings.server_process_name if host_part.startswith(_LOOPBACK_HOSTS) else None


def _never_connected(exc: Exception) -> bool:
    """Whether the request failed before a connection existed (refused, no route,
    unknown host): then the app never saw it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return True  # also unknown host names (NameResolutionError)
        exc = getattr(exc, "reason", None) or (exc.args[0] if exc.args and
                                               isinstance(exc.args[0], BaseException) else None)
    return False


def checked_png(image_base64: str, expected_size: tuple[int, int] | None, source: str,
                attempt: int = 1) -> bytes:
    """Base64 text -> PNG bytes, checked without decoding pixels.

    Checks the PNG signature, every chunk's CRC and the stream's completeness
    (``Image.verify()``), and the pixel size against ``expected_size`` (w, h).
    ``attempt``: the request's number, carried by what it raises.
    """
    try:
        png = pybase64.b64decode(image_base64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise TransientError(f"{source}: the image is not valid base64 (truncated answer?)",
                             attempt) from None
    try:
        size = verified_size(png)
    except ValueError as exc:
        raise TransientError(f"{source}: {exc}", attempt) from None
    if expected_size is not None and tuple(size) != tuple(expected_size):
        raise WrongSize(
            f"{source}: the image is {size[0]}x{size[1]} px, expected "
            f"{expected_size[0]}x{expected_size[1]}: the app's settings and the request "
            "disagree (not re-sent)", attempt
        )
    return png


def _error_detail(content: bytes) -> str:
    """The server's own message: ``detail`` of Draw Things' JSON errors, else the text."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:300]
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if body.get(key):
                return str(body[key])
    return str(body)[:300]
