"""MobileSAM's image encoder (TinyViT-5M) built from timm's TinyViT, and MobileSAM's
checkpoint layout read into it (imports torch and timm).

    TinyViTEncoder()                  the encoder: 1 x 3 x 1024 x 1024 -> 1 x 256 x 64 x 64
    encoder_state_from_mobile_sam(sd) MobileSAM's ``image_encoder.*`` keys -> this module's

MobileSAM (github.com/ChaoningZhang/MobileSAM, mobile_sam/modeling/tiny_vit_sam.py) is
SAM with its ViT image encoder replaced by TinyViT-5M (embed dims 64/128/160/320, depths
2/2/6/2, heads 2/4/5/10, windows 7/7/14/7) plus SAM's neck; its prompt encoder and mask
decoder are SAM's own. MobileSAM is not published as a package, so the encoder is timm's
TinyViT (a maintained library, the same blocks and arithmetic) with MobileSAM's two
changes made here:

- the last patch merging (160 -> 320 channels) does not halve the resolution, so the
  last stage stays at 1/16 of the input (64 x 64 tokens for 1024 px, what SAM's decoder
  takes);
- SAM's neck (1x1 conv to 256 channels, LayerNorm2d, 3x3 conv, LayerNorm2d) follows,
  and the classifier head is not used (MobileSAM's checkpoint still holds one:
  ``norm_head``, ``head``; it is read and left out).

The key map below is the whole difference in names: timm calls a conv+batch-norm pair's
conv ``conv`` (MobileSAM: ``c``), the stem's two convs ``conv1``/``conv2`` (MobileSAM:
``seq.0``/``seq.2``), and puts each patch merging at the *start* of the next stage
(MobileSAM: at the end of the stage before). On the real weights this encoder's output
matched MobileSAM's own TinyViT to 6.6e-7 (checked once, by hand, against the
mobilesam-mirror package ../shared/sam_real fetches; tests/test_segment.py's real-weights
test runs this encoder end to end when those weights are there).
"""

import re

import torch
from segment_anything.modeling.common import LayerNorm2d
from timm.models.tiny_vit import TinyVit

IMAGE_SIZE_PX = 1024
EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)
NECK_CHANNELS = 256

# MobileSAM's classifier head: in every checkpoint, used by nothing.
UNUSED_PREFIXES = ("norm_head.", "head.")


class TinyViTEncoder(torch.nn.Module):
    """``forward``: B x 3 x 1024 x 1024 float (SAM's normalised pixels) -> B x 256 x 64 x 64."""

    img_size = IMAGE_SIZE_PX  # read by segment-anything's Sam.preprocess and the generators

    def __init__(self):
        super().__init__()
        vit = TinyVit(num_classes=0, embed_dims=EMBED_DIMS, depths=DEPTHS, num_heads=NUM_HEADS,
                      window_sizes=WINDOW_SIZES, drop_path_rate=0.0)
        self.patch_embed = vit.patch_embed
        self.stages = vit.stages
        # MobileSAM's change to TinyViT: the last merging keeps the resolution.
        self.stages[-1].downsample.conv2.conv.stride = (1, 1)
        self.neck = torch.nn.Sequential(
            torch.nn.Conv2d(EMBED_DIMS[-1], NECK_CHANNELS, kernel_size=1, bias=False),
            LayerNorm2d(NECK_CHANNELS),
            torch.nn.Conv2d(NECK_CHANNELS, NECK_CHANNELS, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(NECK_CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stages(self.patch_embed(x)))


# (MobileSAM's name pattern, this module's), applied in order to each key.
KEY_MAP = (
    (r"^patch_embed\.seq\.0\.", "patch_embed.conv1."),
    (r"^patch_embed\.seq\.2\.", "patch_embed.conv2."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.c\.(weight|bias)$", r".conv.\1"),
)


def encoder_key(mobile_sam_key: str) -> str:
    """One MobileSAM image-encoder key (without ``image_encoder.``) -> this module's."""
    key = mobile_sam_key
    for pattern, replacement in KEY_MAP:
        key = re.sub(pattern, replacement, key)
    return key


def encoder_state_from_mobile_sam(state: dict) -> dict:
    """A MobileSAM state_dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``)
    with the image encoder's keys renamed for TinyViTEncoder and its unused classifier
    head left out; every other key as it is."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("image_encoder."):
            inner = key[len("image_encoder."):]
            if inner.startswith(UNUSED_PREFIXES):
                continue
            key = "image_encoder." + encoder_key(inner)
        renamed[key] = value
    return renamed
