"""A local stand-in for Draw Things' gRPC API, faithful enough to test clients against.

It serves ``ImageGenerationService`` from the code generated from the app's own
imageService.proto, and behaves as ImageGenerationServiceImpl.swift does (lines cited):

- ``GenerateImage``: refuses a missing or wrong shared secret with INTERNAL "unknown error
  processing request" (:185-189; grpc-swift's status for a plain Swift error); runs one
  generation at a time (a serial queue, :261-268); reads the FlatBuffer configuration
  (:194) and the init image tensor by its SHA-256 in ``contents`` (:404-420); streams
  each signpost with the expected set (:370-402; the sequence LocalImageGenerator.swift
  sends: text encoded, image encoded for img2img, sampling 0..N-1 then N, image decoded,
  a second pass with hires fix, upscaled when the upscaler is installed), spreading
  ``latency_seconds`` over them; sends ``downloadSize``, then the images as tensors
  (drawthings/tensors.py, fpzip-compressed unless ``response_compression`` is off as
  with gRPCServerCLI --no-response-compression), in 4 MiB chunks when the request
  allows it and they are larger (:489-560). A call the client closes stops "drawing" at
  the next signpost (:298-300, :375-380) and is recorded as cancelled. A model that is
  not installed fails the call with INTERNAL (the generator throws).
- ``FilesExist``: the secret as above (:625-629); each file's existence (:630-657) from
  the installed files: every file of drawpipe's API table but ``missing_files``; a hash
  on request is the SHA-256 of the file's name (the simulator has no file contents).
- ``Echo``: ``sharedSecretMissing`` for a wrong secret (:682-688), else "HELLO <name>",
  the server's identifier and, with ``model_browser``, the installed files.

It draws the same pictures as the HTTP simulator (drawthings/simulator.py
``render_pictures``) from the same parameters: the configuration is read back into the
HTTP API's keys by the same table (grpc_request.parameters_of_configuration), ControlNets
and LoRAs of another family are dropped by the same rules, and the init image is read
back to the very bytes the client started from. So a request over either transport with
the same seed gives the same pixels.

TLS: ``tls=True`` serves with a self-signed certificate made at start, shaped like the one
gRPCServerCLI serves (for localhost, ``*``, 127.0.0.1 and 0.0.0.0); ``certificate_path``
is its PEM, for a client to trust.

Run it::

    python -m drawpipe.simulator --grpc --port 7859 [--host 127.0.0.1] [--latency SECONDS]
        [--tls [--certificate-out FILE]] [--shared-secret-env NAME]
        [--missing-files FILE,...] [--no-response-compression] [--model-browser]
        [--request-log FILE.jsonl]

On start it prints ``drawpipe gRPC simulator listening on grpc[s]://HOST:PORT`` (with
TLS followed by `` certificate=PATH``) and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

from PIL import Image

from drawpipe.drawthings import api as drawthings
from drawpipe.drawthings import grpc_request, tensors
from drawpipe.drawthings.simulator import GenerationRequest, render_pictures

CHUNK_BYTES = 4 * 1024 * 1024  # ImageGenerationServiceImpl.swift:521
PROCESSING_ERROR = "unknown error processing request"  # grpc-swift GRPCStatus.processingError
LISTENING = "drawpipe gRPC simulator listening on "
FAULT_KINDS = ("ok", "empty", "wrong_size")


def installed_files(missing_files=()) -> set[str]:
    """Every file of drawpipe's API table (models, LoRAs, ControlNets, upscalers) but these."""
    table = drawthings.api_table()
    return {file for kind in ("models", "loras", "controlnets", "upscalers")
            for file in table.files[kind]} - set(missing_files)


def signpost_plan(parameters: dict, has_image: bool, installed: set[str]) -> list[tuple[str, int | None]]:
    """The signposts a generation sends, in order: (kind, step or None)."""
    steps = int(parameters["steps"])
    plan = [("textEncoded", None)]
    if has_image:
        plan.append(("imageEncoded", None))
        total = int(parameters["strength"] * steps)  # ImageGeneratorUtils.swift:295
    else:
        total = steps
    plan += [("sampling", step) for step in range(total + 1)]
    plan.append(("imageDecoded", None))
    if not has_image and parameters.get("hires_fix"):
        second = int(parameters["hires_fix_strength"] * steps)  # ImageGeneratorUtils.swift:287
        plan.append(("secondPassImageEncoded", None))
        plan += [("secondPassSampling", step) for step in range(second + 1)]
        plan.append(("secondPassImageDecoded", None))
    if parameters.get("upscaler") in installed:
        plan.append(("imageUpscaled", None))
    return plan


def _expected(plan: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    """The expected set: every kind once, a sampling kind with its last step."""
    last = {}
    for kind, step in plan:
        last[kind] = step
    return list(last.items())


def _self_signed_certificate(folder: Path) -> tuple[bytes, bytes, Path]:
    """(private key PEM, certificate PEM, certificate path) for localhost, like the
    certificate gRPCServerCLI serves (BinaryResources/Resources/server_crt.crt)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName("*"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("0.0.0.0"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    path = folder / "certificate.pem"
    path.write_bytes(certificate_pem)
    return key_pem, certificate_pem, path


class GrpcSimulator:
    """Draw Things' gRPC API on a loopback port, served by grpcio's thread pool.

    ``requests`` is the request log: one dict per call with ``time``, ``method``
    (GenerateImage, FilesExist, Echo), ``status`` ("ok", "refused" for the secret,
    "cancelled", "failed"), and for GenerateImage ``seed``, ``prompt``, ``width``,
    ``height``, ``output_size``, ``init_size``, ``parameters`` (what it ran with, as the
    HTTP API's keys), ``signposts`` (kinds sent, in order), ``cancelled_at`` (the
    signpost a cancel stopped it before), ``chunks`` (image messages), ``codec``,
    ``images_rgb_sha256`` (of each picture's RGB bytes), ``detail`` (why it failed);
    for FilesExist ``files`` and ``existences``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_seconds: float = 0.0,
                 tls: bool = False, certificate_folder: Path | None = None,
                 shared_secret: str | None = None, missing_files=(),
                 response_compression: bool = True, model_browser: bool = False,
                 request_log_path=None):
        self.host, self.port = host, port
        self.latency_seconds = latency_seconds
        self.tls = tls
        self.certificate_folder = certificate_folder
        self.certificate_path: Path | None = None
        self.shared_secret = shared_secret or None
        self.installed = installed_files(missing_files)
        self.response_compression = response_compression
        self.model_browser = model_browser
        self.request_log_path = request_log_path
        self.server_identifier = random.getrandbits(64)
        self._faults: collections.deque[str] = collections.deque()
        self._log: list[dict] = []
        self._log_lock = threading.Lock()
        self._generation_lock = threading.Lock()
        self._stopping = threading.Event()
        self._temporary = None
        self._server = None

    @property
    def url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.host}:{self.port}"

    # -- lifecycle

    def start(self) -> "GrpcSimulator":
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no C-core connection logs on stderr
        import grpc

        from drawpipe.drawthings.generated import imageService_pb2_grpc as service_grpc

        self._stopping.clear()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="drawpipe-grpc-sim"),
            options=[("grpc.max_receive_message_length", 1024 * 1024 * 1024),
                     ("grpc.max_send_message_length", 1024 * 1024 * 1024)])
        service_grpc.add_ImageGenerationServiceServicer_to_server(_Servicer(self), self._server)
        address = f"{self.host}:{self.port}"
        if self.tls:
            folder = self.certificate_folder
            if folder is None:
                self._temporary = tempfile.TemporaryDirectory(prefix="drawpipe-grpc-sim-")
                folder = Path(self._temporary.name)
            key_pem, certificate_pem, self.certificate_path = _self_signed_certificate(Path(folder))
            self.port = self._server.add_secure_port(
                address, grpc.ssl_server_credentials([(key_pem, certificate_pem)]))
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> "GrpcSimulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- log

    @property
    def requests(self) -> list[dict]:
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def _record(self, entry: dict) -> None:
        with self._log_lock:
            self._log.append(entry)
            if self.request_log_path is not None:
                with open(self.request_log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    def queue_faults(self, kinds: list[str]) -> None:
        """The next generations get these faults, in order: "ok" (none), "empty" (the
        stream ends without an image, as the server's does when the generator returns
        none, :498-519), "wrong_size" (an image of half the width and height)."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        self._faults.extend(kinds)

    def secret_accepted(self, given: str) -> bool:
        return self.shared_secret is None or given == self.shared_secret


class _Servicer:
    """The service's methods; grpcio finds them by name."""

    def __init__(self, simulator: GrpcSimulator):
        self.simulator = simulator

    def Echo(self, request, context):
        from drawpipe.drawthings.generated import imageService_pb2 as service

        simulator = self.simulator
        entry = {"time": time.time(), "method": "Echo", "name": request.name}
        if not simulator.secret_accepted(request.sharedSecret):
            simulator._record({**entry, "status": "refused"})
            return service.EchoReply(sharedSecretMissing=True)
        simulator._record({**entry, "status": "ok"})
        reply = service.EchoReply(message=f"HELLO {request.name}",
                                  serverIdentifier=simulator.server_identifier)
        if simulator.model_browser:
            reply.files.extend(sorted(file for file in simulator.installed if file.endswith(".ckpt")))
        return reply

    def FilesExist(self, request, context):
        import grpc

        from drawpipe.drawthings.generated import imageService_pb2 as service

        simulator = self.simulator
        entry = {"time": time.time(), "method": "FilesExist", "files": list(request.files)}
        if not simulator.secret_accepted(request.sharedSecret):
            simulator._record({**entry, "status": "refused"})
            context.abort(grpc.StatusCode.INTERNAL, PROCESSING_ERROR)
        with_hash = set(request.filesWithHash)
        existences = [file in simulator.installed for file in request.files]
        simulator._record({**entry, "status": "ok", "existences": existences})
        return service.FileExistenceResponse(
            files=list(request.files), existences=existences,
            hashes=[hashlib.sha256(file.encode()).digest() if exists and file in with_hash else b""
                    for file, exists in zip(request.files, existences)])

    def Pubkey(self, request, context):
        from drawpipe.drawthings.generated import imageService_pb2 as service

        return service.PubkeyResponse()

    def Hours(self, request, context):
        from drawpipe.drawthings.generated import imageService_pb2 as service

        return service.HoursResponse()

    def UploadFile(self, request_iterator, context):
        import grpc

        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the simulator takes no uploads")

    def GenerateImage(self, request, context):
        import grpc

        simulator = self.simulator
        entry = {"time": time.time(), "method": "GenerateImage", "status": None,
                 "signposts": [], "cancelled_at": None, "chunks": 0, "detail": None}
        closed = threading.Event()
        context.add_callback(closed.set)  # the call ended: the client closed it, or we did
        if not simulator.secret_accepted(request.sharedSecret):
            simulator._record({**entry, "status": "refused"})
            context.abort(grpc.StatusCode.INTERNAL, PROCESSING_ERROR)
        # One generation at a time; a waiting call the client closes leaves the queue.
        while not simulator._generation_lock.acquire(timeout=0.05):
            if closed.is_set() or simulator._stopping.is_set():
                simulator._record({**entry, "status": "cancelled", "cancelled_at": "queued"})
                return
        try:
            entry["started"] = time.time()
            yield from self._generate(request, context, closed, entry)
        finally:
            simulator._generation_lock.release()
            if entry["status"] is None:
                entry["status"] = "cancelled" if closed.is_set() else "failed"
            simulator._record(entry)

    def _generate(self, request, context, closed: threading.Event, entry: dict):
        import grpc
        import numpy as np

        from drawpipe.drawthings.generated import imageService_pb2 as service

        simulator = self.simulator
        configuration = grpc_request.read_configuration(request.configuration)
        parameters = grpc_request.parameters_of_configuration(
            configuration, request.prompt, request.negativePrompt)
        contents = {hashlib.sha256(data).digest(): data for data in request.contents}
        init_image = None
        if request.HasField("image"):
            # A 32-byte field is a SHA-256 looked up in contents (an unknown one: no image).
            data = contents.get(request.image, b"") if len(request.image) == 32 else request.image
            if data:
                try:
                    rgb = tensors.rgb_from_request_tensor(tensors.decode_tensor(data))
                except ValueError as exc:
                    entry["detail"] = f"init image: {exc}"
                    context.abort(grpc.StatusCode.INTERNAL, PROCESSING_ERROR)
                init_image = Image.fromarray(rgb, "RGB")
        for key in ("seed", "prompt", "width", "height"):
            entry[key] = parameters.get(key)
        entry["parameters"] = parameters
        entry["init_size"] = list(init_image.size) if init_image is not None else None
        model = parameters.get("model")
        if model not in simulator.installed:
            entry["detail"] = f"model {model} is not installed"
            context.abort(grpc.StatusCode.INTERNAL, PROCESSING_ERROR)

        def installed(kind: str, file: str) -> bool:
            return file in simulator.installed

        resolution = drawthings.resolve_extras(parameters, installed)
        sized = dict(parameters)
        if parameters.get("upscaler") not in simulator.installed:
            sized["upscaler"] = None  # the generator skips an upscaler it does not have
        width, height = drawthings.output_size(sized)
        entry["output_size"] = [width, height]
        generation = GenerationRequest(
            route="img2img" if init_image is not None else "txt2img", parameters=parameters,
            resolution=resolution, init_image=init_image,
            init_source="request" if init_image is not None else None,
            output_size=(width, height),
            image_count=parameters["batch_count"] * parameters["batch_size"])

        plan = signpost_plan(parameters, init_image is not None, simulator.installed)
        expected = [_signpost(service, kind, step) for kind, step in _expected(plan)]
        pause = simulator.latency_seconds / len(plan)
        for kind, step in plan:
            if closed.wait(pause) or not context.is_active() or simulator._stopping.is_set():
                entry["cancelled_at"] = kind if step is None else f"{kind} {step}"
                entry["status"] = "cancelled"
                return
            entry["signposts"].append(kind if step is None else f"{kind} {step}")
            yield service.ImageGenerationResponse(currentSignpost=_signpost(service, kind, step),
                                                  signposts=expected)

        fault = simulator._faults.popleft() if simulator._faults else "ok"
        entry["fault"] = fault
        if fault == "empty":
            entry["status"] = "ok"
            yield service.ImageGenerationResponse(scaleFactor=1, chunkState=service.LAST_CHUNK)
            return
        pictures = render_pictures(
            generation, (max(1, width // 2), max(1, height // 2)) if fault == "wrong_size" else None)
        entry["images_rgb_sha256"] = [hashlib.sha256(picture.tobytes()).hexdigest()
                                      for picture in pictures]
        codec = "fpzip" if simulator.response_compression else "raw"
        entry["codec"] = codec
        datas = [tensors.encode_tensor(tensors.tensor_decoding_to(np.asarray(picture)), codec)
                 for picture in pictures]
        total = sum(len(data) for data in datas)
        if closed.is_set():
            entry["cancelled_at"], entry["status"] = "sending", "cancelled"
            return
        if total:
            yield service.ImageGenerationResponse(downloadSize=total)
        chunked = request.chunked and total > CHUNK_BYTES
        for data in datas:
            pieces = [data[offset:offset + CHUNK_BYTES] for offset in range(0, len(data), CHUNK_BYTES)] \
                if chunked else [data]
            for index, piece in enumerate(pieces):
                entry["chunks"] += 1
                yield service.ImageGenerationResponse(
                    generatedImages=[piece], scaleFactor=1,
                    chunkState=service.LAST_CHUNK if index == len(pieces) - 1 else service.MORE_CHUNKS)
        entry["status"] = "ok"


def _signpost(service, kind: str, step: int | None):
    proto = service.ImageGenerationSignpostProto()
    part = getattr(proto, kind)
    if step is None:
        part.SetInParent()
    else:
        part.step = step
    return proto


# --------------------------------------------------------------------------- command line


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drawpipe.simulator --grpc",
        description="A local stand-in for Draw Things' gRPC API (ImageGenerationService).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7859, help="0 picks a free port (default: "
                                                               "%(default)s, gRPCServerCLI's)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="time each image takes, spread over its signposts")
    parser.add_argument("--tls", action="store_true",
                        help="serve TLS with a self-signed certificate made at start")
    parser.add_argument("--certificate-out", type=Path, metavar="FILE",
                        help="with --tls: write the certificate (PEM) here, for clients to trust")
    parser.add_argument("--shared-secret-env", metavar="NAME",
                        help="require the shared secret held in this environment variable")
    parser.add_argument("--missing-files", default="", metavar="FILES",
                        help="comma-separated model/LoRA/ControlNet/upscaler files not installed")
    parser.add_argument("--no-response-compression", action="store_true",
                        help="send images as raw tensors (gRPCServerCLI's flag of that name)")
    parser.add_argument("--model-browser", action="store_true",
                        help="Echo lists the installed files (gRPCServerCLI --model-browser)")
    parser.add_argument("--request-log", default=None, metavar="FILE.jsonl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    secret = None
    if arguments.shared_secret_env:
        secret = os.environ.get(arguments.shared_secret_env)
        if not secret:
            print(f"error: the environment variable {arguments.shared_secret_env} is not set",
                  file=sys.stderr)
            return 2
    simulator = GrpcSimulator(
        host=arguments.host, port=arguments.port, latency_seconds=arguments.latency,
        tls=arguments.tls, shared_secret=secret,
        missing_files=[name.strip() for name in arguments.missing_files.split(",") if name.strip()],
        response_compression=not arguments.no_response_compression,
        model_browser=arguments.model_browser, request_log_path=arguments.request_log)
    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    try:
        simulator.start()
    except (OSError, RuntimeError) as exc:
        print(f"error: cannot listen on {arguments.host}:{arguments.port}: {exc}", file=sys.stderr)
        return 2
    line = LISTENING + simulator.url
    if simulator.certificate_path is not None:
        if arguments.certificate_out is not None:
            arguments.certificate_out.write_bytes(simulator.certificate_path.read_bytes())
            simulator.certificate_path = arguments.certificate_out
        line += f" certificate={simulator.certificate_path}"
    print(line, flush=True)
    while not stop_requested.wait(0.5):
        pass
    simulator.stop()
    return 0


def start_process(*args) -> tuple[subprocess.Popen, str, Path | None]:
    """``python -m drawpipe.simulator --grpc --port 0 ARGS`` in its own process:
    (process, url, certificate path or None)."""
    from drawpipe.drawthings.simulator import stop_process

    command = [sys.executable, "-m", "drawpipe.simulator", "--grpc", "--port", "0", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line.startswith(LISTENING):
        stop_process(process)
        raise RuntimeError(f"the gRPC simulator did not start: {line or 'no output'}")
    url, _, certificate = line[len(LISTENING):].partition(" certificate=")
    return process, url, Path(certificate) if certificate else None
