"""Segment Anything on the upscaled images: model table, loading, devices, the segment stage.

    MODEL_TYPES          model type -> SamArchitecture ("vit_h", "vit_l", "vit_b", and
                         "vit_tiny": a 0.4 M-parameter random-weight model for tests)
    GeneratorSettings    the automatic mask generator's settings, named as in
                         segment-anything's scripts/amg.py
    CutoutSettings       which masks become cut-outs (specks and background dropped)
    ModelSettings        model type, checkpoint, device, precision
    model_type_for(path) the model type a checkpoint's file name says, or None
    missing_checkpoint_message(model_type, path)
    choose_device(name)  "auto" -> "mps" on Apple Silicon, "cuda" where present, else "cpu"
    load_sam(model_type, checkpoint, device)
    Segmenter            one loaded model + the lean mask generator (mask_generator.py)
    choose_cutouts(...)  the masks that become cut-outs, largest first
    SegmentStage         UPSCALED_IMAGES/<sub-folders>/<stem>.png
                         -> CUTOUTS/<sub-folders>/<stem>/{<stem>_cutout_<k>.png, cutouts.json}

torch is imported only inside functions here (and by mask_generator.py, which is
imported only by them), so the scripts that do not segment start instantly. It is
imported through ``import_torch()``, which first sets PYTORCH_ENABLE_MPS_FALLBACK=1:
PyTorch reads it once, at import, and without it an operator MPS lacks is an error
instead of a trip to the CPU.

One cut-out folder is one job: it is built under a temporary name beside its final
place and renamed as a whole by the engine (stage.py), so a crash never leaves a
half-made folder, and "done" means the folder exists.
"""

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from drawpipe.sam.checkpoints import OFFICIAL_CHECKPOINTS, CheckpointError, CheckpointFile
from drawpipe.errors import BadInput, UsageError
from drawpipe.layout import CUTOUTS_RECORD, UPSCALED_FOLDER, cutouts_path, generated_for_upscaled
from drawpipe.engine.loop import Job, JobResult, remove_quietly, scan_inputs
from drawpipe.curate.takes import Freshness, Rejections, set_aside, takes_set_aside

RECORD_VERSION = 1
DEVICES = ("auto", "mps", "cuda", "cpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArchitecture:
    """The shape of one SAM model type (segment-anything's build_sam.py, with the
    prompt/decoder sizes made explicit so a tiny test model fits the same code)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    official: CheckpointFile | None = None  # where the trained weights are published


MODEL_TYPES = {
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31), official=OFFICIAL_CHECKPOINTS["vit_h"]),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23), official=OFFICIAL_CHECKPOINTS["vit_l"]),
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11), official=OFFICIAL_CHECKPOINTS["vit_b"]),
    # For tests only: ~0.4 M parameters, no published weights. Same image size (1024),
    # patch size and code paths as the real ones; a random-weight checkpoint of it is
    # made with save_random_checkpoint().
    "vit_tiny": SamArchitecture(64, 1, 2, (0,), prompt_embed_dim=32, decoder_mlp_dim=64,
                                decoder_num_heads=2, iou_head_hidden_dim=32),
}


@dataclass(frozen=True)
class GeneratorSettings:
    """SamAutomaticMaskGenerator's settings and defaults (segment-anything's names).
    ``points_per_batch`` None: chosen from the memory available."""

    points_per_side: int = 32
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0


@dataclass(frozen=True)
class CutoutSettings:
    """``margin_fraction``: free space on each side of the object, as a fraction of its
    box's longer side; masks smaller than ``min_area_fraction`` of the image are
    specks; a mask whose box touches all four image edges is the background (kept
    only with ``keep_background``); at most ``max_cutouts`` (None: all), largest first."""

    margin_fraction: float = 0.05
    min_area_fraction: float = 0.001
    max_cutouts: int | None = None
    keep_background: bool = False


@dataclass(frozen=True)
class ModelSettings:
    model_type: str
    checkpoint: Path
    device: str = "auto"
    precision: str = "auto"


# ---------------------------------------------------------------- model table and loading


def model_type_for(checkpoint: Path) -> str | None:
    """The model type named in a checkpoint's file name ("sam_vit_b_01ec64.pth" ->
    "vit_b"), or None."""
    found = re.search(r"vit_(h|l|b|tiny)(?![a-z])", Path(checkpoint).name.lower())
    return f"vit_{found.group(1)}" if found else None


def missing_checkpoint_message(model_type: str, checkpoint: Path) -> str:
    official = MODEL_TYPES[model_type].official
    if official is None:
        return (f"SAM checkpoint {checkpoint} not found ({model_type} is a test model: "
                "make one with drawpipe.segmentation.save_random_checkpoint)")
    return (f"SAM checkpoint {checkpoint} not found: download {official.file_name} from "
            f"{official.url} and pass --checkpoint PATH, or add --download")


def import_torch():
    """``import torch``, with the MPS fallback switched on first (see the module docstring)."""
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    try:
        import segment_anything  # noqa: F401
        import torch
    except ImportError as exc:
        raise UsageError(f"segmenting needs PyTorch, torchvision, segment-anything and OpenCV "
                         f"({exc}): pip install -e '.[segment]'") from None
    return torch


def choose_device(requested: str = "auto") -> str:
    """"auto": "mps" on Apple Silicon, "cuda" where present, else "cpu". Asking for a
    device PyTorch cannot use is a UsageError."""
    torch = import_torch()
    mps = torch.backends.mps.is_available()
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "mps" if mps else "cuda" if cuda else "cpu"
    if requested == "mps" and not mps:
        raise UsageError("--device mps: this PyTorch sees no MPS device (it needs Apple "
                         "Silicon, macOS 12.3 or later and an arm64 Python)")
    if requested == "cuda" and not cuda:
        raise UsageError("--device cuda: this PyTorch sees no CUDA GPU")
    if requested not in DEVICES:
        raise UsageError(f"--device {requested}: expected one of {', '.join(DEVICES)}")
    return requested


def choose_precision(requested: str, device: str) -> str:
    """"auto" is float32 everywhere, because reduced precision does not keep SAM's masks:
    measured with vit_b on a CPU with native bfloat16 (AVX512-BF16), bfloat16 autocast
    ran the encoder 1.3x and the decoder 1.4x faster, but changed the decoder's masks
    (IoU down to 0.988 against float32, from the same embedding). A Mac's CPU has no fast
    bfloat16 and MPS runs SAM in float32 only. "bfloat16"/"float16" are there for who
    wants the speed on a CPU or GPU that has it and accepts the difference."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested}: expected one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "float32"
    if device == "mps" and requested != "float32":
        raise UsageError(f"--precision {requested}: on MPS SAM runs in float32 only")
    return requested


def build_sam(model_type: str, device: str | None = None):
    """An untrained ``Sam`` of ``model_type`` (random weights; on ``device``, or on
    "meta" - shapes only - for loading a checkpoint into)."""
    torch = import_torch()
    from functools import partial

    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    arch = MODEL_TYPES[model_type]
    image_size, patch_size = 1024, 16
    with torch.device(device or "cpu"):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=image_size,
                mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=arch.encoder_num_heads, patch_size=patch_size, qkv_bias=True,
                use_rel_pos=True, global_attn_indexes=arch.encoder_global_attn_indexes,
                window_size=14, out_chans=arch.prompt_embed_dim),
            prompt_encoder=PromptEncoder(
                embed_dim=arch.prompt_embed_dim,
                image_embedding_size=(image_size // patch_size, image_size // patch_size),
                input_image_size=(image_size, image_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=arch.prompt_embed_dim,
                                              mlp_dim=arch.decoder_mlp_dim,
                                              num_heads=arch.decoder_num_heads),
                transformer_dim=arch.prompt_embed_dim, iou_head_depth=3,
                iou_head_hidden_dim=arch.iou_head_hidden_dim),
            pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD))
    return sam.eval()


def save_random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save a random-weight ``model_type`` checkpoint (a state_dict, like the official
    files) to ``path``: for tests and benchmarks where no trained weights can be had."""
    torch = import_torch()
    torch.manual_seed(seed)
    sam = build_sam(model_type)
    torch.save(sam.state_dict(), path)
    return Path(path)


def detect_model_type(state_dict: dict) -> str | None:
    """The model type whose shapes a state_dict has, or None."""
    embed = state_dict.get("image_encoder.patch_embed.proj.weight")
    prompt = state_dict.get("prompt_encoder.no_mask_embed.weight")
    if embed is None or prompt is None or not hasattr(embed, "shape"):
        return None
    depth = len({key.split(".")[2] for key in state_dict if key.startswith("image_encoder.blocks.")})
    for name, arch in MODEL_TYPES.items():
        if (arch.encoder_embed_dim, arch.encoder_depth, arch.prompt_embed_dim) == (
                embed.shape[0], depth, prompt.shape[-1]):
            return name
    return None


def load_sam(model_type: str, checkpoint: Path, device: str = "cpu"):
    """The ``Sam`` of ``model_type`` with the weights in ``checkpoint``, in eval mode on
    ``device``. One copy of the weights in memory at a time (the model is built with
    shapes only and takes the loaded tensors as they are).

    Raises CheckpointError (one line: what is wrong, what to do) for a missing file,
    a file that is not a PyTorch checkpoint (corrupt, cut short), or a checkpoint of
    another model type.
    """
    torch = import_torch()
    checkpoint = Path(checkpoint)
    if model_type not in MODEL_TYPES:
        raise UsageError(f"unknown model type {model_type!r}: expected one of "
                         f"{', '.join(MODEL_TYPES)}")
    if not checkpoint.is_file():
        raise CheckpointError(missing_checkpoint_message(model_type, checkpoint))
    official = MODEL_TYPES[model_type].official
    fetch_again = (f"delete it and download {official.file_name} again from {official.url}"
                   if official else "make it again")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and I/O errors all mean: not a usable file
        raise CheckpointError(f"SAM checkpoint {checkpoint} is not a readable PyTorch file "
                              f"({_first_line(exc)}); it may be cut short or corrupt: "
                              f"{fetch_again}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {checkpoint} holds no model weights "
                              "(expected a state_dict of tensors)")
    sam = build_sam(model_type, device="meta")
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError:
        detected = detect_model_type(state)
        hint = (f"it is a {detected} checkpoint: pass --model {detected}" if detected
                else "is it a Segment Anything checkpoint?")
        raise CheckpointError(f"SAM checkpoint {checkpoint} does not fit model type "
                              f"{model_type}: {hint}") from None
    # Buffers that checkpoints do not hold (pixel normalisation) are still shapes only.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
    return sam.to(device).eval()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------- masks -> cut-outs


class Segmenter:
    """One loaded SAM and its lean mask generator. Loading takes seconds (vit_h: a
    2.5 GB file), so a process makes one and keeps it for every image."""

    def __init__(self, model: ModelSettings, generator: GeneratorSettings,
                 available_bytes: int | None = None):
        import psutil

        from drawpipe.sam.mask_generator import LeanMaskGenerator, choose_points_per_batch

        self.device = choose_device(model.device)
        self.precision = choose_precision(model.precision, self.device)
        self.sam = load_sam(model.model_type, model.checkpoint, self.device)
        if available_bytes is None:
            available_bytes = psutil.virtual_memory().available
        self.points_per_batch = generator.points_per_batch or choose_points_per_batch(available_bytes)
        self.generator = LeanMaskGenerator(self.sam, generator, self.precision,
                                           self.points_per_batch)

    def find_masks(self, image):
        """``image``: H x W x 3 uint8 RGB -> FoundMask list, largest first."""
        return self.generator.generate(image)


def choose_cutouts(masks: list, width: int, height: int, settings: CutoutSettings) -> list:
    """The masks (FoundMask, largest first) that become cut-outs."""
    chosen = []
    for mask in masks:
        x, y, w, h = mask.box
        if mask.area < settings.min_area_fraction * width * height:
            continue
        if not settings.keep_background and x == 0 and y == 0 and x + w == width and y + h == height:
            continue
        chosen.append(mask)
    return chosen[:settings.max_cutouts] if settings.max_cutouts is not None else chosen


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
        raise BadInput(f"{path.name} is not a readable image ({_first_line(exc)}); "
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
        name = f"{stem}_cutout_{number}.png"
        _write_file(folder / name, encode_png(cutout.rgba))
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
    _write_file(folder / CUTOUTS_RECORD, json.dumps(record, indent=1).encode("utf-8") + b"\n")
    return len(entries)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


class _PeakRss:
    """This process's peak resident memory (MiB) while the block runs, sampled."""

    def __init__(self, interval_seconds: float = 0.05):
        import psutil

        self._process = psutil.Process()
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        self.peak_mb = 0.0

    def _sample(self):
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / (1024 * 1024))

    def _run(self):
        while not self._stop.wait(self._interval_seconds):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, name="PeakRss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample()


class SegmentStage:
    """The segment stage (stage.py's Stage protocol): one job per upscaled PNG, whose
    output is the folder CUTOUTS/<same sub-folders>/<stem>/."""

    name = "segment"
    extra_columns = ("model_seconds", "cutout_seconds", "masks_found", "cutouts_written",
                     "peak_rss_mb", "device")

    def __init__(self, root: Path, model: ModelSettings, generator: GeneratorSettings,
                 cutouts: CutoutSettings, freshness: Freshness | None = None):
        self.root = Path(root)
        self.freshness = freshness or Freshness(None)
        self.rejected: list[str] = []  # upscaled images of rejected takes, as of the last plan
        self.model = model
        self.generator = generator
        self.cutouts = cutouts
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()

    def plan(self) -> list[Job]:
        """One job per upscaled PNG, but those of a take rejected in review (generate.py
        sets them aside when it makes the next take)."""
        rejections = Rejections(self.root, self.freshness)
        jobs, rejected = [], []
        for path in scan_inputs(self.root / UPSCALED_FOLDER):
            generated = generated_for_upscaled(self.root, path)
            if generated is not None and rejections.is_rejected(
                    generated.relative_to(self.root).as_posix()):
                rejected.append(path.relative_to(self.root).as_posix())
                continue
            output = cutouts_path(self.root, path)
            jobs.append(Job(key=output.relative_to(self.root).as_posix(), output=output,
                            input=path))
        self.rejected = rejected
        return jobs

    def is_current(self, job: Job) -> bool:
        """The cut-outs were made from the upscaled image there now (or record nothing)."""
        return self.freshness.is_current(job.output / CUTOUTS_RECORD, job.input,
                                         recorded_source_sha256)

    def set_aside(self, job: Job) -> None:
        """Move cut-outs made from an older upscaled image into REJECTED/ (claim held)."""
        set_aside(self.root, job.key, takes_set_aside(self.root, job.key) + 1)

    def segmenter(self) -> Segmenter:
        """The model, loaded on first use (a run with nothing to do loads nothing)."""
        with self._lock:
            if self._segmenter is None:
                self._segmenter = Segmenter(self.model, self.generator)
            return self._segmenter

    def make_worker(self, server: str | None, context=None):
        def run(job: Job, scratch: Path) -> JobResult:
            data = job.input.read_bytes()
            image = read_rgb(job.input, data)
            remove_quietly(scratch)  # left by an earlier crash of a worker of the same name
            height, width = image.shape[:2]
            with _PeakRss() as rss:
                segmenter = self.segmenter()
                started = time.monotonic()
                masks = segmenter.find_masks(image)
                model_seconds = time.monotonic() - started
                started = time.monotonic()
                chosen = choose_cutouts(masks, width, height, self.cutouts)
                record = {
                    "version": RECORD_VERSION,
                    "source": job.input.relative_to(self.root).as_posix(),
                    # takes.py: cut-outs made from another image than the one there
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
                "peak_rss_mb": rss.peak_mb, "device": segmenter.device})

        return run


def recorded_source_sha256(record_path: Path) -> str | None:
    """The upscaled image's SHA-256 a cutouts.json records, or None (made before drawpipe
    recorded one, or not readable as ours)."""
    try:
        record = json.loads(Path(record_path).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    sha256 = record.get("source_sha256") if isinstance(record, dict) else None
    return sha256 if isinstance(sha256, str) else None
