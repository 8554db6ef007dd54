"""Official Segment Anything checkpoints: where they live, download with resume, SHA-256.

    OFFICIAL_CHECKPOINTS     model type -> CheckpointFile (file name, URL, SHA-256)
    CheckpointFile.address(mirror)  its URL, or the same file name under a mirror
    download_checkpoint(...) fetch a file with a progress bar, resuming a broken
                             download, verifying its SHA-256 before it gets its name
    sha256_of(path)          hex SHA-256 of a file

The cache folder they are downloaded into is files.default_cache_dir's ``sam/``.

    CheckpointError (UsageError)       a checkpoint is missing, unreadable, or wrong
    └── DownloadFailed                 the download did not finish or did not verify

A download is written to ``<name>.part`` beside its destination and renamed only
after its SHA-256 matched, so a file under the checkpoint's own name is always
whole. Running the download again resumes the ``.part`` file with an HTTP Range
request.
"""

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from drawpipe.errors import DownloadFailed, network_reason

# Small enough that a broken connection loses little of what it had brought.
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class CheckpointFile:
    file_name: str
    url: str
    sha256: str | None  # None: not published; the download is then not verified

    def address(self, mirror: str | None = None) -> str:
        """The official URL, or the same file name under ``mirror`` (--download-from)."""
        return self.url if mirror is None else mirror.rstrip("/") + "/" + self.file_name


# The SHA-256 sums are not published by Meta (or MobileSAM's authors) next to the
# files; these are the sums that several independent projects pin for the same URLs
# (e.g. micro-sam's model registry; for mobile_sam.pt at least seven projects, among
# them changesam and a PerSAM/P2SAM benchmark's model table, one of which also pins its
# size, 40,728,226 bytes), and they agree with one another. mobile_sam.pt lives in
# MobileSAM's repository (weights/, last changed in commit a509aac).
OFFICIAL_CHECKPOINTS = {
    "vit_h": CheckpointFile(
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "vit_l": CheckpointFile(
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_b": CheckpointFile(
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_t": CheckpointFile(
        "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download_checkpoint(url: str, destination: Path, sha256: str | None, *,
                        show_progress: bool | None = None, retries: int = 3,
                        backoff_seconds: float = 1.0,
                        timeout_seconds: tuple[float, float] = (10.0, 60.0),
                        by_hand_flag: str = "--checkpoint") -> Path:
    """Download ``url`` to ``destination`` unless it is already there; returns it.

    Resumes ``<destination>.part`` if an earlier run left one (HTTP Range; a server
    that ignores Range starts it again). A connection that breaks mid-way is resumed
    as long as each attempt brings more bytes; ``retries`` attempts in a row that bring
    none (no connection, say) end it, after waits of ``backoff_seconds``, doubled each
    time. With ``sha256`` the finished file must match it, or it is deleted and
    DownloadFailed raised. ``show_progress``: a bar on stderr (None: only on a terminal).
    ``by_hand_flag``: the option that takes a file downloaded by hand (the message says it).
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    session = requests.Session()
    failures = 0  # attempts in a row that added no byte
    try:
        while True:
            before = partial.stat().st_size if partial.exists() else 0
            try:
                if _fetch(session, url, partial, show_progress, timeout_seconds):
                    break
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                got = (partial.stat().st_size if partial.exists() else 0) > before
                failures = 0 if got else failures + 1
                if failures > retries:
                    raise DownloadFailed(
                        f"cannot download {url} ({network_reason(exc)}); run the same command again "
                        f"to resume, or download {destination.name} by hand and pass "
                        f"{by_hand_flag}", reason=network_reason(exc)) from None
                time.sleep(backoff_seconds * 2 ** max(0, failures - 1))
    finally:
        session.close()
    if sha256 is not None:
        actual = sha256_of(partial)
        if actual != sha256:
            partial.unlink()
            raise DownloadFailed(
                f"{url} downloaded with SHA-256 {actual}, expected {sha256}: the file was "
                "deleted; run the same command again, or download it by hand",
                reason="SHA-256 mismatch")
    os.replace(partial, destination)
    return destination


def _fetch(session, url: str, partial: Path, show_progress: bool | None,
           timeout_seconds) -> bool:
    """One request, appending to ``partial``; True when the file is complete."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout_seconds) as response:
        if response.status_code == 416 and have:
            # Nothing left to send: the earlier run had fetched every byte.
            return True
        if response.status_code not in (200, 206):
            reason = f"HTTP {response.status_code} {response.reason}"
            raise DownloadFailed(f"cannot download {url}: {reason}", reason=reason)
        if response.status_code == 200:
            have = 0  # the server ignored Range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if have else "wb") as stream, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=partial.name[:-len(".part")], disable=_disabled(show_progress),
                leave=False) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                stream.write(chunk)
                bar.update(len(chunk))
            stream.flush()
            os.fsync(stream.fileno())
    size = partial.stat().st_size
    if total is not None and size < total:
        raise requests.exceptions.ChunkedEncodingError(f"connection closed at {size} of {total} bytes")
    return True


def _disabled(show_progress: bool | None) -> bool | None:
    return None if show_progress is None else not show_progress
