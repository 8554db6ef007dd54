"""Objects and their parts: the selection step on constructed masks (SAM's three levels
per point, as random weights cannot make them), what segment.py writes of them, and
their names (with a stand-in embedding whose answers are known: colours.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from colours import ColourEmbedder
from masks import mask_from_polygons
from PIL import Image

from drawpipe.inventory import scan_inventory
from drawpipe.png import read_text_chunks
from drawpipe.sam.labels import Labeller, read_vocabulary
from drawpipe.sam.mask_generator import FoundMask
from drawpipe.sam.objects import Candidate, ObjectRules, Thresholds, regroup, select_objects
from drawpipe.sam.settings import CutoutSettings
from drawpipe.stages.segment import name_objects, write_cutout_folder

FRAME = (64, 96)  # rows, columns of the selection frame
SAM = Thresholds(pred_iou_thresh=0.88, stability_score_thresh=0.95,
                 whole_pred_iou_thresh=0.88, whole_stability_score_thresh=0.7)
RULES = ObjectRules(min_area_fraction=0.001)


def box_mask(x0, y0, x1, y1, frame=FRAME) -> np.ndarray:
    mask = np.zeros(frame, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def level(mask, point, number, iou=0.95, stability=0.97, kept=False) -> Candidate:
    return Candidate(mask, point, number, iou, stability, kept)


def objects_of(candidates, rules=RULES):
    """{object index: [part indexes]} in the order select_objects gives them."""
    return [(group.index, group.parts) for group in select_objects(candidates, SAM, rules)]


# ---------------------------------------------------------------- the selection step


def test_a_shape_inside_a_shape_is_one_object_with_its_part():
    outer = box_mask(10, 10, 60, 50)
    inner = box_mask(20, 20, 35, 35)
    candidates = [
        level(inner, 0, 0), level(inner, 0, 1), level(outer, 0, 2, stability=0.75),
        # A point on the outer shape only: its levels are the outer shape's.
        level(box_mask(40, 12, 58, 48), 1, 0, kept=True), level(outer, 1, 1), level(outer, 1, 2),
        level(inner, 2, 0, kept=True),
    ]
    assert objects_of(candidates) == [(2, [3, 6])]


def test_two_separate_shapes_are_two_objects_and_the_background_is_dropped():
    left, right = box_mask(5, 5, 30, 40), box_mask(50, 20, 90, 60)
    background = ~(left | right)  # touches all four edges
    candidates = [level(left, 0, 2), level(right, 1, 2), level(background, 2, 2),
                  level(background, 3, 1)]
    assert objects_of(candidates) == [(1, []), (0, [])]  # largest first


def test_the_background_the_stock_rules_keep_comes_back_without_parts():
    """It is the cut-out rules' to drop (or keep with --keep-background), as always."""
    thing = box_mask(5, 5, 30, 40)
    background = ~box_mask(40, 30, 50, 40)
    candidates = [level(background, 0, 2, kept=True), level(thing, 1, 2),
                  level(background.copy(), 2, 2, iou=0.99, kept=True)]  # the same, better scored
    groups = select_objects(candidates, SAM, RULES)
    assert [(group.index, group.parts) for group in groups] == [(2, []), (1, [])]


def test_a_background_that_is_an_object_already_comes_back_once():
    """A crowd behind two people: one mask spans the frame (background), another the
    same crowd a pixel short of an edge (an object, with a part): one cut-out."""
    people = box_mask(30, 20, 60, 64)
    crowd = ~people
    short = crowd.copy()
    short[:, -1] = False
    face = box_mask(2, 2, 12, 12) & short
    candidates = [level(crowd, 0, 2, kept=True), level(short, 1, 2), level(face, 2, 1),
                  level(people, 3, 2)]
    assert objects_of(candidates) == [(1, [2]), (3, [])]


def test_the_whole_level_has_its_own_thresholds():
    outer, inner = box_mask(10, 10, 60, 50), box_mask(20, 20, 35, 35)
    # Stable enough for the whole level (0.7), not for SAM's own 0.95: the whole wins.
    assert objects_of([level(inner, 0, 1), level(outer, 0, 2, stability=0.72)]) == [(1, [])]
    # Below the whole level's threshold: the part level is the largest that passes.
    assert objects_of([level(inner, 0, 1), level(outer, 0, 2, stability=0.6)]) == [(0, [])]
    # Levels 0 and 1 keep SAM's thresholds.
    assert objects_of([level(inner, 0, 1, stability=0.9)]) == []


def test_duplicates_from_two_points_are_one_object_the_better_scored_standing_for_it():
    first = box_mask(10, 10, 60, 50)
    second = box_mask(10, 10, 60, 48)  # IoU 0.95 with the first
    part = box_mask(20, 20, 30, 30)
    candidates = [level(first, 0, 2, iou=0.9), level(second, 1, 2, iou=0.99),
                  level(part, 2, 1, kept=True), level(part.copy(), 3, 1, kept=True)]
    assert objects_of(candidates) == [(1, [2])]


def test_a_mask_partly_inside_an_object_is_an_object_of_its_own():
    bus = box_mask(10, 10, 80, 40)
    person = box_mask(70, 20, 90, 60)  # overlaps the bus, mostly outside it
    wheel = box_mask(20, 35, 30, 45)  # half inside the bus's mask
    candidates = [level(bus, 0, 2), level(person, 1, 2), level(wheel, 2, 2)]
    assert objects_of(candidates) == [(0, []), (1, []), (2, [])]


def test_part_inside_fraction_decides_what_is_a_part():
    outer = box_mask(0, 0, 50, 40, frame=(41, 51))
    inner = box_mask(40, 10, 51, 20, frame=(41, 51))  # 10 of its 11 columns inside
    candidates = [level(outer, 0, 2), level(inner, 1, 2)]
    assert objects_of(candidates) == [(0, [1])]
    assert objects_of(candidates, ObjectRules(part_inside_fraction=0.95)) == [(0, []), (1, [])]


def test_specks_are_dropped():
    thing, speck = box_mask(10, 10, 60, 50), box_mask(80, 5, 82, 7)  # 4 px of 6144
    candidates = [level(thing, 0, 2), level(speck, 1, 0, kept=True)]
    assert objects_of(candidates, ObjectRules(min_area_fraction=0.001)) == [(0, [])]
    assert objects_of(candidates, ObjectRules(min_area_fraction=0.0)) == [(0, []), (1, [])]


def test_nothing_passing_gives_no_object():
    mask = box_mask(10, 10, 60, 50)
    assert objects_of([level(mask, 0, 2, iou=0.5), level(mask, 0, 1, stability=0.5)]) == []
    assert select_objects([], SAM, RULES) == []


# ---------------------------------------------------------------- what is written


def found(mask: np.ndarray, level_number: int, iou: float = 0.97) -> FoundMask:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x, y = int(columns[0]), int(rows[0])
    w, h = int(columns[-1] + 1 - x), int(rows[-1] + 1 - y)
    return FoundMask(mask[y:y + h, x:x + w], (x, y, w, h), int(mask.sum()), iou, 0.96,
                     (x + 1.0, y + 1.0), (0, 0, mask.shape[1], mask.shape[0]), level_number)


@pytest.fixture
def image_with_objects():
    """A 120 x 160 picture, a person-like object with two parts, and a second object."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame = (120, 160)
    person = found(box_mask(10, 10, 70, 110, frame), 2)
    person.parts = [found(box_mask(15, 15, 65, 60, frame), 1),
                    found(box_mask(20, 60, 30, 100, frame), 0)]
    ball = found(box_mask(100, 70, 140, 110, frame), 2)
    return image, [person, ball]


@pytest.mark.parametrize("granularity", ["objects", "all"])
def test_objects_list_their_parts_in_cutouts_json(tmp_path, image_with_objects, granularity):
    image, objects = image_with_objects
    folder = tmp_path / "stem"
    assert write_cutout_folder(folder, "stem", image, objects, {"version": 1}, 0.05,
                               granularity) == 2
    record = json.loads((folder / "cutouts.json").read_text())
    person, ball = record["cutouts"]
    assert (person["file"], ball["file"]) == ("stem_cutout_1.png", "stem_cutout_2.png")
    assert person["level"] == ball["level"] == "whole"
    assert ball["parts"] == []
    assert [part["level"] for part in person["parts"]] == ["part", "sub-part"]
    for part, mask in zip(person["parts"], objects[0].parts):
        assert part["bbox"] == list(mask.box) and part["area"] == mask.area
        assert part["predicted_iou"] == 0.97 and part["stability_score"] == 0.96
        drawn = mask_from_polygons(part["polygons"], 120, 160)
        x, y, w, h = mask.box
        assert drawn.sum() == mask.area and drawn[y:y + h, x:x + w].all()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if granularity == "objects":
        assert files == ["cutouts.json", "stem_cutout_1.png", "stem_cutout_2.png"]
        assert all("file" not in part for part in person["parts"])
    else:
        parts = ["stem_cutout_1_parts/stem_cutout_1_part_1.png",
                 "stem_cutout_1_parts/stem_cutout_1_part_2.png"]
        assert files == sorted(["cutouts.json", "stem_cutout_1.png", "stem_cutout_2.png", *parts])
        assert [part["file"] for part in person["parts"]] == parts
        cut = np.asarray(Image.open(folder / parts[1]))
        x, y, side = person["parts"][1]["canvas"]
        assert cut.shape == (side, side, 4)
        assert (cut[..., 3] == 255).sum() == objects[0].parts[1].area
        inside = cut[..., 3] == 255
        rows, columns = np.nonzero(inside)
        np.testing.assert_array_equal(cut[inside][:, :3], image[rows + y, columns + x])


def test_parts_granularity_writes_the_entries_as_before(tmp_path, image_with_objects):
    image, objects = image_with_objects
    folder = tmp_path / "stem"
    write_cutout_folder(folder, "stem", image, objects, {"version": 1}, 0.05, "parts")
    record = json.loads((folder / "cutouts.json").read_text())
    assert [set(entry) for entry in record["cutouts"]] == [
        {"file", "bbox", "area", "predicted_iou", "stability_score", "point", "crop_box",
         "canvas", "polygons"}] * 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "cutouts.json", "stem_cutout_1.png", "stem_cutout_2.png"]


def test_the_inventory_takes_a_parts_sub_folder_for_no_cutout_folder(tmp_path, image_with_objects):
    """Granularity "all" puts each object's parts in a sub-folder of its cut-out folder:
    the report, review page and export see one image with its objects."""
    image, objects = image_with_objects
    folder = tmp_path / "CUTOUTS/A/b/A_b_1_upscaled"
    write_cutout_folder(folder, folder.name, image, objects, {"version": 1}, 0.05, "all")
    assert (folder / "A_b_1_upscaled_cutout_1_parts").is_dir()
    inventory = scan_inventory(tmp_path)
    assert list(inventory.entries) == ["A/b/A_b_1"]
    entry = inventory.entries["A/b/A_b_1"]
    assert entry.cutouts_folder == "CUTOUTS/A/b/A_b_1_upscaled"
    assert [Path(cutout.path).name for cutout in entry.cutouts] == [
        "A_b_1_upscaled_cutout_1.png", "A_b_1_upscaled_cutout_2.png"]


# ---------------------------------------------------------------- named objects


@pytest.fixture
def scene_with_a_backdrop():
    """A 120 x 200 picture: a grey backdrop holding a red ball (with a red dot in it), a
    blue car and a grey panel (with a purple sticker on it); a green leaf beside it. As
    SAM's objects: the backdrop owns the other five as parts, the leaf is on its own."""
    image = np.zeros((120, 200, 3), dtype=np.uint8)
    frame = (120, 200)
    shapes = {"backdrop": ((5, 5, 150, 115), (128, 128, 128)),
              "ball": ((20, 20, 60, 60), (230, 10, 10)), "dot": ((30, 30, 40, 40), (230, 10, 10)),
              "car": ((90, 60, 140, 100), (10, 10, 230)),
              "panel": ((100, 15, 145, 50), (128, 128, 128)),
              "sticker": ((110, 25, 125, 40), (200, 0, 200)),
              "leaf": ((160, 40, 195, 80), (10, 230, 10))}
    masks = {}
    for name, ((x0, y0, x1, y1), colour) in shapes.items():
        image[y0:y1, x0:x1] = colour
        masks[name] = found(box_mask(x0, y0, x1, y1, frame),
                            2 if name in ("backdrop", "leaf") else 1)
    backdrop, leaf = masks["backdrop"], masks["leaf"]
    backdrop.parts = sorted((masks[name] for name in ("ball", "dot", "car", "panel", "sticker")),
                            key=lambda mask: -mask.area)
    return image, [backdrop, leaf], masks


def colour_labeller(tmp_path) -> Labeller:
    path = tmp_path / "names.txt"
    path.write_text("red ball\nblue car\ngreen leaf\npurple sticker\nstuff: grey wall\n")
    return Labeller(ColourEmbedder(), read_vocabulary(path))


def test_an_object_named_as_background_leaves_and_its_parts_become_objects(
        tmp_path, scene_with_a_backdrop):
    image, objects, masks = scene_with_a_backdrop
    kept, background = name_objects(image, objects, colour_labeller(tmp_path), ObjectRules(),
                                    CutoutSettings())
    # The backdrop is background; its parts are nested among themselves: the dot is the
    # ball's part; the panel is background in turn and its sticker an object.
    assert [mask.label.name for mask in kept] == ["blue car", "red ball", "green leaf",
                                                  "purple sticker"]
    assert kept == [masks["car"], masks["ball"], masks["leaf"], masks["sticker"]]
    assert masks["ball"].parts == [masks["dot"]] and masks["car"].parts == []
    assert background == [masks["backdrop"], masks["panel"]]
    assert all(mask.label.background and mask.label.name == "grey wall" for mask in background)
    assert all(mask.parts == [] for mask in background)
    assert masks["dot"].label is None  # parts are named only when they are pictures (all)
    assert not any(mask.label.background for mask in kept)


def test_keep_background_keeps_the_object_named_as_background_with_its_parts(
        tmp_path, scene_with_a_backdrop):
    image, objects, masks = scene_with_a_backdrop
    parts = list(masks["backdrop"].parts)
    kept, background = name_objects(image, objects, colour_labeller(tmp_path), ObjectRules(),
                                    CutoutSettings(keep_background=True), name_parts=True)
    assert kept == [masks["backdrop"], masks["leaf"]] and background == []
    assert masks["backdrop"].label.background and masks["backdrop"].parts == parts
    # Parts are named, and stay parts whatever their name.
    assert parts == [masks[name] for name in ("car", "ball", "panel", "sticker", "dot")]
    assert [part.label.name for part in parts] == ["blue car", "red ball", "grey wall",
                                                   "purple sticker", "red ball"]


def test_at_most_max_cutouts_after_naming_and_parts_named_in_all(tmp_path, scene_with_a_backdrop):
    image, objects, masks = scene_with_a_backdrop
    labeller = colour_labeller(tmp_path)
    kept, background = name_objects(image, objects, labeller, ObjectRules(),
                                    CutoutSettings(max_cutouts=2), name_parts=True)
    assert kept == [masks["car"], masks["ball"]]
    assert masks["dot"].label.name == "red ball"  # the kept objects' parts are named
    assert len(background) == 2


def test_named_objects_carry_their_label_into_cutouts_json_and_the_png(
        tmp_path, scene_with_a_backdrop):
    image, objects, masks = scene_with_a_backdrop
    kept, background = name_objects(image, objects, colour_labeller(tmp_path), ObjectRules(),
                                    CutoutSettings(), name_parts=True)
    folder = tmp_path / "stem"
    write_cutout_folder(folder, "stem", image, kept, {"version": 1}, 0.05, "all", background)
    record = json.loads((folder / "cutouts.json").read_text())
    for entry, mask in zip(record["cutouts"], kept):
        assert entry["label"] == mask.label.record()
        assert read_text_chunks(folder / entry["file"]) == {"label": mask.label.text()}
    (ball,) = [entry for entry in record["cutouts"] if entry["label"]["name"] == "red ball"]
    assert [part["label"]["name"] for part in ball["parts"]] == ["red ball"]
    assert read_text_chunks(folder / ball["parts"][0]["file"]) == {
        "label": masks["dot"].label.text()}
    assert [entry["label"]["name"] for entry in record["background"]] == ["grey wall"] * 2
    assert [entry["bbox"] for entry in record["background"]] == [[5, 5, 145, 110],
                                                                 [100, 15, 45, 35]]
    assert all("file" not in entry and entry["polygons"] for entry in record["background"])
    pictures = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert pictures == ["stem_cutout_1.png", "stem_cutout_2.png", "stem_cutout_2_parts/"
                        "stem_cutout_2_part_1.png", "stem_cutout_3.png", "stem_cutout_4.png"]


def test_regroup_nests_masks_by_the_part_of_rule(scene_with_a_backdrop):
    _, _, masks = scene_with_a_backdrop
    parts = [masks[name] for name in ("car", "ball", "panel", "dot", "sticker")]
    groups = regroup(parts, ObjectRules())
    assert [(parts[group.index], [parts[i] for i in group.parts]) for group in groups] == [
        (masks["car"], []), (masks["ball"], [masks["dot"]]), (masks["panel"], [masks["sticker"]])]
