"""The shared folder's identity: is the root still the folder this run started on?

A share can vanish under a running job: unmounted, its server gone, the network
down. Worse, it can be unmounted while its mount-point folder stays (a share mounted
onto a folder in the home directory): the root path is then a plain, empty folder on
the local disk, and whatever is written there never reaches the other Macs. So at
start a run notes the root's device id (``st_dev``) and creates a marker file
``<root>/.claims/.run-<host>-<pid>-<token>``; ``check()`` stats both, and the share is
lost when the root cannot be stat-ed, lives on another device, or the marker is gone.

Nothing here ever creates the root or a folder above ``.claims``: a lost share must
never turn into folders on the local disk.

A file that someone else has open (SMB's sharing rules: EBUSY, EACCES, EPERM, a
"delete pending" name) is not a lost share; see ``files.is_busy``.
"""

import functools
import os
import secrets
import threading
import time
import uuid
from pathlib import Path

from drawpipe.engine.claims import dead_here
from drawpipe.errors import ShareLost
from drawpipe.files import unlink_when_free
from drawpipe.layout import CLAIMS_FOLDER

MARKER_PREFIX = ".run-"


@functools.cache
def this_machine() -> str:
    """This machine's hardware address (as uuid1 uses it), written into its run markers."""
    return f"{uuid.getnode():012x}"


class ShareGuard:
    """The identity of ``root`` as it was when ``establish()`` ran.

    ``check()`` is cheap (two ``stat`` calls) and safe from any thread.
    """

    # The marker is rewritten this often, so that another run's clean-up (markers of
    # runs killed long ago) never takes a live run's marker for an abandoned one.
    REFRESH_SECONDS = 3600.0
    ABANDONED_SECONDS = 24 * 3600.0

    def __init__(self, root: Path, run_name: str):
        self.root = Path(root)
        self.marker = self.root / CLAIMS_FOLDER / f"{MARKER_PREFIX}{run_name}-{secrets.token_hex(4)}"
        self.device: int | None = None
        self._content = b""
        self._refreshed_at = 0.0
        self._lock = threading.Lock()

    def establish(self) -> None:
        """Note the root's device and create the marker (and ``.claims`` under the
        existing root). Raises OSError when the root is missing or not writable."""
        self.device = os.stat(self.root).st_dev
        try:
            os.mkdir(self.root / CLAIMS_FOLDER)
        except FileExistsError:
            pass
        # Which machine wrote it: two Macs of one host name must never take each
        # other's live runs for dead ones (remove_abandoned_markers).
        self._content = f"{os.getpid()} {time.time():.0f} {this_machine()}\n".encode()
        fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, self._content)
        finally:
            os.close(fd)
        self._refreshed_at = time.monotonic()
        self.remove_abandoned_markers()

    def remove_abandoned_markers(self) -> None:
        """Delete the markers of dead runs of this machine (claims.dead_here, and the
        machine written in the marker), and any not refreshed for a day (a run of
        another Mac, asleep or killed)."""
        # Ages by the file server's clock: our marker's mtime was stamped at establish().
        try:
            now = os.stat(self.marker).st_mtime
            markers = list((self.root / CLAIMS_FOLDER).glob(MARKER_PREFIX + "*"))
        except OSError:
            return  # the share is failing: the run's own checks will say so
        for marker in markers:
            try:
                if (now - marker.stat().st_mtime > self.ABANDONED_SECONDS
                        or dead_here(marker.name[len(MARKER_PREFIX):])
                        and marker.read_bytes().split()[2:3] == [this_machine().encode()]):
                    marker.unlink()
            except OSError:
                pass  # someone else's clean-up, or busy: a later run tries again

    def lost_reason(self) -> str | None:
        """Why the share is lost, or None while it is the one the run started on."""
        if self.device is None:
            return None  # not established (dry run): nothing to compare
        try:
            device = os.stat(self.root).st_dev
        except OSError as exc:
            return exc.strerror or str(exc)
        if device != self.device:
            return f"{self.root} is now on another device: the share was unmounted"
        try:
            os.stat(self.marker)
        except FileNotFoundError:
            return f"its marker {self.marker.name} in {CLAIMS_FOLDER}/ is gone"
        except OSError as exc:
            return exc.strerror or str(exc)
        self._refresh()
        return None

    def check(self) -> None:
        """Raise ShareLost unless the root is still the share the run started on."""
        reason = self.lost_reason()
        if reason is not None:
            raise ShareLost(self.root, reason)

    def _refresh(self) -> None:
        if time.monotonic() - self._refreshed_at < self.REFRESH_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._refreshed_at < self.REFRESH_SECONDS:
                return
            self._refreshed_at = time.monotonic()
            try:
                # Rewriting the bytes (never O_CREAT) has the file server stamp a new
                # mtime; a marker that is gone stays gone.
                fd = os.open(self.marker, os.O_WRONLY)
                try:
                    os.pwrite(fd, self._content, 0)
                finally:
                    os.close(fd)
            except OSError:
                pass  # busy: the next check tries again, long before anyone's clean-up

    def close(self) -> None:
        """Remove the marker (the run is over)."""
        if self.device is None:
            return
        try:
            # SMB: a client's delayed close keeps it busy for a moment.
            unlink_when_free(self.marker, tries=3, pause_seconds=0.2)
        except OSError:
            pass  # the share is failing, and the run is ending anyway
