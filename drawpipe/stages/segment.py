"""The segment stage: every upscaled PNG -> a folder of SAM cut-outs.

    UPSCALED_IMAGES/<sub-folders>/<stem>.png
      -> CUTOUTS/<sub-folders>/<stem>/{<stem>_cutout_<k>.png, cutouts.json}

One cut-out folder is one job: it is built under a scratch name beside its final
place and renamed as a whole by the engine, so a crash never leaves a half-made
folder, and "done" means the folder exists (and records the upscaled image it was
made from: curate/takes.py). The model is loaded once per process, on first use
(sam/models.py Segmenter).
"""

import hashlib
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

from drawpipe.curate.takes import Takes
from drawpipe.engine.jobs import Job, JobResult
from drawpipe.engine.metrics import ResourceSampler
from drawpipe.errors import BadInput
from drawpipe.files import remove_quietly, scan_inputs, write_synced
from drawpipe.layout import CUTOUTS_RECORD, UPSCALED_FOLDER, cutout_name, cutouts_path
from drawpipe.sam.cutouts import choose_cutouts
from drawpipe.sam.models import Segmenter, choose_device, cuda_device_uuid, first_line
from drawpipe.sam.settings import CutoutSettings, GeneratorSettings, ModelSettings

RECORD_VERSION = 1


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


def write_cutout_folder(folder: Path, stem: str, image, masks: list, record: dict,
                        margin_fraction: float) -> int:
    """Write ``<stem>_cutout_<k>.png`` (k = 1.. in the order of ``masks``) and
    cutouts.json into ``folder`` (created); returns the number of cut-outs."""
    from drawpipe.sam.cutouts import cut_out, encode_png, mask_polygons

    folder.mkdir(parents=True)
    entries = []
    for number, mask in enumerate(masks, 1):
        x, y, w, h = mask.box
        cutout = cut_out(image, mask.mask, margin_fraction, offset=(x, y))
        name = cutout_name(stem, number)
        write_synced(folder / name, encode_png(cutout.rgba))
        entries.append({
            "file": name,
            "bbox": [x, y, w, h],
            "area": mask.area,
            "predicted_iou": round(mask.predicted_iou, 6),
            "stability_score": round(mask.stability_score, 6),
            "point": [round(mask.point[0], 2), round(mask.point[1], 2)],
            "crop_box": list(mask.crop_box),
            "canvas": list(cutout.canvas),
            "polygons": mask_polygons(mask.mask, offset=(x, y)),
        })
    record = {**record, "cutouts": entries}
    write_synced(folder / CUTOUTS_RECORD, json.dumps(record, indent=1).encode("utf-8") + b"\n")
    return len(entries)


class SegmentStage:
    """The segment stage (engine/jobs.py's Stage protocol): one job per upscaled PNG, whose
    output is the folder CUTOUTS/<same sub-folders>/<stem>/."""

    name = "segment"
    extra_columns = ("model_seconds", "cutout_seconds", "masks_found", "cutouts_written",
                     "peak_rss_mb", "device")

    def __init__(self, root: Path, model: ModelSettings, generator: GeneratorSettings,
                 cutouts: CutoutSettings, takes: Takes | None = None):
        self.root = Path(root)
        self.takes = takes or Takes(root)
        self.rejected: list[str] = []  # upscaled images of rejected takes, as of the last plan
        self.model = model
        self.generator = generator
        self.cutouts = cutouts
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()

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
        """The cut-outs were made from the upscaled image there now (or record nothing)."""
        return self.takes.is_current(job.output, job.input)

    def set_aside(self, job: Job) -> None:
        """Move cut-outs made from an older upscaled image into REJECTED/ (claim held)."""
        self.takes.set_aside_stale(job.key, job.output)

    def segmenter(self) -> Segmenter:
        """The model, loaded on first use (a run with nothing to do loads nothing)."""
        with self._lock:
            if self._segmenter is None:
                self._segmenter = Segmenter(self.model, self.generator)
            return self._segmenter

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
                masks = segmenter.find_masks(image)
                model_seconds = time.monotonic() - started
                started = time.monotonic()
                chosen = choose_cutouts(masks, width, height, self.cutouts)
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
                    "masks_found": len(masks),
                }
                written = write_cutout_folder(scratch, job.output.name, image, chosen, record,
                                              self.cutouts.margin_fraction)
                cutout_seconds = time.monotonic() - started
            return JobResult(folder_built=True, extra={
                "model_seconds": model_seconds, "cutout_seconds": cutout_seconds,
                "masks_found": len(masks), "cutouts_written": written,
                "peak_rss_mb": usage.result().process_rss_mb, "device": segmenter.device})

        return run
