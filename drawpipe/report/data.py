"""What the report knows of the folders: each image's files, their PNG metadata,
the work left, and the report's own cache (report/cache.json).

Folders (read only; nothing here writes outside report/):

    scan_inventory(root)         Inventory: each image's generated, upscaled and cut-out files
    read_metadata(root, inv, c)  prompt, seed, model ... from each PNG's text chunks, cached
    work_left(root, inv, queue)  stage -> (jobs left or None, how it was counted)
    ReportCache                  report/cache.json: what was read or made, by (size, mtime_ns)
    write_if_changed(path, data) atomic write, skipped when the file already holds ``data``
    image_key(relative_path)     "France/family/France_family_1" for any stage's output
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from drawpipe.files import write_if_changed
from drawpipe.layout import (CUTOUTS_FOLDER, CUTOUTS_RECORD, GENERATIONS_FOLDER, UPSCALED_FOLDER,
                             image_name, natural_key)
from drawpipe.png import read_text_chunks
from drawpipe.stages.prompts import QueueItem

CACHE_VERSION = 1

# first folder of a job's output -> what ends the image's name in it (case-insensitive)
_KEY_SUFFIXES = {
    "GENERATIONS": ".png",
    "UPSCALED_IMAGES": "_upscaled.png",
    "CUTOUTS": "_upscaled",
}


def image_key(relative_path: str) -> str | None:
    """The image a stage's output belongs to: sub-folders and the generated image's stem.

    "GENERATIONS/France/family/France_family_1.png", "UPSCALED_IMAGES/France/family/
    France_family_1_upscaled.png" and "CUTOUTS/France/family/France_family_1_upscaled"
    all give "France/family/France_family_1"; a path outside the three folders None.
    """
    folder, _, rest = relative_path.partition("/")
    suffix = _KEY_SUFFIXES.get(folder)
    if suffix is None or not rest:
        return None
    lowered = rest.lower()
    if lowered.endswith(suffix):
        return rest[: -len(suffix)]
    if folder != "CUTOUTS" and lowered.endswith(".png"):
        return rest[:-4]
    return rest


# --------------------------------------------------------------------------- files


class ReportCache:
    """``report/cache.json``: {"version", section: {key: value}} for the sections
    "meta" (PNG path -> [size, mtime_ns, metadata]), "thumbs" (source path -> [size,
    mtime_ns, width_px, height_px, error]), "charts" (stage -> log files signature) and
    "sheets" (group -> tiles signature). A missing, damaged or older cache is empty."""

    SECTIONS = ("meta", "thumbs", "charts", "sheets")

    def __init__(self, path: Path):
        self.path = path
        self.changed = False
        data = {}
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            pass
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            data = {}
        self.sections = {name: data.get(name) if isinstance(data.get(name), dict) else {}
                         for name in self.SECTIONS}

    def get(self, section: str, key: str):
        return self.sections[section].get(key)

    def put(self, section: str, key: str, value) -> None:
        if self.sections[section].get(key) != value:
            self.sections[section][key] = value
            self.changed = True

    def keep_only(self, section: str, keys) -> list[str]:
        """Forget the keys of ``section`` not in ``keys``; returns the forgotten ones."""
        gone = [key for key in self.sections[section] if key not in keys]
        for key in gone:
            del self.sections[section][key]
        self.changed = self.changed or bool(gone)
        return gone

    def save(self) -> None:
        if self.changed:
            data = {"version": CACHE_VERSION, **self.sections}
            write_if_changed(self.path, json.dumps(data, separators=(",", ":")).encode())
            self.changed = False


# --------------------------------------------------------------------------- inventory


@dataclass(slots=True)
class ImageFile:
    path: str  # relative to the root, "/"-separated
    size: int
    mtime_ns: int


@dataclass
class ImageEntry:
    """One image across the stages: ``key`` "France/family/France_family_1"."""

    key: str
    generated: ImageFile | None = None
    upscaled: ImageFile | None = None
    cutouts_folder: str | None = None  # "CUTOUTS/France/family/France_family_1_upscaled"
    cutouts: list[ImageFile] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # prompt, negative_prompt, seed, model, size ...

    @property
    def group(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


@dataclass
class Inventory:
    entries: dict[str, ImageEntry]  # by key, in natural order

    def count(self, attribute: str) -> int:
        return sum(1 for entry in self.entries.values() if getattr(entry, attribute))

    @property
    def cutout_count(self) -> int:
        return sum(len(entry.cutouts) for entry in self.entries.values())

    def groups(self) -> dict[str, list[ImageEntry]]:
        grouped: dict[str, list[ImageEntry]] = {}
        for entry in self.entries.values():
            grouped.setdefault(entry.group, []).append(entry)
        return grouped

    def files(self):
        """(ImageFile, kind) of every image: kind "generated", "upscaled" or "cutout"."""
        for entry in self.entries.values():
            if entry.generated:
                yield entry.generated, "generated"
            if entry.upscaled:
                yield entry.upscaled, "upscaled"
            for cutout in entry.cutouts:
                yield cutout, "cutout"


def _walk(root: Path, folder: str):
    """(folder relative to root, [non-hidden file DirEntry]) for ``folder`` and every
    non-hidden folder under it (scratch outputs and .claims start with a dot)."""
    stack = [folder]
    while stack:
        relative = stack.pop()
        try:
            with os.scandir(root / relative) as listing:
                entries = [entry for entry in listing if not entry.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        files = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(f"{relative}/{entry.name}")
                elif entry.is_file():
                    files.append(entry)
            except OSError:
                continue
        yield relative, files


def _image_file(relative_dir: str, entry: os.DirEntry) -> ImageFile | None:
    try:
        stat = entry.stat()
    except OSError:
        return None
    return ImageFile(f"{relative_dir}/{entry.name}", stat.st_size, stat.st_mtime_ns)


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png")


def scan_inventory(root: Path) -> Inventory:
    """What is in GENERATIONS/, UPSCALED_IMAGES/ and CUTOUTS/ (one listing each, a
    stat per image; nothing is opened)."""
    entries: dict[str, ImageEntry] = {}

    def entry_for(key):
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = ImageEntry(key)
        return entry

    for folder, attribute in ((GENERATIONS_FOLDER, "generated"), (UPSCALED_FOLDER, "upscaled")):
        for relative_dir, files in _walk(root, folder):
            for file in files:
                if _is_png(file.name):
                    image = _image_file(relative_dir, file)
                    if image is not None:
                        setattr(entry_for(image_key(image.path)), attribute, image)
    for relative_dir, files in _walk(root, CUTOUTS_FOLDER):
        pngs = [file for file in files if _is_png(file.name)]
        if relative_dir == CUTOUTS_FOLDER or not (pngs or any(f.name == CUTOUTS_RECORD for f in files)):
            continue
        entry = entry_for(image_key(relative_dir))
        entry.cutouts_folder = relative_dir
        cutouts = [image for file in pngs if (image := _image_file(relative_dir, file))]
        entry.cutouts = sorted(cutouts, key=lambda image: natural_key(image.path))
    ordered = sorted(entries, key=natural_key)
    return Inventory({key: entries[key] for key in ordered})


# --------------------------------------------------------------------------- metadata

# A1111's infotext field: "Key: value" or "Key: "quoted, value"" up to the next comma.
_FIELD = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_FIELD_NAMES = {"Seed": "seed", "Model": "model", "Size": "size", "Steps": "steps",
                "Sampler": "sampler", "CFG scale": "cfg_scale"}


def parse_infotext(text: str) -> dict:
    """The A1111 "parameters" text -> {"prompt", "negative_prompt", "seed", "model",
    "size", "steps", "sampler", "cfg_scale"} (those present, as strings)."""
    lines = text.strip("\n").split("\n")
    fields = {}
    if len(lines) > 1 and len(_FIELD.findall(lines[-1])) >= 3:
        for name, value in _FIELD.findall(lines.pop()):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            if name.strip() in _FIELD_NAMES:
                fields[_FIELD_NAMES[name.strip()]] = value.strip()
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    meta = {"prompt": "\n".join(prompt).strip()}
    if negative:
        meta["negative_prompt"] = "\n".join(negative).strip()
    meta.update(fields)
    return meta


def image_metadata(texts: dict[str, str]) -> dict:
    """What the gallery shows of an image, from its PNG text chunks (png.py): the
    "parameters" infotext; for an upscaled image without it, "drawpipe-source"'s copy
    of its source's infotext; the "drawpipe" JSON request fills what both lack."""
    meta = {}
    if texts.get("parameters"):
        meta = parse_infotext(texts["parameters"])
    else:
        try:
            source = json.loads(texts.get("drawpipe-source", "{}"))
        except ValueError:
            source = {}
        if isinstance(source, dict) and isinstance(source.get("parameters"), str):
            meta = parse_infotext(source["parameters"])
    try:
        request = json.loads(texts.get("drawpipe", "{}")).get("request") or {}
    except (ValueError, AttributeError):
        request = {}
    if isinstance(request, dict):
        for key in ("prompt", "negative_prompt", "seed", "model"):
            if not meta.get(key) and request.get(key) not in (None, ""):
                meta[key] = str(request[key])
        if "size" not in meta and request.get("width") and request.get("height"):
            meta["size"] = f"{request['width']}x{request['height']}"
    return meta


def read_metadata(root: Path, inventory: Inventory, cache: ReportCache) -> int:
    """Fill each entry's ``meta`` from its generated PNG (else its upscaled one), read
    only when not cached for the file's (size, mtime_ns); returns the files read."""
    read = 0
    used = set()
    for entry in inventory.entries.values():
        image = entry.generated or entry.upscaled
        if image is None:
            continue
        used.add(image.path)
        cached = cache.get("meta", image.path)
        if cached and cached[0] == image.size and cached[1] == image.mtime_ns:
            entry.meta = cached[2]
            continue
        try:
            entry.meta = image_metadata(read_text_chunks(root / image.path))
        except (OSError, ValueError) as exc:
            entry.meta = {"error": f"cannot read its metadata: {exc}"}
        read += 1
        cache.put("meta", image.path, [image.size, image.mtime_ns, entry.meta])
    cache.keep_only("meta", used)
    return read


# --------------------------------------------------------------------------- work left


def work_left(root: Path, inventory: Inventory, queue: list[QueueItem] | None
              ) -> dict[str, tuple[int | None, str]]:
    """stage -> (jobs left or None when unknown, how it was counted); see report.py's docstring."""
    generated = inventory.count("generated")
    upscaled = inventory.count("upscaled")
    if queue is None:
        generate = (None, "unknown (generate.py's queue is not kept in the folder: give the same "
                          "--queue FILE or --add NATION:CATEGORY:COUNT to count it)")
    else:
        planned = [f"{item.nation}/{item.category}/{Path(image_name(item.nation, item.category, n)).stem}"
                   for item in queue for n in range(1, item.count + 1)]
        missing = sum(1 for key in planned
                      if key not in inventory.entries or not inventory.entries[key].generated)
        generate = (missing, f"of the {len(planned):,} images in the queue not generated yet")
    upscale = sum(1 for entry in inventory.entries.values() if entry.generated and not entry.upscaled)
    segment = sum(1 for entry in inventory.entries.values()
                  if entry.upscaled and not entry.cutouts_folder)
    return {
        "generate": generate,
        "upscale": (upscale, f"of {generated:,} generated images not upscaled yet"),
        "segment": (segment, f"of {upscaled:,} upscaled images without cut-outs yet"),
    }
