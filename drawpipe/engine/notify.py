"""Messages about a run, sent from a background thread: a POST to each --notify URL, and
on macOS a Notification Center banner (--notify-desktop).

    NotifySettings     the URLs, the body format, the banner switch, timeouts
    Message            one event: what happened, on which host and stage, the run's counts
    Notifier           ``send(message)`` queues it and returns at once; a thread POSTs it
                       (a timeout on every request, a few tries with a growing pause);
                       ``close(wait_seconds)`` lets the queue drain for a bounded time
    FORMATS            --notify-format name -> body maker: json (the Message as JSON),
                       ntfy (text, with Title/Tags/Priority headers), slack ({"text"}),
                       discord ({"content"})

Events (``Message.event``):

    run_ended      the run is over; ``outcome`` done, failed, stopped, drained or error
    share_lost     the shared folder went away (the run ends: no run_ended follows)
    worker_retired a worker stopped for good (its server kept failing, or never answered)
    server_lost    a server is quarantined: it failed job after job, or did not answer at start
    server_back    a quarantined server answers again and its worker goes on

Nothing here can stop, slow or fail a run: ``send`` never blocks and never raises, the
thread is a daemon, and a URL that does not answer or answers 4xx/5xx is said in one
line (once per URL and kind of failure) while the run goes on; the exit code is the
run's own. The HTTP client is requests, imported in the thread, only when there is a URL.
"""

import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

EVENTS = ("run_ended", "share_lost", "worker_retired", "server_lost", "server_back")

# event -> (ntfy tags: emoji short codes, ntfy priority 1..5)
_NTFY_STYLE = {"run_ended": ("checkered_flag", 3), "share_lost": ("rotating_light", 5),
               "worker_retired": ("warning", 4), "server_lost": ("warning", 4),
               "server_back": ("white_check_mark", 3)}


@dataclass(frozen=True)
class NotifySettings:
    urls: tuple[str, ...] = ()
    format: str = "json"  # a FORMATS name
    desktop: bool = False  # macOS: a Notification Center banner too
    timeout_seconds: float = 10.0  # each POST: connect and read
    tries: int = 3  # POSTs of one message to one URL, the pause doubling from 1 s


@dataclass
class Message:
    event: str  # one of EVENTS
    text: str  # one line for people: "upscale on mac-a: done, 120 made"
    host: str
    stage: str
    outcome: str | None = None  # run_ended: done, failed, stopped, drained, error
    server: str | None = None
    counts: dict = field(default_factory=dict)  # total, made, already_done, by_others, failed, left
    error: str | None = None  # the first line of the first error
    report: str | None = None  # the share's HTML report, where there is one
    root: str | None = None
    time_utc: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()))

    @property
    def title(self) -> str:
        return f"drawpipe {self.stage} on {self.host}: {self.event.replace('_', ' ')}"


def _json_body(message: Message) -> tuple[bytes, dict]:
    return (json.dumps(asdict(message), ensure_ascii=False).encode(),
            {"Content-Type": "application/json"})


def _ntfy_body(message: Message) -> tuple[bytes, dict]:
    # ntfy takes the text as the body and the rest as headers (latin-1 only: kept ASCII).
    tags, priority = _NTFY_STYLE.get(message.event, ("information_source", 3))
    return message.text.encode(), {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": message.title.encode("ascii", "replace").decode(),
        "Tags": tags, "Priority": str(priority)}


def _slack_body(message: Message) -> tuple[bytes, dict]:
    return (json.dumps({"text": f"*{message.title}*\n{message.text}"}, ensure_ascii=False).encode(),
            {"Content-Type": "application/json"})


def _discord_body(message: Message) -> tuple[bytes, dict]:
    return (json.dumps({"content": f"**{message.title}**\n{message.text}"[:2000]},
                       ensure_ascii=False).encode(),
            {"Content-Type": "application/json"})


FORMATS: dict[str, Callable[[Message], tuple[bytes, dict]]] = {
    "json": _json_body, "ntfy": _ntfy_body, "slack": _slack_body, "discord": _discord_body}


def desktop_available() -> bool:
    """Whether banners can be shown here: macOS with osascript."""
    return sys.platform == "darwin" and shutil.which("osascript") is not None


def _applescript_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Notifier:
    """Sends messages from one daemon thread. ``warn(line)``: where a failure is said."""

    _CLOSE = object()

    def __init__(self, settings: NotifySettings, warn: Callable[[str], None]):
        self.settings = settings
        self.warn = warn
        self.desktop = settings.desktop and desktop_available()
        self._queue: queue.Queue = queue.Queue()
        self._said: set[tuple[str, str]] = set()
        self._session = None
        self._thread: threading.Thread | None = None
        if settings.desktop and not self.desktop:
            warn("note: --notify-desktop shows banners on macOS only (with osascript); "
                 "none on this machine")

    @property
    def active(self) -> bool:
        return bool(self.settings.urls) or self.desktop

    def send(self, message: Message) -> None:
        """Queue ``message``; returns at once, never raises."""
        if not self.active:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
            self._thread.start()
        self._queue.put(message)

    def close(self, wait_seconds: float = 15.0) -> None:
        """Let the queued messages go out, waiting ``wait_seconds`` at most (a URL that
        does not answer must not hold the end of the run longer)."""
        if self._thread is None:
            return
        self._queue.put(self._CLOSE)
        self._thread.join(wait_seconds)
        if self._thread.is_alive():
            self.warn(f"note: messages still unsent after {wait_seconds:g} s were dropped")

    def _loop(self) -> None:
        while True:
            message = self._queue.get()
            if message is self._CLOSE:
                break
            for url in self.settings.urls:
                self._post(url, message)
            if self.desktop:
                self._banner(message)
        if self._session is not None:
            self._session.close()

    def _say_once(self, url: str, kind: str, line: str) -> None:
        if (url, kind) not in self._said:
            self._said.add((url, kind))
            self.warn(line)

    def _post(self, url: str, message: Message) -> None:
        import requests  # only when a URL is given; in this thread, never the run's

        if self._session is None:
            self._session = requests.Session()
        body, headers = FORMATS[self.settings.format](message)
        pause = 1.0
        for attempt in range(1, self.settings.tries + 1):
            try:
                response = self._session.post(url, data=body, headers=headers,
                                              timeout=self.settings.timeout_seconds)
            except requests.RequestException as exc:
                problem, kind = f"no answer ({type(exc).__name__})", "unreachable"
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code} {response.text.strip()[:120]}".rstrip()
                kind = f"http-{response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # the URL or the body is wrong: trying again changes nothing
            if attempt < self.settings.tries:
                time.sleep(pause)
                pause *= 2
        self._say_once(url, kind, f"warning: --notify {url}: {problem}; the {message.event} "
                                  "message was not delivered (the run goes on)")

    def _banner(self, message: Message) -> None:
        script = (f"display notification {_applescript_text(message.text)} with title "
                  f"{_applescript_text(message.title)}")
        try:
            subprocess.run(["osascript", "-e", script], capture_output=True, timeout=10,
                           check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            self._say_once("desktop", "failed", f"warning: --notify-desktop: osascript failed "
                                                f"({exc}); no banners")
