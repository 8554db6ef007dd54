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

Hashing is cheap to repeat: ``Freshness`` keeps this Mac's SHA-256 of every file it
has read, and the input hash each output records, by (path, size, mtime_ns) in the
local cache folder (reviews.HashCache), so re-planning 2,000 images costs stats.
"""

import json
import os
from pathlib import Path

from drawpipe.curate.verdicts import VerdictIndex, load_verdicts
from drawpipe.files import HashCache, file_sha256, make_folders_below
from drawpipe.layout import REJECTED_FOLDER

RECORDED_SOURCES_CACHE = "recorded-sources.json"


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

    ``cache_dir``: a local folder (checkpoints.default_cache_dir); None keeps the
    cache in memory only. Safe to share between worker threads.
    """

    def __init__(self, cache_dir: Path | None):
        folder = Path(cache_dir) if cache_dir is not None else None
        self._hashes = HashCache(folder) if folder is not None else None
        self._recorded = (HashCache(folder, RECORDED_SOURCES_CACHE)
                          if folder is not None else None)

    def sha256(self, path: Path) -> str:
        return file_sha256(path, self._hashes)

    def recorded_source(self, output: Path, read_record) -> str | None:
        """The input hash ``output`` records (``read_record(output) -> str | None``),
        cached by the output's size and mtime; None when it records none (or is gone)."""
        try:
            stat = os.stat(output)
        except FileNotFoundError:
            return None
        if self._recorded is not None:
            known = self._recorded.get(Path(output).absolute(), stat.st_size, stat.st_mtime_ns)
            if known is not None:
                return known or None
        recorded = read_record(output)
        if self._recorded is not None:
            self._recorded.put(Path(output).absolute(), stat.st_size, stat.st_mtime_ns,
                               recorded or "")
        return recorded

    def is_current(self, output: Path, source: Path, read_record) -> bool:
        """Whether ``output`` was made from the ``source`` there now (or records nothing)."""
        recorded = self.recorded_source(output, read_record)
        return recorded is None or recorded == self.sha256(source)

    def save(self) -> None:
        for cache in (self._hashes, self._recorded):
            if cache is not None:
                cache.save()


class Rejections:
    """Which generated images are rejected as they are now (curate/verdicts.py verdicts whose
    SHA-256 is the file's), loaded once per plan."""

    def __init__(self, root: Path, freshness: Freshness):
        self.root = Path(root)
        self.freshness = freshness
        self.verdicts: VerdictIndex = load_verdicts(self.root)
        self._rejected_paths = {verdict.image for verdict in self.verdicts.rejected()}

    def is_rejected(self, image: str) -> bool:
        """``image``: root-relative path of a generated PNG. Hashes only the files that
        have a reject verdict, whatever its take."""
        if image not in self._rejected_paths:
            return False
        path = self.root / image
        try:
            sha256 = self.freshness.sha256(path)
        except FileNotFoundError:
            return False
        verdict = self.verdicts.for_image(image, sha256)
        return verdict is not None and verdict.rejected


def recorded_take(texts: dict) -> int:
    """The take a generated PNG's provenance records (its ``drawpipe`` text), 1 if none."""
    try:
        take = json.loads(texts.get("drawpipe", "{}")).get("take", 1)
    except (ValueError, AttributeError):
        return 1
    return take if isinstance(take, int) and take >= 1 else 1
