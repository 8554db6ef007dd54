"""The segment stage: every upscaled PNG -> a folder of SAM cut-outs.

    UPSCALED_IMAGES/<sub-folders>/<stem>.png
      -> CUTOUTS/<sub-folders>/<stem>/{<stem>_cutout_<k>.png, cutouts.json}
         (granularity "all": also <stem>_cutout_<k>_parts/<stem>_cutout_<k>_part_<j>.png)

One cut-out folder is one job: it is built under a scratch name beside its final
place and renamed as a whole by the engine, so a crash never leaves a half-made
folder, and "done" means the folder exists, records the upscaled image it was made
from (curate/takes.py) and was made with the settings asked for now (``made_with``
in cutouts.json: the granularity; the labeller adds its own). A folder made with
other settings is remade only when the run says so (``redo_other_settings``, the
script's --redo-cutouts): the old one is set aside into REJECTED/ first, like a stale
one. Folders made before drawpipe recorded ``made_with`` hold every mask SAM's stock
generator keeps: they count as granularity "parts". The model is loaded once per
process, on first use (sam/models.py Segmenter).

With ``labelling`` (segment.py --label) every cut-out is named (sam/labels.py), once
per process a Labeller loaded on first use: the name, its score and the runner-up go
into its cutouts.json entry and its PNG's text chunk (and the parts' too, in "all").
An object named as background (a wall, the sky) is not cut out but listed under
"background", and its parts become objects (name_objects); ``made_with`` then holds
the labels' settings (model, vocabulary, threshold), so another vocabulary redoes
exactly the folders made with the old one (with --redo-cutouts, as for granularity).

An image where nothing passes SAM's thresholds (or only specks and background do)
gets a folder all the same, with no cut-outs and ``empty_because`` saying why: it is
done, not failed, so a re-run does not try it again and again.
"""

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from drawpipe.curate.takes import Takes
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.metrics import ResourceSampler
from drawpipe.errors import BadInput
from drawpipe.files import remove_quietly, scan_inputs, write_synced
from drawpipe.inventory import RecordedSource
from drawpipe.layout import (CUTOUTS_RECORD, UPSCALED_FOLDER, cutout_name, cutout_parts_folder,
                             cutouts_path, part_name)
from drawpipe.sam.cutouts import choose_cutouts
from drawpipe.sam.labels import (Labeller, LabelSettings, Vocabulary, label_picture,
                                 load_labeller, settings_record)
from drawpipe.sam.models import Segmenter, choose_device, cuda_device_uuid, first_line
from drawpipe.sam.objects import LEVEL_NAMES, ObjectRules, regroup
from drawpipe.sam.settings import GRANULARITIES, CutoutSettings, GeneratorSettings, ModelSettings
from drawpipe.settings import default

RECORD_VERSION = 1
# What cut-out folders made before drawpipe recorded ``made_with`` were made with.
LEGACY_MADE_WITH = {"granularity": "parts"}


def read_rgb(path: Path, data: bytes):
    """``data``, the file at ``path``, as H x W x 3 uint8 RGB; BadInput if it is not a
    readable image."""
    import io

    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            return np.asarray(picture.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadInput(f"{path.name} is not a readable image ({first_line(exc)}); "
                       "it was left as it is") from None


def made_with_of(record: RecordedSource | None) -> dict:
    """The settings a cut-out folder records it was made with (inventory.recorded_source
    of it); a folder made before they were recorded holds what granularity "parts"
    makes."""
    if record is None or record.made_with is None:
        return dict(LEGACY_MADE_WITH)
    return record.made_with


def describe_made_with(made_with: dict) -> str:
    """What a folder was made with, in words: "granularity objects, no labels",
    "granularity all, labels ViT-B-32 (vocabulary 3f2a91c0, threshold 0.5)"."""
    said = [f"granularity {made_with.get('granularity')}"]
    labels = made_with.get("labels")
    if isinstance(labels, dict):
        said.append(f"labels {labels.get('model')} (vocabulary "
                    f"{str(labels.get('vocabulary_sha256'))[:8]}, threshold "
                    f"{labels.get('trust_threshold')})")
    else:
        said.append("no labels")
    said += [f"{name} {value}" for name, value in sorted(made_with.items())
             if name not in ("granularity", "labels")]
    return ", ".join(said)


def write_cutout_folder(folder: Path, stem: str, image, masks: list, record: dict,
                        margin_fraction: float, granularity: str = "parts",
                        background: list | None = None) -> int:
    """Write ``<stem>_cutout_<k>.png`` (k = 1.. in the order of ``masks``) and
    cutouts.json into ``folder`` (created); returns the number of cut-outs.

    "parts": one entry per mask. "objects": each entry also lists the object's parts
    (``mask.parts``: box, area, scores, level, polygons). "all": as objects, and each
    part is cut out too, into ``<stem>_cutout_<k>_parts/``. A mask with a ``label``
    (labels.Label) has it in its entry and in its PNG's text chunk. ``background``
    (when labelling): the objects named as background, listed under "background"
    without a picture.
    """
    folder.mkdir(parents=True)
    entries = []
    for number, mask in enumerate(masks, 1):
        entry = _cutout_entry(folder, cutout_name(stem, number), image, mask, margin_fraction)
        if granularity != "parts":
            entry["level"] = LEVEL_NAMES[mask.level]
            parts_folder = cutout_parts_folder(stem, number)
            if granularity == "all" and mask.parts:
                (folder / parts_folder).mkdir()
            entry["parts"] = []
            for j, part in enumerate(mask.parts, 1):
                if granularity == "all":
                    part_file = f"{parts_folder}/{part_name(stem, number, j)}"
                    part_entry = _cutout_entry(folder, part_file, image, part, margin_fraction)
                    part_entry["level"] = LEVEL_NAMES[part.level]
                else:
                    part_entry = _mask_entry(part)
                entry["parts"].append(part_entry)
        entries.append(entry)
    record = {**record, "cutouts": entries}
    if background is not None:
        record["background"] = [_mask_entry(mask) for mask in background]
    write_synced(folder / CUTOUTS_RECORD, json.dumps(record, indent=1).encode("utf-8") + b"\n")
    return len(entries)


def _mask_entry(mask) -> dict:
    """What cutouts.json says of a mask without a picture of it (a part of an object, a
    background object)."""
    from drawpipe.sam.cutouts import mask_polygons

    x, y, _, _ = mask.box
    return {**_label_field(mask), **_mask_fields(mask),
            "polygons": mask_polygons(mask.mask, offset=(x, y)),
            "level": LEVEL_NAMES[mask.level]}


def _cutout_entry(folder: Path, name: str, image, mask, margin_fraction: float) -> dict:
    """Cut ``mask`` out of ``image`` into ``folder / name`` (its label, if any, in the
    PNG's text chunk); its cutouts.json entry (the fields as drawpipe has always written
    them, in that order, a label after the file name)."""
    from drawpipe.png import add_text_chunks
    from drawpipe.sam.cutouts import cut_out, encode_png, mask_polygons

    x, y, _, _ = mask.box
    pixels = mask.mask  # a FoundMask unpacks its bits on every read: once for both uses
    cutout = cut_out(image, pixels, margin_fraction, offset=(x, y))
    png = encode_png(cutout.rgba)
    if mask.label is not None:
        png = add_text_chunks(png, mask.label.png_texts())
    write_synced(folder / name, png)
    return {"file": name, **_label_field(mask), **_mask_fields(mask),
            "canvas": list(cutout.canvas), "polygons": mask_polygons(pixels, offset=(x, y))}


def _label_field(mask) -> dict:
    return {} if mask.label is None else {"label": mask.label.record()}


def _mask_fields(mask) -> dict:
    x, y, w, h = mask.box
    return {
        "bbox": [x, y, w, h],
        "area": mask.area,
        "predicted_iou": round(mask.predicted_iou, 6),
        "stability_score": round(mask.stability_score, 6),
        "point": [round(mask.point[0], 2), round(mask.point[1], 2)],
        "crop_box": list(mask.crop_box),
    }


@dataclass(frozen=True)
class Labelling:
    """How segment.py --label names the cut-outs: ``settings``, the label model and its
    file (labels.LabelSettings, the file resolved); the ``vocabulary``; ``cache_root``,
    the cache folder that keeps the vocabulary's name vectors (labels.load_labeller)."""

    settings: LabelSettings
    vocabulary: Vocabulary
    cache_root: Path | None = None

    def record(self) -> dict:
        """What decides the labels (labels.settings_record): part of ``made_with``."""
        return settings_record(self.settings, self.vocabulary)


def name_objects(image, objects: list, labeller, rules: ObjectRules, cutouts: CutoutSettings,
                 name_parts: bool = False) -> tuple[list, list]:
    """Name ``objects`` (FoundMasks, after choose_cutouts' other rules; each gets its
    ``label``) and take out those named as background (unless ``cutouts.keep_background``).

    An object named as background does not take its parts with it: a wall's mask may hold
    the poster on it, a backdrop's the shuttle before it. Its parts become objects,
    nested among themselves by the part-of rule (objects.regroup), and are named in turn.
    Returns (objects largest first, at most ``cutouts.max_cutouts``; those named as
    background, largest first, without parts). ``name_parts``: the kept objects' parts
    are named too (granularity "all", where they are pictures of their own).
    """
    height, width = image.shape[:2]
    uncapped = replace(cutouts, max_cutouts=None)
    kept, background = [], []
    to_name = list(objects)
    while to_name:
        _name(image, to_name, labeller, cutouts.margin_fraction)
        promoted = []
        for mask in to_name:
            if mask.label.background and not cutouts.keep_background:
                promoted += _promote(mask.parts, rules)
                mask.parts = []
                background.append(mask)
            else:
                kept.append(mask)
        to_name = choose_cutouts(promoted, width, height, uncapped)
    kept.sort(key=lambda mask: mask.area, reverse=True)
    background.sort(key=lambda mask: mask.area, reverse=True)
    kept = choose_cutouts(kept, width, height, cutouts)  # only max_cutouts is left to apply
    if name_parts:
        _name(image, [part for mask in kept for part in mask.parts], labeller,
              cutouts.margin_fraction)
    return kept, background


def _promote(parts: list, rules: ObjectRules) -> list:
    """The parts of an object that is dropped, as objects with their own parts."""
    promoted = []
    for group in regroup(parts, rules):
        found = parts[group.index]
        found.parts = [parts[index] for index in group.parts]
        promoted.append(found)
    return promoted


def _name(image, masks: list, labeller, margin_fraction: float) -> None:
    """Set each mask's ``label`` from the labeller, shown the cut-out as it is written."""
    from drawpipe.sam.cutouts import cut_out

    pictures = []
    for mask in masks:
        x, y, _, _ = mask.box
        pictures.append(label_picture(cut_out(image, mask.mask, margin_fraction, (x, y)).rgba))
    for mask, label in zip(masks, labeller.label(pictures)):
        mask.label = label


def empty_because(masks_found: int, generator: GeneratorSettings, cutouts: CutoutSettings,
                  background: list | None = None) -> str:
    """Why an image got no cut-out, in words for cutouts.json."""
    if background:
        names = ", ".join(sorted({mask.label.name for mask in background}))
        return (f"every object found was named as background ({len(background)}: {names}; "
                "listed under \"background\"); --keep-background keeps them")
    if masks_found == 0:
        return (f"no mask larger than a speck passed SAM's quality thresholds (predicted IoU above "
                f"{generator.pred_iou_thresh:g}, stability at least "
                f"{generator.stability_score_thresh:g}; the whole level: above "
                f"{generator.whole_pred_iou_thresh:g}, at least "
                f"{generator.whole_stability_score_thresh:g})")
    return (f"every mask found ({masks_found}) was a speck (below {cutouts.min_area_fraction:g} "
            "of the image) or the background (its box spans the whole image)")


class SegmentStage:
    """The segment stage (engine/jobs.py's Stage protocol): one job per upscaled PNG, whose
    output is the folder CUTOUTS/<same sub-folders>/<stem>/.

    ``granularity``: settings.GRANULARITIES; ``redo_other_settings``: remake folders
    made with other settings (else they count as done and are left as they are)."""

    name = "segment"
    extra_columns = ("model_seconds", "label_seconds", "cutout_seconds", "masks_found",
                     "cutouts_written", "peak_rss_mb", "device")

    def __init__(self, root: Path, model: ModelSettings, generator: GeneratorSettings,
                 cutouts: CutoutSettings, takes: Takes | None = None,
                 granularity: str = default("granularity"), redo_other_settings: bool = False,
                 rules: ObjectRules | None = None, labelling: Labelling | None = None):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        self.root = Path(root)
        self.takes = takes or Takes(root)
        self.rejected: list[str] = []  # upscaled images of rejected takes, as of the last plan
        self.model = model
        self.generator = generator
        self.cutouts = cutouts
        self.granularity = granularity
        self.redo_other_settings = redo_other_settings
        # Specks as the cut-outs' rule: they take no part in telling objects from parts.
        self.rules = rules or ObjectRules(min_area_fraction=cutouts.min_area_fraction)
        self.labelling = labelling
        self.empty: list[tuple[str, str]] = []  # (job key, why) of images with no cut-out
        self._segmenter: Segmenter | None = None
        self._labeller: Labeller | None = None
        self._lock = threading.Lock()

    def made_with(self) -> dict:
        """The settings that decide what the cut-outs are, as cutouts.json records them
        (``made_with``): a folder made with others is remade with --redo-cutouts."""
        made_with = {"granularity": self.granularity}
        if self.labelling is not None:
            made_with["labels"] = self.labelling.record()
        return made_with

    def plan(self) -> list[Job]:
        """One job per upscaled PNG, but those of a take rejected in review (generate.py
        sets them aside when it makes the next take)."""
        self.takes.reload()
        jobs, rejected = [], []
        for path in scan_inputs(self.root / UPSCALED_FOLDER):
            if self.takes.made_from_rejected(path):
                rejected.append(path.relative_to(self.root).as_posix())
                continue
            output = cutouts_path(self.root, path)
            jobs.append(Job(key=output.relative_to(self.root).as_posix(), output=output,
                            input=path))
        self.rejected = rejected
        return jobs

    def is_current(self, job: Job) -> bool:
        """The cut-outs were made from the upscaled image there now (or record nothing),
        and with the settings asked for (or those are not to be redone)."""
        if not self.takes.is_current(job.output, job.input):
            return False
        return not self.redo_other_settings or self._made_with_there(job) == self.made_with()

    def made_with_other_settings(self, job: Job) -> dict | None:
        """What the existing cut-outs of ``job`` were made with, when that is not what
        is asked for now (None: no folder, or made with these settings)."""
        if not job.output.exists():
            return None
        made_with = self._made_with_there(job)
        return None if made_with == self.made_with() else made_with

    def _made_with_there(self, job: Job) -> dict:
        """What the job's cut-out folder records it was made with (curate/takes.py reads
        its cutouts.json once per version of the file)."""
        return made_with_of(self.takes.recorded(job.output))

    def set_aside(self, job: Job) -> None:
        """Move cut-outs made from an older upscaled image, or with other settings, into
        REJECTED/ (claim held)."""
        self.takes.set_aside_stale(job.key, job.output)

    def segmenter(self) -> Segmenter:
        """The model, loaded on first use (a run with nothing to do loads nothing)."""
        with self._lock:
            if self._segmenter is None:
                self._segmenter = Segmenter(self.model, self.generator, self.rules)
            return self._segmenter

    def labeller(self) -> Labeller:
        """The label model, loaded on first use, and the vocabulary's names embedded (or
        read from the cache folder): one per process."""
        with self._lock:
            if self._labeller is None:
                self._labeller = load_labeller(self.labelling.settings,
                                               self.labelling.vocabulary,
                                               self.labelling.cache_root)
            return self._labeller

    def cuda_devices(self) -> tuple[str, ...]:
        """The GPU the model runs on, for the energy meter (engine/jobs.py): its UUID on
        CUDA; none on mps or the cpu."""
        device = (self._segmenter.device if self._segmenter is not None
                  else choose_device(self.model.device))
        return (cuda_device_uuid(device),) if device.startswith("cuda") else ()

    def process_to_sample(self, server: None) -> None:
        """None: the model runs in this process, which each job samples itself."""
        return None

    def make_worker(self, server: str | None, context=None):
        def run(job: Job, scratch: Path) -> JobResult:
            if context is not None:
                context.checkpoint()  # a job no longer ours is not segmented
            data = job.input.read_bytes()
            image = read_rgb(job.input, data)
            remove_quietly(scratch)  # left by an earlier crash of a worker of the same name
            height, width = image.shape[:2]
            with ResourceSampler(0.05) as usage:
                segmenter = self.segmenter()
                started = time.monotonic()
                masks = segmenter.find_masks(image, self.granularity)
                model_seconds = time.monotonic() - started
                # Objects and parts both: what SAM found that passed its thresholds.
                masks_found = len(masks) + sum(len(mask.parts) for mask in masks)
                started = time.monotonic()
                background, label_seconds = None, None
                if self.labelling is None:
                    chosen = choose_cutouts(masks, width, height, self.cutouts)
                else:
                    unnamed = choose_cutouts(masks, width, height,
                                             replace(self.cutouts, max_cutouts=None))
                    chosen, background = name_objects(
                        image, unnamed, self.labeller(), self.rules, self.cutouts,
                        name_parts=self.granularity == "all")
                    label_seconds = time.monotonic() - started
                    started = time.monotonic()
                record = {
                    "version": RECORD_VERSION,
                    "source": job.input.relative_to(self.root).as_posix(),
                    # curate/takes.py: cut-outs made from another image than the one there
                    # now are stale.
                    "source_sha256": hashlib.sha256(data).hexdigest(),
                    "width": width,
                    "height": height,
                    "model": self.model.model_type,
                    "checkpoint": self.model.checkpoint.name,
                    "device": segmenter.device,
                    "precision": segmenter.precision,
                    "generator": {**asdict(self.generator),
                                  "points_per_batch": segmenter.points_per_batch},
                    "cutout_settings": asdict(self.cutouts),
                    "masks_found": masks_found,
                    "granularity": self.granularity,
                    # Cut-outs made with other settings are remade with --redo-cutouts.
                    "made_with": self.made_with(),
                }
                if self.granularity != "parts":
                    record["object_rules"] = asdict(segmenter.rules)
                if self.labelling is not None:
                    record["labels"] = self._labels_record()
                if not chosen:
                    record["empty_because"] = empty_because(masks_found, self.generator,
                                                            self.cutouts, background)
                    with self._lock:
                        self.empty.append((job.key, record["empty_because"]))
                written = write_cutout_folder(scratch, job.output.name, image, chosen, record,
                                              self.cutouts.margin_fraction, self.granularity,
                                              background)
                cutout_seconds = time.monotonic() - started
            return JobResult(folder_built=True, extra={
                "model_seconds": model_seconds, "label_seconds": label_seconds,
                "cutout_seconds": cutout_seconds, "masks_found": masks_found,
                "cutouts_written": written, "peak_rss_mb": usage.result().process_rss_mb,
                "device": segmenter.device})

        return run

    def _labels_record(self) -> dict:
        """cutouts.json's "labels": what decides the labels, and the file, vocabulary
        and device that made them."""
        labelling = self.labelling
        return {**labelling.record(), "checkpoint": Path(labelling.settings.checkpoint).name,
                "vocabulary": Path(labelling.vocabulary.source).name,
                "names": len(labelling.vocabulary.names),
                "stuff": len(labelling.vocabulary.stuff), "device": self.labeller().device}
