"""Masks back from what the segment stage writes, for the tests' checks."""

import cv2
import numpy as np


def mask_from_polygons(polygons: list[dict], height: int, width: int) -> np.ndarray:
    """The height x width bool mask that ``mask_polygons`` described."""
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        # Each part on its own canvas, then added: a part may lie inside another's hole.
        outer = np.asarray(polygon["outer"], dtype=np.int32).reshape(-1, 1, 2)
        x, y, w, h = cv2.boundingRect(outer)
        part = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(part, [outer], 1, offset=(-x, -y))
        for hole in polygon["holes"]:
            hole = np.asarray(hole, dtype=np.int32).reshape(-1, 1, 2) - (x, y)
            # A hole's vertices are the object's own pixels around it: clear the
            # inside, then draw its edge back.
            cv2.fillPoly(part, [hole], 0)
            cv2.polylines(part, [hole], True, 1)
        mask[y:y + h, x:x + w] |= part.astype(bool)
    return mask


def full_mask(found, height: int, width: int) -> np.ndarray:
    """A mask_generator.FoundMask as height x width bool (the whole source image)."""
    full = np.zeros((height, width), dtype=bool)
    x, y, w, h = found.box
    full[y:y + h, x:x + w] = found.mask
    return full
