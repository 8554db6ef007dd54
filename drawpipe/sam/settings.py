"""How SAM is run: the mask generator's settings and the model to load (no torch here:
the scripts build these before deciding whether to load anything)."""

from dataclasses import dataclass
from pathlib import Path


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
class ModelSettings:
    model_type: str
    checkpoint: Path
    device: str = "auto"
    precision: str = "auto"


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
