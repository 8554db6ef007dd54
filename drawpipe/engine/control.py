"""The control files on the share: pause, drain and priority, read by every worker.

    .drawpipe/pause              while it exists no worker starts a job: those in flight
                                 finish (their claims released) and every worker waits;
                                 deleting it resumes. Its content (JSON: by, at_utc,
                                 reason) is only shown.
    .drawpipe/drain/<host>       that Mac's runs finish what is in flight and exit 0
    .drawpipe/drain/<host>-<pid> the same for one run (the status command names them)
    .drawpipe/priority.json      {"nations": [...], "categories": [...], "remakes_first": true}:
                                 jobs of those nations, then categories (in the order
                                 listed), and re-makes (an output that is there but stale:
                                 a rejected take) first; the plan's order otherwise

    ControlFiles(root, host, pid, warn)   a worker's reader: ``read()`` (a Control, cached
                                          for a second: it is asked before every claim)
    Control                               paused (a PauseNote or None), drained (the file's
                                          name or None), priority (a Priority)
    Priority                              ``order(jobs, is_remake)``; ``version`` tells a
                                          changed file from the one a pass was sorted by
    write_pause / remove_pause / write_drain / remove_drain / read_control
                                          what python -m drawpipe.status writes and shows

Bad input never stops a run: a priority file that is not what it should be is said in
one line (once per version of the file) and the plan's order is kept; a pause or drain
file that cannot be looked at (a permission, SMB's "busy") is said once and taken as
absent, so the run goes on. The files are written atomically (files.write_atomically)
and only ever looked at by their exact paths (a listing may be a minute old on SMB).
"""

import getpass
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from drawpipe.files import host_name, make_folders_below, unlink_when_free, write_atomically
from drawpipe.layout import (CONTROL_FOLDER, DRAIN_FOLDER, PAUSE_FILE, PRIORITY_FILE,
                             control_folder, drain_path, image_key, pause_path, priority_path)

# Control files are looked at before every claim; a second's cache keeps a pass that
# skips many jobs claimed by others from stat-ing them for each (bench/status.py).
CONTROL_CACHE_SECONDS = 1.0
PRIORITY_KEYS = {"nations": list, "categories": list, "remakes_first": bool}


@dataclass(frozen=True)
class PauseNote:
    """Who paused the share and why, as the pause file says (empty when unreadable)."""

    by: str = ""
    at_utc: str = ""
    reason: str = ""

    def describe(self) -> str:
        """``"paused by alice@mac-a at 2026-01-10 02:14 UTC: new model"``."""
        text = "paused"
        if self.by:
            text += f" by {self.by}"
        if self.at_utc:
            text += f" at {self.at_utc[:16].replace('T', ' ')} UTC"
        return text + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class Priority:
    """What to do first. ``version``: (mtime_ns, size) of the file it came from, None
    without one; ``problem``: why the file was not used (then nothing is first)."""

    nations: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    remakes_first: bool = False
    version: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.nations or self.categories or self.remakes_first)

    def describe(self) -> str:
        """``"first: re-makes, nations Japan, Peru, categories working"``."""
        parts = (["re-makes"] if self.remakes_first else []) + (
            [f"nation{'s' if len(self.nations) > 1 else ''} {', '.join(self.nations)}"]
            if self.nations else []) + (
            [f"categor{'ies' if len(self.categories) > 1 else 'y'} {', '.join(self.categories)}"]
            if self.categories else [])
        return "first: " + "; ".join(parts) if parts else "the plan's order"

    def order(self, jobs: list, is_remake: Callable[[object], bool]) -> list:
        """``jobs`` (engine Jobs) with the first ones first, the plan's order kept
        within each rank. ``is_remake(job)``: its output is there but stale (asked
        only when re-makes come first)."""
        if self.empty:
            return list(jobs)
        nations = {name.casefold(): rank for rank, name in enumerate(self.nations)}
        categories = {name.casefold(): rank for rank, name in enumerate(self.categories)}

        def rank(numbered):
            number, job = numbered
            parts = (image_key(job.key) or "").split("/")
            nation = parts[0].casefold() if len(parts) >= 2 else ""
            category = parts[1].casefold() if len(parts) >= 3 else ""
            remake = 0 if self.remakes_first and is_remake(job) else 1
            return (remake, nations.get(nation, len(nations)),
                    categories.get(category, len(categories)), number)

        return [job for _, job in sorted(enumerate(jobs), key=rank)]


@dataclass(frozen=True)
class Control:
    paused: PauseNote | None = None
    drained: str | None = None  # the drain file that names this run ("mac-a" or "mac-a-4242")
    priority: Priority = field(default_factory=Priority)


def parse_priority(data: bytes, where: str) -> Priority:
    """A priority file's content; ValueError with one line saying what is wrong."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f'{where} must be an object like {{"nations": ["Japan"], '
                         '"categories": ["working"], "remakes_first": true}')
    unknown = sorted(set(value) - set(PRIORITY_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}' (known: "
                         f"{', '.join(PRIORITY_KEYS)})")
    for key, kind in PRIORITY_KEYS.items():
        if key not in value:
            continue
        if not isinstance(value[key], kind) or (
                kind is list and not all(isinstance(item, str) for item in value[key])):
            what = "a list of names" if kind is list else "true or false"
            raise ValueError(f"{where}: '{key}' must be {what}")
    return Priority(tuple(value.get("nations", ())), tuple(value.get("categories", ())),
                    value.get("remakes_first", False))


class ControlFiles:
    """One process's reader of the control files (thread-safe). ``warn(line)`` is told
    about bad input, each line once."""

    def __init__(self, root: Path, host: str, pid: int, warn: Callable[[str], None],
                 cache_seconds: float = CONTROL_CACHE_SECONDS):
        self.root = Path(root)
        self.drain_names = (host, f"{host}-{pid}")
        self.warn = warn
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._control = Control()
        self._priority = Priority()
        self._said: set[str] = set()

    def read(self) -> Control:
        """The control files as they are now (at most ``cache_seconds`` old)."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.cache_seconds:
                self._control = Control(self._paused(), self._drained(), self._read_priority())
                self._read_at = now
            return self._control

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.warn(line)

    def _look(self, path: Path) -> os.stat_result | None:
        """``stat`` of ``path``: None when absent, or when it cannot be looked at (said once)."""
        try:
            return os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._say(f"warning: cannot look at {path} ({exc.strerror or exc}); going on as if "
                      "it were not there")
            return None

    def _paused(self) -> PauseNote | None:
        path = pause_path(self.root)
        if self._look(path) is None:
            return None
        return read_pause_note(path)

    def _drained(self) -> str | None:
        for name in self.drain_names:
            if self._look(drain_path(self.root, name)) is not None:
                return name
        return None

    def _read_priority(self) -> Priority:
        path = priority_path(self.root)
        found = self._look(path)
        if found is None:
            self._priority = Priority()
            return self._priority
        version = (found.st_mtime_ns, found.st_size)
        if self._priority.version == version:
            return self._priority  # unchanged: not read again
        try:
            priority = parse_priority(path.read_bytes(), str(path))
        except FileNotFoundError:
            return Priority()
        except OSError as exc:
            self._say(f"warning: cannot read {path} ({exc.strerror or exc}); keeping the plan's "
                      "order")
            return self._priority  # busy for a moment: the last one read still rules
        except ValueError as exc:
            priority = Priority(problem=str(exc))
            self._say(f"warning: {exc}; keeping the plan's order until it is fixed")
        self._priority = Priority(priority.nations, priority.categories, priority.remakes_first,
                                  version, priority.problem)
        return self._priority


def read_pause_note(path: Path) -> PauseNote:
    """What a pause file says; an empty note when it cannot be read or parsed (the file
    being there is what pauses)."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return PauseNote()
    if not isinstance(value, dict):
        return PauseNote()
    return PauseNote(*(str(value.get(key, "")) for key in ("by", "at_utc", "reason")))


# ---------------------------------------------------------------------- writing them


def write_pause(root: Path, reason: str = "", by: str | None = None) -> Path:
    path = pause_path(root)
    make_folders_below(Path(root), path.parent)  # never the root itself: see files.py
    note = {"by": by or f"{_user()}@{host_name()}",
            "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason}
    write_atomically(path, json.dumps(note).encode() + b"\n")
    return path


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor the password database
        return "someone"


def remove_pause(root: Path) -> bool:
    """Delete the pause file; False when there was none. OSError when it stays busy."""
    return _remove(pause_path(root))


def write_drain(root: Path, name: str) -> Path:
    """The drain file of ``name``, a host or ``<host>-<pid>`` (ValueError for a name that
    cannot be a file name)."""
    if not name or "/" in name or name.startswith(".") or "\\" in name:
        raise ValueError(f"{name!r} is not a host name (nor <host>-<pid>)")
    path = drain_path(root, name)
    make_folders_below(Path(root), path.parent)  # never the root itself: see files.py
    write_atomically(path, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()).encode())
    return path


def remove_drain(root: Path, name: str) -> bool:
    return _remove(drain_path(root, name))


def _remove(path: Path) -> bool:
    if not path.exists():
        return False
    refusal = unlink_when_free(path, tries=10, pause_seconds=0.2)
    if refusal is not None:
        raise refusal
    return True


@dataclass(frozen=True)
class ShareControl:
    """What the control files say, for the status command and pages."""

    paused: PauseNote | None
    drained: tuple[str, ...]  # hosts and runs with a drain file
    priority: Priority
    problems: tuple[str, ...]

    def lines(self) -> list[str]:
        lines = []
        if self.paused is not None:
            lines.append(f"{self.paused.describe()} ({CONTROL_FOLDER}/{PAUSE_FILE}; resume: "
                         "python -m drawpipe.status --resume)")
        if self.drained:
            lines.append(f"draining: {', '.join(self.drained)} ({CONTROL_FOLDER}/{DRAIN_FOLDER}/; "
                         "python -m drawpipe.status --undrain NAME before their next run)")
        if not self.priority.empty:
            lines.append(f"priority ({CONTROL_FOLDER}/{PRIORITY_FILE}): {self.priority.describe()}")
        return lines + list(self.problems)


def read_control(root: Path) -> ShareControl:
    """The control files of ``root`` as they are (a listing of drain/: for display only)."""
    problems = []
    pause = pause_path(root)
    paused = read_pause_note(pause) if pause.exists() else None
    try:
        drained = tuple(sorted(entry.name for entry in os.scandir(control_folder(root) / DRAIN_FOLDER)
                               if not entry.name.startswith(".")))
    except OSError:
        drained = ()
    priority = Priority()
    path = priority_path(root)
    try:
        priority = parse_priority(path.read_bytes(), str(path.relative_to(root)))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        problems.append(f"priority file not used: {exc}")
    return ShareControl(paused, drained, priority, tuple(problems))

