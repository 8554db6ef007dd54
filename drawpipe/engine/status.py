"""Each running process's live status on the share, and reading them all back.

    .drawpipe/status/<host>-<pid>-<stage>.json   (layout.status_name), JSON format 1:
        host, pid, stage, started and written (epoch seconds on the file server's clock),
        lease_seconds, interval_seconds, stopping, energy_meter (None, or the name of the
        meter measuring this run: engine/energy.py's wiring fills it), counts (the run's
        total, already_done, made, by_others, failed), blocked ({job: why}: stale claims
        held open), and workers: one per server, each with server, state, detail, since,
        job and job_since (the job in flight), done and failed (this run), last_error,
        last_error_at, activity (what the job in flight is doing, where a backend says)

    StatusBoard        one process's file: ``worker(index, server)`` lends each worker
                       thread its WorkerStatus; ``start()`` writes at once, then every
                       ``interval_seconds`` from its own thread; ``close()`` removes the file
                       (a clean exit; after a crash it stays and goes *silent*)
    WorkerStatus       what one worker does now (thread-safe setters; no I/O)
    read_statuses(root)   ShareStatus: every status file with its age on the file server's
                       clock; one not rewritten for longer than its lease is *silent* (a Mac
                       that crashed, slept or lost the share; of this Mac, a dead process);
                       one that cannot be read (cut off by a crash) is a line in ``problems``
    worker_lines(share)   one WorkerLine per worker, for the terminal and the pages

Like the claims, the files are replaced atomically (files.write_atomically), dated by
the file server (a file's mtime, and times from ClaimStore.server_now inside it), and
tolerant of SMB's "busy": a write refused because a reader has the file open is tried
again on the next tick. A reader never trusts a file more than its lease.
"""

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from drawpipe.engine.claims import dead_here
from drawpipe.files import (make_folders_below, remove_quietly, server_clock_offset,
                            unlink_when_free, write_atomically)
from drawpipe.layout import CONTROL_FOLDER, STATUS_FOLDER, status_folder, status_name

FORMAT = 1
# Status files not rewritten for this long are removed by the next run that starts (a
# Mac asleep for a day is reported silent until then).
ABANDONED_SECONDS = 24 * 3600.0

# A worker's states, as the status file and the status command say them.
STARTING = "starting"
LOOKING = "looking for work"
WORKING = "working"
WAITING_FOR_OTHERS = "waiting for others"  # what is left is claimed by other workers
WAITING = "waiting"  # for a later pass (an input being written, a busy file, a retry)
PAUSED = "paused"
DRAINING = "draining"
QUARANTINED = "quarantined"
RETIRED = "retired"
FINISHED = "finished"


class WorkerStatus:
    """What one worker thread does now. Times are the file server's (``server_now``)."""

    def __init__(self, index: int, server: str | None, server_now: Callable[[], float]):
        self.index = index
        self.server = server
        self._now = server_now
        self._lock = threading.Lock()
        self.state = STARTING
        self.detail = ""
        self.since: float | None = None  # set by the first change of state
        self.job: str | None = None
        self.job_since: float | None = None
        self.activity = ""  # what the job in flight is doing, where a backend tells
        self.done = 0
        self.failed = 0
        self.last_error = ""
        self.last_error_at: float | None = None

    def set(self, state: str, detail: str = "") -> None:
        """The worker's state (and a few words about it); ``since`` moves only when the
        state itself changes."""
        with self._lock:
            if state != self.state:
                self.since = self._now()
            self.state, self.detail = state, detail

    def working(self, job: str) -> None:
        with self._lock:
            now = self._now()
            self.state, self.detail, self.since = WORKING, "", now
            self.job, self.job_since, self.activity = job, now, ""

    def job_ended(self) -> None:
        with self._lock:
            self.job = self.job_since = None
            self.activity = ""
            if self.state == WORKING:
                self.state, self.since = LOOKING, self._now()

    def note_activity(self, text: str) -> None:
        """What the job in flight is doing now (a sampling step, a recipe's step)."""
        with self._lock:
            self.activity = text

    def made(self) -> None:
        with self._lock:
            self.done += 1

    def failed_job(self, error: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = first_line(error)
            self.last_error_at = self._now()

    def as_dict(self) -> dict:
        with self._lock:
            return {"server": self.server, "state": self.state, "detail": self.detail,
                    "since": self.since, "job": self.job, "job_since": self.job_since,
                    "activity": self.activity, "done": self.done, "failed": self.failed,
                    "last_error": self.last_error, "last_error_at": self.last_error_at}


def first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


class StatusBoard:
    """One process's status file, rewritten every ``interval_seconds`` by a thread.

    ``fields()`` gives the process-wide part each time (counts, blocked, stopping);
    ``server_now()`` the file server's clock (ClaimStore.server_now). ``warn(line)``
    is told once when the file cannot be written (the run goes on without it)."""

    def __init__(self, root: Path, host: str, pid: int, stage: str, lease_seconds: float,
                 interval_seconds: float, server_now: Callable[[], float],
                 fields: Callable[[], dict] = dict, warn: Callable[[str], None] = print):
        self.root = Path(root)
        self.path = status_folder(root) / status_name(host, pid, stage)
        self.host, self.pid, self.stage = host, pid, stage
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds
        self._server_now = server_now
        self._fields = fields
        self._warn = warn
        self.workers: list[WorkerStatus] = []
        # The name of the energy meter measuring this run (engine/energy.py), if any.
        self.energy_meter: str | None = None
        self.started: float | None = None  # by the file server's clock, set by start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._warned = False
        self._closed = False
        self._write_lock = threading.Lock()

    def server_now(self) -> float:
        try:
            return self._server_now()
        except OSError:
            return time.time()  # the share is failing: the run's own checks say so

    def worker(self, index: int, server: str | None) -> WorkerStatus:
        status = WorkerStatus(index, server, self.server_now)
        self.workers.append(status)
        return status

    def start(self) -> None:
        """Create the folder under the existing root, clear the files of dead runs,
        write the file and keep it fresh."""
        self.started = self.server_now()
        try:
            make_folders_below(self.root, self.path.parent)
            remove_abandoned_statuses(self.root, self.server_now())
        except OSError:
            pass  # written on the next tick, or said then
        self.write()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.write()

    def content(self) -> dict:
        return {"format": FORMAT, "host": self.host, "pid": self.pid, "stage": self.stage,
                "started": self.started, "written": self.server_now(),
                "lease_seconds": self.lease_seconds, "interval_seconds": self.interval_seconds,
                "energy_meter": self.energy_meter, **self._fields(),
                "workers": [worker.as_dict() for worker in self.workers]}

    def write(self) -> bool:
        """Replace the file now; False when the share refused (busy, or failing)."""
        with self._write_lock:
            if self._closed:
                return False  # a late write must not bring the file back
            data = json.dumps(self.content(), ensure_ascii=False, indent=1).encode() + b"\n"
            try:
                write_atomically(self.path, data, owner=f"{self.host}-{self.pid}")
                return True
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    self._warn(f"warning: cannot write the status file {self.path.name} "
                               f"({exc.strerror or exc}); the run goes on, trying again every "
                               f"{self.interval_seconds:g} s")
                return False

    def close(self) -> None:
        """Stop rewriting and remove the file: this run ended cleanly."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._write_lock:
            self._closed = True
            if self.started is None:
                return  # never written
            try:
                unlink_when_free(self.path, tries=5, pause_seconds=0.2)
            except OSError:
                pass  # the share is failing: the file goes silent, then is cleared


def remove_abandoned_statuses(root: Path, now: float) -> None:
    """Delete the status files of dead processes of this host (claims.dead_here) and any
    not rewritten for a day, and scratch files a killed writer left."""
    for entry in os.scandir(status_folder(root)):
        try:
            if entry.name.startswith("."):
                if entry.name.endswith(".tmp") and now - entry.stat().st_mtime > 3600:
                    remove_quietly(Path(entry.path))
                continue
            if (entry.name.endswith(".json") and dead_here(entry.name[:-len(".json")])
                    or now - entry.stat().st_mtime > ABANDONED_SECONDS):
                os.unlink(entry.path)
        except OSError:
            pass  # gone, or busy: a later run cleans it


# --------------------------------------------------------------------------- reading


@dataclass
class ProcessStatus:
    """One status file as read: its content and how old it is (the server's clock)."""

    name: str  # the file's name without .json
    content: dict
    age_seconds: float  # since it was last written
    gone: bool  # a process of this host that no longer exists

    @property
    def lease_seconds(self) -> float:
        value = self.content.get("lease_seconds")
        return float(value) if isinstance(value, (int, float)) and value > 0 else 120.0

    @property
    def silent(self) -> bool:
        """Not rewritten for longer than its lease, or its process is gone."""
        return self.gone or self.age_seconds > self.lease_seconds


@dataclass
class ShareStatus:
    processes: list[ProcessStatus]
    problems: list[str]  # one line per status file that could not be read
    now: float  # the file server's clock when read (this Mac's when it could not be measured)
    clock: str  # "the file server's" or "this Mac's"


def read_statuses(root: Path, now: float | None = None) -> ShareStatus:
    """Every status file under ``root``, with its age. ``now``: the file server's clock;
    by default measured with a small file of this process in the status folder (this
    Mac's clock when the share cannot be written)."""
    folder = status_folder(root)
    clock = "the file server's"
    if not folder.is_dir():
        return ShareStatus([], [], time.time() if now is None else now, clock)  # nothing to age
    if now is None:
        now, clock = measure_server_now(folder)
    processes, problems = [], []
    try:
        entries = [entry for entry in os.scandir(folder)
                   if entry.name.endswith(".json") and not entry.name.startswith(".")]
    except FileNotFoundError:
        entries = []
    except OSError as exc:
        return ShareStatus([], [f"cannot list {CONTROL_FOLDER}/{STATUS_FOLDER}/ "
                                f"({exc.strerror or exc})"], now, clock)
    for entry in sorted(entries, key=lambda entry: entry.name):
        name = entry.name[:-len(".json")]
        try:
            mtime = entry.stat().st_mtime
            content = json.loads(Path(entry.path).read_bytes())
            if not isinstance(content, dict) or not isinstance(content.get("workers"), list):
                raise ValueError("not a status file")
        except FileNotFoundError:
            continue  # its run just ended
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                "cut off, or not a status file" if isinstance(exc, ValueError) else str(exc))
            problems.append(f"{CONTROL_FOLDER}/{STATUS_FOLDER}/{entry.name}: unreadable ({reason}); "
                            "skipped")
            continue
        processes.append(ProcessStatus(name, content, max(0.0, now - mtime), dead_here(name)))
    return ShareStatus(processes, problems, now, clock)


def measure_server_now(folder: Path) -> tuple[float, str]:
    """(now on the file server's clock, "the file server's"), from a file of this process
    written in ``folder`` and removed; (this Mac's time, "this Mac's") when it cannot be."""
    probe = folder / f".clock-{os.getpid()}-{threading.get_ident()}"
    try:
        offset = server_clock_offset(probe)
    except OSError:
        return time.time(), "this Mac's"
    finally:
        remove_quietly(probe)
    return time.time() + offset, "the file server's"


@dataclass(frozen=True)
class WorkerLine:
    """One worker as the status command and the pages show it."""

    process: str  # "<host>-<pid>"
    host: str
    stage: str
    server: str  # "-" for none
    state: str  # "working", "silent", ...
    doing: str  # "working on GENERATIONS/...", "silent for 5 min (last: working on ...)"
    for_seconds: float | None  # in this state (or silent) since
    done: int
    failed: int
    images_per_hour: float | None  # this run's
    last_error: str
    silent: bool
    energy_meter: str | None = None
    notes: tuple[str, ...] = field(default=())


def worker_lines(share: ShareStatus) -> list[WorkerLine]:
    lines = []
    for process in share.processes:
        content = process.content
        started = _number(content.get("started"))
        written = _number(content.get("written"))
        # Seen from its last write when silent: nothing it said since is known.
        now = share.now if not process.silent else (written or share.now)
        blocked = content.get("blocked") if isinstance(content.get("blocked"), dict) else {}
        notes = tuple(f"blocked: {key}: {reason}" for key, reason in blocked.items())
        if content.get("stopping"):
            notes = ("stopping: finishing the jobs in flight",) + notes
        for worker in content.get("workers", []):
            if not isinstance(worker, dict):
                continue
            lines.append(_worker_line(process, content, worker, now, started, notes))
    return lines


def _worker_line(process: ProcessStatus, content: dict, worker: dict, now: float,
                 started: float | None, notes: tuple) -> WorkerLine:
    state = str(worker.get("state", "?"))
    since = _number(worker.get("since"))
    doing = state
    if state == WORKING and worker.get("job"):
        doing = f"working on {worker['job']}"
        since = _number(worker.get("job_since")) or since
        if worker.get("activity"):
            doing += f" ({worker['activity']})"
    elif worker.get("detail"):
        doing = f"{state}: {worker['detail']}"
    for_seconds = max(0.0, now - since) if since is not None else None
    done = _whole(worker.get("done"))
    elapsed = (now - started) if started is not None else None
    per_hour = done / elapsed * 3600 if done and elapsed and elapsed > 0 else None
    if process.silent:
        why = "its process is gone" if process.gone else (
            "crashed, asleep, or lost the share?")
        doing = f"silent ({why}); last said: {doing}"
        for_seconds = process.age_seconds
    return WorkerLine(
        process=f"{content.get('host', '?')}-{content.get('pid', '?')}",
        host=str(content.get("host", "?")), stage=str(content.get("stage", "?")),
        server=str(worker.get("server") or "-"), state="silent" if process.silent else state,
        doing=doing, for_seconds=for_seconds, done=done, failed=_whole(worker.get("failed")),
        images_per_hour=per_hour, last_error=str(worker.get("last_error") or ""),
        silent=process.silent,
        energy_meter=content.get("energy_meter") if isinstance(content.get("energy_meter"), str)
        else None, notes=notes)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _whole(value) -> int:
    return int(value) if isinstance(value, int) and value >= 0 else 0

