"""Cheap quality signals of every generated image, to review the suspects first.

    measure_png(data)              Signals of one PNG's bytes (no near-duplicates yet)
    update_signals(root, files, host, processes)
                                   QualityRun: every file's Signals, from the cache or measured,
                                   near-duplicates filled in
    find_near_duplicates(signals)  the same dict, each image's nearest look-alike in its folder
    suspect_reasons(signals)       why an image looks wrong, as sentences (empty: not suspect)
    suspicion_order(signals)       a sort key: most reasons first

Each image is measured on a copy reduced by an integer factor to about
``ANALYSIS_PX`` on its longer side (a box filter: 1024 px -> 512 px), so thresholds
mean the same for 1024 and 2048 px images and one image costs ~30 ms:

- *sharpness*: variance of the 4-neighbour Laplacian of the luma (numpy; the same as
  OpenCV's ``Laplacian(ksize=1)``). Detail and edges give hundreds; a soft,
  out-of-focus picture gives tens. Below ``BLURRY_LAPLACIAN_VARIANCE``: blurry. It
  grows with contrast squared, so a very dark or flat picture reads as blurry too.
- *exposure*: mean luma (0-255, ITU-R 601 as Pillow's "L"), the fraction of pixels
  at or above ``HIGHLIGHT_LUMA`` (blown highlights) and at or below ``SHADOW_LUMA``
  (crushed shadows).
- *saturation*: mean HSV saturation, 0-1.
- *near-duplicates*: a 64-bit perceptual hash (``imagehash.phash``: DCT of a 32 x 32
  greyscale copy); two images of the same nation and category whose hashes differ
  in at most ``NEAR_DUPLICATE_MAX_DISTANCE`` bits are near-duplicates. Re-encoded,
  slightly cropped or re-graded copies of one picture differ by 0-4 bits; different
  scenes by 14 or more (20-30 typically).

The thresholds are named constants below; they flag images to look at first,
they never reject anything.

Cache: ``<root>/report/quality/<host>.json`` (layout.quality_folder), one file per
host (no file on the share is written by two Macs: several people may run the review
page at once), each holding ``{"version", "analysis_px", "images": {path: [size,
mtime_ns, measurements]}}`` for every image that host last saw. Every host's file is read and
an entry is used when its image's (size, mtime_ns) still match, so an image is
measured once for all the Macs, and a second run over 2,000 images opens none. On
the share rather than in a local cache because the measurements are the same for
everyone and cost a full read and decode of each PNG (the dominant cost over SMB).
A share that cannot be written only costs the cache (said in ``problems``).
"""

import hashlib
import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from drawpipe.files import write_if_changed
from drawpipe.layout import natural_key, quality_folder
from drawpipe.pages import counted

QUALITY_VERSION = 1
ANALYSIS_PX = 512

BLURRY_LAPLACIAN_VARIANCE = 50.0
HIGHLIGHT_LUMA = 250
SHADOW_LUMA = 5
OVEREXPOSED_HIGHLIGHTS_FRACTION = 0.10
UNDEREXPOSED_SHADOWS_FRACTION = 0.10
TOO_DARK_LUMINANCE_MEAN = 40.0
TOO_BRIGHT_LUMINANCE_MEAN = 215.0
DESATURATED_SATURATION_MEAN = 0.05
OVERSATURATED_SATURATION_MEAN = 0.75
NEAR_DUPLICATE_MAX_DISTANCE = 8  # of 64 bits

# Fewer images than this are measured in this process: a pool's start-up costs more.
POOL_MIN_TASKS = 16

_MEASUREMENTS = ("width_px", "height_px", "sha256", "laplacian_variance", "luminance_mean",
                 "highlights_clipped_fraction", "shadows_clipped_fraction", "saturation_mean",
                 "phash", "error")


@dataclass(frozen=True)
class Signals:
    """One generated image's signals. ``image``: root-relative path; ``sha256``: of
    the bytes measured; luminance 0-255; fractions and saturation 0-1; ``phash``: 16
    hex digits; ``error``: why it could not be measured (then the numbers are 0).
    ``near_duplicate_of``: the root-relative path of the closest image of the same
    folder within NEAR_DUPLICATE_MAX_DISTANCE bits, and that distance, else None."""

    image: str
    width_px: int = 0
    height_px: int = 0
    sha256: str = ""
    laplacian_variance: float = 0.0
    luminance_mean: float = 0.0
    highlights_clipped_fraction: float = 0.0
    shadows_clipped_fraction: float = 0.0
    saturation_mean: float = 0.0
    phash: str = ""
    error: str | None = None
    near_duplicate_of: str | None = None
    near_duplicate_distance: int | None = None

    def measurements(self) -> dict:
        return {name: getattr(self, name) for name in _MEASUREMENTS}


def measure_png(data: bytes, image: str = "") -> Signals:
    """Signals of the PNG ``data`` (near-duplicate fields left empty); a picture that
    cannot be decoded gives Signals with ``error`` set."""
    import imagehash
    import numpy as np
    from PIL import Image

    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            rgb = picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        return Signals(image, sha256=sha256, error=f"cannot decode: {exc}")
    factor = max(1, round(max(width, height) / ANALYSIS_PX))
    small = rgb.reduce(factor) if factor > 1 else rgb
    luma = np.asarray(small.convert("L"), dtype=np.float32)
    laplacian = (luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1]
                 - 4 * luma[1:-1, 1:-1])
    saturation = np.asarray(small.convert("HSV"))[..., 1]
    return Signals(
        image=image, width_px=width, height_px=height, sha256=sha256,
        laplacian_variance=round(float(laplacian.var()) if laplacian.size else 0.0, 3),
        luminance_mean=round(float(luma.mean()), 3),
        highlights_clipped_fraction=round(float((luma >= HIGHLIGHT_LUMA).mean()), 5),
        shadows_clipped_fraction=round(float((luma <= SHADOW_LUMA).mean()), 5),
        saturation_mean=round(float(saturation.mean()) / 255, 5),
        phash=str(imagehash.phash(small)),
    )


def _measure_file(task: tuple[str, str]) -> dict:
    """(file, root-relative path) -> measurements; runs in pool processes."""
    path, image = task
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        return asdict(Signals(image, error=f"cannot read: {exc.strerror or exc}"))
    return measure_png(data, image).measurements()


def find_near_duplicates(signals: dict[str, "Signals"]) -> dict[str, "Signals"]:
    """``signals`` (path -> Signals) with each image's nearest look-alike of the same
    folder (same nation and category) filled in, when within NEAR_DUPLICATE_MAX_DISTANCE;
    ties go to the first in natural order. Both images of a pair name each other."""
    by_folder: dict[str, list[Signals]] = {}
    for item in signals.values():
        if item.phash and not item.error:
            by_folder.setdefault(item.image.rpartition("/")[0], []).append(item)
    found = {}
    for members in by_folder.values():
        members.sort(key=lambda item: natural_key(item.image))
        hashes = [int(item.phash, 16) for item in members]
        for i, item in enumerate(members):
            best = None
            for j, other in enumerate(members):
                if i != j:
                    distance = (hashes[i] ^ hashes[j]).bit_count()
                    if distance <= NEAR_DUPLICATE_MAX_DISTANCE and (best is None or distance < best[1]):
                        best = (other.image, distance)
            if best:
                found[item.image] = best
    return {path: replace(item, near_duplicate_of=found.get(path, (None, None))[0],
                          near_duplicate_distance=found.get(path, (None, None))[1])
            for path, item in signals.items()}


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"


def suspect_reasons(signals: Signals) -> list[str]:
    """Why ``signals``' image looks wrong, one sentence each with the figure and the
    threshold ("blurry: Laplacian variance 12 < 50"); empty when nothing does."""
    if signals.error:
        return [f"unreadable: {signals.error}"]
    reasons = []
    if signals.laplacian_variance < BLURRY_LAPLACIAN_VARIANCE:
        reasons.append(f"blurry: Laplacian variance {signals.laplacian_variance:.0f} < "
                       f"{BLURRY_LAPLACIAN_VARIANCE:.0f}")
    if signals.highlights_clipped_fraction > OVEREXPOSED_HIGHLIGHTS_FRACTION:
        reasons.append(f"over-exposed: {_percent(signals.highlights_clipped_fraction)} clipped "
                       f"highlights > {_percent(OVEREXPOSED_HIGHLIGHTS_FRACTION)}")
    elif signals.luminance_mean > TOO_BRIGHT_LUMINANCE_MEAN:
        reasons.append(f"too bright: mean luminance {signals.luminance_mean:.0f} > "
                       f"{TOO_BRIGHT_LUMINANCE_MEAN:.0f}")
    if signals.shadows_clipped_fraction > UNDEREXPOSED_SHADOWS_FRACTION:
        reasons.append(f"under-exposed: {_percent(signals.shadows_clipped_fraction)} clipped "
                       f"shadows > {_percent(UNDEREXPOSED_SHADOWS_FRACTION)}")
    elif signals.luminance_mean < TOO_DARK_LUMINANCE_MEAN:
        reasons.append(f"too dark: mean luminance {signals.luminance_mean:.0f} < "
                       f"{TOO_DARK_LUMINANCE_MEAN:.0f}")
    if signals.saturation_mean < DESATURATED_SATURATION_MEAN:
        reasons.append(f"washed out: mean saturation {signals.saturation_mean:.2f} < "
                       f"{DESATURATED_SATURATION_MEAN:.2f}")
    elif signals.saturation_mean > OVERSATURATED_SATURATION_MEAN:
        reasons.append(f"over-saturated: mean saturation {signals.saturation_mean:.2f} > "
                       f"{OVERSATURATED_SATURATION_MEAN:.2f}")
    if signals.near_duplicate_of:
        reasons.append(f"near-duplicate of {signals.near_duplicate_of.rpartition('/')[2]} "
                       f"(distance {signals.near_duplicate_distance})")
    return reasons


def suspicion_order(signals: Signals | None) -> tuple:
    """Sort key putting the images with the most suspect reasons first (no signals: last)."""
    if signals is None:
        return (1, 0)
    return (0, -len(suspect_reasons(signals)))


# --------------------------------------------------------------------------- the cache


@dataclass
class QualityRun:
    """``signals``: root-relative path -> Signals (near-duplicates filled in);
    ``measured``: images opened this run; ``cached``: taken from a host's cache file;
    ``problems``: one line each (a cache that could not be written)."""

    signals: dict[str, Signals]
    measured: int = 0
    cached: int = 0
    problems: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        suspects = sum(1 for item in self.signals.values() if suspect_reasons(item))
        return (f"quality signals: {counted(len(self.signals), 'image')} ({self.cached:,} from the cache, "
                f"{self.measured:,} measured), {suspects:,} suspect")


def _read_caches(folder: Path) -> dict[str, list]:
    """path -> [size, mtime_ns, measurements] from every host's file (a later file's
    entry replaces an earlier one: they agree whenever size and mtime do)."""
    merged = {}
    try:
        names = sorted(name for name in os.listdir(folder)
                       if name.endswith(".json") and not name.startswith("."))
    except OSError:
        return merged
    for name in names:
        try:
            data = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("version") == QUALITY_VERSION
                and data.get("analysis_px") == ANALYSIS_PX and isinstance(data.get("images"), dict)):
            merged.update(data["images"])
    return merged


def _map(function, tasks: list, processes: int) -> list:
    if processes <= 1 or len(tasks) < POOL_MIN_TASKS:
        return [function(task) for task in tasks]
    workers = min(processes, math.ceil(len(tasks) / 4))
    # "spawn", not Linux's "fork": the review page measures from a server thread, and a
    # process forked while other threads hold locks can hang. (macOS spawns anyway.)
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 4)))))


def update_signals(root: Path, files, host: str, processes: int = 1,
                   write_cache: bool = True) -> QualityRun:
    """Signals of every file in ``files`` (inventory.ImageFile: root-relative ``path``,
    ``size``, ``mtime_ns``): cached ones reused, the others measured (in up to
    ``processes`` processes), near-duplicates found; then this host's cache file is
    rewritten when its content changed (``write_cache``)."""
    root = Path(root)
    folder = quality_folder(root)
    known = _read_caches(folder)
    run = QualityRun(signals={})
    entries, tasks = {}, []
    for file in files:
        cached = known.get(file.path)
        if (isinstance(cached, list) and len(cached) == 3 and cached[0] == file.size
                and cached[1] == file.mtime_ns and isinstance(cached[2], dict)):
            try:
                run.signals[file.path] = Signals(file.path, **{k: cached[2][k] for k in _MEASUREMENTS})
                entries[file.path] = cached
                run.cached += 1
                continue
            except (KeyError, TypeError):
                pass
        tasks.append(file)
    results = _map(_measure_file, [(str(root / file.path), file.path) for file in tasks], processes)
    for file, measured in zip(tasks, results):
        run.signals[file.path] = Signals(file.path, **{k: measured.get(k) for k in _MEASUREMENTS
                                                       if k in measured})
        # An unreadable file is measured again next time: it may be still arriving.
        if not measured.get("error"):
            entries[file.path] = [file.size, file.mtime_ns, measured]
    run.measured = len(tasks)
    run.signals = find_near_duplicates(run.signals)
    if write_cache:
        data = json.dumps({"version": QUALITY_VERSION, "analysis_px": ANALYSIS_PX,
                           "images": dict(sorted(entries.items()))},
                          separators=(",", ":")).encode()
        try:
            write_if_changed(folder / f"{host}.json", data)
        except OSError as exc:
            run.problems.append(f"quality cache not saved to {folder} ({exc.strerror or exc}); "
                                "the next run measures again")
    return run


CSV_COLUMNS = ("laplacian_variance", "luminance_mean", "highlights_clipped_fraction",
               "shadows_clipped_fraction", "saturation_mean", "phash", "near_duplicate_of",
               "near_duplicate_distance", "suspect")


def csv_fields(signals: Signals | None) -> dict:
    """The report CSV's quality columns (CSV_COLUMNS) of one image; "" when unmeasured."""
    if signals is None or signals.error:
        return {name: "" for name in CSV_COLUMNS} | (
            {"suspect": "; ".join(suspect_reasons(signals))} if signals else {})
    fields = {name: getattr(signals, name) for name in CSV_COLUMNS[:-1]}
    fields["near_duplicate_of"] = signals.near_duplicate_of or ""
    fields["near_duplicate_distance"] = ("" if signals.near_duplicate_distance is None
                                         else signals.near_duplicate_distance)
    fields["suspect"] = "; ".join(suspect_reasons(signals))
    return fields
