"""SAM's three mask levels per grid point -> objects, each with its parts (numpy only).

For every prompt point SAM's decoder gives three masks: level 0 (a sub-part: a sleeve),
1 (a part: an arm) and 2 (the whole: the person). The stock automatic generator keeps
every level that passes its thresholds and removes duplicates by box overlap only, so
the person, the arm and the sleeve all become cut-outs. ``select_objects`` keeps the
things instead:

1. per point, the largest level that passes its quality thresholds (the whole level has
   its own: ``Thresholds.whole_*``, see settings.GeneratorSettings);
2. together with the masks the stock rules keep (``kept_as_part``: they are the parts),
   largest first, a mask with at least ``part_inside_fraction`` of its area inside an
   object already kept is a *part* of that object, or the same thing as it when their
   IoU is at least ``duplicate_iou`` (the better-scored of the two then stands for it);
   any other mask is a new object;
3. specks (below ``min_area_fraction`` of the frame) are dropped, and masks whose box
   spans the whole frame (the background) take no part in it: those the stock rules
   keep come back as objects without parts (one of near-equal ones, and none that is
   the same as an object kept in step 2), for the cut-out rules to drop (or keep:
   --keep-background) as they always have.

All masks are in one frame (the lean generator's 1024 px scale sampled every 4th pixel):
fractions and IoUs need no more.

``regroup(masks, rules)`` runs step 2 again among some masks alone, at full resolution:
the labeller's stage promotes the parts of an object it drops as background with it.
"""

from dataclasses import dataclass, field

import numpy as np

from drawpipe.settings import default

LEVEL_NAMES = ("sub-part", "part", "whole")  # SAM's multimask outputs 1..3, small to large


@dataclass(frozen=True)
class Thresholds:
    """SAM's quality thresholds for levels 0 and 1 (its own names) and the whole level's."""

    pred_iou_thresh: float
    stability_score_thresh: float
    whole_pred_iou_thresh: float
    whole_stability_score_thresh: float

    def passes(self, level: int, predicted_iou: float, stability_score: float) -> bool:
        if level == 2:
            return (predicted_iou > self.whole_pred_iou_thresh
                    and stability_score >= self.whole_stability_score_thresh)
        return predicted_iou > self.pred_iou_thresh and stability_score >= self.stability_score_thresh


@dataclass(frozen=True)
class ObjectRules:
    """``part_inside_fraction``: a mask this much inside a kept object is its part;
    ``duplicate_iou``: a mask inside an object with at least this IoU is the same thing;
    ``min_area_fraction``: smaller masks are specks (settings.CutoutSettings'). The
    defaults are the settings table's (drawpipe/settings.py: segment.py's flags)."""

    # Measured on real MobileSAM weights: two masks of one motorcycle lie 0.89 inside
    # each other (IoU 0.71); a bus's wheels lie 0.66-0.68 inside the bus's mask (their
    # tyres are outside it), a bollard in front of it 0.76, a balcony 0.81 inside the
    # facade: things of their own.
    part_inside_fraction: float = default("part_inside_fraction")
    duplicate_iou: float = default("duplicate_iou")
    min_area_fraction: float = default("min_area_fraction")


@dataclass
class Candidate:
    """One of SAM's masks for one point. ``mask``: H x W bool in the common frame."""

    mask: np.ndarray
    point: int  # index of the grid point that prompted it
    level: int  # 0, 1, 2 (LEVEL_NAMES)
    predicted_iou: float
    stability_score: float
    kept_as_part: bool = False  # kept by the stock rules (thresholds, box NMS)


@dataclass
class ObjectGroup:
    """An object (index into the candidates) and its parts (indexes), largest first."""

    index: int
    parts: list[int] = field(default_factory=list)


@dataclass
class _Shape:
    """A candidate's mask trimmed to its box, for cheap overlaps."""

    index: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    inside: np.ndarray  # the mask within its box
    area: int


def select_objects(candidates: list[Candidate], thresholds: Thresholds,
                   rules: ObjectRules) -> list[ObjectGroup]:
    """The objects among ``candidates`` (largest first) and each one's parts."""
    if not candidates:
        return []
    height, width = candidates[0].mask.shape
    min_area = rules.min_area_fraction * height * width

    largest_per_point: dict[int, int] = {}
    for index, candidate in enumerate(candidates):
        if not thresholds.passes(candidate.level, candidate.predicted_iou,
                                 candidate.stability_score):
            continue
        best = largest_per_point.get(candidate.point)
        if best is None or _area(candidate) > _area(candidates[best]):
            largest_per_point[candidate.point] = index
    pool = sorted(set(largest_per_point.values())
                  | {i for i, c in enumerate(candidates) if c.kept_as_part})

    shapes, left_out = [], []  # left out: the background
    for index in pool:
        shape = _shape(index, candidates[index].mask)
        if shape is None:
            continue
        if shape.area < min_area:
            continue
        if shape.box == (0, 0, width, height):
            if candidates[index].kept_as_part:
                left_out.append(shape)
        else:
            shapes.append(shape)
    groups = _nest(shapes, [candidate.predicted_iou for candidate in candidates], rules)
    by_index = {shape.index: shape for shape in shapes}
    kept = [by_index[group.index] for group in groups]
    backgrounds: list[_Shape] = []
    for shape in sorted(left_out, key=lambda s: (-candidates[s.index].predicted_iou, s.index)):
        # One of near-equal backgrounds, the better scored; none that is an object kept
        # already (seen on a real photo: a crowd's mask that spans the sampled frame, and
        # the same crowd a pixel short of an edge, with its parts: both were cut out).
        if all(_iou(shape, other) < rules.duplicate_iou for other in backgrounds + kept):
            backgrounds.append(shape)
    groups += [ObjectGroup(shape.index) for shape in backgrounds]
    areas = {group.index: _area(candidates[group.index]) for group in groups}
    groups.sort(key=lambda group: -areas[group.index])
    return groups


def regroup(masks: list, rules: ObjectRules) -> list[ObjectGroup]:
    """Step 2 of ``select_objects`` again, among ``masks`` alone: which of them are
    objects and which are parts of those (indexes into ``masks``, largest first). For
    the parts of an object that is dropped after all (named as background by the
    labeller): they become objects of their own, nested among themselves, rather than
    vanish with it. ``masks``: FoundMask-like (``mask`` h x w bool trimmed to ``box``
    (x, y, w, h), ``predicted_iou``), in one frame (the image's pixels)."""
    shapes = []
    for index, found in enumerate(masks):
        x, y, w, h = found.box
        pixels = found.mask  # a FoundMask unpacks its bits on every read: once here
        shape = _Shape(index, (x, y, x + w, y + h), pixels, int(np.count_nonzero(pixels)))
        if shape.area > 0:
            shapes.append(shape)
    return _nest(shapes, [found.predicted_iou for found in masks], rules)


def _nest(shapes: list["_Shape"], predicted_iou: list[float],
          rules: ObjectRules) -> list[ObjectGroup]:
    """Largest first, a shape mostly inside an object already kept is its part (or, as
    good as equal to it, the same thing: the better-scored one stands for it); any other
    is an object. ``predicted_iou``: by shape index."""
    # Largest first; of equal ones the better scored, then the earlier (deterministic).
    shapes = sorted(shapes, key=lambda s: (-s.area, -predicted_iou[s.index], s.index))
    objects: list[tuple[_Shape, list[_Shape]]] = []
    for shape in shapes:
        owner, owner_inside = None, 0.0
        for number, (kept, _) in enumerate(objects):
            inside = _overlap(shape, kept) / shape.area
            if inside >= rules.part_inside_fraction and inside > owner_inside:
                owner, owner_inside = number, inside
        if owner is None:
            objects.append((shape, []))
            continue
        kept, parts = objects[owner]
        if _iou(shape, kept) >= rules.duplicate_iou:
            if predicted_iou[shape.index] > predicted_iou[kept.index]:
                objects[owner] = (shape, parts)  # the better-scored mask stands for it
            continue
        if any(_iou(shape, part) >= rules.duplicate_iou for part in parts):
            continue  # the same part from another point
        parts.append(shape)
    return [ObjectGroup(kept.index, [part.index for part in parts]) for kept, parts in objects]


def _area(candidate: Candidate) -> int:
    return int(np.count_nonzero(candidate.mask))


def _shape(index: int, mask: np.ndarray) -> _Shape | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = int(columns[0]), int(rows[0]), int(columns[-1] + 1), int(rows[-1] + 1)
    inside = mask[y0:y1, x0:x1]
    return _Shape(index, (x0, y0, x1, y1), inside, int(np.count_nonzero(inside)))


def _overlap(a: _Shape, b: _Shape) -> int:
    """Pixels in both masks."""
    x0, y0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x1, y1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if x0 >= x1 or y0 >= y1:
        return 0
    in_a = a.inside[y0 - a.box[1]:y1 - a.box[1], x0 - a.box[0]:x1 - a.box[0]]
    in_b = b.inside[y0 - b.box[1]:y1 - b.box[1], x0 - b.box[0]:x1 - b.box[0]]
    return int(np.count_nonzero(in_a & in_b))


def _iou(a: _Shape, b: _Shape) -> float:
    both = _overlap(a, b)
    return both / (a.area + b.area - both)
