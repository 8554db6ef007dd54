"""How SAM is run: the mask generator's settings and the model to load (no torch here:
the scripts build these before deciding whether to load anything). The defaults of
what segment.py's options set come from the settings table (drawpipe/settings.py)."""

from dataclasses import dataclass
from pathlib import Path

from drawpipe.settings import default


@dataclass(frozen=True)
class GeneratorSettings:
    """SamAutomaticMaskGenerator's settings and defaults (segment-anything's names).
    ``points_per_batch`` None: chosen from the memory available."""

    points_per_side: int = default("points_per_side")
    points_per_batch: int | None = default("points_per_batch")
    pred_iou_thresh: float = default("pred_iou_thresh")
    stability_score_thresh: float = default("stability_score_thresh")
    stability_score_offset: float = default("stability_score_offset")
    box_nms_thresh: float = default("box_nms_thresh")
    crop_n_layers: int = default("crop_n_layers")
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = default("min_mask_region_area")


@dataclass(frozen=True)
class ModelSettings:
    model_type: str
    checkpoint: Path
    device: str = default("device")
    precision: str = default("precision")


@dataclass(frozen=True)
class CutoutSettings:
    """``margin_fraction``: free space on each side of the object, as a fraction of its
    box's longer side; masks smaller than ``min_area_fraction`` of the image are
    specks; a mask whose box touches all four image edges is the background (kept
    only with ``keep_background``); at most ``max_cutouts`` (None: all), largest first."""

    margin_fraction: float = default("margin")
    min_area_fraction: float = default("min_area_fraction")
    max_cutouts: int | None = default("max_cutouts")
    keep_background: bool = default("keep_background")
