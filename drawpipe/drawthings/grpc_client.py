"""Draw Things' gRPC API: a second transport beside the HTTP client (drawthings/client.py).

The app serves it when its *API Server* is set to gRPC, and ``gRPCServerCLI`` serves it
on macOS and on Linux with NVIDIA GPUs (draw-things-community Apps/gRPCServerCLI).
The service is ``ImageGenerationService`` (imageService.proto); what the server does
with each call is ImageGenerationServiceImpl.swift (cited below by line).

Interface: the same as SdapiClient offers the stages, so that a stage can take either::

    client = GrpcClient("grpcs://gpu-box:7859", GrpcSettings(shared_secret=...),
                        sleep=stop.wait, on_resend=print,
                        on_progress=print,            # Progress(stage, step, steps, seconds)
                        before_send=check_still_ours)
    configuration = client.check_server()   # Echo: reachable, TLS, secret; {key: value}
    missing = client.files_exist(["sd_xl_base_1.0_f16.ckpt", ...])   # FilesExist: {file: bool}
    answer = client.generate("img2img", payload, expected_size=(2048, 2048))
    # its png, attempts, seconds, stage_seconds (transport.ImageAnswer)
    client.cancel("lease lost")     # from any thread: the call in flight is closed
    client.close()

- ``check_server()`` (the preflight's ``GET /``): an ``Echo`` with the shared secret;
  ServerUnreachable naming the server and what to change when it cannot be used (not
  reachable, HTTP instead of gRPC, TLS on one side only, a certificate not signed by
  Draw Things' root, a missing or wrong secret). Returns the configuration a request's
  left-out keys take (grpc_request.default_configuration: no app window stands
  behind a gRPC request), in the shape of the app's ``GET /`` answer, so
  payloads.preflight runs unchanged.
- ``files_exist(files)``: ``FilesExist`` (:621-658; ``ModelZoo.isModelDownloaded`` of each
  name); ``missing_files(client, payloads)`` lists what every template or recipe step
  names (model, refiner, LoRAs, ControlNets, upscaler) and the server lacks.
- ``generate(mode, payload, expected_size, on_progress=None)``: the HTTP API's body
  (grpc_request.build_request checks it by the same table) as one ``GenerateImage`` call;
  the image tensor that comes back (drawthings/tensors.py; in 4 MiB chunks when large,
  :521-549) becomes RGB and then PNG bytes (zlib level ``png_compress_level``), checked
  for its size, so the rest of the pipeline (atomic write, verification, provenance) is
  unchanged. Returns transport.ImageAnswer: ``png``, ``attempts``, ``seconds`` and
  ``stage_seconds`` ({stage: seconds}: the time up to each signpost, summed per stage;
  signposts.py names the metrics log's column of each). Re-sends as the HTTP client does
  (transport.send_with_resends: ``before_send()`` before every call).
- ``on_progress(Progress)``: each signpost the server streams (:370-402): ``stage`` (one
  of STAGES' values), ``step`` and ``steps`` while sampling (``steps`` from the
  ``.sampling(N)`` the server lists among the expected signposts of every message:
  LocalImageGenerator.swift:3908-3922, 4181-4190, 5521-5533; the sampler reports the
  step it starts, 0-based, then N: DPMPP2MSampler.swift:392, LocalImageGenerator.swift:4552).
- ``cancel(reason)``: closes the call in flight; the server then stops drawing
  (the call context's ``closeFuture`` -> the generator's cancellation, :298-300), and ``generate``
  raises Cancelled. Nothing is drawn on after a cancel, so the job may be sent again
  at once (``Cancelled.retry_after_seconds`` 0), unlike HTTP's MaybeStillDrawing. The
  same holds for the watchdog's cancel after ``read_timeout_seconds`` of silence.

Errors (errors.py's classes; transient vs configuration as SdapiClient tells them):
  ServerUnreachable  preflight: not reachable, protocol or TLS mismatch, secret refused
  ServerRejected     GrpcRequestRefused: the HTTP API would refuse the payload (checked
                     here, nothing sent); ServerIncompatible: not Draw Things' gRPC API
  TransientError     never connected; the connection broke off (the server cancels a call
                     whose connection closes, so it is not drawing any more); no message
                     within ``read_timeout_seconds`` (the call is cancelled); the stream
                     ended without an image (:498-519); a tensor that does not decode; any
                     other gRPC status, e.g. INTERNAL ("unknown error processing request":
                     grpc-swift's answer to any error the generator throws). Re-sent with
                     backoff, like HTTP's, then raised.
  Cancelled          ``cancel()`` was called (the job is no longer wanted): not re-sent
  WrongSize          the image has another size than the request asked for: not re-sent

A shared secret travels in each request message (``sharedSecret``), never in metadata;
the server refuses a wrong one on GenerateImage and FilesExist with INTERNAL (:185-189,
:625-629: grpc-swift's status for a plain Swift error) and answers Echo with
``sharedSecretMissing`` (:682-688), which is how this client tells the two apart.

TLS (``grpcs://``): gRPCServerCLI serves TLS unless ``--no-tls``, with a certificate for
``localhost`` (also ``*``, 127.0.0.1, 0.0.0.0) signed by "Draw Things Root CA"
(BinaryResources/Resources/server_crt.crt, root_ca.crt; gRPCServerCLI.swift:541-561).
The app's client trusts that root and checks the name only if asked
(ImageGenerationClientWrapper.swift:73-90); this client trusts the same root (or
``certificate_path``) and checks the certificate's name against ``server_name``
("localhost"), whatever host it connects to. The server's private key ships in the same
public repository, so TLS here keeps a passive listener out but proves nothing about
who answers: use the shared secret, and a network you trust.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from drawpipe.drawthings import grpc_request
from drawpipe.drawthings.signposts import STAGE_DONE, STAGES, TRANSFER_STAGE
from drawpipe.drawthings.transport import ImageAnswer, probe_protocol, send_with_resends
from drawpipe.errors import (DrawpipeError, JobFailed, RequestRejected, ServerIncompatible,
                             ServerNotAnswering, ServerRejected, ServerUnreachable,
                             StepRejected, TransientError, UsageError, WrongSize)
from drawpipe.settings import default

DEFAULT_PORT = 7859  # gRPCServerCLI.swift:288-289
SCHEMES = {"grpc": False, "grpcs": True}  # scheme -> TLS
ROOT_CERTIFICATE = Path(__file__).with_name("generated") / "draw_things_root_ca.crt"
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # the app's client and gRPCServerCLI both allow 1 GiB
ENABLE_GRPC_HINT = ("start Draw Things with its API server set to gRPC (Settings > API Server), "
                    "or gRPCServerCLI, or pass the right --server URL")



@dataclass(frozen=True)
class GrpcSettings:
    connect_timeout_seconds: float = default("connect_timeout_seconds")
    # Before the first message: the server runs one generation at a time (a serial queue,
    # ImageGenerationServiceImpl.swift:261-268) and may load a model first.
    start_timeout_seconds: float = default("read_timeout_seconds")
    # Between two messages once it streams: signposts come at every sampling step.
    read_timeout_seconds: float = 600.0
    retries: int = default("retries")  # extra attempts after the first, for transient failures only
    backoff_seconds: float = default("backoff_seconds")
    backoff_cap_seconds: float = 60.0
    shared_secret: str | None = field(default=None, repr=False)  # never printed
    # Where the secret came from, for messages ("the environment variable DT_SECRET").
    shared_secret_source: str = "the shared secret setting"
    certificate_path: Path | None = None  # the root to trust for grpcs://; None: Draw Things'
    server_name: str = "localhost"  # the name the server's certificate must carry
    upload_codec: str = "fpzip"  # the init image's tensor codec: "fpzip" as the app, or "raw"
    png_compress_level: int = 1


@dataclass(frozen=True)
class Progress:
    """One signpost: ``stage`` (a STAGES value), ``step`` of ``steps`` while sampling
    (else None), ``seconds`` since the call began."""

    stage: str
    step: int | None
    steps: int | None
    seconds: float

    @property
    def text(self) -> str:
        """"sampling 12/30" (12 of 30 steps done), "second pass sampling 3/10", "image
        decoded": what the server has just done, in a few words."""
        done = STAGE_DONE.get(self.stage, self.stage)
        if self.step is None:
            return done
        return f"{done} {self.step}/{self.steps}" if self.steps else f"{done} {self.step}"


class Cancelled(JobFailed):
    """``GrpcClient.cancel()`` closed the call: the server stopped drawing, so the job
    may be sent again at once (by whoever still wants it: never re-sent here)."""

    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message, attempts, retry_after_seconds=0.0)


class GrpcRequestRefused(ServerRejected):
    """The payload is one Draw Things would refuse (the HTTP API's rules): nothing sent."""

    def __init__(self, url: str, detail: str, reason: str):
        self.url = url
        self.detail = detail
        self.reason = reason
        Exception.__init__(self, f"{url}: Draw Things would refuse the request ({reason}) — fix "
                                 "the payload template or recipe and run again; nothing was sent")

    def in_step(self, where: str) -> StepRejected:
        return StepRejected(self.url, self.detail,
                            f"{self.url}: Draw Things would refuse {where} ({self.reason}) — "
                            "fix the recipe and run again; nothing was sent")


def parse_server(url: str) -> tuple[bool, str, int]:
    """``grpc://HOST[:PORT]`` or ``grpcs://HOST[:PORT]`` -> (tls, host, port); UsageError else."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"{url}: a gRPC server is grpc://HOST:PORT (no TLS) or grpcs://HOST:PORT "
                         f"(TLS, gRPCServerCLI's default); the port defaults to {DEFAULT_PORT}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UsageError(f"{url}: the port is not a number from 1 to 65535") from None
    return SCHEMES[parts.scheme], parts.hostname, port


# The modules the transport needs beyond drawpipe's own (pyproject.toml's grpc extra).
RUNTIME_MODULES = ("grpc", "google.protobuf", "flatbuffers", "fpzip", "numpy")


def require_runtime() -> None:
    """UsageError when the gRPC extra is not installed (saying how to install it)."""
    import importlib.util

    missing = []
    for name in RUNTIME_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise UsageError(f"gRPC servers need {', '.join(missing)}, which are not installed: "
                         "pip install 'drawpipe[grpc]' (make test installs them)")


def shared_secret_from_environment(name: str, environ=os.environ) -> str:
    """The secret in environment variable ``name`` (the command line never holds it)."""
    value = environ.get(name, "")
    if not value:
        raise UsageError(f"the environment variable {name} is not set: export {name}=SECRET "
                         "(the secret the server was started with: gRPCServerCLI --shared-secret, "
                         "or the app's API Server settings)")
    return value


# --------------------------------------------------------------------------- the client


class GrpcClient:
    """Talks to one Draw Things gRPC server. ``sleep(seconds)``: the wait before a re-send,
    True when cut short because the run is stopping; ``on_resend(line)``: told about each
    re-send; ``on_progress(Progress)``: every signpost (generate's argument overrides it)."""

    def __init__(self, url: str, settings: GrpcSettings = GrpcSettings(), sleep=time.sleep,
                 on_resend=None, on_progress: Callable[[Progress], None] | None = None,
                 before_send=None):
        # grpcio's C core logs connection events to stderr; the user sees our one line.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import grpc

        from drawpipe.drawthings.generated import imageService_pb2 as service
        from drawpipe.drawthings.generated import imageService_pb2_grpc as service_grpc

        self._grpc, self._service = grpc, service
        self.tls, self.host, self.port = parse_server(url)
        self.base_url = f"{'grpcs' if self.tls else 'grpc'}://{self.host}:{self.port}"
        self.settings = settings
        self._sleep = sleep
        self._on_resend = on_resend
        self._on_progress = on_progress
        self._before_send = before_send
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if self.tls:
            path = settings.certificate_path or ROOT_CERTIFICATE
            try:
                root = Path(path).read_bytes()
            except OSError as exc:
                raise UsageError(f"{path}: cannot read the certificate to trust "
                                 f"({exc.strerror or exc})") from None
            options.append(("grpc.ssl_target_name_override", settings.server_name))
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = service_grpc.ImageGenerationServiceStub(self._channel)
        self._lock = threading.Lock()
        self._call = None  # the GenerateImage call in flight
        self._generating = False  # inside generate(): a cancel() holds until it returns
        self._cancel_reason: str | None = None  # cancel()'s, for the rest of generate()
        self._timed_out = False  # the watchdog closed the call in flight (that call only)
        # Wakes the watchdog: cancel(), the first message (the timeout changes), the end.
        self._wake = threading.Condition(self._lock)
        self._call_ended = False

    def close(self) -> None:
        self._channel.close()

    # -- preflight

    def check_server(self) -> dict:
        """Echo: the server is Draw Things' gRPC API and takes this client's secret.
        Returns the configuration left-out keys take (see the module docstring)."""
        request = self._service.EchoRequest(name=grpc_request.CLIENT_NAME)
        if self.settings.shared_secret:
            request.sharedSecret = self.settings.shared_secret
        try:
            reply = self._stub.Echo(request, timeout=self.settings.connect_timeout_seconds + 10,
                                    wait_for_ready=False)
        except self._grpc.RpcError as exc:
            raise self._unusable(exc) from None
        if reply.sharedSecretMissing:
            raise self._secret_refused()
        return grpc_request.default_configuration()

    def files_exist(self, files: list[str]) -> dict[str, bool]:
        """FilesExist: {file: whether the server has it}, for each name asked."""
        request = self._service.FileListRequest(files=list(files))
        if self.settings.shared_secret:
            request.sharedSecret = self.settings.shared_secret
        try:
            reply = self._stub.FilesExist(request, timeout=self.settings.connect_timeout_seconds + 30)
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.INTERNAL and self._secret_is_refused():
                raise self._secret_refused() from None
            raise self._unusable(exc) from None
        return dict(zip(reply.files, reply.existences))

    def _secret_is_refused(self) -> bool:
        request = self._service.EchoRequest(name=grpc_request.CLIENT_NAME)
        if self.settings.shared_secret:
            request.sharedSecret = self.settings.shared_secret
        try:
            return self._stub.Echo(request, timeout=self.settings.connect_timeout_seconds +
                                   10).sharedSecretMissing
        except self._grpc.RpcError:
            return False

    def _secret_refused(self) -> ServerUnreachable:
        if not self.settings.shared_secret:
            return ServerUnreachable(
                f"{self.base_url} needs a shared secret: put the one it was started with "
                "(gRPCServerCLI --shared-secret, or the app's API Server settings) in an "
                "environment variable and name it with --shared-secret-env NAME (or "
                "shared_secret_env in the profile)")
        return ServerUnreachable(
            f"{self.base_url} refused the shared secret from {self.settings.shared_secret_source}: "
            "set it to the one the server was started with")

    def _unusable(self, exc) -> ServerUnreachable:
        """A preflight RPC failed: say what the port speaks and what to change."""
        code, details = exc.code(), exc.details() or ""
        grpc = self._grpc
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return ServerIncompatible(f"{self.base_url} speaks gRPC but not Draw Things' "
                                      f"ImageGenerationService ({details}): {ENABLE_GRPC_HINT}")
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ServerUnreachable(f"{self.base_url} answered {code.name}: {details}")
        speaks = probe_protocol(self.host, self.port, self.settings.connect_timeout_seconds)
        plain_url = f"grpc://{self.host}:{self.port}"
        if speaks == "unreachable":  # a Mac asleep, the app closed: tried again later
            return ServerNotAnswering(f"cannot reach {self.base_url} (no connection): "
                                      f"{ENABLE_GRPC_HINT}")
        if speaks == "http1":
            return ServerUnreachable(
                f"{self.base_url} speaks HTTP/1.1, not gRPC: it is Draw Things' HTTP API server; "
                f"use --server http://{self.host}:{self.port}, or set the app's API Server to gRPC")
        if speaks == "grpc" and self.tls:
            return ServerUnreachable(f"{self.base_url} serves gRPC without TLS: use {plain_url}")
        if speaks == "tls" and not self.tls:
            return ServerUnreachable(f"{plain_url} serves gRPC over TLS: use "
                                     f"grpcs://{self.host}:{self.port}")
        if speaks == "tls" and any(word in details.lower() for word in ("certificate", "handshake",
                                                                        "ssl", "tls")):
            trusted = self.settings.certificate_path or "Draw Things' root certificate"
            return ServerUnreachable(
                f"{self.base_url}: its TLS certificate is not one {trusted} signed for the name "
                f"\"{self.settings.server_name}\": give the certificate it serves (or its root) "
                "to trust instead")
        return ServerUnreachable(f"cannot use {self.base_url} ({details or code.name}): "
                                 f"{ENABLE_GRPC_HINT}")

    # -- generating

    def cancel(self, reason: str = "cancelled") -> bool:
        """Close the GenerateImage call in flight (from any thread); generate() raises
        Cancelled(reason). Called while generate() runs but between its calls (a re-send
        wait), the next call is not made. Outside generate() nothing happens. True when
        a call in flight was closed."""
        with self._lock:
            if not self._generating:
                return False
            self._cancel_reason = reason
            self._wake.notify_all()
            if self._call is None:
                return False
            self._call.cancel()
            return True

    def generate(self, mode: str, payload: dict, expected_size: tuple[int, int] | None,
                 on_progress: Callable[[Progress], None] | None = None) -> ImageAnswer:
        """``payload``: the HTTP API's body (img2img: one base64 PNG in ``init_images``).
        ``expected_size``: (width, height) px the answer must have, or None. Retries
        transient failures (transport.send_with_resends); raises GrpcRequestRefused at once
        (nothing sent), WrongSize and Cancelled at once, TransientError when the retries
        are used up or the run is stopping (every exception's ``attempts`` says how many
        calls were made)."""
        try:
            built = grpc_request.build_request(mode, payload, self.settings.shared_secret,
                                               self.settings.upload_codec)
        except RequestRejected as exc:
            raise GrpcRequestRefused(self.base_url, exc.detail, exc.reason) from None
        started = time.monotonic()
        with self._lock:
            self._generating = True
            self._cancel_reason = None
        try:
            (png, stage_seconds), attempts = send_with_resends(
                lambda attempt: self._generate_once(built.message, expected_size,
                                                    on_progress or self._on_progress, attempt),
                self.settings, self._sleep, self._on_resend, self._before_send)
        finally:
            with self._lock:
                self._generating = False
        return ImageAnswer(png, attempts, time.monotonic() - started, stage_seconds)

    def _generate_once(self, request, expected_size, on_progress, attempt: int) -> tuple[bytes, dict]:
        """One GenerateImage call; what it raises carries ``attempt`` (1 = the first)."""
        with self._lock:
            if self._cancel_reason is not None:  # cancelled between two calls: none made
                raise Cancelled(f"{self.base_url}: cancelled ({self._cancel_reason}) before "
                                "it was sent", attempt - 1)
            self._call_ended = False
            self._timed_out = False
            call = self._stub.GenerateImage(request, wait_for_ready=False)
            self._call = call
        received = {"last": time.monotonic(), "any": False}
        watchdog = threading.Thread(target=self._watch, args=(call, received),
                                    name="drawpipe-grpc-watchdog", daemon=True)
        watchdog.start()
        started = time.monotonic()
        stage_seconds: dict[str, float] = {}
        last_signpost = started
        images, pending = [], b""
        steps = None
        try:
            for response in call:
                now = time.monotonic()
                if not received["any"]:
                    with self._lock:
                        received["any"] = True
                        self._wake.notify_all()
                received["last"] = now
                if response.HasField("currentSignpost"):
                    kind = response.currentSignpost.WhichOneof("signpost")
                    stage = STAGES.get(kind, kind)
                    stage_seconds[stage] = stage_seconds.get(stage, 0.0) + now - last_signpost
                    last_signpost = now
                    step = None
                    if kind in ("sampling", "secondPassSampling"):
                        step = getattr(response.currentSignpost, kind).step
                        steps = _expected_steps(response.signposts, kind)
                    if on_progress is not None:
                        on_progress(Progress(stage, step, steps if step is not None else None,
                                             now - started))
                for data in response.generatedImages[:1]:
                    # RemoteImageGenerator.swift:242-271: MORE_CHUNKS pieces, then the
                    # LAST_CHUNK one completes the image.
                    if response.chunkState == self._service.MORE_CHUNKS:
                        pending += data
                    else:
                        images.append(pending + data)
                        pending = b""
        except self._grpc.RpcError as exc:
            raise self._call_failed(exc, received["any"], attempt) from None
        finally:
            with self._lock:
                self._call = None
                self._call_ended = True
                self._wake.notify_all()
            watchdog.join()
        if self._cancel_reason is not None or self._timed_out:  # closed as the stream ended
            raise self._stopped_error(received["any"], attempt)
        stage_seconds[TRANSFER_STAGE] = time.monotonic() - last_signpost
        if not images:
            raise TransientError(f"{self.base_url}: the server ended the call without an image "
                                 "(the generation failed or was cancelled on the server; its log "
                                 "says why)", attempt)
        return self._png(images[0], expected_size, attempt), stage_seconds

    def _watch(self, call, received: dict) -> None:
        """Cancel the call after too long a silence (``start_timeout_seconds`` before the
        first message, ``read_timeout_seconds`` after); ends with the call or a cancel()."""
        settings = self.settings
        with self._lock:
            while not self._call_ended and self._cancel_reason is None:
                timeout = settings.read_timeout_seconds if received["any"] else \
                    settings.start_timeout_seconds
                remaining = received["last"] + timeout - time.monotonic()
                if remaining <= 0:
                    self._timed_out = True
                    call.cancel()
                    return
                self._wake.wait(remaining)

    def _stopped_error(self, streamed: bool, attempt: int) -> TransientError:
        """The call was closed by this client: a read timeout (re-sent: the server stopped
        drawing it, so a new call is no second image) or a cancel() (not re-sent)."""
        reason = self._cancel_reason
        if reason is None:  # the watchdog's
            what = ("no message" if not streamed else "no further message")
            timeout = (self.settings.read_timeout_seconds if streamed
                       else self.settings.start_timeout_seconds)
            return TransientError(
                f"{self.base_url}: {what} within {timeout:g} s; the call was cancelled, so the "
                "server stopped drawing it" + ("" if streamed else
                                               " (raise --read-timeout-seconds if it queues "
                                               "behind other clients' images or loads a model)"),
                attempt, retry_after_seconds=0.0)
        return Cancelled(f"{self.base_url}: cancelled ({reason}); the server stopped drawing it",
                         attempt)

    def _call_failed(self, exc, streamed: bool, attempt: int) -> DrawpipeError:
        grpc = self._grpc
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.CANCELLED and (self._cancel_reason is not None
                                                  or self._timed_out):
            return self._stopped_error(streamed, attempt)
        if code == grpc.StatusCode.INTERNAL and self._secret_is_refused():
            return self._secret_refused()
        if code == grpc.StatusCode.UNAVAILABLE and not streamed:
            if "http1" in details.lower() or "handshake" in details.lower():
                return self._unusable(exc)
            return TransientError(f"cannot connect to {self.base_url} ({_short(details)}): is the "
                                  "server on?", attempt)
        if code == grpc.StatusCode.UNAVAILABLE:
            return TransientError(f"{self.base_url}: the connection broke off ({_short(details)}); "
                                  "the server stops drawing a call whose connection closes",
                                  attempt)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return self._unusable(exc)
        return TransientError(f"{self.base_url}: the server failed the call ({code.name}: "
                              f"{_short(details)}); its log says why", attempt)

    def _png(self, data: bytes, expected_size, attempt: int) -> bytes:
        """Image tensor bytes -> PNG bytes, checked for the expected (width, height)."""
        import io

        from PIL import Image

        from drawpipe.drawthings import tensors

        try:
            tensor = tensors.decode_tensor(data)
            rgb = tensors.rgb_from_image_tensor(tensor)
        except ValueError as exc:
            raise TransientError(f"{self.base_url}: the image is not a tensor this client can "
                                 f"read ({exc})", attempt) from None
        size = (rgb.shape[1], rgb.shape[0])
        if expected_size is not None and size != tuple(expected_size):
            raise WrongSize(
                f"{self.base_url}: the image is {size[0]}x{size[1]} px, expected "
                f"{expected_size[0]}x{expected_size[1]}: the server's settings and the request "
                "disagree (not re-sent)", attempt)
        buffer = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buffer, "PNG",
                                         compress_level=self.settings.png_compress_level)
        return buffer.getvalue()


def _expected_steps(signposts, kind: str) -> int | None:
    """N of ``.sampling(N)`` (or the second pass's) among a message's expected signposts."""
    for signpost in signposts:
        if signpost.WhichOneof("signpost") == kind:
            return getattr(signpost, kind).step
    return None


def _short(details: str) -> str:
    return details if len(details) < 200 else details[:197] + "..."


# --------------------------------------------------------------------------- FilesExist


@dataclass(frozen=True)
class NeededFile:
    """A file a template or recipe step names: ``kind`` model, refiner, LoRA, ControlNet
    or upscaler; ``source``: the template or step that names it."""

    file: str
    kind: str
    source: str


def needed_files(payloads: list[tuple[dict, str]]) -> list[NeededFile]:
    """Every file the payloads name, as the server would look them up (the model and
    refiner by file or display name), in order, each (file, source) once."""
    from drawpipe.drawthings.payloads import effective_parameters

    found, seen = [], set()
    for payload, source in payloads:
        without_images = {k: v for k, v in payload.items() if k != "init_images"}
        parameters = effective_parameters(without_images, grpc_request.default_configuration())
        named = [("model", grpc_request.resolved_model(parameters.get("model"))),
                 ("refiner", grpc_request.resolved_model(parameters.get("refiner_model"))),
                 ("upscaler", parameters.get("upscaler"))]
        named += [("LoRA", lora.get("file")) for lora in parameters.get("loras") or []]
        named += [("ControlNet", control.get("file")) for control in parameters.get("controls") or []]
        for kind, file in named:
            if file and (file, source) not in seen:
                seen.add((file, source))
                found.append(NeededFile(file, kind, source))
    return found


def missing_files(client: GrpcClient, payloads: list[tuple[dict, str]]) -> list[NeededFile]:
    """The files the payloads name that the server lacks (one FilesExist call)."""
    needed = needed_files(payloads)
    exists = client.files_exist(sorted({item.file for item in needed}))
    return [item for item in needed if not exists.get(item.file, False)]


def check_files_exist(client: GrpcClient, payloads: list[tuple[dict, str]]) -> None:
    """UsageError naming the first missing file, its template or step and the server."""
    missing = missing_files(client, payloads)
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{client.base_url} has no {first.kind} file {first.file}, which "
                         f"{first.source} names{more}: download it in Draw Things, or put it in "
                         "gRPCServerCLI's models folder; nothing was sent")
