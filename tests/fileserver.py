"""HTTP servers on loopback for tests: a file server for downloads (Range requests, broken
connections) and a receiver of POSTs (the messages of --notify)."""

import hashlib
import http.server
import json
import socket
import threading


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A server on a free loopback port, serving from a daemon thread inside ``with``."""

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()


class FileServer(LoopbackServer):
    """Serves ``payload`` at any path on loopback, honouring Range; the first ``breaks``
    answers stop after ``break_after`` bytes; ``ignore_range`` answers 200 always.
    ``url``: the address of ``file_name`` on it; ``ranges``: each request's Range header."""

    def __init__(self, payload: bytes, breaks: int = 0, break_after: int = 0,
                 ignore_range: bool = False, file_name: str = "sam_vit_b_01ec64.pth"):
        super().__init__(FileHandler)
        self.payload, self.breaks, self.break_after = payload, breaks, break_after
        self.ignore_range = ignore_range
        self.ranges = []  # the Range header of each request (None: none)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/{file_name}"


class Receiver(LoopbackServer):
    """Records every POST as (path, headers, body) and answers ``status`` (200 by default);
    ``url``: where to send them."""

    def __init__(self, status: int = 200):
        super().__init__(ReceiverHandler)
        self.status = status
        self.received: list[tuple[str, dict, bytes]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/drawpipe"

    def messages(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.received]

    def events(self) -> list[str]:
        return [message["event"] for message in self.messages()]


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.path, dict(self.headers), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class FileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        server = self.server
        header = self.headers.get("Range")
        server.ranges.append(header)
        start = 0
        if header and not server.ignore_range:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range",
                             f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        else:
            self.send_response(200)
        body = server.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.breaks > 0:
            server.breaks -= 1
            self.wfile.write(body[:server.break_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
