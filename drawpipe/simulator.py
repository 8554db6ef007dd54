"""A local stand-in for Draw Things' HTTP API, faithful enough to test clients against.

It answers like the app (see DESIGN.md, "Draw Things' HTTP API"): the same four
routes, the same 422 details for bad bodies (checked against the tables in
``drawpipe.drawthings``), one generation at a time, ``{"images": [...]}`` and
nothing else on success, and "/" written as "\\/" in the JSON like Swift's
encoder. Instead of a diffusion model it paints a photo-like picture with Pillow:
a textured gradient background with 3-6 solid, well-separated objects, so that
Segment Anything has real objects to find. Pictures are deterministic in
(seed, prompt, width, height).

Run it::

    python -m drawpipe.simulator --port 7860 [--host 127.0.0.1] [--latency SECONDS]
        [--fault-rate P] [--faults 500,503,drop,truncate,empty,wrong_size,slow]
        [--fault-script ok,500,drop,...] [--slow-seconds S]
        [--request-log FILE.jsonl] [--random-seed N]

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
    500, 503    that HTTP status with a small JSON error body
    drop        read the body, then close the connection without any answer
    truncate    200 whose base64 image is cut to half its length
    empty       200 with ``{"images": []}`` (a real Draw Things bug)
    wrong_size  200 with a valid PNG of half the requested width and height
    slow        wait ``slow_seconds`` before answering normally (client read timeouts)
"""

from __future__ import annotations

import argparse
import binascii
import collections
import colorsys
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

from drawpipe import drawthings
from drawpipe.drawthings import RequestRejected, upscale_factor, validate_values

# What the app's window is set to on a fresh SDXL install: the values any key left
# out of a request takes. Keys are PARAMETERS' canonical keys, minus the per-request
# ones (prompts, init images), like the app's GET / answer.
DEFAULT_APP_CONFIGURATION: dict = {
    "model": "sd_xl_base_1.0_f16.ckpt",
    "width": 1024,
    "height": 1024,
    "seed": 1234,
    "seed_mode": "Scale Alike",
    "steps": 30,
    "guidance_scale": 7.5,
    "sampler": "DPM++ 2M Karras",
    "strength": 1.0,
    "batch_count": 1,
    "batch_size": 1,
    "clip_skip": 1,
    "sharpness": 0.0,
    "shift": 1.0,
    "hires_fix": False,
    "hires_fix_width": 512,
    "hires_fix_height": 512,
    "hires_fix_strength": 0.7,
    "refiner_model": None,
    "refiner_start": 0.7,
    "upscaler": None,
    "upscaler_scale": 0,
    "tiled_diffusion": False,
    "diffusion_tile_width": 1024,
    "diffusion_tile_height": 1024,
    "diffusion_tile_overlap": 128,
    "tiled_decoding": False,
    "decoding_tile_width": 640,
    "decoding_tile_height": 640,
    "decoding_tile_overlap": 128,
    "loras": [],
    "controls": [],
    "stochastic_sampling_gamma": 0.3,
    "preserve_original_after_inpaint": True,
    "image_guidance_scale": 1.5,
    "mask_blur": 1.5,
    "mask_blur_outset": 0,
    "face_restoration": None,
    "aesthetic_score": 6.0,
    "negative_aesthetic_score": 2.5,
    "zero_negative_prompt": False,
    "original_width": 1024,
    "original_height": 1024,
    "target_width": 1024,
    "target_height": 1024,
    "crop_left": 0,
    "crop_top": 0,
    "tea_cache": False,
}
_PER_REQUEST_KEYS = ("prompt", "negative_prompt", "init_images")
assert set(DEFAULT_APP_CONFIGURATION) == set(drawthings.PARAMETERS) - set(_PER_REQUEST_KEYS)

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

_STATUS_TEXT = {
    400: "Bad Request",
    404: "Not Found",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# (method, path) -> what answers it.
_ROUTES = {
    ("GET", "/"): "configuration",
    ("GET", "/sdapi/v1/options"): "configuration",
    ("POST", "/sdapi/v1/txt2img"): "txt2img",
    ("POST", "/sdapi/v1/img2img"): "img2img",
}


# --------------------------------------------------------------------------- validation


def parse_body(raw: bytes) -> dict:
    """The request body as a dict; RequestRejected unless it is a JSON object."""

    def reject_constant(name):
        # Python's json accepts NaN/Infinity; Swift's decoder does not.
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestRejected(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestRejected(
            f"Invalid JSON body: expected an object, was {type(body).__name__}"
        )
    return body


@dataclass
class GenerationRequest:
    """A body that passed validation.

    ``parameters``: the app configuration updated by the body (canonical keys, plus
    ``prompt``/``negative_prompt``, without ``init_images``). ``init_image``: the
    decoded img2img input (RGB), else None. ``output_size``: (width, height) px of
    each answered image, after the upscaler.
    """

    route: str
    parameters: dict
    init_image: Image.Image | None = None
    output_size: tuple[int, int] = (0, 0)
    image_count: int = 1


def validate_request(route: str, body: dict, app_configuration: dict) -> GenerationRequest:
    """Check a txt2img/img2img body the way Draw Things does; RequestRejected if bad.

    Order: unknown keys, key sent with its alias, types, ranges, upscaler factor,
    then ``init_images`` (forbidden for txt2img; for img2img exactly one plain
    base64 PNG/JPEG whose size equals the effective width x height).
    """
    values = validate_values(body)
    parameters = {"prompt": "", "negative_prompt": "", **app_configuration}
    parameters.update({k: v for k, v in values.items() if k != "init_images"})

    init_image = None
    if route == "txt2img":
        if "init_images" in values:
            raise RequestRejected("init_images is only accepted by /sdapi/v1/img2img")
    else:
        init_image = _decode_init_image(values.get("init_images"))
        width, height = parameters["width"], parameters["height"]
        if init_image.width != width:
            raise RequestRejected(
                f"init_images width doesn't match (image {init_image.width}, request {width})"
            )
        if init_image.height != height:
            raise RequestRejected(
                f"init_images height doesn't match (image {init_image.height}, request {height})"
            )

    factor = upscale_factor(parameters)
    return GenerationRequest(
        route=route,
        parameters=parameters,
        init_image=init_image,
        output_size=(parameters["width"] * factor, parameters["height"] * factor),
        image_count=parameters["batch_count"] * parameters["batch_size"],
    )


def _decode_init_image(images: list[str] | None) -> Image.Image:
    if images is None:
        raise RequestRejected("img2img needs init_images: a list with exactly one base64 image")
    if len(images) != 1:
        raise RequestRejected(f"init_images must hold exactly one image (was {len(images)})")
    text = images[0]
    if text.startswith("data:"):
        raise RequestRejected('init_images[0] must be plain base64, without a "data:" prefix')
    if "\n" in text or "\r" in text:
        raise RequestRejected("init_images[0] must be plain base64, without line breaks")
    try:
        image = Image.open(io.BytesIO(pybase64.b64decode(text, validate=True)))
        if image.format not in ("PNG", "JPEG"):
            raise ValueError(image.format)
        image.load()  # a truncated file only fails here
    except (binascii.Error, ValueError, OSError, SyntaxError, Image.DecompressionBombError):
        raise RequestRejected("init_images[0] is not a valid image") from None
    return image.convert("RGB")


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


def render_images(request: GenerationRequest, size: tuple[int, int] | None = None) -> list[str]:
    """The base64 PNGs answering ``request`` (``size`` overrides its output size)."""
    width, height = size or request.output_size
    parameters = request.parameters
    images = []
    for index in range(request.image_count):
        # The app gives each image of a batch the next seed.
        seed = (parameters["seed"] + index) % 2**32
        if request.init_image is None:
            picture = render_scene(seed, parameters["prompt"], width, height)
        else:
            picture = render_img2img(
                request.init_image, seed, parameters["prompt"], width, height, parameters["strength"]
            )
        images.append(pybase64.b64encode(encode_png(picture)).decode("ascii"))
    return images


# --------------------------------------------------------------------------- server


def json_bytes(value) -> bytes:
    # Swift's JSONEncoder writes "/" as "\/": clients must parse, not slice.
    return json.dumps(value, ensure_ascii=False).replace("/", "\\/").encode("utf-8")


def error_body(status: int, detail: str) -> bytes:
    return json_bytes({"error": _STATUS_TEXT[status], "detail": detail, "status": status})


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
        except ValueError as exc:
            self.close_connection = True
            self._send(400, error_body(400, f"Bad request body: {exc}"))
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

    ``app_configuration`` updates DEFAULT_APP_CONFIGURATION; the result is a plain
    mutable dict: what GET / answers and what keys left out of a POST default to.
    ``requests`` is the request log: one dict per request with ``time`` (received),
    ``started``/``finished`` (epoch seconds the one-at-a-time generation held the
    lock, or when a request that needs no generation was answered), ``method``,
    ``path``, ``status`` (None when the connection was dropped), ``fault``,
    ``seed``, ``prompt``, ``width``, ``height`` (effective, before the upscaler),
    ``output_size``, ``init_size``, ``keys`` (sorted keys sent), ``payload`` (the
    body without ``init_images``) and ``detail`` (of an error answer).
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
        self.app_configuration = {**DEFAULT_APP_CONFIGURATION, **(app_configuration or {})}
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
            "keys": [], "payload": None, "detail": None,
        }
        route = _ROUTES.get((method, path))
        try:
            if route is None:
                reply = _Reply(404, error_body(404, f"No route for {method} {path}"))
            elif route == "configuration":
                reply = _Reply(200, json_bytes(self.app_configuration))
            else:
                reply = self._generate(route, raw, entry)
        except Exception as exc:  # a simulator bug: answer, and show it on stderr
            traceback.print_exc()
            reply = _Reply(500, error_body(500, f"simulator error: {exc!r}"))
        if entry["finished"] is None:
            entry["finished"] = time.time()
        entry["status"] = reply.status
        if reply.status and reply.status != 200 and reply.body:
            entry["detail"] = json.loads(reply.body).get("detail")
        self._record(entry)  # before answering: a client reading the log sees its request
        return reply

    def _generate(self, route: str, raw: bytes, entry: dict) -> _Reply:
        try:
            body = parse_body(raw)
        except RequestRejected as exc:
            return _Reply(422, error_body(422, exc.detail))
        entry["keys"] = sorted(body)
        entry["payload"] = {k: v for k, v in body.items() if k != "init_images"}
        _note_parameters(entry, {**self.app_configuration, **_lenient_values(body)})

        # One request at a time; waiters poll so that stop() frees them too.
        while not self._generation_lock.acquire(timeout=0.1):
            if self._stopping.is_set():
                return _Reply(None, None)
        try:
            # Decoding the init image and encoding the answer happen inside the
            # latency window, as all of the app's work does.
            entry["started"] = time.time()
            reply = self._generate_locked(route, body, entry)
            entry["finished"] = time.time()
        finally:
            self._generation_lock.release()
        return reply

    def _generate_locked(self, route: str, body: dict, entry: dict) -> _Reply:
        try:
            request = validate_request(route, body, dict(self.app_configuration))
        except RequestRejected as exc:
            return _Reply(422, error_body(422, exc.detail))
        _note_parameters(entry, request.parameters)
        entry["output_size"] = list(request.output_size)
        if request.init_image is not None:
            entry["init_size"] = list(request.init_image.size)
        fault = self._next_fault()
        entry["fault"] = fault
        if fault in ("500", "503"):
            status = int(fault)
            return _Reply(status, error_body(status, f"simulated fault {fault}"))
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

        answer = json_bytes({"images": images})
        # The app's generation time: the whole answer takes at least latency_seconds.
        if not self._pause(entry["started"] + self.latency_seconds - time.time()):
            return _Reply(None, None)
        return _Reply(200, answer)


def _lenient_values(body: dict) -> dict:
    """Known keys of a body that may be invalid, by canonical key (for the log only)."""
    return {
        drawthings.canonical_key(k): v
        for k, v in body.items()
        if k in drawthings.KNOWN_KEYS and k != "init_images"
    }


def _note_parameters(entry: dict, parameters: dict) -> None:
    for key in ("seed", "prompt", "width", "height"):
        entry[key] = parameters.get(key)


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


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drawpipe.simulator",
        description="A local stand-in for Draw Things' HTTP API (sdapi).",
        epilog="Fault kinds: " + "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items()),
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
