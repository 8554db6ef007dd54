"""Segment Anything models: the model table, devices, loading, and the loaded model.

    MODEL_TYPES          model type -> SamArchitecture: "vit_h", "vit_l", "vit_b" (the
                         official ones), "vit_t" (MobileSAM: TinyViT encoder, tiny_vit.py),
                         and "vit_tiny", a 0.4 M-parameter configuration the tests and
                         benchmarks build with random weights and load through the same
                         code (not offered by segment.py --model)
    model_type_for(path) the model type a checkpoint's file name says, or None
    missing_checkpoint_message(model_type, path)
    choose_device(name)  "auto" -> "mps" on Apple Silicon, "cuda" where present, else "cpu"
    cuda_device_uuid(device)  "GPU-<uuid>" of a CUDA device, as NVML names it
    load_sam(model_type, checkpoint, device)
    Segmenter            one loaded model + the lean mask generator (mask_generator.py)

torch is imported only inside functions here (and by mask_generator.py, which is
imported only by them), so the scripts that do not segment start instantly. It is
imported through ``import_torch()``, which first sets PYTORCH_ENABLE_MPS_FALLBACK=1:
PyTorch reads it once, at import, and without it an operator MPS lacks is an error
instead of a trip to the CPU.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from drawpipe.errors import CheckpointError, UsageError
from drawpipe.sam.checkpoints import OFFICIAL_CHECKPOINTS, CheckpointFile
from drawpipe.sam.settings import GeneratorSettings, ModelSettings

DEVICES = ("auto", "mps", "cuda", "cpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArchitecture:
    """The shape of one SAM model type (segment-anything's build_sam.py, with the
    prompt/decoder sizes made explicit so a tiny test model fits the same code).
    ``encoder``: "vit" (SAM's ImageEncoderViT, shaped by the ``encoder_*`` fields) or
    "tiny_vit" (MobileSAM's TinyViT-5M, fixed: tiny_vit.py)."""

    encoder: str = "vit"
    encoder_embed_dim: int | None = None
    encoder_depth: int | None = None
    encoder_num_heads: int | None = None
    encoder_global_attn_indexes: tuple[int, ...] = ()
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    official: CheckpointFile | None = None  # where the trained weights are published


MODEL_TYPES = {
    "vit_h": SamArchitecture("vit", 1280, 32, 16, (7, 15, 23, 31),
                             official=OFFICIAL_CHECKPOINTS["vit_h"]),
    "vit_l": SamArchitecture("vit", 1024, 24, 16, (5, 11, 17, 23),
                             official=OFFICIAL_CHECKPOINTS["vit_l"]),
    "vit_b": SamArchitecture("vit", 768, 12, 12, (2, 5, 8, 11),
                             official=OFFICIAL_CHECKPOINTS["vit_b"]),
    # MobileSAM: SAM's prompt encoder and mask decoder behind TinyViT-5M.
    "vit_t": SamArchitecture("tiny_vit", official=OFFICIAL_CHECKPOINTS["vit_t"]),
    # For tests only: ~0.4 M parameters, no published weights. Same image size (1024),
    # patch size and code paths as the real ones; a random-weight checkpoint of it is
    # made with save_random_checkpoint().
    "vit_tiny": SamArchitecture("vit", 64, 1, 2, (0,), prompt_embed_dim=32, decoder_mlp_dim=64,
                                decoder_num_heads=2, iou_head_hidden_dim=32),
}


# ---------------------------------------------------------------- model table and loading


def model_type_for(checkpoint: Path) -> str | None:
    """The model type named in a checkpoint's file name ("sam_vit_b_01ec64.pth" ->
    "vit_b", "mobile_sam.pt" -> "vit_t"), or None."""
    name = Path(checkpoint).name.lower()
    found = re.search(r"vit_(h|l|b|t|tiny)(?![a-z])", name)
    if found:
        return f"vit_{found.group(1)}"
    return "vit_t" if re.search(r"mobile_?sam", name) else None


def missing_checkpoint_message(model_type: str, checkpoint: Path) -> str:
    official = MODEL_TYPES[model_type].official
    if official is None:
        return (f"SAM checkpoint {checkpoint} not found ({model_type} is a test model: "
                "make one with drawpipe.sam.models.save_random_checkpoint)")
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


def cuda_device_uuid(device: str) -> str:
    """NVML's name for the CUDA device ``device`` ("cuda": the current one, or "cuda:N"):
    "GPU-" + its UUID, which CUDA_VISIBLE_DEVICES and device order cannot change."""
    torch = import_torch()
    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    return "GPU-" + str(torch.cuda.get_device_properties(index).uuid)


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
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    arch = MODEL_TYPES[model_type]
    image_size, patch_size = 1024, 16
    with torch.device(device or "cpu"):
        sam = Sam(
            image_encoder=IMAGE_ENCODERS[arch.encoder](arch, image_size, patch_size),
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


def _vit_encoder(arch: SamArchitecture, image_size: int, patch_size: int):
    """SAM's own ImageEncoderViT (segment-anything's build_sam.py)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=image_size,
        mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=arch.encoder_num_heads, patch_size=patch_size, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=arch.encoder_global_attn_indexes,
        window_size=14, out_chans=arch.prompt_embed_dim)


def _tiny_vit():
    """drawpipe.sam.tiny_vit (it imports timm); UsageError saying how to install timm."""
    try:
        from drawpipe.sam import tiny_vit
    except ImportError as exc:
        raise UsageError(f"--model vit_t needs timm ({exc}): pip install -e '.[segment]'") from None
    return tiny_vit


def _tiny_vit_encoder(arch: SamArchitecture, image_size: int, patch_size: int):
    """MobileSAM's TinyViT (tiny_vit.py; its size is fixed, so ``arch`` says nothing)."""
    return _tiny_vit().TinyViTEncoder()


IMAGE_ENCODERS = {"vit": _vit_encoder, "tiny_vit": _tiny_vit_encoder}


def save_random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save a random-weight ``model_type`` checkpoint (a state_dict, like the official
    files) to ``path``: for tests and benchmarks where no trained weights can be had.
    (vit_t's is in this code's key layout, which load_sam reads too; MobileSAM's own
    layout is what its official file has.)"""
    torch = import_torch()
    torch.manual_seed(seed)
    sam = build_sam(model_type)
    torch.save(sam.state_dict(), path)
    return Path(path)


# The stem of MobileSAM's TinyViT in its own checkpoints, and in this code's layout.
MOBILE_SAM_KEY = "image_encoder.patch_embed.seq.0.c.weight"
TINY_VIT_KEY = "image_encoder.patch_embed.conv1.conv.weight"


def detect_model_type(state_dict: dict) -> str | None:
    """The model type whose shapes a state_dict has, or None."""
    if MOBILE_SAM_KEY in state_dict or TINY_VIT_KEY in state_dict:
        return "vit_t"
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
    arch = MODEL_TYPES[model_type]
    state = read_weights(checkpoint, "SAM checkpoint", arch.official)
    if arch.encoder == "tiny_vit" and MOBILE_SAM_KEY in state:
        state = _tiny_vit().encoder_state_from_mobile_sam(state)
    # SAM's ViT is built with shapes only and takes the loaded tensors as they are (one
    # copy of vit_h's 2.5 GB). TinyViT (40 MB) is built for real: timm computes its
    # attention-bias index tables at construction, and checkpoints do not hold them.
    on_meta = arch.encoder == "vit"
    sam = build_sam(model_type, device="meta" if on_meta else "cpu")
    try:
        sam.load_state_dict(state, strict=True, assign=on_meta)
    except RuntimeError:
        detected = detect_model_type(state)
        hint = (f"its tensors are not the shapes of {model_type}'s (another size of the "
                "same architecture?)" if detected == model_type else
                f"it is a {detected} checkpoint: pass --model {detected}"
                if detected in OFFICIAL_CHECKPOINTS else
                f"it is a {detected} checkpoint: leave out --model and name the file after "
                f"its model type (sam_{detected}_*.pth)" if detected
                else "is it a Segment Anything checkpoint?")
        raise CheckpointError(f"SAM checkpoint {checkpoint} does not fit model type "
                              f"{model_type}: {hint}") from None
    if on_meta:
        # Buffers that checkpoints do not hold (pixel normalisation) are still shapes only.
        sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
    return sam.to(device).eval()


def free_memory_bytes(device: str) -> int:
    """Memory the decoder batches can use: the GPU's own free memory on CUDA; the
    machine's available RAM on the CPU and on MPS (Apple Silicon's memory is unified)."""
    import psutil

    if device == "cuda":
        free_bytes, _total_bytes = import_torch().cuda.mem_get_info()
        return free_bytes
    return psutil.virtual_memory().available


def not_a_model_file(what: str, path: Path, fetch_again: str) -> CheckpointError:
    """A file torch.load cannot read. torch's own text says nothing a user can act on
    (a bare "174812789", or a page about weights_only), so the message gives the file's
    size instead: a few KB where hundreds of MB are expected tells what happened."""
    try:
        size = f"{os.path.getsize(path):,} bytes"
    except OSError as exc:
        size = exc.strerror or "unreadable"
    return CheckpointError(f"{what} {path} is not a PyTorch model file ({size}: cut short, "
                           f"damaged, or another kind of file): {fetch_again}")


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_weights(path: Path, what: str, official: CheckpointFile | None) -> dict:
    """The state_dict in the model file at ``path`` (torch.load, weights only, on the CPU;
    a training checkpoint's "state_dict" entry). CheckpointError when the file is not a
    readable PyTorch file or holds no dict of tensors: ``what`` names the file for the
    user ("SAM checkpoint"), ``official`` says where to fetch it again (None: a test
    model, made again). For a model file of any kind (the labeller's too)."""
    torch = import_torch()
    fetch_again = (f"delete it and download {official.file_name} again from {official.url}"
                   if official else "make it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # zip, pickle and I/O errors all mean: not a usable file
        raise not_a_model_file(what, path, fetch_again) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint (open_clip's trainer saves these)
    if not isinstance(state, dict) or not state or not all(
            torch.is_tensor(value) for value in state.values()):
        raise CheckpointError(f"{what} {path} holds no model weights (expected a state_dict "
                              "of tensors)")
    return state


# ---------------------------------------------------------------- masks -> cut-outs


class Segmenter:
    """One loaded SAM and its lean mask generator. Loading takes seconds (vit_h: a
    2.5 GB file), so a process makes one and keeps it for every image. ``rules``:
    how objects are told from their parts (objects.ObjectRules; None: its defaults)."""

    def __init__(self, model: ModelSettings, generator: GeneratorSettings,
                 rules: "ObjectRules | None" = None, available_bytes: int | None = None):
        from drawpipe.sam.mask_generator import LeanMaskGenerator, choose_points_per_batch
        from drawpipe.sam.objects import ObjectRules

        self.device = choose_device(model.device)
        self.precision = choose_precision(model.precision, self.device)
        self.sam = load_sam(model.model_type, model.checkpoint, self.device)
        if available_bytes is None:
            available_bytes = free_memory_bytes(self.device)
        self.points_per_batch = generator.points_per_batch or choose_points_per_batch(available_bytes)
        self.rules = rules or ObjectRules()
        self.generator = LeanMaskGenerator(self.sam, generator, self.precision,
                                           self.points_per_batch, self.rules)

    def find_masks(self, image, granularity: str = "parts"):
        """``image``: H x W x 3 uint8 RGB -> FoundMask list, largest first: every mask
        SAM keeps ("parts"), or the objects, each with its ``parts`` ("objects", "all")."""
        return self.generator.generate(image, granularity)


