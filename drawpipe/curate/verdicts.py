"""The verdict store: who accepted or rejected which take of which generated image.

The only module that reads or writes verdicts; the review page, export.py and
generate.py (re-making the rejects) go through it.

    append_verdict(root, host, image, sha256, verdict, reason)   -> Verdict (written)
    load_verdicts(root)                                          -> VerdictIndex (every host merged)
    review_states(index, images, sha256_of)                      -> {image: ReviewState}

A take's SHA-256 comes from files.file_sha256 (with this Mac's files.HashCache).

Files: ``<root>/reviews/<host>.jsonl``, one per host, append-only, one JSON object
per line (docs/DESIGN.md: no file on the share is written by two Macs)::

    {"image": "GENERATIONS/France/family/France_family_1.png",   root-relative, "/"-separated
     "sha256": "9f86d0...",        hex SHA-256 of that PNG's bytes as the reviewer saw them
     "verdict": "accept" | "reject",
     "reason": "six fingers",      optional text, "" when none
     "time": "2026-05-01T10:00:00.123456Z",   UTC, ISO 8601 with microseconds
     "host": "mac-a"}

The SHA-256 pins a verdict to one *take* of an image: a rejected image is moved
aside and re-made under the same path, and the old take's verdict must not apply
to the new one. So verdicts are looked up by (image, sha256).

Merging: per (image, sha256) the verdict with the latest ``time`` wins; equal times
(two Macs, one microsecond) are ordered by host name, the later name winning, and
within one host's file a later line wins. Two hosts' *disagreeing* verdicts less
than ``TIE_WINDOW_SECONDS`` apart are reported in ``problems``: two Macs' clocks
cannot order events that close, so the choice made is said out loud and the user
can review the image again to settle it.

Never fatal, each reported as one line in ``VerdictIndex.problems``: a line cut off
by a crash (the last line of a file without its newline), a line that is not a
verdict, a disagreement within the tie window, and (``check_images``) a verdict for
an image that no longer exists. Nothing is ever removed from a verdict file.
"""

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from drawpipe.errors import BadVerdict
from drawpipe.inventory import verdict_files
from drawpipe.layout import GENERATIONS_FOLDER, REVIEWS_FOLDER, reviews_path

VERDICTS = ("accept", "reject")
# Two Macs' clocks agree to within a second at best (NTP over Wi-Fi): closer verdicts
# cannot be ordered by their times, so a disagreement that close is reported.
TIE_WINDOW_SECONDS = 1.0
MAX_REASON_CHARS = 2000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"[A-Za-z0-9_-]+")  # files.host_name() makes names of this shape
_FIELDS = ("image", "sha256", "verdict", "reason", "time", "host")
# One process appends to its host's file from several threads (the review server).
_append_lock = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    """One line of a verdict file; see the module docstring for each field's format."""

    image: str
    sha256: str
    verdict: str  # "accept" or "reject"
    reason: str
    time: str  # "2026-05-01T10:00:00.123456Z"
    host: str

    @property
    def rejected(self) -> bool:
        return self.verdict == "reject"

    @property
    def epoch_seconds(self) -> float:
        return _parse_time(self.time)

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """"rejected by mac-a, 2026-05-01 10:00:00 UTC: six fingers", as the pages say it."""
        word = "rejected" if self.rejected else "accepted"
        when = self.time[:19].replace("T", " ")
        return f"{word} by {self.host}, {when} UTC" + (f": {self.reason}" if self.reason else "")


def utc_now_text() -> str:
    """The current UTC time as verdicts hold it: "2026-05-01T10:00:00.123456Z"."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment.timestamp()


def check_image_path(image: str) -> str:
    """``image`` if it is a root-relative path of a PNG under GENERATIONS/ ("/"-separated,
    no "..", no leading "/"); BadVerdict otherwise."""
    parts = image.split("/") if isinstance(image, str) else []
    if (len(parts) < 2 or parts[0] != GENERATIONS_FOLDER or any(p in ("", ".", "..") for p in parts)
            or "\\" in image or not image.lower().endswith(".png")):
        raise BadVerdict(f"{image!r} is not a generated image: expected a path like "
                         f"{GENERATIONS_FOLDER}/France/family/France_family_1.png")
    return image


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lower-case hex digits; BadVerdict otherwise."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise BadVerdict(f"sha256 {sha256!r} is not a hex SHA-256 (64 characters 0-9a-f)")
    return sha256


def append_verdict(root: Path, host: str, image: str, sha256: str, verdict: str,
                   reason: str = "", now: str | None = None) -> Verdict:
    """Append one verdict to ``<root>/reviews/<host>.jsonl`` (created with its folder)
    and return it. ``image``: root-relative PNG path under GENERATIONS/; ``sha256``: hex
    digest of the take reviewed; ``verdict``: "accept" or "reject"; ``now``: the time
    text (default: this moment, utc_now_text()). BadVerdict for a malformed argument;
    OSError when the share cannot be written.

    The line is one ``os.write`` to a file opened with O_APPEND, then fsync: other
    processes of this host never interleave within it, and a crash leaves at most a
    cut-off last line, which readers skip. If the file's last line *was* cut off by an
    earlier crash, a newline goes first so this verdict starts a line of its own.
    """
    check_image_path(image)
    check_sha256(sha256)
    if verdict not in VERDICTS:
        raise BadVerdict(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    if not _HOST.fullmatch(host or ""):
        raise BadVerdict(f"host {host!r} must be letters, digits, '-' or '_' (a file name)")
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_CHARS:
        raise BadVerdict(f"the reason is {len(reason):,} characters; at most "
                         f"{MAX_REASON_CHARS:,} are kept")
    record = Verdict(image, sha256, verdict, reason, now or utc_now_text(), host)
    line = (json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    path = reviews_path(root, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _append_lock:
        # O_RDWR, not O_WRONLY: the last byte is read to see whether a crash cut it off.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):  # a short write on a full disk: say so, never half-report
                raise OSError(f"wrote {written} of {len(line)} bytes to {path}")
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


# --------------------------------------------------------------------------- reading


@dataclass
class VerdictIndex:
    """Every host's verdicts merged. ``current``: (image, sha256) -> the winning Verdict;
    ``history``: (image, sha256) -> every verdict for it, oldest first; ``problems``:
    one line per thing not read or worth a look (see the module docstring);
    ``lines_read``, ``lines_skipped``: counts over all files."""

    current: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    history: dict[tuple[str, str], list[Verdict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lines_read: int = 0
    lines_skipped: int = 0
    files: list[str] = field(default_factory=list)  # "reviews/mac-a.jsonl", ...
    _rejects_by_image: dict | None = field(default=None, repr=False, compare=False)

    def for_image(self, image: str, sha256: str) -> Verdict | None:
        """The winning verdict for this take of ``image``, or None (not reviewed)."""
        return self.current.get((image, sha256))

    def rejected(self) -> list[Verdict]:
        """The takes whose winning verdict is "reject", by image path."""
        return sorted((v for v in self.current.values() if v.rejected),
                      key=lambda v: (v.image, v.time))

    def accepted(self) -> list[Verdict]:
        """The takes whose winning verdict is "accept", by image path."""
        return sorted((v for v in self.current.values() if not v.rejected),
                      key=lambda v: (v.image, v.time))

    def images(self) -> set[str]:
        return {image for image, _ in self.current}

    def rejected_before(self, image: str, sha256: str) -> Verdict | None:
        """The latest reject of another take of ``image`` than ``sha256``: why the take
        before the one there now was set aside (None when none was rejected)."""
        if self._rejects_by_image is None:
            rejects: dict[str, list[Verdict]] = {}
            for verdict in self.current.values():
                if verdict.rejected:
                    rejects.setdefault(verdict.image, []).append(verdict)
            self._rejects_by_image = rejects
        earlier = [v for v in self._rejects_by_image.get(image, ()) if v.sha256 != sha256]
        return max(earlier, key=lambda verdict: verdict.epoch_seconds, default=None)

    def check_images(self, exists: Callable[[str], bool]) -> list[str]:
        """Add a problem line for each reviewed image for which ``exists(image)`` is
        False (e.g. ``lambda image: (root / image).is_file()``); returns those images.
        Their verdicts stay in the files and are ignored."""
        missing = sorted(image for image in self.images() if not exists(image))
        for image in missing:
            hosts = sorted({v.host for (i, _), verdicts in self.history.items() if i == image
                            for v in verdicts})
            self.problems.append(f"{image}: reviewed (by {', '.join(hosts)}) but no longer "
                                 "exists; its verdicts are kept and ignored")
        return missing


@dataclass(frozen=True)
class ReviewState:
    """Where review stands for the take of a generated image there now."""

    verdict: Verdict | None  # the winning verdict for this take; None: not reviewed
    rejected_before: Verdict | None = None  # why the take before it was set aside

    @property
    def word(self) -> str:
        """"accepted", "rejected" or "not reviewed"."""
        if self.verdict is None:
            return "not reviewed"
        return "rejected" if self.verdict.rejected else "accepted"

    def earlier(self, take: int) -> str | None:
        """Why the take before this one (``take``) was set aside: "take 1 rejected by
        mac-a, 2026-05-01 10:00:00 UTC: six fingers"; None when none was rejected."""
        if self.rejected_before is None:
            return None
        which = f"take {take - 1}" if take > 1 else "an earlier take"
        return f"{which} {self.rejected_before.sentence()}"


NOT_REVIEWED = ReviewState(None)


def review_states(index: VerdictIndex, images, sha256_of: Callable[[str], str]
                  ) -> dict[str, ReviewState]:
    """{image: ReviewState} for generated images (root-relative paths). Only images with
    a verdict at their path are hashed (``sha256_of(image)``, cached by the caller), so
    a share of unreviewed images costs nothing."""
    reviewed = index.images()
    states = {}
    for image in images:
        if image not in reviewed:
            states[image] = NOT_REVIEWED
            continue
        sha256 = sha256_of(image)
        states[image] = ReviewState(index.for_image(image, sha256),
                                    index.rejected_before(image, sha256))
    return states


def load_verdicts(root: Path) -> VerdictIndex:
    """Read every ``<root>/reviews/*.jsonl`` (never writing) and merge them; a missing
    folder gives an empty index. Unreadable files and lines are problems, not errors."""
    index = VerdictIndex()
    everything: list[tuple[Verdict, float, int]] = []
    for path in verdict_files(root):
        relative = f"{REVIEWS_FOLDER}/{path.name}"
        index.files.append(relative)
        try:
            data = path.read_bytes()
        except OSError as exc:
            index.problems.append(f"{relative}: cannot be read ({exc.strerror or exc}); "
                                  "its verdicts are left out")
            continue
        lines = data.split(b"\n")
        cut_off = lines.pop()  # b"" after the final newline, else a line a crash cut off
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            parsed = _parse_line(raw)
            if isinstance(parsed, str):
                index.lines_skipped += 1
                index.problems.append(f"{relative} line {number}: {parsed}; skipped")
                continue
            index.lines_read += 1
            everything.append((parsed, parsed.epoch_seconds, len(everything)))
        if cut_off.strip():
            index.lines_skipped += 1
            index.problems.append(f"{relative} line {len(lines) + 1}: cut off (the Mac stopped "
                                  "while writing it); skipped")
    # Latest time wins; equal times: the later host name; then the later line of a file.
    everything.sort(key=lambda item: (item[1], item[0].host, item[2]))
    for verdict, _, _ in everything:
        key = (verdict.image, verdict.sha256)
        index.history.setdefault(key, []).append(verdict)
        index.current[key] = verdict
    for key, verdicts in index.history.items():
        _report_tie(index, verdicts)
    return index


def _report_tie(index: VerdictIndex, verdicts: list[Verdict]) -> None:
    """A problem line when the winner and another host's verdict differ and are less
    than TIE_WINDOW_SECONDS apart."""
    winner = verdicts[-1]
    for other in reversed(verdicts[:-1]):
        apart = winner.epoch_seconds - other.epoch_seconds
        if apart >= TIE_WINDOW_SECONDS:
            return
        if other.host != winner.host and other.verdict != winner.verdict:
            index.problems.append(
                f"{winner.image}: {other.host} said {other.verdict} and {winner.host} said "
                f"{winner.verdict} within {apart:.3f} s ({winner.time}); {winner.host}'s "
                f"{winner.verdict} stands as the later"
                f"{' by host name' if apart == 0 else ''}: review it again to settle it")
            return


def _parse_line(raw: bytes) -> Verdict | str:
    """A Verdict, or why the line is not one."""
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return "not JSON (cut off or damaged)"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [name for name in _FIELDS if not isinstance(record.get(name, "" if name == "reason" else None), str)]
    if missing:
        return f"no text {', '.join(missing)}"
    if record["verdict"] not in VERDICTS:
        return f"verdict {record['verdict']!r} is not one of {', '.join(VERDICTS)}"
    if not _SHA256.fullmatch(record["sha256"]):
        return "sha256 is not a hex SHA-256"
    try:
        check_image_path(record["image"])
        _parse_time(record["time"])
    except BadVerdict:
        return f"image {record['image']!r} is not under {GENERATIONS_FOLDER}/"
    except ValueError:
        return f"time {record['time']!r} is not an ISO 8601 UTC time"
    return Verdict(record["image"], record["sha256"], record["verdict"], record.get("reason", ""),
                   record["time"], record["host"])


# --------------------------------------------------------------------------- hashing


