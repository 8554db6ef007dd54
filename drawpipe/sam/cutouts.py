"""Object masks -> square transparent cut-outs and outline polygons (numpy + OpenCV only).

    mask_box(mask)                   (x, y, w, h) of a mask, exclusive extents, or None
    square_canvas(box, margin, ...)  where a square canvas around the box sits in the image
    cut_out(image, mask, ...)        Cutout: the square RGBA picture and where it sits
    mask_polygons(mask, ...)         outlines and holes as polygons, in source pixels
    encode_png(rgba)                 PNG bytes

Coordinates are source-image pixels, x to the right and y down. A polygon's vertices
are the centres of the mask's boundary pixels (OpenCV's convention): filling the
outer polygon, clearing the inside of each hole polygon and drawing the hole
polygons' edges back gives the mask again, pixel for pixel (the tests check it).
"""

from dataclasses import dataclass

import cv2
import numpy as np

from drawpipe.sam.settings import CutoutSettings


@dataclass
class Cutout:
    """``rgba``: side x side x 4 uint8, the object's pixels with alpha 255 and every
    other pixel (0, 0, 0, 0); ``canvas``: (x, y, side), where the picture's top-left
    pixel sits in the source image (x or y may be negative when the canvas reaches
    past the image's edge) and its side in pixels."""

    rgba: np.ndarray
    canvas: tuple[int, int, int]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the True pixels of ``mask`` (H x W bool), with exclusive extents:
    a mask covering columns 10..19 has x = 10, w = 10. None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return (int(columns[0]), int(rows[0]), int(columns[-1] + 1 - columns[0]),
            int(rows[-1] + 1 - rows[0]))


def square_canvas(box: tuple[int, int, int, int], margin_fraction: float) -> tuple[int, int, int]:
    """(x, y, side) of a square canvas with ``box`` centred in it and a margin of
    ``margin_fraction`` of the box's longer side on each side (at least one pixel when
    the fraction is above 0). When the free space is odd, the extra pixel goes right
    or down."""
    x, y, w, h = box
    longer = max(w, h)
    margin_px = int(round(longer * margin_fraction))
    if margin_fraction > 0:
        margin_px = max(1, margin_px)
    side = longer + 2 * margin_px
    return x - (side - w) // 2, y - (side - h) // 2, side


def cut_out(image: np.ndarray, mask: np.ndarray, margin_fraction: float = 0.05,
            offset: tuple[int, int] = (0, 0)) -> Cutout | None:
    """The square RGBA cut-out of one object at the image's own resolution; None for an
    empty mask.

    ``image``: H x W x 3 uint8 RGB; ``mask``: h x w bool whose top-left pixel is at
    ``offset`` (x, y) in ``image`` (a mask trimmed to its box) or, with the default
    offset, the whole image's mask. Pixels outside the mask are (0, 0, 0, 0), also
    where the canvas reaches past the image's edge.
    """
    box = mask_box(mask)
    if box is None:
        return None
    bx, by, bw, bh = box
    box = (bx + offset[0], by + offset[1], bw, bh)
    mask = mask[by:by + bh, bx:bx + bw]
    cx, cy, side = square_canvas(box, margin_fraction)
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    x, y = box[0] - cx, box[1] - cy  # the box's place on the canvas
    pixels = image[box[1]:box[1] + bh, box[0]:box[0] + bw]
    if pixels.shape[:2] != mask.shape:
        raise ValueError(f"mask of {mask.shape[1]} x {mask.shape[0]} px at {box[:2]} reaches "
                         f"outside the {image.shape[1]} x {image.shape[0]} px image")
    target = rgba[y:y + bh, x:x + bw]
    target[..., :3][mask] = pixels[mask]
    target[..., 3][mask] = 255
    return Cutout(rgba, (cx, cy, side))


def mask_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[dict]:
    """The outlines of ``mask`` (h x w bool, top-left pixel at ``offset`` in the source):
    one ``{"outer": [[x, y], ...], "holes": [[[x, y], ...], ...]}`` per connected
    part (8-connected), vertices in source pixels. Straight runs are one edge
    (OpenCV's CHAIN_APPROX_SIMPLE), so the polygons are short but still exact."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE, offset=offset)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # per contour: next, previous, first child, parent
    polygons = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:
            continue  # a hole: listed with its outer boundary
        holes = []
        child = hierarchy[index][2]
        while child != -1:
            holes.append(contours[child][:, 0, :].tolist())
            child = hierarchy[child][0]
        polygons.append({"outer": contour[:, 0, :].tolist(), "holes": holes})
    return polygons


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGBA (side x side x 4 uint8) picture."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA),
                            [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("OpenCV could not encode the cut-out as PNG")
    return data.tobytes()


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
