"""Files on the share and on this Mac: atomic writes, scratch names, "done" checks.

    write_atomically(path, data)   a temporary name beside ``path``, flushed, renamed in
    write_if_changed(path, data)   the same, unless ``path`` holds exactly ``data``
    write_synced(path, data)       a file written and flushed (inside a scratch folder)
    publish(scratch, target)       move a finished scratch file or folder into place, never
                                   over something already there (another worker's output)
    scratch_path(path, owner)      ``.<name>.<owner>.tmp``: hidden, beside, unique per owner
    output_exists(path)            exact-path lstat, never a listing (SMB caches listings)
    scan_inputs(folder)            the visible files below a folder, sorted
    is_busy(exc)                   an SMB "someone has it open" refusal, not a lost share
    unlink_when_free(path, ...)    delete, waiting briefly while someone has it open
    host_name()                    this Mac's name, as it names files (logs, verdicts)
    server_clock_offset(path)      the file server's clock minus this Mac's, from a file written
    default_cache_dir(environ)     this Mac's cache folder (never the share)
    read_user_text(path)           a file the user wrote, as text (InputFileError: one line)
    file_sha256(path, cache)       a file's SHA-256, remembered by (path, size, mtime_ns)

Every file drawpipe writes on the share appears under its final name only when
complete: it is written under a scratch name in the same folder (same folder: the
rename is atomic) and renamed into place. Scratch names start with a dot so that
scans skip them, and carry their owner (a worker, or host-pid) so that two Macs
never write the same scratch file, and so that a dead worker's scratch can be told
from a live one's.

A job's output must never replace another worker's (a worker whose lease lapsed
while it slept must not overwrite the result of the one that took its job over), so
``publish`` uses the first of these the file system honours, remembered per device:

    link         link(scratch, target), then unlink the scratch: EEXIST if the target
                 exists, atomically (local disks; Samba through a client that sends
                 SMB2 FileLinkInformation with ReplaceIfExists=FALSE: the server's
                 hardlink_internals refuses an existing name). Files only.
    noreplace    renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on macOS:
                 EEXIST if the target exists. Files and folders.
    rename       what is left where neither works (macOS smbfs: no hard links, and
                 RENAME_EXCL is refused with ENOTSUP when the target is absent; the
                 FUSE client smbnetfs: link EPERM, RENAME_NOREPLACE EINVAL): the target
                 is looked up (exact path) just before a plain rename, which narrows the
                 window to one round trip; a folder never replaces a non-empty folder.
"""

import ctypes
import errno
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from drawpipe.errors import InputFileError

# errno values that mean "someone else has this file open or is deleting it": SMB's
# sharing violation comes through as EBUSY, EACCES or EPERM.
BUSY_ERRNOS = frozenset({errno.EBUSY, errno.EACCES, errno.EPERM, errno.ETXTBSY})


def is_busy(exc: OSError) -> bool:
    return exc.errno in BUSY_ERRNOS


def unlink_when_free(path: Path, tries: int, pause_seconds: float) -> OSError | None:
    """Delete ``path``, waiting out an SMB client that holds it open (a delayed close,
    a reader): None when it is gone (or was already), the last refusal when it stayed
    busy for ``tries`` attempts. Any other error is raised."""
    refusal = None
    for attempt in range(tries):
        try:
            os.unlink(path)
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not is_busy(exc):
                raise
            refusal = exc
        if attempt + 1 < tries:
            time.sleep(pause_seconds)
    return refusal


def server_clock_offset(path: Path) -> float:
    """The file server's clock minus this machine's, in seconds: ``path`` (a file of this
    process's own, on the share) is written, and the mtime the server stamped is read.
    ``O_CREAT`` only: the folder must exist (never a vanished share's mount point)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"%d\n" % os.getpid())
    finally:
        os.close(fd)
    local_now = time.time()
    return os.stat(path).st_mtime - local_now


def host_name() -> str:
    """The short host name (up to the first "."), with anything outside
    [A-Za-z0-9_-] replaced by "-"; "host" if that leaves nothing."""
    short = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "-", short) or "host"


def scratch_path(output: Path, owner: str | None = None) -> Path:
    """Temporary name beside ``output``: same folder, so the final rename is atomic;
    leading dot, so scanners skip it. ``owner``: a worker's name; by default this
    host and process (two Macs, or two runs, never share a scratch name)."""
    owner = owner or f"{host_name()}-{os.getpid()}"
    return output.with_name(f".{output.name}.{owner}.tmp")


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (or the file server)."""
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def write_atomically(path: Path, data: bytes, owner: str | None = None) -> None:
    """Write ``data`` to ``path`` via a flushed scratch file and ``os.replace``.

    On any error (disk full, share gone, target busy) the scratch file is removed
    and the OSError propagates; ``path`` itself is never touched until the data is safe.
    """
    save_atomically(path, lambda scratch: write_synced(scratch, data), owner)


def save_atomically(path: Path, save: Callable[[Path], None], owner: str | None = None) -> None:
    """``save(scratch)`` writes the file (e.g. Pillow's ``Image.save``), then it is
    renamed to ``path``; on any error the scratch file is removed."""
    temporary = scratch_path(path, owner)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise


# errnos that say "this file system cannot do that", not "no" for this one call.
_UNSUPPORTED_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP,
                                 errno.EPERM, errno.EXDEV, errno.EMLINK})
# Per device (st_dev of the target's folder): the publish methods found unsupported there.
_unsupported: dict[int, set[str]] = {}
_unsupported_lock = threading.Lock()


def publish(scratch: Path, target: Path, folder: bool | None = None,
            device: int | None = None) -> str | None:
    """Move the finished ``scratch`` (a flushed file, or a folder) to ``target`` unless
    something is there already. Returns the method that published it ("link",
    "noreplace" or "rename", see above), or None when ``target`` exists: then the
    scratch is removed and the other result kept. Other OSErrors (busy, disk full,
    share gone, the scratch gone) propagate, with the scratch left as it was.

    ``folder`` (whether the scratch is a folder) and ``device`` (st_dev of the target's
    share) are looked up when not given; a caller that knows them saves two round trips
    on a share, where every one widens the window before the publish."""
    if folder is None:
        folder = scratch.is_dir()
    if device is None:
        device = os.stat(target.parent).st_dev
    with _unsupported_lock:
        unsupported = set(_unsupported.get(device, ()))
    for method in ("link", "noreplace"):
        if method in unsupported or (method == "link" and folder):
            continue
        try:
            if method == "link":
                os.link(scratch, target)
                remove_quietly(scratch)  # busy (an SMB client's delayed close): a later clean-up
            else:
                _rename_noreplace(scratch, target)
            return method
        except FileExistsError:
            remove_quietly(scratch)
            return None
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED_ERRNOS:
                raise
            with _unsupported_lock:
                _unsupported.setdefault(device, set()).add(method)
    if output_exists(target):
        remove_quietly(scratch)
        return None
    try:
        os.rename(scratch, target)
    except OSError as exc:
        if folder and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            remove_quietly(scratch)  # someone renamed theirs into place meanwhile
            return None
        raise
    return "rename"


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # Linux <stdio.h>
_RENAME_EXCL = 0x00000004  # macOS <stdio.h>, renamex_np (10.12)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _rename_noreplace(source: Path, target: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing ``target``; ENOSYS where
    this system's C library has no such call."""
    libc = _libc()
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(source), os.fsencode(target), _RENAME_EXCL)
    elif hasattr(libc, "renameat2"):
        result = libc.renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                                _RENAME_NOREPLACE)
    else:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), str(source))
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(source), None, str(target))


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly that;
    True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return True


def remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def remove_abandoned_scratch(output: Path, modified_before: float,
                             is_dead: Callable[[str], bool] = lambda owner: False) -> None:
    """Delete temporary files or folders a killed (or stalled) worker left beside ``output``.

    Called once the job's claim is ours: a scratch whose owner ``is_dead(owner)`` (the
    worker whose stale claim was taken over, a dead process of this host), or one not
    modified since ``modified_before`` (epoch seconds, a lease ago), is nobody's. One
    that is busy (SMB) stays for a later owner.
    """
    prefix = f".{output.name}."
    for scratch in output.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        owner = scratch.name[len(prefix):-len(".tmp")]
        try:
            if is_dead(owner) or scratch.stat().st_mtime < modified_before:
                remove_quietly(scratch)
        except OSError:
            pass


def make_folders_below(root: Path, folder: Path) -> None:
    """Create ``folder`` and the missing folders between it and ``root``, never ``root``
    itself (FileNotFoundError when it is gone): a vanished share must not become a
    folder tree on the local disk."""
    missing = []
    while folder != root and not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    if folder == root and not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(root))
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass


def output_exists(path: Path) -> bool:
    """Exact-path check (``lstat``), never a listing: SMB listings may be a minute old.

    False only when the path (or a folder on it) does not exist; any other failure
    (I/O error, share gone, permission) raises OSError: "cannot tell" is not "not done".
    """
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def output_exists_quietly(path: Path) -> bool:
    """``output_exists``, with "cannot tell" as False: for what is only counted or ordered."""
    try:
        return output_exists(path)
    except OSError:
        return False


def scan_inputs(folder: Path, suffixes: tuple[str, ...] = (".png",)) -> list[Path]:
    """Every file under ``folder`` with one of ``suffixes``, sorted; hidden files and
    folders (temporary names, .claims) are skipped. Missing folder: empty list.

    A listing can be a minute old on SMB; that only delays discovery (a later pass
    or --watch finds new files), never decides whether a job is done.
    """
    found = []
    for directory, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(suffixes):
                found.append(Path(directory) / name)
    return sorted(found)


def describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full writing {path}"
    if is_busy(exc):
        return (f"{exc.filename or path} is in use by someone else ({exc.strerror}); "
                "tried again on a later pass")
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: {exc.strerror}"
    return f"{exc.strerror or exc} on {exc.filename or path}"


def read_user_text(path: Path) -> str:
    """The text of a file a user wrote (payloads, recipes, prompt sets, queues, label
    vocabularies): UTF-8, a leading BOM dropped. InputFileError naming the file when it
    is missing, a folder, unreadable or not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a folder, not a file") from None
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return raw.decode("utf-8-sig")  # editors on Windows may add a BOM
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None


def default_cache_dir(environ) -> Path:
    """``$DRAWPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/drawpipe``, else
    ``~/.cache/drawpipe``; checkpoints go into its ``sam/`` folder."""
    if environ.get("DRAWPIPE_CACHE_DIR"):
        return Path(environ["DRAWPIPE_CACHE_DIR"]).expanduser()
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]).expanduser() / "drawpipe"
    return Path("~/.cache/drawpipe").expanduser()


HASH_CHUNK_BYTES = 1024 * 1024
HASH_CACHE_NAME = "sha256.json"
HASH_CACHE_VERSION = 1


class HashCache:
    """This Mac's SHA-256 of files by (absolute path, size, mtime_ns), in
    ``<cache_dir>/<name>`` (default sha256.json; a local folder, never the share: e.g.
    default_cache_dir(os.environ)). Re-hashing unchanged files then costs
    one stat each. ``save()`` writes it (atomically) when something was added; a
    missing or damaged file is an empty cache. Safe to share between threads."""

    def __init__(self, cache_dir: Path, name: str = HASH_CACHE_NAME):
        self.path = Path(cache_dir) / name
        self.changed = False
        self._lock = threading.Lock()
        entries = {}
        try:
            data = json.loads(self.path.read_bytes())
            if isinstance(data, dict) and data.get("version") == HASH_CACHE_VERSION:
                entries = data.get("files") if isinstance(data.get("files"), dict) else {}
        except (OSError, ValueError):
            pass
        self.entries: dict[str, list] = entries  # path -> [size, mtime_ns, sha256]

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        entry = self.entries.get(str(path))
        if entry and entry[0] == size and entry[1] == mtime_ns:
            return entry[2]
        return None

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            if self.entries.get(str(path)) != [size, mtime_ns, sha256]:
                self.entries[str(path)] = [size, mtime_ns, sha256]
                self.changed = True

    def save(self) -> None:
        with self._lock:
            if not self.changed:
                return
            data = json.dumps({"version": HASH_CACHE_VERSION, "files": self.entries},
                              separators=(",", ":")).encode()
            self.changed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, data)
        except OSError:
            pass  # a cache that cannot be saved is only slower

    def __enter__(self) -> "HashCache":
        return self

    def __exit__(self, *exc_info) -> None:
        self.save()


def file_sha256(path: Path, cache: HashCache | None = None) -> str:
    """Hex SHA-256 of the file's bytes. With ``cache``, a file whose (size, mtime_ns)
    match the cached entry is not read (one stat). OSError when it cannot be read."""
    path = Path(path).absolute()
    if cache is not None:
        stat = os.stat(path)
        known = cache.get(path, stat.st_size, stat.st_mtime_ns)
        if known:
            return known
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        before = os.fstat(stream.fileno())
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    hex_digest = digest.hexdigest()
    if cache is not None:
        # The stat of the open file: a file replaced after it was read gets a new entry.
        cache.put(path, before.st_size, before.st_mtime_ns, hex_digest)
    return hex_digest
