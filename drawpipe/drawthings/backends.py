"""One ``--server`` URL -> the client that talks to it: the URL's scheme chooses the transport.

    TRANSPORTS                  scheme -> transport: http, https: Draw Things' HTTP API
                                (client.py); grpc, grpcs: its gRPC API (grpc_client.py)
    ServerSettings              what the clients of one run take: HTTP's ClientSettings, and
                                the TLS and shared secret only gRPC servers use
    check_server_url(text)      the URL as a run names the server; UsageError for a URL no
                                transport takes, or a gRPC one without the grpc extra
    open_client(url, ...)       SdapiClient or GrpcClient: one interface (client.py's docstring)
    probe_server(url, s)        one look at a quarantined server (GET / or Echo), no retry
    preflight(client, payloads) before a worker's first request: the configuration the
                                requests' left-out keys take, the templates checked against
                                it, and on a gRPC server every file they name asked for
    sampled_process(url, s)     the local process whose CPU and RAM are logged, or None

The stages call these and never look at a scheme themselves (the seconds per stage of
a request that a gRPC answer carries are logged by signposts.py's columns).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from drawpipe.drawthings import client as http_client
from drawpipe.drawthings import grpc_client, payloads
from drawpipe.drawthings.client import ClientSettings, SdapiClient
from drawpipe.drawthings.grpc_client import GrpcClient, GrpcSettings
from drawpipe.errors import UsageError
from drawpipe.settings import DEFAULT_SERVER

TRANSPORTS = {"http": "http", "https": "http", "grpc": "grpc", "grpcs": "grpc"}


@dataclass(frozen=True)
class ServerSettings:
    """How a run talks to its servers. ``client``: timeouts and re-sends, for both
    transports (over gRPC the read timeout is the longest wait for the server's first
    message, and for each next one at most GrpcSettings' read timeout: signposts come
    at every sampling step). The rest is for grpc:// and grpcs:// servers only."""

    client: ClientSettings = ClientSettings()
    shared_secret: str | None = field(default=None, repr=False)  # never printed
    # Where the secret came from, for messages ("the environment variable DT_SECRET").
    shared_secret_source: str = "the shared secret setting"
    certificate_path: Path | None = None  # the root to trust for grpcs://; None: Draw Things'
    tls_server_name: str = GrpcSettings.server_name  # the name its certificate must carry

    def grpc(self) -> GrpcSettings:
        """The settings of a GrpcClient."""
        http = self.client
        return GrpcSettings(
            connect_timeout_seconds=http.connect_timeout_seconds,
            start_timeout_seconds=http.read_timeout_seconds,
            read_timeout_seconds=min(http.read_timeout_seconds,
                                     GrpcSettings.read_timeout_seconds),
            retries=http.retries, backoff_seconds=http.backoff_seconds,
            backoff_cap_seconds=http.backoff_cap_seconds, shared_secret=self.shared_secret,
            shared_secret_source=self.shared_secret_source,
            certificate_path=self.certificate_path, server_name=self.tls_server_name)


def transport_of(url: str) -> str | None:
    """"http" or "grpc" for a URL of either transport, else None."""
    return TRANSPORTS.get(url.split("://", 1)[0].lower()) if "://" in url else None


def check_server_url(text: str) -> str:
    """``text`` as a run names the server: an http(s):// URL as given, a grpc(s):// one
    with its port (7859 when left out); UsageError naming the option otherwise."""
    transport = transport_of(text)
    if transport == "grpc":
        tls, host, port = grpc_client.parse_server(text)
        grpc_client.require_runtime()
        netloc = f"[{host}]" if ":" in host else host
        return f"{'grpcs' if tls else 'grpc'}://{netloc}:{port}"
    if transport == "http" and urlsplit(text).hostname:
        return text
    raise UsageError(f"--server {text}: expected a URL like {DEFAULT_SERVER} (Draw Things' HTTP "
                     "API), grpc://HOST:7859 (its gRPC API) or grpcs://HOST:7859 (gRPC over TLS)")


def open_client(url: str, settings: ServerSettings, sleep: Callable[[float], bool],
                on_resend: Callable[[str], None] | None = None,
                before_send: Callable[[], None] | None = None):
    """The client for ``url`` (check_server_url's form): SdapiClient or GrpcClient.
    ``sleep``, ``on_resend``, ``before_send``: as both clients take them (client.py)."""
    if transport_of(url) == "grpc":
        return GrpcClient(url, settings.grpc(), sleep=sleep, on_resend=on_resend,
                          before_send=before_send)
    return SdapiClient(url, settings.client, sleep=sleep, on_resend=on_resend,
                       before_send=before_send)


def probe_server(url: str, settings: ServerSettings) -> None:
    """One cheap look at ``url``, no retry (the engine's probe of a quarantined server, at
    a growing interval): HTTP's ``GET /``, gRPC's Echo. ServerNotAnswering while nothing
    answers; ServerUnreachable when what answers is not Draw Things' API."""
    client = open_client(url, settings, sleep=lambda seconds: False)
    try:
        client.check_server()
    finally:
        client.close()


def preflight(client, checked: list[tuple[dict, str]], on_warning=None) -> dict:
    """Before a worker's first request: the server's configuration (the app's ``GET /``;
    over gRPC the defaults a left-out key takes), with every ``(payload, source)``
    checked against it (payloads.preflight), and on a gRPC server every file they name
    asked with FilesExist: UsageError naming the first missing one, its template or
    step and the server, before anything is drawn."""
    configuration = payloads.preflight(client, checked, on_warning)
    if isinstance(client, GrpcClient):
        grpc_client.check_files_exist(client, checked)
    return configuration


def sampled_process(url: str, settings: ServerSettings) -> str | None:
    """The server's process name when ``url`` is this machine (its CPU and RAM can then
    be sampled), else None."""
    return http_client.sampled_process(url, settings.client)
