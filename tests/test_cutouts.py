"""Masks -> cut-outs and polygons, on synthetic masks with known answers (no torch)."""

import io

import numpy as np
import pytest
from masks import mask_from_polygons
from PIL import Image

from drawpipe.sam.cutouts import cut_out, encode_png, mask_box, mask_polygons, square_canvas

HEIGHT, WIDTH = 120, 160


@pytest.fixture
def image() -> np.ndarray:
    """HEIGHT x WIDTH x 3 uint8 RGB, every pixel different enough to tell apart."""
    rng = np.random.default_rng(1)
    return rng.integers(1, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def disc(cx: int, cy: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2


def assert_cutout_matches(image, mask, cutout):
    """Every pixel of the canvas: the image's colour with alpha 255 inside the mask,
    (0, 0, 0, 0) everywhere else."""
    cx, cy, side = cutout.canvas
    assert cutout.rgba.shape == (side, side, 4)
    assert cutout.rgba.dtype == np.uint8
    expected = np.zeros((side, side, 4), dtype=np.uint8)
    for y in range(side):
        sy = cy + y
        if not 0 <= sy < HEIGHT:
            continue
        for x in range(side):
            sx = cx + x
            if 0 <= sx < WIDTH and mask[sy, sx]:
                expected[y, x, :3] = image[sy, sx]
                expected[y, x, 3] = 255
    np.testing.assert_array_equal(cutout.rgba, expected)


def test_disc_is_centred_on_a_square_canvas_with_its_margin(image):
    mask = disc(60, 50, 20)  # 41 x 41 px
    assert mask_box(mask) == (40, 30, 41, 41)
    cutout = cut_out(image, mask, margin_fraction=0.1)
    assert cutout.canvas == (36, 26, 49)  # margin round(4.1) = 4 px on each side
    assert_cutout_matches(image, mask, cutout)
    alpha = cutout.rgba[..., 3]
    columns = np.flatnonzero(alpha.any(axis=0))
    rows = np.flatnonzero(alpha.any(axis=1))
    assert (columns[0], 48 - columns[-1], rows[0], 48 - rows[-1]) == (4, 4, 4, 4)


def test_a_wide_object_is_centred_vertically():
    box = (10, 20, 30, 11)
    x, y, side = square_canvas(box, 0.0)
    assert side == 30
    assert (x, y) == (10, 20 - 9)  # 19 free rows: 9 above, 10 below
    assert square_canvas(box, 0.001)[2] == 32  # any margin above 0 is at least one pixel


def test_ring_keeps_its_hole_transparent_and_in_the_polygons(image):
    mask = disc(80, 60, 30) & ~disc(80, 60, 12)
    cutout = cut_out(image, mask, margin_fraction=0.05)
    assert_cutout_matches(image, mask, cutout)
    cx, cy, _ = cutout.canvas
    assert cutout.rgba[60 - cy, 80 - cx, 3] == 0  # the centre is the hole

    polygons = mask_polygons(mask)
    assert len(polygons) == 1
    assert len(polygons[0]["holes"]) == 1
    np.testing.assert_array_equal(mask_from_polygons(polygons, HEIGHT, WIDTH), mask)


def test_two_separate_blobs_make_one_cutout_and_two_polygons(image):
    mask = disc(30, 30, 10) | disc(120, 90, 15)
    cutout = cut_out(image, mask, margin_fraction=0.05)
    assert mask_box(mask) == (20, 20, 116, 86)
    assert cutout.canvas[2] == 116 + 2 * 6
    assert_cutout_matches(image, mask, cutout)
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    assert all(polygon["holes"] == [] for polygon in polygons)
    np.testing.assert_array_equal(mask_from_polygons(polygons, HEIGHT, WIDTH), mask)


def test_mask_touching_the_border_gets_a_canvas_reaching_past_the_image(image):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[:40, :25] = True  # top-left corner, 25 x 40 px
    cutout = cut_out(image, mask, margin_fraction=0.1)
    cx, cy, side = cutout.canvas
    assert side == 48 and cx < 0 and cy < 0
    assert_cutout_matches(image, mask, cutout)  # outside the image: transparent
    polygons = mask_polygons(mask)
    assert polygons == [{"outer": [[0, 0], [0, 39], [24, 39], [24, 0]], "holes": []}]
    np.testing.assert_array_equal(mask_from_polygons(polygons, HEIGHT, WIDTH), mask)


def test_empty_mask_gives_nothing(image):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    assert mask_box(mask) is None
    assert cut_out(image, mask) is None
    assert mask_polygons(mask) == []
    assert not mask_from_polygons([], HEIGHT, WIDTH).any()


def test_a_trimmed_mask_with_its_offset_gives_the_same_cutout(image):
    mask = disc(100, 40, 17)
    x, y, w, h = mask_box(mask)
    whole = cut_out(image, mask, 0.05)
    trimmed = cut_out(image, mask[y:y + h, x:x + w], 0.05, offset=(x, y))
    assert trimmed.canvas == whole.canvas
    np.testing.assert_array_equal(trimmed.rgba, whole.rgba)
    assert mask_polygons(mask[y:y + h, x:x + w], offset=(x, y)) == mask_polygons(mask)


def test_polygons_rebuild_any_mask_exactly():
    rng = np.random.default_rng(5)
    for _ in range(60):
        height, width = rng.integers(3, 50, size=2)
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        polygons = mask_polygons(mask)
        np.testing.assert_array_equal(mask_from_polygons(polygons, height, width), mask)


def test_png_keeps_every_rgba_value(image):
    cutout = cut_out(image, disc(60, 60, 25), 0.05)
    decoded = Image.open(io.BytesIO(encode_png(cutout.rgba)))
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(decoded), cutout.rgba)
