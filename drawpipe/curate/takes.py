"""Takes: rejected images set aside and re-made, later stages kept consistent, like make.

A *take* is one version of an image at its path. When a reviewer rejects the take
that is there (curate/verdicts.py: a reject verdict for that file's SHA-256), generate.py
moves it, and what upscale.py and segment.py made from it, into ``REJECTED/`` and
makes the next take, whose seed comes from the file name *and* the take number, so
every Mac sends the identical new request. Nothing is ever deleted::

    GENERATIONS/France/family/France_family_1.png
      -> REJECTED/GENERATIONS/France/family/France_family_1_take1.png
    UPSCALED_IMAGES/France/family/France_family_1_upscaled.png
      -> REJECTED/UPSCALED_IMAGES/France/family/France_family_1_upscaled_take1.png
    CUTOUTS/France/family/France_family_1_upscaled/
      -> REJECTED/CUTOUTS/France/family/France_family_1_upscaled_take1/

Every later-stage output records the SHA-256 of the input it was made from (the
upscaled PNG's ``drawpipe-source`` text, the cut-outs' ``cutouts.json``); an output
whose recorded input is not the input there now is *stale*: it is set aside the
same way and made again. Outputs that record no input hash (made before drawpipe
recorded one) are taken as current. A re-run therefore does exactly the work that
is missing or stale.

The take of a file is the number its provenance records (``"take"`` in the
``drawpipe`` text; 1 when absent); the next take of a path is one more than the
takes already in ``REJECTED/`` (looked up by exact path, ``_take1``, ``_take2``,
..., never by a folder listing: SMB listings are cached).

The seed of take n of a file comes from its name and n (``seed_for``); it is fixed
once, when a worker has claimed the job (``Takes.take_to_make``, ``take_of_input``):
whatever was set aside under that claim is known then, and every Mac that makes
the same take sends the same seed.

Hashing is cheap to repeat: ``Freshness`` keeps this Mac's SHA-256 of every file it
has read, and the input hash each output records, by (path, size, mtime_ns) in the
local cache folder (files.HashCache), so re-planning 2,000 images costs stats.

``Takes`` is the one policy the three stages follow:

    reload()                       the verdicts as they are now (once per plan)
    is_rejected(image)             the take of a generated image there now was rejected
    made_from_rejected(input)      an input (generated or upscaled) of a rejected take
    is_current(output, input)      an output made from the input there now (or recording none)
    recorded(output)               what an output records of how it was made (input, settings)
    set_aside_rejected(key, made)  generate.py: the rejected take and what was made of it
    set_aside_stale(key, output)   upscale.py, segment.py: an output made from an older input
                                   (segment.py: or with other settings, --redo-cutouts)
    take_to_make(key)              generate.py, claim held: the take its job makes now
    take_of_input(input)           upscale.py, claim held: the take of the image it upscales
    seed_for(stem, offset, take)   that take's seed (a module function)
"""

import hashlib
import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from drawpipe.curate.verdicts import VerdictIndex, load_verdicts
from drawpipe.files import HashCache, file_sha256, make_folders_below
from drawpipe.inventory import RecordedSource, recorded_source
from drawpipe.layout import (CUTOUTS_FOLDER, CUTOUTS_RECORD, GENERATIONS_FOLDER, REJECTED_FOLDER,
                             UPSCALED_FOLDER, generated_for_upscaled)
from drawpipe.png import read_text_chunks

RECORDED_SOURCES_CACHE = "recorded-sources.json"
SEED_LIMIT = 2**32  # Draw Things takes seeds 0..4294967295


def seed_for(name: str, offset: int = 0, take: int = 1) -> int:
    """A stable seed from a file stem, e.g. ``France_family_3`` (plus ``offset``); a
    later take of the same file gets its own (``France_family_3_take2``)."""
    text = name if take == 1 else f"{name}_take{take}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return (int.from_bytes(digest[:4], "big") + offset) % SEED_LIMIT


def take_name(name: str, take: int) -> str:
    """``France_family_1.png``, 2 -> ``France_family_1_take2.png`` (folders: no suffix)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or "/" in suffix:
        return f"{name}_take{take}"
    return f"{stem}_take{take}.{suffix}"


def rejected_path(root: Path, relative: str, take: int) -> Path:
    """Where take ``take`` of ``<root>/<relative>`` goes when set aside."""
    path = Path(relative)
    return Path(root) / REJECTED_FOLDER / path.parent / take_name(path.name, take)


def takes_set_aside(root: Path, relative: str) -> int:
    """How many takes of ``relative`` are in REJECTED/: 1, 2, ... until one is missing."""
    count = 0
    while os.path.lexists(rejected_path(root, relative, count + 1)):
        count += 1
    return count


def set_aside(root: Path, relative: str, take: int) -> Path | None:
    """Move ``<root>/<relative>`` (a file or a folder) to REJECTED/ as take ``take``;
    the new path, or None when there was nothing to move. A name already taken there
    (a copy left by hand, say) is kept: this one gets ``_2``, ``_3``, ... after it."""
    source = Path(root) / relative
    if not os.path.lexists(source):
        return None
    target = rejected_path(root, relative, take)
    number = 1
    while os.path.lexists(target):
        number += 1
        base = rejected_path(root, relative, take)
        target = base.with_name(f"{base.stem}_{number}{base.suffix}")
    # Folders below the root only: never a REJECTED folder where the share is not.
    make_folders_below(Path(root), target.parent)
    os.rename(source, target)
    return target


class Freshness:
    """SHA-256 of files and the input hashes outputs record, cached on this Mac.

    ``cache_dir``: a local folder (files.default_cache_dir); None keeps the
    cache in memory only. Safe to share between worker threads.
    """

    def __init__(self, cache_dir: Path | None):
        folder = Path(cache_dir) if cache_dir is not None else None
        self._hashes = HashCache(folder) if folder is not None else None
        self._recorded = (HashCache(folder, RECORDED_SOURCES_CACHE)
                          if folder is not None else None)

    def sha256(self, path: Path) -> str:
        return file_sha256(path, self._hashes)

    def record(self, output: Path) -> RecordedSource | None:
        """What ``output`` records of how it was made (inventory.recorded_source: an
        upscaled PNG, or a cut-out folder's cutouts.json), cached by the output's size
        and mtime; None when it records nothing (or is gone)."""
        try:
            stat = os.stat(output)
        except FileNotFoundError:
            return None
        if self._recorded is not None:
            known = self._recorded.get(Path(output).absolute(), stat.st_size, stat.st_mtime_ns)
            # A dict: {} records nothing. Older drawpipes cached the hash alone, as text:
            # read the file again, it may record more.
            if isinstance(known, dict):
                return RecordedSource(**known) if known else None
        record = recorded_source(output)
        if self._recorded is not None:
            self._recorded.put(Path(output).absolute(), stat.st_size, stat.st_mtime_ns,
                               asdict(record) if record is not None else {})
        return record

    def recorded_source(self, output: Path) -> str | None:
        """The input hash ``output`` records (``record``), or None."""
        record = self.record(output)
        return record.sha256 if record is not None else None

    def is_current(self, output: Path, source: Path) -> bool:
        """Whether ``output`` was made from the ``source`` there now (or records nothing)."""
        recorded = self.recorded_source(output)
        return recorded is None or recorded == self.sha256(source)

    def save(self) -> None:
        for cache in (self._hashes, self._recorded):
            if cache is not None:
                cache.save()


class Takes:
    """The one policy for takes (the module docstring), for the three stages.

    ``root``: the share; ``freshness``: this Mac's hash cache (None: in memory only).
    ``reload()`` before planning; the rest is safe to call from worker threads.
    """

    def __init__(self, root: Path, freshness: Freshness | None = None):
        self.root = Path(root)
        self.freshness = freshness or Freshness(None)
        self.verdicts: VerdictIndex = VerdictIndex()
        self._rejected_paths: set[str] = set()
        self._lock = threading.Lock()
        self._take_after_set_aside: dict[str, int] = {}  # job key -> the take to make

    def reload(self) -> VerdictIndex:
        """Read every host's verdicts again (once per plan); returns them."""
        verdicts = load_verdicts(self.root)
        with self._lock:
            self.verdicts = verdicts
            self._rejected_paths = {verdict.image for verdict in verdicts.rejected()}
        return verdicts

    def save(self) -> None:
        """Keep this Mac's hashes for the next run (its local cache folder)."""
        self.freshness.save()

    # ------------------------------------------------------------------ is it done?

    def is_rejected(self, image: str) -> bool:
        """``image``: root-relative path of a generated PNG. Hashes only the files that
        have a reject verdict, whatever its take."""
        with self._lock:
            verdicts, rejected_paths = self.verdicts, self._rejected_paths
        if image not in rejected_paths:
            return False
        try:
            sha256 = self.freshness.sha256(self.root / image)
        except FileNotFoundError:
            return False
        verdict = verdicts.for_image(image, sha256)
        return verdict is not None and verdict.rejected

    def made_from_rejected(self, path: Path) -> bool:
        """Whether ``path``, a generated image or an upscaled one, is (made from) a take
        rejected in review: later stages leave it out until generate.py has made the
        next take."""
        relative = Path(path).relative_to(self.root)
        if relative.parts[0] == UPSCALED_FOLDER:
            generated = generated_for_upscaled(self.root, path)
            if generated is None:
                return False
            relative = generated.relative_to(self.root)
        return relative.parts[0] == GENERATIONS_FOLDER and self.is_rejected(relative.as_posix())

    def is_current(self, output: Path, source: Path) -> bool:
        """Whether ``output`` (an upscaled PNG or a cut-out folder) was made from the
        ``source`` there now, or records nothing."""
        return self.freshness.is_current(self._record_file(output), source)

    def recorded(self, output: Path) -> RecordedSource | None:
        """What ``output`` (an upscaled PNG or a cut-out folder) records of how it was
        made - its input, and for cut-outs the settings (``made_with``) - read once per
        version of the file on this Mac; None when it records nothing."""
        return self.freshness.record(self._record_file(output))

    def _record_file(self, output: Path) -> Path:
        """The file that records how ``output`` was made: a cut-out folder's cutouts.json."""
        if Path(output).is_relative_to(self.root / CUTOUTS_FOLDER):
            return Path(output) / CUTOUTS_RECORD
        return Path(output)

    # ------------------------------------------------------------------ setting aside

    def take_there(self, key: str) -> int:
        """The take of the file at ``key`` (root-relative): what it records, and never one
        already in REJECTED/."""
        try:
            recorded = recorded_take(read_text_chunks(self.root / key))
        except (OSError, ValueError):
            recorded = 1
        return max(recorded, takes_set_aside(self.root, key) + 1)

    def set_aside_rejected(self, key: str, made_of_it: list[Path]) -> tuple[int, list[str]]:
        """Move the rejected generated image ``key``, and ``made_of_it`` (its upscaled
        image, its cut-outs), into REJECTED/ under its take (claim held); (that take,
        the root-relative paths they went to). The job's next take is one more."""
        take = self.take_there(key)
        with self._lock:
            self._take_after_set_aside[key] = take + 1
        moved = []
        for path in [self.root / key, *made_of_it]:
            target = set_aside(self.root, Path(path).relative_to(self.root).as_posix(), take)
            if target is not None:
                moved.append(target.relative_to(self.root).as_posix())
        return take, moved

    def set_aside_stale(self, key: str, output: Path) -> None:
        """Move an output made from an older input into REJECTED/ (claim held), numbered
        with the take of the input it records, else one after those set aside."""
        record = self.recorded(output)  # what is_current read just now, from the cache
        take = record.take if record is not None and record.take else None
        set_aside(self.root, key, take or takes_set_aside(self.root, key) + 1)

    # ------------------------------------------------------------------ the take to make

    def take_to_make(self, key: str) -> int:
        """The take a generate job for ``key`` makes, asked with its claim held, after
        any rejected take was set aside: one after it, else one after those in REJECTED/."""
        with self._lock:
            take = self._take_after_set_aside.pop(key, None)
        return take or takes_set_aside(self.root, key) + 1

    @staticmethod
    def take_of_input(image: Path) -> int:
        """The take of the generated image at ``image``: what its provenance records; 1
        when it records none, is gone or is not a PNG (the job reads it and says why it
        cannot be used). Other OSErrors propagate (a
        busy file: the engine tries the job on a later pass)."""
        try:
            return recorded_take(read_text_chunks(image))
        except (FileNotFoundError, ValueError):
            return 1


def recorded_take(texts: dict) -> int:
    """The take a generated PNG's provenance records (its ``drawpipe`` text), 1 if none."""
    try:
        take = json.loads(texts.get("drawpipe", "{}")).get("take", 1)
    except (ValueError, AttributeError):
        return 1
    return take if isinstance(take, int) and take >= 1 else 1
