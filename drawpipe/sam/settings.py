"""How SAM is run: the mask generator's settings and the model to load (no torch here:
the scripts build these before deciding whether to load anything). The defaults of
what segment.py's options set come from the settings table (drawpipe/settings.py)."""

from dataclasses import dataclass
from pathlib import Path

from drawpipe.settings import SETTINGS, default

# What segment.py cuts out: "objects" (the things, each with its parts listed in
# cutouts.json), "parts" (every mask SAM's stock generator keeps: objects, their parts
# and sub-parts side by side) or "all" (objects, and each one's parts in a sub-folder).
GRANULARITIES = SETTINGS["granularity"].choices


@dataclass(frozen=True)
class GeneratorSettings:
    """SamAutomaticMaskGenerator's settings and defaults (segment-anything's names), and
    the thresholds of the whole level (SAM's largest mask of a point) for objects.
    ``points_per_batch`` None: chosen from the memory available.

    The whole level's stability threshold is lower than SAM's 0.95 because a whole thing
    is rarely that stable: its outline crosses people in front of it, shadows, glass.
    Measured on real MobileSAM weights (bench/segment.py's photos at 2048 px): the
    whole-bus masks of a street photo score predicted IoU 0.96-1.0 but stability
    0.70-0.81 (the cleanest 0.745), so at 0.95 no mask of the bus survives, only its
    windows, wheels and panels; a motorcycle's whole masks score 0.76-0.79, an
    astronaut's 0.81. Below 0.7 come merges of several things (the bus with the facade
    above it and the people before it: 0.68), and objects are taken largest first, so a
    merge would swallow the things in it. Predicted IoU does not tell them apart (0.93-
    0.97 for such merges): the whole level keeps SAM's 0.88.
    """

    points_per_side: int = default("points_per_side")
    points_per_batch: int | None = default("points_per_batch")
    pred_iou_thresh: float = default("pred_iou_thresh")
    stability_score_thresh: float = default("stability_score_thresh")
    whole_pred_iou_thresh: float = default("whole_pred_iou_thresh")
    whole_stability_score_thresh: float = default("whole_stability_score_thresh")
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
