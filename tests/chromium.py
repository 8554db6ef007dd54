"""Headless Chromium for tests, driven over the DevTools protocol with the standard library.

    find_chromium()                  the browser binary, or None (then the test skips)
    open_page(path, screenshot, ...) PageCheck: console errors, every image's naturalWidth,
                                     a PNG screenshot of the page written to ``screenshot``

Chromium starts with ``--remote-debugging-port=0`` and a fresh ``--user-data-dir``;
it writes the port it chose to ``<user-data-dir>/DevToolsActivePort``. The page
target's WebSocket URL comes from ``http://127.0.0.1:<port>/json/list``. The
WebSocket client below is the minimum RFC 6455 needs for this: text frames, masked
from the client, fragmented or not, answering pings.
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "/Applications/Chromium.app/Contents/MacOS/Chromium",
              "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


class WebSocket:
    def __init__(self, url: str, timeout_seconds: float):
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout_seconds)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket handshake")
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def receive(self) -> str:
        parts = []
        while True:
            first, second = self._exactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._exactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._exactly(8))[0]
            mask = self._exactly(4) if second & 0x80 else None
            payload = self._exactly(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("the browser closed the WebSocket")
            if opcode in (0x1, 0x0):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """One page's DevTools session: ``call`` waits for its answer, keeping the events."""

    def __init__(self, websocket_url: str, timeout_seconds: float):
        self.socket = WebSocket(websocket_url, timeout_seconds)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str, timeout_seconds: float) -> dict:
        deadline = time.monotonic() + timeout_seconds
        for message in self.events:
            if message["method"] == event:
                return message
        while time.monotonic() < deadline:
            message = json.loads(self.socket.receive())
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    return message
        raise TimeoutError(f"no {event} within {timeout_seconds} s")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    images: list[tuple[str, int]] = field(default_factory=list)  # (src, naturalWidth)
    requested_urls: list[str] = field(default_factory=list)
    height_px: int = 0


# Lazy images outside the viewport never load on their own in a headless window:
# make every one eager, then wait for each to load or fail (at most 30 s).
_LOAD_ALL_IMAGES = """
(async () => {
  const images = [...document.images];
  images.forEach(image => { image.loading = "eager"; });
  const settled = images.map(image => image.complete && image.naturalWidth > 0 ? null :
    new Promise(done => { image.addEventListener("load", done); image.addEventListener("error", done); }));
  await Promise.race([Promise.all(settled), new Promise(done => setTimeout(done, 30000))]);
  return images.map(image => [image.getAttribute("src"), image.naturalWidth]);
})()
"""

_ERROR_LEVELS = ("error", "assert")


def _describe(event: dict) -> str | None:
    method, params = event["method"], event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in _ERROR_LEVELS:
        return "console: " + " ".join(str(arg.get("value", arg.get("description")))
                                      for arg in params.get("args", []))
    if method == "Runtime.exceptionThrown":
        return "exception: " + params.get("exceptionDetails", {}).get("text", "")
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip()
    if method == "Network.loadingFailed":
        return f"network: {params.get('errorText')} ({params.get('requestId')})"
    return None


def open_page(page: Path, screenshot: Path, user_data_dir: Path, width_px: int = 1400,
              max_height_px: int = 8000, timeout_seconds: float = 60) -> PageCheck:
    """Load ``page`` (a file) in headless Chromium; return what it saw and save a
    screenshot (the whole page, up to ``max_height_px`` tall) to ``screenshot``."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium")
    user_data_dir.mkdir(parents=True, exist_ok=True)
    port_file = user_data_dir / "DevToolsActivePort"
    process = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0",
         f"--window-size={width_px},1000", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    devtools = None
    try:
        deadline = time.monotonic() + timeout_seconds
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with {process.returncode} before listening")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split("\n")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.load(answer)
        target = next(t for t in targets if t.get("type") == "page")
        devtools = DevTools(target["webSocketDebuggerUrl"], timeout_seconds)
        for domain in ("Page", "Runtime", "Log", "Network"):
            devtools.call(f"{domain}.enable")
        devtools.call("Page.navigate", url=page.resolve().as_uri())
        devtools.wait_for("Page.loadEventFired", timeout_seconds)
        result = devtools.call("Runtime.evaluate", expression=_LOAD_ALL_IMAGES, awaitPromise=True,
                               returnByValue=True)
        check = PageCheck(images=[tuple(item) for item in result["result"]["value"]])
        metrics = devtools.call("Page.getLayoutMetrics")
        check.height_px = int(metrics["cssContentSize"]["height"])
        devtools.call("Emulation.setDeviceMetricsOverride", width=width_px,
                      height=min(check.height_px, max_height_px), deviceScaleFactor=1, mobile=False)
        shot = devtools.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        check.console_errors = [text for event in devtools.events if (text := _describe(event))]
        check.requested_urls = [event["params"]["request"]["url"] for event in devtools.events
                                if event["method"] == "Network.requestWillBeSent"]
        return check
    finally:
        if devtools is not None:
            devtools.socket.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
