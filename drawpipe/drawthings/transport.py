"""What Draw Things' two transports share: the answer, the re-send loop, what a port speaks.

    ImageAnswer         one image as either client returns it: PNG bytes, requests sent,
                        seconds, and (gRPC) the seconds per stage of the request
    send_with_resends   the one re-send loop of both clients (client.py, grpc_client.py)
    probe_protocol      what answers at host:port: HTTP/1.x, gRPC, TLS, nothing (messages)

The clients tell what may be sent again by the class of what they raise (errors.py):
only a TransientError is re-sent. Every JobFailed names the request it came from
(``attempts``), passed in where it is made, never set afterwards.
"""

import socket
import ssl
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from drawpipe.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class ImageAnswer:
    png: bytes  # the first image: exactly as the server encoded it (HTTP), or made of its tensor
    attempts: int  # requests it took (1 = no re-send)
    seconds: float  # wall time of all attempts, waits included
    # gRPC: {stage of the request (signposts.STAGES' values, "transfer"): seconds}, in
    # the order the server went through them; HTTP tells nothing of the kind: {}.
    stage_seconds: dict = field(default_factory=dict)


def send_with_resends(send_once: Callable[[int], T], settings, sleep: Callable[[float], bool],
                      on_resend: Callable[[str], None] | None = None,
                      before_send: Callable[[], None] | None = None) -> tuple[T, int]:
    """``send_once(attempt)`` until it returns: (its result, the attempts it took).

    ``attempt``: 1 for the first request; what ``send_once`` raises carries it. Only a
    TransientError is re-sent, ``settings.retries`` times at most, after
    ``settings.backoff_seconds`` doubling up to ``settings.backoff_cap_seconds``;
    anything else goes up at once. ``sleep(seconds)`` returns True when cut short
    because the run is stopping: then nothing more is sent. ``on_resend(line)`` hears
    each re-send and why; ``before_send()`` is called just before every request, and
    whatever it raises (the engine's JobLost) ends the call unsent.
    """
    attempt = 0
    while True:
        attempt += 1
        if before_send is not None:
            before_send()
        try:
            return send_once(attempt), attempt
        except TransientError as exc:
            if attempt > settings.retries:
                raise
            wait = min(settings.backoff_seconds * 2 ** (attempt - 1), settings.backoff_cap_seconds)
            if sleep(wait):
                raise TransientError(f"{exc}; not re-sent: the run is stopping", attempt,
                                     exc.retry_after_seconds) from None
            if on_resend is not None:
                on_resend(f"re-sending (attempt {attempt + 1} of {settings.retries + 1}, after "
                          f"{wait:g} s) because: {exc}")


def probe_protocol(host: str, port: int, timeout_seconds: float = 3.0) -> str:
    """What answers at host:port: "unreachable", "tls" (a TLS handshake succeeds),
    "http1" (an HTTP/1.x server, such as Draw Things' HTTP API), "grpc" (plaintext
    HTTP/2, as gRPC without TLS) or "unknown". For messages only: a few packets."""
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds) as raw:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2", "http/1.1"])
            with context.wrap_socket(raw, server_hostname=host):
                return "tls"
    except ssl.SSLError:
        pass
    except OSError:
        return "unreachable"

    def first_bytes(greeting: bytes) -> bytes:
        try:
            with socket.create_connection((host, port), timeout=timeout_seconds) as plain:
                plain.sendall(greeting)
                return plain.recv(16)
        except OSError:
            return b""

    if first_bytes(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).startswith(b"HTTP/"):
        return "http1"
    # The HTTP/2 connection preface and an empty SETTINGS frame: a SETTINGS frame comes back.
    answer = first_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    return "grpc" if len(answer) >= 4 and answer[3] == 4 else "unknown"
