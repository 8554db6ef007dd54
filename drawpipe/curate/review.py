"""The review page: a local web page to accept or reject the generated images.

    python -m drawpipe.review --root SHARE                 http://127.0.0.1:8765/
    python -m drawpipe.review --root SHARE --port 0        a free port; the URL is printed

(the command and its options: cli/review.py). Each nation and category is shown like the report's gallery: the generated image,
its upscaled version and its cut-outs, the prompt and settings, the quality signals
that make it suspect (curate/quality.py) and its verdict. Keys: ``j``/``k`` (or the arrows)
next/previous, ``a`` accept, ``r`` reject (type a reason, then Enter; Esc cancels);
the buttons do the same by mouse. A panel at the top shows every worker's live state
(inventory.status_view: the status files and the control files in ``.drawpipe/``). ``?filter=unreviewed`` shows only the images whose
current take has no verdict yet; ``?order=suspect`` puts the suspects first.

Verdicts are written by curate/verdicts.py append_verdict under this Mac's host name
(``reviews/<host>.jsonl``); the page shows every host's verdicts merged, reloaded on
every page load and every 15 s, so several people on several Macs, each running
this page against the share, review at once.

Routes (everything is read from the share per request; the server keeps no state
but caches):

    GET  /                      the page (``filter``: all|unreviewed|rejected|accepted,
                                ``order``: name|suspect)
    GET  /files/<path>          a PNG of GENERATIONS/, UPSCALED_IMAGES/ or CUTOUTS/, by
                                root-relative path; anything else (``..``, another
                                folder, a link out of the share) is refused (403)
    GET  /thumbs/<path>         the same file as a small JPEG (PNG for cut-outs), made in
                                memory and kept in an LRU
    GET  /api/verdicts          {"verdicts": [the winning Verdict of every reviewed take],
                                "problems": [line, ...]}
    POST /api/verdict           {"image", "sha256", "verdict", "reason"} -> {"verdict"}; 400 a
                                malformed verdict, 404 a gone image, 409 a take that changed
                                since the page showed it (it must be reviewed again)

It listens on the loopback address unless ``--host`` says otherwise. There, requests
whose Host header names another server are refused and a POST must be JSON, so a web
page elsewhere cannot cast verdicts through the reviewer's browser.
"""

import io
import json
import signal
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from drawpipe import pages
from drawpipe.curate.quality import Signals, suspect_reasons, suspicion_order, update_signals
from drawpipe.curate.verdicts import (ReviewState, Verdict, append_verdict, check_sha256,
                                     load_verdicts)
from drawpipe.errors import BadVerdict, TakeChanged, UsageError
from drawpipe.files import HashCache, file_sha256
from drawpipe.inventory import (ReportCache, read_cutout_labels, read_metadata, scan_inventory,
                                status_view)
from drawpipe.layout import (CUTOUTS_FOLDER, GENERATIONS_FOLDER, IMAGE_FOLDERS, REPORT_CACHE,
                             natural_key, report_folder)
from drawpipe.pages import anchor, counted, cutout_names, cutouts_caption, meta_view
from drawpipe.settings import default

DEFAULT_PORT = default("port")
LOOPBACK = default("host")
LISTENING = "review page: "
SERVED_FOLDERS = IMAGE_FOLDERS
FILTERS = ("all", "unreviewed", "rejected", "accepted")
ORDERS = ("name", "suspect")
THUMB_PX = 320
CUTOUT_THUMB_PX = 160
THUMB_CACHE_ENTRIES = 2000  # ~25 KB each: about 50 MB at most
MAX_POST_BYTES = 64 * 1024
REFRESH_SECONDS = 15


@dataclass(frozen=True)
class ReviewSettings:
    root: Path
    bind_host: str = LOOPBACK
    port: int = DEFAULT_PORT
    host_name: str = "host"  # this Mac's name: verdicts go to reviews/<host_name>.jsonl
    cache_dir: Path | None = None  # this Mac's SHA-256 cache (files.HashCache)
    processes: int = 1  # measuring quality signals


@dataclass
class Snapshot:
    """What one page load shows: the folders, their signals and every host's verdicts."""

    inventory: object  # inventory.Inventory
    signals: dict[str, Signals]
    verdicts: object  # curate.verdicts.VerdictIndex
    notes: list[str]


class Review:
    """The page's data, read from the share on demand; thread-safe."""

    def __init__(self, settings: ReviewSettings):
        self.settings = settings
        self.root = settings.root.resolve()
        self.hashes = HashCache(settings.cache_dir) if settings.cache_dir else None
        self._lock = threading.Lock()
        self._thumbs: OrderedDict = OrderedDict()
        # The report's cache of PNG metadata and cut-out labels, read once and then kept
        # in memory (entries are checked by size and mtime): a page load opens only new or
        # changed images. Never written here: report/ is the report's.
        self._metadata_cache: ReportCache | None = None

    # ------------------------------------------------------------------ reading the share

    def snapshot(self) -> Snapshot:
        """A listing of the share, PNG metadata and quality signals (cached: only new
        or changed images are opened) and every host's verdicts."""
        with self._lock:  # two page loads at once would measure the same new images twice
            inventory = scan_inventory(self.root)
            if self._metadata_cache is None:
                self._metadata_cache = ReportCache(report_folder(self.root) / REPORT_CACHE)
            read_metadata(self.root, inventory, self._metadata_cache)
            read_cutout_labels(self.root, inventory, self._metadata_cache)
            files = [entry.generated for entry in inventory.entries.values() if entry.generated]
            run = update_signals(self.root, files, self.settings.host_name,
                                 self.settings.processes)
            if self.hashes is not None:
                for file in files:
                    signals = run.signals.get(file.path)
                    if signals and signals.sha256:
                        self.hashes.put(self.root / file.path, file.size, file.mtime_ns,
                                        signals.sha256)
                self.hashes.save()
        verdicts = load_verdicts(self.root)
        verdicts.check_images(lambda image: (self.root / image).is_file())
        return Snapshot(inventory, run.signals, verdicts, run.problems + verdicts.problems)

    def current_sha256(self, image: str) -> str:
        return file_sha256(self.root / image, self.hashes)

    def record(self, body: dict) -> Verdict:
        """Write the verdict ``body`` asks for; BadVerdict (400), FileNotFoundError (404)
        or TakeChanged (409)."""
        if not isinstance(body, dict):
            raise BadVerdict("expected a JSON object {image, sha256, verdict, reason}")
        image, sha256 = body.get("image"), body.get("sha256")
        reason = body.get("reason") or ""
        if not isinstance(reason, str):
            raise BadVerdict("reason must be text")
        path = self.resolve(image if isinstance(image, str) else "")
        if path is None or not str(image).startswith(GENERATIONS_FOLDER + "/"):
            raise BadVerdict(f"{image!r} is not a generated image of this share")
        check_sha256(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"{image} no longer exists: reload the page")
        current = self.current_sha256(image)
        if current != sha256:
            raise TakeChanged(f"{image} changed since this page showed it (a new take?): "
                              "reload the page and review it again")
        return append_verdict(self.root, self.settings.host_name, image, sha256,
                              body.get("verdict"), reason)

    def resolve(self, relative: str) -> Path | None:
        """The file ``relative`` names in one of SERVED_FOLDERS, or None: empty, ``.`` or
        ``..`` parts, backslashes, NUL, another folder, or a link leading out of that folder."""
        parts = relative.split("/")
        if (len(parts) < 2 or parts[0] not in SERVED_FOLDERS or "\\" in relative
                or "\x00" in relative or any(part in ("", ".", "..") for part in parts)):
            return None
        path = (self.root / relative).resolve()
        return path if path.is_relative_to((self.root / parts[0]).resolve()) else None

    def thumbnail(self, relative: str) -> tuple[bytes, str] | None:
        """(bytes, content type) of a small copy of ``relative`` (an already resolved
        path); None when it cannot be decoded."""
        from PIL import Image

        path = self.root / relative
        stat = path.stat()
        key = (relative, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        cutout = relative.startswith(CUTOUTS_FOLDER + "/")
        try:
            with Image.open(path) as picture:
                side = CUTOUT_THUMB_PX if cutout else THUMB_PX
                picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
                buffer = io.BytesIO()
                if cutout:
                    picture.convert("RGBA").save(buffer, "PNG", compress_level=1)
                else:
                    picture.convert("RGB").save(buffer, "JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        made = (buffer.getvalue(), "image/png" if cutout else "image/jpeg")
        with self._lock:
            self._thumbs[key] = made
            while len(self._thumbs) > THUMB_CACHE_ENTRIES:
                self._thumbs.popitem(last=False)
        return made

    # ------------------------------------------------------------------ the page

    def page(self, filter_name: str = "all", order: str = "name") -> str:
        snapshot = self.snapshot()
        shown, counts = [], {"images": 0, "reviewed": 0, "rejected": 0, "accepted": 0,
                             "suspect": 0}
        for entry in snapshot.inventory.entries.values():
            if not entry.generated:
                continue
            signals = snapshot.signals.get(entry.generated.path)
            sha256 = signals.sha256 if signals and signals.sha256 else ""
            verdict = snapshot.verdicts.for_image(entry.generated.path, sha256) if sha256 else None
            review = ReviewState(verdict, snapshot.verdicts.rejected_before(
                entry.generated.path, sha256) if sha256 else None)
            reasons = suspect_reasons(signals) if signals else []
            counts["images"] += 1
            counts["reviewed"] += verdict is not None
            counts["rejected"] += bool(verdict and verdict.rejected)
            counts["accepted"] += bool(verdict and not verdict.rejected)
            counts["suspect"] += bool(reasons)
            state = "unreviewed" if verdict is None else (
                "rejected" if verdict.rejected else "accepted")
            if filter_name in ("all", state):
                shown.append((entry, signals, sha256, review, reasons))
        if order == "suspect":
            shown.sort(key=lambda item: (suspicion_order(item[1]), natural_key(item[0].key)))
            groups = [{"title": "suspect first", "anchor": "g-suspect-first",
                       "images": [self._item(*item, with_group=True) for item in shown]}]
        else:
            grouped: dict[str, list] = {}
            for item in shown:
                grouped.setdefault(item[0].group, []).append(item)
            groups = [{"title": group.replace("/", " · ") or "(top)", "anchor": anchor("g-", group),
                       "images": [self._item(*item) for item in items]}
                      for group, items in grouped.items()]
        return pages.render(
            "review.html", root_name=self.root.name, root=str(self.root), groups=groups,
            counts=counts, notes=snapshot.notes, host=self.settings.host_name,
            filter=filter_name, filters=FILTERS, order=order, orders=ORDERS,
            refresh_ms=REFRESH_SECONDS * 1000, status=status_view(self.root))

    def _item(self, entry, signals, sha256, review, reasons, with_group=False) -> dict:
        verdict = review.verdict
        def figure(image, label, absent):
            if image is None:
                return {"label": label, "absent": absent}
            return {"label": label, "href": f"/files/{image.path}", "src": f"/thumbs/{image.path}",
                    "alt": f"{label}: {image.path}", "target": True}

        tiles = [{"href": f"/files/{cutout.path}", "src": f"/thumbs/{cutout.path}",
                  "target": True, **cutout_names(entry, cutout, k)}
                 for k, cutout in enumerate(entry.cutouts, 1)]
        view = {
            "anchor": anchor("i-", entry.key),
            "generated": figure(entry.generated, "generated", "no generated image"),
            "upscaled": figure(entry.upscaled, "upscaled", "not upscaled yet"),
            "cutouts": {"tiles": tiles,
                        "absent": "no object found" if entry.cutouts_folder else "no cut-outs yet",
                        "caption": cutouts_caption(entry) if entry.cutouts_folder
                        else "cut-outs"},
            **meta_view(entry),
            "notes": [entry.meta["error"]] if entry.meta.get("error") else [],
            "earlier": review.earlier(entry.meta.get("take", 1)),
            "image": entry.generated.path, "sha256": sha256, "suspect": reasons,
            "verdict": verdict.to_dict() if verdict else None,
            # Compared with /api/verdicts' answers by the page's script, key for key.
            "verdict_json": json.dumps(verdict.to_dict(), ensure_ascii=False) if verdict else "",
        }
        if with_group:
            view["name"] = f"{entry.group.replace('/', ' · ')} · {entry.name}"
        if signals and not signals.error:
            view["facts"] = view["facts"] + [
                f"sharpness {signals.laplacian_variance:.0f}",
                f"luminance {signals.luminance_mean:.0f}",
                f"saturation {signals.saturation_mean:.2f}"]
        return view

    def verdicts_json(self) -> dict:
        index = load_verdicts(self.root)
        return {"verdicts": [verdict.to_dict() for _, verdict in sorted(index.current.items())],
                "problems": index.problems}


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, review: Review):
        self.review = review
        super().__init__(address, _Handler)

    def allowed_hosts(self) -> set[str] | None:
        """The Host headers a loopback server answers (a page elsewhere that rebinds its
        own name to 127.0.0.1 sends its name); None: any, when --host opened it to others."""
        host, port = self.server_address[:2]
        if host not in (LOOPBACK, "localhost"):
            return None
        return {f"{name}:{port}" for name in (LOOPBACK, "localhost")}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # one line per request would drown the URL line
        pass

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_allowed(self) -> bool:
        allowed = self.server.allowed_hosts()
        if allowed is None or self.headers.get("Host", "") in allowed:
            return True
        self._error(HTTPStatus.FORBIDDEN, "wrong Host header")
        return False

    def do_GET(self):
        if not self._host_allowed():
            return
        url = urlsplit(self.path)
        review = self.server.review
        try:
            if url.path == "/":
                query = parse_qs(url.query)
                filter_name = query.get("filter", ["all"])[0]
                order = query.get("order", ["name"])[0]
                if filter_name not in FILTERS or order not in ORDERS:
                    self._error(HTTPStatus.BAD_REQUEST, f"filter is one of {', '.join(FILTERS)}; "
                                                        f"order one of {', '.join(ORDERS)}")
                    return
                page = review.page(filter_name, order)
                self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/verdicts":
                self._json(HTTPStatus.OK, review.verdicts_json())
            elif url.path.startswith(("/files/", "/thumbs/")):
                self._file(url.path)
            elif url.path == "/favicon.ico":  # asked for by every browser: "none", not an error
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", cache=True)
            else:
                self._error(HTTPStatus.NOT_FOUND, "no such page")
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET

    def _file(self, url_path: str) -> None:
        kind, _, relative = url_path[1:].partition("/")
        relative = unquote(relative)
        review = self.server.review
        path = review.resolve(relative)
        if path is None or not path.name.lower().endswith(".png"):
            self._error(HTTPStatus.FORBIDDEN, "only PNGs under GENERATIONS/, UPSCALED_IMAGES/ "
                                              "or CUTOUTS/ are served")
            return
        try:
            if kind == "thumbs":
                made = review.thumbnail(relative)
                if made is None:
                    self._error(HTTPStatus.UNPROCESSABLE_ENTITY, f"cannot decode {relative}")
                    return
                self._send(HTTPStatus.OK, made[0], made[1], cache=True)
            else:
                self._send(HTTPStatus.OK, path.read_bytes(), "image/png")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._error(HTTPStatus.NOT_FOUND, f"{relative} does not exist")

    def do_POST(self):
        if not self._host_allowed():
            return
        if urlsplit(self.path).path != "/api/verdict":
            self._error(HTTPStatus.NOT_FOUND, "no such page")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the verdict as application/json")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_POST_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, "a verdict is a small JSON object")
            return
        try:
            body = json.loads(self.rfile.read(length))
            verdict = self.server.review.record(body)
        except ValueError as exc:  # BadVerdict is not a ValueError; this is the JSON
            self._error(HTTPStatus.BAD_REQUEST, f"not JSON: {exc}")
        except TakeChanged as exc:
            self._error(HTTPStatus.CONFLICT, str(exc))
        except BadVerdict as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except FileNotFoundError as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc.args[0]) if exc.args else "gone")
        except OSError as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                        f"cannot write the verdict ({exc.strerror or exc}): is the share mounted "
                        "read-write?")
        else:
            self._json(HTTPStatus.OK, {"verdict": verdict.to_dict()})


def start_server(review: Review) -> _Server:
    """The server, listening (not yet serving); UsageError when the address is taken."""
    settings = review.settings
    try:
        return _Server((settings.bind_host, settings.port), review)
    except OSError as exc:
        raise UsageError(f"cannot listen on {settings.bind_host}:{settings.port} "
                         f"({exc.strerror or exc}): choose another --port, or --port 0 for a "
                         "free one") from None


def run_review(settings: ReviewSettings, out=None) -> int:
    """Serve the page until SIGINT or SIGTERM; returns 0."""
    out = out or sys.stdout
    review = Review(settings)
    snapshot = review.snapshot()  # measures what is new before the first page is asked for
    server = start_server(review)
    count = sum(1 for entry in snapshot.inventory.entries.values() if entry.generated)
    reviewed = sum(1 for signals in snapshot.signals.values()
                   if snapshot.verdicts.for_image(signals.image, signals.sha256))
    out.write(f"{counted(count, 'generated image')} in {settings.root}, {reviewed:,} reviewed; "
              f"verdicts go to reviews/{settings.host_name}.jsonl\n")
    for line in snapshot.notes:
        out.write(f"note: {line}\n")
    if settings.bind_host not in (LOOPBACK, "localhost", "::1"):
        out.write(f"note: listening on {settings.bind_host}: anyone who can reach it can cast "
                  f"verdicts as {settings.host_name}\n")
    host, port = server.server_address[:2]
    out.write(f"{LISTENING}http://{host}:{port}/ (Ctrl-C to stop)\n")
    out.flush()
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set())
                for number in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="review-server", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        server.shutdown()
        server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if review.hashes is not None:
            review.hashes.save()
    out.write("stopped\n")
    return 0
