"""Work claims on a shared folder, safe across processes and machines.

A worker owns a job while ``<root>/.claims/<stage>/<job key>.claim`` exists with
its token inside. The file is created with ``O_CREAT | O_EXCL``, which is atomic
on local disks, SMB and NFSv3+; ``flock``, hard links and SQLite are all
unreliable on macOS SMB mounts, so none is used.

- Heartbeat: while working, the owner rewrites the claim's bytes in place every
  few seconds; the *file server* sets the new mtime.
- Lease: a claim whose mtime is older than ``lease_seconds`` is stale (its owner
  crashed, slept or lost the share). Age is judged on the file server's clock:
  "now" is the mtime of a file this worker has just written on the share, so
  two machines' clocks are never compared.
- Take-over: contenders for a stale claim race for a take-over lock (``O_EXCL``
  again, holding its owner's token); the winner checks the claim is still the stale
  one, deletes it and creates a fresh claim with ``O_EXCL``. Renaming the stale
  claim away instead would let a slow contender move a claim that another had just
  made fresh. Only the lock's owner removes it (token checked), so a worker that
  stalled past the lease inside a take-over cannot remove the lock of the worker
  that broke its stale one.
- SMB's sharing rules: a file another client has open cannot be deleted or
  replaced (EBUSY, EACCES, EPERM: ``is_busy``), or its name lingers "delete
  pending" (``stat`` fails, an exclusive create collides). Releasing a claim or a
  lock that is busy is retried later (``retry_releases``); a take-over whose stale
  claim stays busy gives up for this pass and says so: ``try_take`` answers
  ``HeldOpen`` with the holder it waits for (a worker that stalled while its
  heartbeat had the claim open keeps it so until it wakes up or the server drops
  its session). ``try_claim`` raises other such errors: the caller tries that job
  again on a later pass. The lease (minutes) stays far above the
  second or two that another client's open handle can hide a new mtime.
- Dead workers: a worker is named ``<host>-<pid>-<index>``; one of this host whose
  process is gone is known dead (``dead_here``), and its clock file and run marker
  (share.py checks the machine written in it: two Macs may share a host name) are
  removed at once. Of another host nothing is known (a Mac asleep is not dead): its
  files go after a day.
- ``Heartbeat``: one thread per process refreshes every claim the process holds and
  reports a claim found no longer ours.
- Nothing here creates a folder above ``<root>/.claims/<stage>``: when the share is
  unmounted and its mount point remains, a claim fails instead of landing on the
  local disk (``prepare`` creates the stage folder only under an existing
  ``.claims``).
"""

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drawpipe.files import (host_name, is_busy, make_folders_below, server_clock_offset,
                            unlink_when_free)
from drawpipe.layout import CLAIMS_FOLDER



@dataclass(frozen=True)
class HeldOpen:
    """A stale claim that could not be deleted for a take-over: someone has it open."""

    holder: dict  # the stale claim's JSON: worker, host, pid, started_utc
    age_seconds: float  # since its last heartbeat, by the file server's clock
    refusal: OSError  # what the share answered the delete

    def describe(self) -> str:
        """``"worker mac-12-0 (host mac, pid 12, silent for 300 s)"``."""
        holder = self.holder
        return (f"worker {holder.get('worker', '?')} (host {holder.get('host', '?')}, "
                f"pid {holder.get('pid', '?')}, silent for {self.age_seconds:.0f} s)")


@dataclass
class Claim:
    path: Path
    token: str
    content: bytes
    # Set once the claim is found no longer ours (by the heartbeat, or a check before a
    # request): no request is sent for the job any more.
    lost: bool = False
    # The worker whose stale claim this one replaced (its scratch files of this job are
    # removed whatever their age: its result can never be published).
    taken_over_from: str | None = None


class ClaimStore:
    """Claims of one stage under one root, for one worker.

    ``worker``: a name unique among live workers, e.g. ``macmini-4242-1``.
    """

    # How long a measured offset between the local and the file server's clock is
    # trusted: re-measuring costs a write on the share, clocks drift slowly.
    CLOCK_REFRESH_SECONDS = 10.0

    def __init__(self, root: Path, stage: str, worker: str, lease_seconds: float,
                 read_only: bool = False):
        self.folder = Path(root) / CLAIMS_FOLDER / stage
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.read_only = read_only  # --dry-run: never write to the share, judge by local time
        self._clock_path = self.folder / f".clock-{worker}"
        self._clock_offset_seconds = 0.0
        self._clock_measured_at = None
        self._clock_lock = threading.Lock()  # server_now serves worker threads and plan()
        self._unreleased: list[tuple[Path, bytes]] = []  # (file, our content): busy at release

    # Live workers rewrite their clock file every few seconds while busy; one this
    # old belongs to a worker that was killed.
    ABANDONED_CLOCK_SECONDS = 24 * 3600

    def prepare(self) -> None:
        """Create ``<root>/.claims/<stage>`` under the existing root (never the root
        itself), clean up abandoned clock files. Call before ``try_claim``. Raises
        OSError when the root is missing or not writable."""
        for folder in (self.folder.parent, self.folder):
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
        self._clock_measured_at = None
        self.remove_abandoned_clocks()

    def remove_abandoned_clocks(self) -> None:
        """Delete the clock files of dead workers of this host, and any a day old."""
        now = self.server_now()
        for clock in self.folder.glob(".clock-*"):
            try:
                if (dead_here(clock.name[len(".clock-"):])
                        or now - clock.stat().st_mtime > self.ABANDONED_CLOCK_SECONDS):
                    clock.unlink()
            except OSError:
                pass  # gone, or busy: a later run cleans it

    def claim_path(self, key: str) -> Path:
        """``key`` is the job's output path relative to the root, with "/" separators."""
        return self.folder / (key + ".claim")

    def server_now(self) -> float:
        """The file server's current time (epoch seconds), from a file just written there."""
        local_now = time.time()
        if self.read_only:
            return local_now
        with self._clock_lock:
            if self._clock_measured_at is None or (
                local_now - self._clock_measured_at > self.CLOCK_REFRESH_SECONDS
            ):
                # O_CREAT only inside the stage folder: never on a vanished share.
                self._clock_offset_seconds = server_clock_offset(self._clock_path)
                local_now = time.time()
                self._clock_measured_at = local_now
            return local_now + self._clock_offset_seconds

    def close(self) -> None:
        self.retry_releases(attempts=5, pause_seconds=0.2)
        try:
            os.unlink(self._clock_path)
        except OSError:
            pass

    def try_claim(self, key: str) -> Claim | None:
        """Claim job ``key``; None when another live worker holds it, or when its stale
        claim cannot be deleted now (see ``try_take``)."""
        taken = self.try_take(key)
        return taken if isinstance(taken, Claim) else None

    def try_take(self, key: str) -> Claim | HeldOpen | None:
        """Claim job ``key``: the Claim; None when another live worker holds it; HeldOpen
        when its claim is stale but someone keeps it open (SMB), so it cannot be taken
        over now.

        Raises OSError when the claim cannot be made or judged (busy files on SMB,
        a failing share): the caller decides whether the share is lost or the job
        waits for a later pass.
        """
        path = self.claim_path(key)
        make_folders_below(self.folder, path.parent)  # never the stage folder itself
        claim = self._try_create(path)
        if claim is not None:
            return claim
        try:
            seen = path.read_bytes()
            age_seconds = self.server_now() - path.stat().st_mtime
        except FileNotFoundError:
            # Released or taken over between our create and our look: try once more.
            return self._try_create(path)
        if age_seconds <= self.lease_seconds:
            return None
        return self._take_over(path, seen)

    def _try_create(self, path: Path) -> Claim | None:
        token = secrets.token_hex(8)
        content = json.dumps({
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": self.worker,
            "token": token,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }).encode() + b"\n"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return Claim(path, token, content)

    def _take_over(self, path: Path, seen: bytes) -> Claim | HeldOpen | None:
        """Replace the stale claim whose content was ``seen``; one contender wins.

        Contenders first create a take-over lock with O_EXCL, so only one of them
        ever deletes the claim; the winner checks again, under the lock, that the
        claim is still the stale one it judged, so a fresh claim is never removed.
        A busy claim or lock (SMB) ends this try: the next pass tries again (HeldOpen
        when the stale claim itself cannot be deleted).
        """
        lock = path.with_name(path.name + ".takeover")
        token = self._try_lock(lock)
        if token is None:
            return None
        try:
            try:
                current = path.read_bytes()
                age_seconds = self.server_now() - path.stat().st_mtime
            except FileNotFoundError:
                return self._try_create(path)
            if current != seen or age_seconds <= self.lease_seconds:
                return None  # taken over or refreshed since we looked
            refusal = unlink_when_free(path, self.BUSY_RETRIES, self.BUSY_PAUSE_SECONDS)
            if refusal is not None:
                # Someone keeps it open: the next pass tries again.
                return HeldOpen(_holder_of(current), age_seconds, refusal)
            claim = self._create_soon(path)
            if claim is not None:
                claim.taken_over_from = _worker_of(seen)
            return claim
        finally:
            self._remove_if_ours(lock, token)

    # Other contenders read a claim for milliseconds; on SMB their open handle refuses a
    # delete (EBUSY) or leaves the name "delete pending" for a moment. The take-over
    # winner (holding the lock) waits that out briefly rather than give up the pass.
    BUSY_RETRIES = 10
    BUSY_PAUSE_SECONDS = 0.1

    def _create_soon(self, path: Path) -> Claim | None:
        """Create the claim just deleted; a name still "delete pending" (an exclusive
        create collides while ``stat`` says it is gone) is waited out briefly."""
        for attempt in range(self.BUSY_RETRIES):
            try:
                claim = self._try_create(path)
            except OSError as exc:
                if not is_busy(exc):
                    raise
                claim = None
            else:
                if claim is not None:
                    return claim
                try:
                    os.stat(path)
                    return None  # a real claim: another worker created it first
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if not is_busy(exc):
                        raise
            time.sleep(self.BUSY_PAUSE_SECONDS)
        return None

    def _try_lock(self, lock: Path) -> bytes | None:
        """Our token when we now hold the take-over lock ``lock``, else None."""
        token = secrets.token_hex(8).encode()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fd = None
        except OSError as exc:
            if is_busy(exc):
                return None  # a lock being deleted ("delete pending"): next pass
            raise
        if fd is not None:
            try:
                os.write(fd, token)
            finally:
                os.close(fd)
            return token
        try:
            age_seconds = self.server_now() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            if is_busy(exc):
                return None
            raise
        if age_seconds > self.lease_seconds:
            # Its holder died (or stalled past the lease) within a take-over. Only one
            # rename of it can succeed; the next pass competes for the lock again. A
            # stalled holder that wakes up finds another token and leaves the lock.
            graveyard = lock.with_name(f"{lock.name}.stale-{self.worker}-{secrets.token_hex(4)}")
            try:
                os.rename(lock, graveyard)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if is_busy(exc):
                    return None
                raise
            self._unlink_or_retry_later(graveyard, None)
        return None

    def _remove_if_ours(self, path: Path, content: bytes) -> None:
        """Delete ``path`` if it still holds ``content``; if busy, retry later."""
        try:
            if path.read_bytes() != content:
                return  # someone else's now
        except FileNotFoundError:
            return
        except OSError as exc:
            if not is_busy(exc):
                raise
            self._unreleased.append((path, content))  # unread, so never deleted blind
            return
        self._unlink_or_retry_later(path, content)

    def _unlink_or_retry_later(self, path: Path, content: bytes | None) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not is_busy(exc):
                raise
            # Someone has it open (SMB sharing violation): ``retry_releases`` tries
            # again on the next pass and when the store closes.
            self._unreleased.append((path, content))

    def retry_releases(self, attempts: int = 1, pause_seconds: float = 0.0) -> None:
        """Delete the claims and locks a busy share kept from ``release``/take-over,
        if they still hold our content; those still busy stay listed (they go stale
        after a lease if never deleted)."""
        for attempt in range(attempts):
            pending, self._unreleased = self._unreleased, []
            for path, content in pending:
                try:
                    if content is None:
                        self._unlink_or_retry_later(path, None)
                    else:
                        self._remove_if_ours(path, content)
                except OSError:
                    pass  # not busy, not gone: nothing more this store can do
            if not self._unreleased:
                return
            if attempt + 1 < attempts:
                time.sleep(pause_seconds)

    def heartbeat(self, claim: Claim) -> bool:
        """Refresh the claim's mtime; False when it is no longer ours (taken over, or
        gone: the caller tells a lost share from a take-over). Raises OSError when the
        claim cannot be read or written now (busy): try again next beat."""
        try:
            fd = os.open(claim.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if os.read(fd, len(claim.content) + 1) != claim.content:
                return False
            # Rewriting the bytes (not utime) makes the file server stamp the mtime.
            os.pwrite(fd, claim.content, 0)
        finally:
            os.close(fd)
        return True

    def still_ours(self, claim: Claim) -> bool:
        """Whether the claim file still holds our content. Raises OSError when it cannot
        be read now (busy, share failing)."""
        try:
            return claim.path.read_bytes() == claim.content
        except FileNotFoundError:
            return False

    def release(self, claim: Claim) -> None:
        """Delete the claim if it is still ours (never someone else's after a take-over).
        A busy claim (SMB) is deleted later by ``retry_releases``; other errors raise."""
        self._remove_if_ours(claim.path, claim.content)

    def holder(self, key: str) -> dict | None:
        """Who holds job ``key`` (the claim's JSON plus ``age_seconds`` and ``stale``), or None."""
        path = self.claim_path(key)
        try:
            owner = json.loads(path.read_bytes())
            age_seconds = self.server_now() - path.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return None
        owner["age_seconds"] = age_seconds
        owner["stale"] = age_seconds > self.lease_seconds
        return owner


def dead_here(name: str) -> bool:
    """Whether ``name`` (a worker ``<host>-<pid>-<index>``, or a run ``<host>-<pid>-<token>``)
    belongs to this host and its process is gone. False whenever that is not known: another
    host, a name of another form, a process that lives (or whose pid was reused)."""
    host, _, rest = name.rpartition("-")
    host, _, pid = host.rpartition("-")
    if not host or not pid.isdigit() or not rest or host != host_name():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # it exists, someone else's (EPERM)
    return False


def _holder_of(content: bytes) -> dict:
    """A claim's JSON (worker, host, pid, started_utc); {} when it cannot be read as ours."""
    try:
        holder = json.loads(content)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _worker_of(content: bytes) -> str | None:
    """The worker named in a claim's content, or None when it cannot be read as ours."""
    worker = _holder_of(content).get("worker")
    return worker if isinstance(worker, str) else None


class Heartbeat:
    """One thread refreshing every claim this process holds."""

    def __init__(self, interval_seconds: float, on_lost: Callable[[ClaimStore, Claim], None]):
        self._interval_seconds = interval_seconds
        self._on_lost = on_lost
        self._held: dict[int, tuple[ClaimStore, Claim]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def hold(self, store: ClaimStore, claim: Claim) -> None:
        with self._lock:
            self._held[id(claim)] = (store, claim)

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(id(claim), None)

    def release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for store, claim in held:
            try:
                store.release(claim)
            except OSError:
                pass  # a failing share: the claim goes stale after its lease

    def _loop(self):
        while not self._stop.wait(self._interval_seconds):
            with self._lock:
                held = list(self._held.values())
            for store, claim in held:
                try:
                    alive = store.heartbeat(claim)
                except OSError:
                    alive = True  # busy or a hiccup; try again next beat
                if not alive:
                    self.drop(claim)
                    self._on_lost(store, claim)
