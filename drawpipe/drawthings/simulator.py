"""A local stand-in for Draw Things' HTTP API, faithful enough to test clients against.

It answers like the app, by the rules of the app's own source that
``drawpipe.drawthings`` reads from the derived API table: the same four routes
(anything else: a bare 404), the same checks in the same order with the same 422
body ``{"error": "HTTPException", "detail": ..., "body": "", "errors": ""}``, the
same null handling, sizes floored to a multiple of 64, an upscaler's native factor
for ``upscaler_scale`` 0/1/3, an unknown model refused and a missing LoRA or
upscaler file reported, ControlNets and LoRAs of another model family dropped
without a word (but recorded in the request log's ``dropped``, so tests can tell
what was really applied), one request at a time (validation included),
``{"images": [...]}`` and nothing else on success, and "/" written as "\\/" in the
JSON like Swift's encoder. ``--missing-keys`` makes it an older app without some
keys; ``--missing-files`` an app without some files. Instead of a diffusion model it paints a photo-like picture with Pillow:
a textured gradient background with 3-6 solid, well-separated objects, so that
Segment Anything has real objects to find. Pictures are deterministic in
(seed, prompt, width, height).

Run it::

    python -m drawpipe.simulator --port 7860 [--host 127.0.0.1] [--latency SECONDS]
        [--fault-rate P] [--faults 500,503,drop,truncate,empty,wrong_size,slow]
        [--fault-script ok,500,drop,...] [--slow-seconds S]
        [--request-log FILE.jsonl] [--random-seed N]
        [--missing-keys KEY,...] [--missing-files FILE,...]

``--port 0`` picks a free port. On start it prints one line,
``drawpipe simulator listening on http://HOST:PORT``; it runs until SIGTERM or
SIGINT and then exits 0. In-process::

    with Simulator(latency_seconds=0.2) as sim:
        requests.post(sim.url + "/sdapi/v1/txt2img", json={...})
        sim.requests  # the request log

Faults (POSTs only, after the body passed validation; GETs never fault). Scripted
faults (``queue_faults``, ``--fault-script``) come first, in order; otherwise, with
probability ``fault_rate``, a kind drawn from ``fault_kinds`` by a random generator
seeded with ``random_seed``:

    ok          no fault (for scripts)
    500, 503    that HTTP status with a small JSON body (not the app's: a proxy's)
    drop        read the body, then close the connection without any answer
    truncate    200 whose base64 image is cut to half its length
    empty       200 with ``{"images": []}`` (a real Draw Things bug)
    wrong_size  200 with a valid PNG of half the requested width and height
    slow        wait ``slow_seconds`` before answering normally (client read timeouts)
"""

from __future__ import annotations

import argparse
import collections
import colorsys
import hashlib
import http.server
import io
import json
import math
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pybase64
from PIL import Image, ImageChops, ImageDraw

from drawpipe.drawthings import api as drawthings
from drawpipe.errors import RequestRejected


def _neutral_value(parameter: drawthings.Parameter):
    """A value of the parameter's type inside its range: 0 clamped, False, [], None or
    the first option."""
    if parameter.type in ("int", "double"):
        low, high = parameter.range
        value = min(max(0, low), high)
        return float(value) if parameter.type == "double" else value
    return {"bool": False, "json": [], "string": None,
            "enum": parameter.options[0] if parameter.options else None}[parameter.type]


# The simulated app's window: an SDXL install, for the parameters whose values shape
# the simulated answer or the client's predictions; every other parameter gets a
# neutral value of its type.
_WINDOW_VALUES = {
    "model": "sd_xl_base_1.0_f16.ckpt", "width": 1024, "height": 1024, "seed": 1234,
    "seed_mode": "Scale Alike", "steps": 30, "guidance_scale": 7.5,
    "sampler": "DPM++ 2M Karras", "strength": 1.0, "batch_count": 1, "batch_size": 1,
    "clip_skip": 1, "shift": 1.0, "prompt": "", "negative_prompt": "",
}


def default_app_configuration() -> dict:
    """What GET / answers on a fresh install: every parameter key with a value."""
    table = drawthings.api_table()
    unknown = set(_WINDOW_VALUES) - set(table.parameters)
    if unknown:
        raise RuntimeError(f"_WINDOW_VALUES names keys the API table lacks: {sorted(unknown)}")
    return {key: _WINDOW_VALUES.get(key, _neutral_value(parameter))
            for key, parameter in table.parameters.items()}


FAULT_KINDS: dict[str, str] = {
    "ok": "no fault",
    "500": "HTTP 500 with a JSON error body",
    "503": "HTTP 503 with a JSON error body",
    "drop": "close the connection without an answer",
    "truncate": "200 with the base64 image cut to half its length",
    "empty": '200 with {"images": []}',
    "wrong_size": "200 with a PNG of half the requested width and height",
    "slow": "wait slow_seconds, then answer normally",
}
DEFAULT_FAULT_KINDS = ("500", "503", "drop", "truncate", "empty", "wrong_size")

# (method, path) -> what answers it (HTTPAPIServer.swift); anything else is
# cpp-httplib's bare 404.
_ROUTES = {
    ("GET", "/"): "configuration",
    ("GET", "/sdapi/v1/options"): "configuration",
    ("POST", "/sdapi/v1/txt2img"): "txt2img",
    ("POST", "/sdapi/v1/img2img"): "img2img",
}


# --------------------------------------------------------------------------- validation


def parse_body(raw: bytes) -> dict:
    """The request body as a dict; RequestRejected (Swift's decoder text) unless it is
    a JSON object."""

    def reject_constant(name):
        raise ValueError(f"{name} is not valid JSON")  # Python accepts NaN; Swift does not

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise RequestRejected(
            'dataCorrupted(Swift.DecodingError.Context(codingPath: [], debugDescription: "The '
            'given data was not valid JSON.", underlyingError: nil))',
            "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestRejected(
            "typeMismatch(Swift.Dictionary<Swift.String, Any>, Swift.DecodingError.Context("
            "codingPath: [], debugDescription: \"Expected to decode Dictionary<String, Any> but "
            f"found {'an array' if isinstance(body, list) else 'a ' + type(body).__name__} "
            'instead.\", underlyingError: nil))', "the body is not a JSON object")
    return body


def _decode_image(data: bytes) -> Image.Image:
    """Init image bytes -> RGB picture; ValueError when CGImageSource could not read them."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file only fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValueError("not an image") from None
    return image.convert("RGB")


@dataclass
class GenerationRequest:
    """A request the app runs.

    ``parameters``: the app configuration updated by the body's values (keys as in
    GET /). ``init_image``: the img2img input (RGB), the canvas when the request had
    none (``init_source`` "canvas"), None for txt2img. ``resolution``: the refiner,
    LoRAs and ControlNets applied and what was dropped. ``output_size``: (width,
    height) px of each answered image.
    """

    route: str
    parameters: dict
    resolution: drawthings.Resolution
    init_image: Image.Image | None = None
    init_source: str | None = None
    output_size: tuple[int, int] = (0, 0)
    image_count: int = 1


def validate_request(route: str, body: dict, app_configuration: dict,
                     missing_keys: frozenset = frozenset(),
                     missing_files: frozenset = frozenset()) -> GenerationRequest:
    """Check a txt2img/img2img body as the app does, in its order; RequestRejected if bad.

    1. Decoding (drawthings.decode_body: restore_faces, init_images, every parameter,
       unknown keys). 2. HTTPAPIServer.swift: txt2img refuses init_images; img2img with
       exactly one init image checks its height, then its width, against the request
       (before flooring); with none or several it silently uses the canvas. 3.
       Invocation.swift: the model (file or display name), LoRA then upscaler files
       ("/" and installed), the model's files, the prompt. ``missing_files``: files
       this app lacks; ``missing_keys``: parameters it lacks (an older app).
    """
    table = drawthings.api_table()
    decoded = drawthings.decode_body(body, _decode_image, missing_keys)
    parameters = drawthings.effective_parameters(decoded.values, app_configuration)

    init_image, init_source = None, None
    if route == "txt2img":
        if decoded.init_images is not None:
            raise RequestRejected(table.message("init_images_txt2img"))
    elif decoded.init_images is not None and len(decoded.init_images) == 1:
        init_image, init_source = decoded.init_images[0], "request"
        if init_image.height != parameters["height"]:
            raise RequestRejected(table.message("init_height_mismatch", image=init_image.height,
                                                request=parameters["height"]))
        if init_image.width != parameters["width"]:
            raise RequestRejected(table.message("init_width_mismatch", image=init_image.width,
                                                request=parameters["width"]))
    else:
        # Over HTTP nothing says so: the app draws on whatever its canvas holds.
        init_source = "canvas"
        init_image = Image.new("RGB", (parameters["width"], parameters["height"]), (128, 128, 128))

    model = parameters.get("model")
    if model is None:
        raise RequestRejected(table.message("missing_model"))
    models = table.files["models"]
    if model not in models:
        by_name = [file for file, entry in models.items() if entry.get("name") == model]
        if not by_name:
            raise RequestRejected(table.message("unrecognized_model", model=model))
        parameters["model"] = model = by_name[0]

    def installed(kind: str, file: str) -> bool:
        return file in table.files[kind] and file not in missing_files

    files = [("loras", lora["file"]) for lora in parameters.get("loras") or [] if lora.get("file")]
    if parameters.get("upscaler"):
        files.append(("upscalers", parameters["upscaler"]))
    for kind, file in files:
        if "/" in file or "\\" in file:
            raise RequestRejected(table.message("file_name_with_slash"))
        if not installed(kind, file):
            raise RequestRejected(table.message("missing_file", file=file))
    if not installed("models", model):
        raise RequestRejected(table.message("missing_model_files"))
    if parameters.get("prompt") is None:
        raise RequestRejected(table.message("missing_prompt"))

    resolution = drawthings.resolve_extras(parameters, installed)
    size = drawthings.output_size(parameters)
    return GenerationRequest(
        route=route, parameters=parameters, resolution=resolution, init_image=init_image,
        init_source=init_source, output_size=size,
        image_count=parameters["batch_count"] * parameters["batch_size"],
    )


# --------------------------------------------------------------------------- rendering

_GRID = 3  # objects sit in distinct cells of a 3 x 3 grid, so they never touch
_CELL_MARGIN = 0.1  # of a cell, on each side: at least 20 % of a cell between objects
_OBJECT_SIDE = (0.10, 0.26)  # of the image's shorter side
_GRAIN_LEVELS = 14  # +- grey levels of the noise texture


def _draw_ellipse(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    draw.ellipse((0, 0, size[0] - 1, size[1] - 1), fill=255)


def _draw_rounded_rectangle(draw, size, rng) -> None:
    radius = int(min(size) * rng.uniform(0.08, 0.3))
    draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=radius, fill=255)


def _draw_polygon(draw, size, rng) -> None:
    # A jittered regular polygon: convex-looking, clearly not an ellipse.
    corners = rng.randint(3, 7)
    start = rng.uniform(0, math.tau)
    half_w, half_h = (size[0] - 1) / 2, (size[1] - 1) / 2
    points = []
    for i in range(corners):
        angle = start + math.tau * (i + rng.uniform(-0.15, 0.15)) / corners
        reach = rng.uniform(0.8, 1.0)
        points.append(
            (half_w * (1 + reach * math.cos(angle)), half_h * (1 + reach * math.sin(angle)))
        )
    draw.polygon(points, fill=255)


_SHAPES = {
    "ellipse": _draw_ellipse,
    "rounded_rectangle": _draw_rounded_rectangle,
    "polygon": _draw_polygon,
}


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _scaled(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, round(channel * factor)) for channel in colour)


def _gradient_background(rng: random.Random, width: int, height: int) -> Image.Image:
    # A linear field sampled on a 16 x 16 grid and bilinearly enlarged is exactly
    # linear between samples, and costs a fraction of computing every pixel.
    hue = rng.random()
    dark = _hsv(hue, rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.55))
    light = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.3), rng.uniform(0.7, 0.9))
    direction_x, direction_y = rng.uniform(-1, 1), rng.uniform(-1, 1)
    samples = 16
    pixels = []
    for y in range(samples):
        for x in range(samples):
            t = (direction_x * (x / (samples - 1) - 0.5) + direction_y * (y / (samples - 1) - 0.5))
            t = min(1.0, max(0.0, 0.5 + t))
            pixels.append(tuple(round(a + (b - a) * t) for a, b in zip(dark, light)))
    small = Image.new("RGB", (samples, samples))
    small.putdata(pixels)
    return small.resize((width, height), Image.BILINEAR)


def _paint_objects(canvas: Image.Image, rng: random.Random) -> None:
    width, height = canvas.size
    side = min(width, height)
    cell_w, cell_h = width / _GRID, height / _GRID
    count = rng.randint(3, 6)
    cells = rng.sample(range(_GRID * _GRID), count)
    hue_start = rng.random()
    hues = [hue_start + i / count + rng.uniform(-0.03, 0.03) for i in range(count)]
    rng.shuffle(hues)
    shading = Image.linear_gradient("L")  # 256 x 256, 0 at the top to 255 at the bottom
    for cell, hue in zip(cells, hues):
        usable_w = cell_w * (1 - 2 * _CELL_MARGIN)
        usable_h = cell_h * (1 - 2 * _CELL_MARGIN)
        box_w = max(2, round(min(usable_w, side * rng.uniform(*_OBJECT_SIDE))))
        box_h = max(2, round(min(usable_h, side * rng.uniform(*_OBJECT_SIDE))))
        left = (cell % _GRID) * cell_w + cell_w * _CELL_MARGIN + rng.uniform(0, usable_w - box_w)
        top = (cell // _GRID) * cell_h + cell_h * _CELL_MARGIN + rng.uniform(0, usable_h - box_h)
        shape = _SHAPES[rng.choice(sorted(_SHAPES))]

        # Drawn at twice the size and halved: anti-aliased edges, like a photo's.
        mask = Image.new("L", (box_w * 2, box_h * 2), 0)
        shape(ImageDraw.Draw(mask), mask.size, rng)
        mask = mask.reduce(2)

        colour = _hsv(hue, rng.uniform(0.75, 0.95), rng.uniform(0.7, 0.95))
        fill = Image.composite(
            Image.new("RGB", (box_w, box_h), _scaled(colour, 0.78)),
            Image.new("RGB", (box_w, box_h), _scaled(colour, 1.1)),
            shading.resize((box_w, box_h)),
        )
        canvas.paste(fill, (round(left), round(top)), mask)


def _add_grain(canvas: Image.Image, rng: random.Random) -> Image.Image:
    # Noise drawn at half resolution and enlarged: still looks like sensor grain,
    # and PNG encoding (most of the cost) is much faster than with per-pixel noise.
    width, height = canvas.size
    small = (max(1, width // 2), max(1, height // 2))
    levels = [max(0, min(255, 128 + round((v - 128) * _GRAIN_LEVELS / 128))) for v in range(256)]
    noise = Image.frombytes("L", small, rng.randbytes(small[0] * small[1])).point(levels)
    noise = noise.resize((width, height), Image.BILINEAR)
    return ImageChops.add(canvas, Image.merge("RGB", (noise, noise, noise)), 1.0, -128)


def render_scene(seed: int, prompt: str, width_px: int, height_px: int) -> Image.Image:
    """A photo-like RGB picture of ``width_px`` x ``height_px``, deterministic in its arguments.

    The layout (background colours, objects' cells, shapes and colours) depends only
    on (seed, prompt), so the same seed and prompt give the same scene at any size;
    the grain also depends on the size.
    """
    canvas = _render_layout(seed, prompt, width_px, height_px)
    return _add_grain(canvas, random.Random(f"grain\0{seed}\0{prompt}\0{width_px}x{height_px}"))


def _render_layout(seed: int, prompt: str, width_px: int, height_px: int) -> Image.Image:
    """The scene without its grain: background gradient and objects."""
    layout = random.Random(f"scene\0{seed}\0{prompt}")
    canvas = _gradient_background(layout, width_px, height_px)
    _paint_objects(canvas, layout)
    return canvas


def render_img2img(
    init_image: Image.Image, seed: int, prompt: str, width_px: int, height_px: int, strength: float
) -> Image.Image:
    """``init_image`` (RGB) resized to the output size and altered in proportion to strength.

    Strength 0 returns the resized init image; strength s blends in the scene of
    (seed, prompt) at weight s / 2. The scene's own grain is left out: the init image
    has its texture already, and noisier pictures take longer to encode.
    """
    image = init_image
    if image.size != (width_px, height_px):
        image = image.resize((width_px, height_px), Image.LANCZOS)
    if strength > 0:
        scene = _render_layout(seed, prompt, width_px, height_px)
        image = Image.blend(image, scene, strength * 0.5)
    return image


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes at zlib level 1: a 2048 px picture must not take seconds to encode."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def render_pictures(request: GenerationRequest,
                    size: tuple[int, int] | None = None) -> list[Image.Image]:
    """The RGB pictures answering ``request`` (``size`` overrides its output size); the
    gRPC simulator (drawthings/grpc_simulator.py) draws with it too."""
    width, height = size or request.output_size
    parameters = request.parameters
    pictures = []
    for index in range(request.image_count):
        # The app gives each image of a batch the next seed.
        seed = (parameters["seed"] + index) % 2**32
        if request.init_image is None:
            pictures.append(render_scene(seed, parameters["prompt"], width, height))
        else:
            pictures.append(render_img2img(request.init_image, seed, parameters["prompt"], width,
                                           height, parameters["strength"]))
    return pictures


def render_images(request: GenerationRequest, size: tuple[int, int] | None = None) -> list[str]:
    """The base64 PNGs answering ``request`` (``size`` overrides its output size)."""
    return [pybase64.b64encode(encode_png(picture)).decode("ascii")
            for picture in render_pictures(request, size)]


# --------------------------------------------------------------------------- server


def json_bytes(value) -> bytes:
    # Swift's JSONEncoder writes "/" as "\/": clients must parse, not slice.
    return json.dumps(value, ensure_ascii=False).replace("/", "\\/").encode("utf-8")


def error_body(detail: str) -> bytes:
    """The app's error answer (HTTPAPIServer.swift createErrorResponse), sent with 422."""
    return json_bytes({"error": "HTTPException", "detail": detail, "body": "", "errors": ""})


def fault_body(status: int) -> bytes:
    """A 5xx fault's body: what a proxy or a crashing server might send (not the app's)."""
    return json_bytes({"error": "simulated fault", "detail": f"simulated fault {status}"})


@dataclass
class _Reply:
    """What the handler sends. ``body`` None: close the connection without an answer."""

    status: int | None
    body: bytes | None
    entry: dict = field(default_factory=dict)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the app keeps waiting requests in a pool, not refused

    def __init__(self, address, handler, simulator: "Simulator"):
        self.simulator = simulator
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        # Wakes handler threads waiting on idle keep-alive connections.
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # A client that went away (reset, broken pipe, timeout) is not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the app
    server_version = "drawpipe-simulator"
    sys_version = ""

    def log_message(self, format, *args):
        pass  # one stderr line per request would drown test and benchmark output

    def do_GET(self):
        self._answer()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _answer(self) -> None:
        received = time.time()
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(400, b"")
            return
        except OSError:
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        reply = self.server.simulator._respond(self.command, path, raw, received)
        if reply.body is None:
            self._drop()
        else:
            self._send(reply.status, reply.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise OSError("client went away")
                size = int(size_line.split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size + 2)  # the chunk and its CRLF
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:size])
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise OSError("client went away")
        return raw

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Simulator:
    """Draw Things' HTTP API on a loopback port, served from a daemon thread.

    ``app_configuration`` updates ``default_app_configuration()``; the result is a
    plain mutable dict: what GET / answers and what keys left out of a POST default to.
    ``missing_keys``: parameters this app lacks, as an older app would (GET / leaves
    them out; a POST sending one is refused as unrecognised). ``missing_files``: model,
    LoRA, ControlNet or upscaler files this app has not installed (every file of the
    API table is installed otherwise).

    ``requests`` is the request log: one dict per request with ``time`` (received),
    ``started``/``finished`` (epoch seconds the one-at-a-time queue held it),
    ``method``, ``path``, ``status`` (None when the connection was dropped), ``fault``,
    ``seed``, ``prompt``, ``width``, ``height`` (effective, as sent: before flooring
    and the upscaler), ``output_size``, ``init_size``, ``init_source`` ("request",
    or "canvas" when img2img had no single init image), ``keys`` (sorted keys sent),
    ``payload`` (the body without ``init_images``), ``detail`` (of a 422),
    ``applied`` ({"model", "refiner", "upscaler", "upscale_factor", "loras",
    "controls"}: what the generation really used), ``dropped`` (what the app left
    out without a word: [{"kind", "index", "file", "reason"}]) and ``images_sha256``
    (of each PNG answered, when no fault changed the answer).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_seconds: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds=DEFAULT_FAULT_KINDS,
        slow_seconds: float = 30.0,
        request_log_path=None,
        random_seed: int = 0,
        app_configuration: dict | None = None,
        missing_keys=(),
        missing_files=(),
    ):
        _check_fault_kinds(fault_kinds)
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1 (was {fault_rate})")
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.latency_seconds = latency_seconds
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.slow_seconds = slow_seconds
        self.request_log_path = request_log_path
        unknown = set(missing_keys) - set(drawthings.api_table().parameters)
        if unknown:
            raise ValueError(f"missing_keys: not parameters of the API table: {sorted(unknown)}")
        self.missing_keys = frozenset(missing_keys)
        self.missing_files = frozenset(missing_files)
        self.app_configuration = {**default_app_configuration(), **(app_configuration or {})}
        self._fault_random = random.Random(random_seed)
        self._scripted_faults: collections.deque[str] = collections.deque()
        self._generation_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._log: list[dict] = []
        self._log_file = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "Simulator":
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        if self.request_log_path is not None:
            self._log_file = open(self.request_log_path, "a", encoding="utf-8")
        self.port = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"drawpipe-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still waiting (slow faults, latency) give up at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_open_connections()
            self._thread.join(timeout=5)
            self._server = None
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- faults and log

    def queue_faults(self, kinds: list[str]) -> None:
        """The next valid POSTs get these faults, in order ("ok" = no fault)."""
        _check_fault_kinds(kinds)
        with self._generation_lock:
            self._scripted_faults.extend(kinds)

    @property
    def requests(self) -> list[dict]:
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def _record(self, entry: dict) -> None:
        with self._log_lock:
            self._log.append(entry)
            if self._log_file is not None:
                self._log_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._log_file.flush()

    def _next_fault(self) -> str | None:
        # Called with the generation lock held, so faults follow processing order.
        if self._scripted_faults:
            kind = self._scripted_faults.popleft()
        elif self.fault_rate and self._fault_random.random() < self.fault_rate:
            kind = self._fault_random.choice(self.fault_kinds)
        else:
            return None
        return None if kind == "ok" else kind

    def _pause(self, seconds: float) -> bool:
        """Wait; False if the simulator is stopping (the answer is then abandoned)."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    # -- answering

    def _respond(self, method: str, path: str, raw: bytes, received: float) -> _Reply:
        entry = {
            "time": received, "started": received, "finished": None, "method": method,
            "path": path, "status": None, "fault": None, "seed": None, "prompt": None,
            "width": None, "height": None, "output_size": None, "init_size": None,
            "init_source": None, "keys": [], "payload": None, "detail": None,
            "applied": None, "dropped": None, "images_sha256": None,
        }
        route = _ROUTES.get((method, path))
        try:
            if route is None:
                reply = _Reply(404, b"")  # cpp-httplib's answer to an unknown route
            elif route == "configuration":
                reply = _Reply(200, json_bytes(self.configuration()))
            else:
                reply = self._generate(route, raw, entry)
        except Exception:  # a simulator bug: answer, and show it on stderr
            traceback.print_exc()
            reply = _Reply(500, fault_body(500))
        if entry["finished"] is None:
            entry["finished"] = time.time()
        entry["status"] = reply.status
        if reply.status == 422:
            entry["detail"] = json.loads(reply.body).get("detail")
        self._record(entry)  # before answering: a client reading the log sees its request
        return reply

    def configuration(self) -> dict:
        """GET /: every parameter this app has, with its current value."""
        return {key: value for key, value in self.app_configuration.items()
                if key not in self.missing_keys}

    def _generate(self, route: str, raw: bytes, entry: dict) -> _Reply:
        # One request at a time, validation included (HTTPAPIServer.swift runs the whole
        # handler inside callbackQueue.sync); waiters poll so that stop() frees them too.
        while not self._generation_lock.acquire(timeout=0.1):
            if self._stopping.is_set():
                return _Reply(None, None)
        try:
            # Decoding the init image and encoding the answer happen inside the
            # latency window, as all of the app's work does.
            entry["started"] = time.time()
            reply = self._generate_locked(route, raw, entry)
            entry["finished"] = time.time()
        finally:
            self._generation_lock.release()
        return reply

    def _generate_locked(self, route: str, raw: bytes, entry: dict) -> _Reply:
        try:
            body = parse_body(raw)
            entry["keys"] = sorted(body)
            entry["payload"] = {k: v for k, v in body.items() if k != "init_images"}
            request = validate_request(route, body, dict(self.configuration()),
                                       self.missing_keys, self.missing_files)
        except RequestRejected as exc:
            return _Reply(422, error_body(exc.detail))
        _note_request(entry, request)
        fault = self._next_fault()
        entry["fault"] = fault
        if fault in ("500", "503"):
            status = int(fault)
            return _Reply(status, fault_body(status))
        if fault == "drop":
            return _Reply(None, None)
        if fault == "slow" and not self._pause(self.slow_seconds):
            return _Reply(None, None)

        if fault == "empty":
            images = []
        elif fault == "wrong_size":
            width, height = request.output_size
            images = render_images(request, (max(1, width // 2), max(1, height // 2)))
        else:
            images = render_images(request)
        if fault == "truncate":
            images = [image[: len(image) // 2] for image in images]

        if fault is None:
            # What was sent, for tests that check the client keeps the bytes as they are.
            entry["images_sha256"] = [hashlib.sha256(pybase64.b64decode(image)).hexdigest()
                                      for image in images]
        answer = json_bytes({"images": images})
        # The app's generation time: the whole answer takes at least latency_seconds.
        if not self._pause(entry["started"] + self.latency_seconds - time.time()):
            return _Reply(None, None)
        return _Reply(200, answer)


def _note_request(entry: dict, request: GenerationRequest) -> None:
    parameters, resolution = request.parameters, request.resolution
    for key in ("seed", "prompt", "width", "height"):
        entry[key] = parameters.get(key)
    entry["output_size"] = list(request.output_size)
    entry["init_source"] = request.init_source
    if request.init_image is not None:
        entry["init_size"] = list(request.init_image.size)
    entry["applied"] = {
        "model": parameters["model"],
        "refiner": resolution.refiner,
        "upscaler": parameters.get("upscaler"),
        "upscale_factor": drawthings.upscale_factor(parameters),
        "loras": [lora["file"] for lora in resolution.loras],
        "controls": [control["file"] for control in resolution.controls],
    }
    entry["dropped"] = [{"kind": drop.kind, "index": drop.index, "file": drop.file,
                         "reason": drop.reason} for drop in resolution.dropped]


def _check_fault_kinds(kinds) -> None:
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")


# --------------------------------------------------------------------------- command line


def _kind_list(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    try:
        _check_fault_kinds(kinds)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return kinds


def _name_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drawpipe.simulator",
        description="A local stand-in for Draw Things' HTTP API (sdapi).",
        epilog="Fault kinds: " + "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items())
        + ". Draw Things' gRPC API instead: python -m drawpipe.simulator --grpc --help.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=drawthings.DEFAULT_PORT,
                        help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="minimum time of each successful POST")
    parser.add_argument("--fault-rate", type=float, default=0.0, metavar="P",
                        help="probability that a valid POST gets a random fault")
    parser.add_argument("--faults", type=_kind_list, default=list(DEFAULT_FAULT_KINDS),
                        metavar="KINDS", help="comma-separated kinds random faults are drawn from")
    parser.add_argument("--fault-script", type=_kind_list, default=[], metavar="KINDS",
                        help="comma-separated faults for the first valid POSTs, in order")
    parser.add_argument("--slow-seconds", type=float, default=30.0, metavar="S")
    parser.add_argument("--request-log", default=None, metavar="FILE.jsonl")
    parser.add_argument("--random-seed", type=int, default=0, metavar="N")
    parser.add_argument("--missing-keys", type=_name_list, default=[], metavar="KEYS",
                        help="comma-separated parameters this app lacks (an older app)")
    parser.add_argument("--missing-files", type=_name_list, default=[], metavar="FILES",
                        help="comma-separated model/LoRA/ControlNet/upscaler files not installed")
    arguments = parser.parse_args(argv)
    if not 0.0 <= arguments.fault_rate <= 1.0:
        parser.error("--fault-rate must be between 0 and 1")
    return arguments


# --------------------------------------------------------------------------- as a process

LISTENING = "drawpipe simulator listening on "


def start_process(*args, request_log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m drawpipe.simulator --port 0 ARGS`` in its own process: (process, url).

    For tests, benchmarks and the demo, where the simulator's own work must not
    share a process (or a GIL) with the client being measured.
    """
    command = [sys.executable, "-m", "drawpipe.simulator", "--port", "0", *map(str, args)]
    if request_log is not None:
        command += ["--request-log", str(request_log)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith(LISTENING):
        stop_process(process)
        raise RuntimeError(f"the simulator did not start: {line.strip() or 'no output'}")
    return process, line.strip()[len(LISTENING):]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM our own child, then kill it if it does not exit within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    simulator = Simulator(
        host=arguments.host,
        port=arguments.port,
        latency_seconds=arguments.latency,
        fault_rate=arguments.fault_rate,
        fault_kinds=arguments.faults,
        slow_seconds=arguments.slow_seconds,
        request_log_path=arguments.request_log,
        random_seed=arguments.random_seed,
        missing_keys=arguments.missing_keys,
        missing_files=arguments.missing_files,
    )
    simulator.queue_faults(arguments.fault_script)
    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    try:
        simulator.start()
    except OSError as exc:
        print(f"error: cannot listen on {arguments.host}:{arguments.port}: {exc}", file=sys.stderr)
        return 2
    print(f"{LISTENING}{simulator.url}", flush=True)
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not stop_requested.wait(0.5):
        pass
    simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
