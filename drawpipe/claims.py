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
  again); the winner checks the claim is still the stale one, deletes it and
  creates a fresh claim with ``O_EXCL``. Renaming the stale claim away instead
  would let a slow contender move a claim that another had just made fresh.
"""

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

CLAIMS_FOLDER = ".claims"


@dataclass
class Claim:
    path: Path
    token: str
    content: bytes


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

    # Live workers rewrite their clock file every few seconds while busy; one this
    # old belongs to a worker that was killed.
    ABANDONED_CLOCK_SECONDS = 24 * 3600

    def prepare(self) -> None:
        """Create the claims folder; raises OSError when the share is not writable."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._clock_measured_at = None
        now = self.server_now()
        for clock in self.folder.glob(".clock-*"):
            try:
                if now - clock.stat().st_mtime > self.ABANDONED_CLOCK_SECONDS:
                    clock.unlink()
            except FileNotFoundError:
                pass

    def claim_path(self, key: str) -> Path:
        """``key`` is the job's output path relative to the root, with "/" separators."""
        return self.folder / (key + ".claim")

    def server_now(self) -> float:
        """The file server's current time (epoch seconds), from a file just written there."""
        local_now = time.time()
        if self.read_only:
            return local_now
        if self._clock_measured_at is None or (
            local_now - self._clock_measured_at > self.CLOCK_REFRESH_SECONDS
        ):
            with open(self._clock_path, "wb") as clock:
                clock.write(b"%d\n" % os.getpid())
            local_now = time.time()
            self._clock_offset_seconds = os.stat(self._clock_path).st_mtime - local_now
            self._clock_measured_at = local_now
        return local_now + self._clock_offset_seconds

    def close(self) -> None:
        try:
            os.unlink(self._clock_path)
        except OSError:
            pass

    def try_claim(self, key: str) -> Claim | None:
        """Claim job ``key``; None when another live worker holds it."""
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
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

    def _take_over(self, path: Path, seen: bytes) -> Claim | None:
        """Replace the stale claim whose content was ``seen``; one contender wins.

        Contenders first create a take-over lock with O_EXCL, so only one of them
        ever deletes the claim; the winner checks again, under the lock, that the
        claim is still the stale one it judged, so a fresh claim is never removed.
        """
        lock = path.with_name(path.name + ".takeover")
        if not self._try_lock(lock):
            return None
        try:
            try:
                current = path.read_bytes()
                age_seconds = self.server_now() - path.stat().st_mtime
            except FileNotFoundError:
                return self._try_create(path)
            if current != seen or age_seconds <= self.lease_seconds:
                return None  # taken over or refreshed since we looked
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return self._try_create(path)
        finally:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass

    def _try_lock(self, lock: Path) -> bool:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            pass
        try:
            age_seconds = self.server_now() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age_seconds > self.lease_seconds:
            # Its holder died within the milliseconds a take-over lasts. Only one
            # rename of it can succeed; the next pass competes for the lock again.
            graveyard = lock.with_name(f"{lock.name}.stale-{self.worker}-{secrets.token_hex(4)}")
            try:
                os.rename(lock, graveyard)
                os.unlink(graveyard)
            except FileNotFoundError:
                pass
        return False

    def heartbeat(self, claim: Claim) -> bool:
        """Refresh the claim's mtime; False when it is no longer ours (taken over)."""
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
        try:
            return claim.path.read_bytes() == claim.content
        except FileNotFoundError:
            return False

    def release(self, claim: Claim) -> None:
        """Delete the claim if it is still ours (never someone else's after a take-over)."""
        if self.still_ours(claim):
            try:
                os.unlink(claim.path)
            except FileNotFoundError:
                pass

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
