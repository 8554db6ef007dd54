"""Names for cut-outs (sam/labels.py): the vocabulary file, the decision with a stand-in
embedding whose answers are known, the whole path with a random-weight open_clip model
loaded as users' files are, and the model file's download on loopback."""

import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from colours import ColourEmbedder
from conftest import PROJECT_DIR
from fileserver import PAYLOAD, PAYLOAD_SHA256, FileServer, closed_port_url

from drawpipe.bundled import DEFAULT_VOCABULARY, FOLDER
from drawpipe.errors import CheckpointError, DownloadFailed, InputFileError
from drawpipe.png import add_text_chunks, read_text_chunks
from drawpipe.sam.checkpoints import CheckpointFile
from drawpipe.sam.cutouts import cut_out, encode_png
from drawpipe.sam.labels import (LABEL_MODELS, PNG_TEXT_KEYWORD, PROMPT_TEMPLATES, Label,
                                 Labeller, LabelSettings, decide, default_vocabulary,
                                 download_label_model, label_model_for, label_model_path,
                                 load_label_model, load_labeller, model_input, read_vocabulary,
                                 settings_record)
from drawpipe.sam.models import save_random_checkpoint

VIT_B_32 = LABEL_MODELS["ViT-B-32"].official


def vocabulary_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "labels.txt"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


# ---------------------------------------------------------------- the vocabulary


def test_the_default_vocabulary_names_people_things_and_background():
    vocabulary = default_vocabulary()
    assert vocabulary.source == str(DEFAULT_VOCABULARY)
    assert len(vocabulary.names) > 150
    for name in ("man", "woman", "child", "elderly person", "baby", "chair", "table", "plate",
                 "hammer", "car", "dog", "bread", "tree", "building", "sign"):
        assert name in vocabulary.names and not vocabulary.is_stuff(name)
    for name in ("wall", "floor", "ground", "pavement", "road", "sky", "grass", "water",
                 "ceiling"):
        assert vocabulary.is_stuff(name)
    assert len(set(name.lower() for name in vocabulary.names)) == len(vocabulary.names)


def test_the_wheel_carries_the_default_vocabulary():
    package_data = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["drawpipe.bundled"]
    relative = DEFAULT_VOCABULARY.relative_to(FOLDER).as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data)


def test_a_vocabulary_file_marks_stuff_and_ignores_comments_blanks_and_spacing(tmp_path):
    vocabulary = read_vocabulary(vocabulary_file(
        tmp_path, "\ufeff# things\nchair\n\n   red   ball  \nStuff:  grey  wall\n  # end\n"))
    assert vocabulary.names == ("chair", "red ball", "grey wall")
    assert vocabulary.stuff == {"grey wall"}
    same = read_vocabulary(vocabulary_file(tmp_path, "chair\nred ball\nstuff: grey wall\n"))
    assert same.sha256 == vocabulary.sha256  # comments and spacing do not count
    unmarked = read_vocabulary(vocabulary_file(tmp_path, "chair\nred ball\ngrey wall\n"))
    assert unmarked.sha256 != vocabulary.sha256


@pytest.mark.parametrize("content, message", [
    ("# only a comment\n\n", 'no names in it; write one name per line ("stuff: NAME" for '
                             "background such as walls and sky)"),
    ("", 'no names in it; write one name per line ("stuff: NAME" for background such as walls '
         "and sky)"),
    ("chair\ntable\n# again\nChair\n", 'line 4: "Chair" is already on line 1; give each name '
                                       "once"),
    ("chair\nstuff: chair\n", 'line 2: "chair" is already on line 1; give each name once'),
    ("chair\n", 'only one name ("chair"); a label is chosen between at least two names'),
    ("stuff: wall\nstuff: sky\n", 'every name is marked "stuff:" (background); add the names '
                                  "of the things to find"),
    ("chair\nstuff:\n", 'line 2: "stuff:" without a name'),
    ("chair\n" + "x" * 61 + "\n", "line 2: a name of 61 characters; at most 60 fit the "
                                  "model's text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (bad byte at offset 0)"),
    (b"chair\x00table\n", "not text (it holds NUL bytes); write one name per line"),
])
def test_a_bad_vocabulary_file_is_one_line_naming_the_file(tmp_path, content, message):
    path = vocabulary_file(tmp_path, content)
    with pytest.raises(InputFileError) as raised:
        read_vocabulary(path)
    assert str(raised.value) == f"{path}: {message}"
    assert raised.value.exit_code == 2


def test_a_missing_vocabulary_file_or_a_folder(tmp_path):
    with pytest.raises(InputFileError) as raised:
        read_vocabulary(tmp_path / "nothing.txt")
    assert str(raised.value) == f"{tmp_path / 'nothing.txt'}: no such file"
    with pytest.raises(InputFileError) as raised:
        read_vocabulary(tmp_path)
    assert str(raised.value) == f"{tmp_path}: is a folder, not a file"


# ---------------------------------------------------------------- the decision


def picture(rgb, side: int = 64) -> np.ndarray:
    """A square RGBA cut-out: a disc of colour ``rgb`` on transparency."""
    y, x = np.mgrid[:side, :side]
    inside = (x - side / 2) ** 2 + (y - side / 2) ** 2 < (side / 3) ** 2
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[inside] = (*rgb, 255)
    return rgba


def stand_in_labeller(tmp_path, text: str, **options) -> Labeller:
    return Labeller(ColourEmbedder(**options), read_vocabulary(vocabulary_file(tmp_path, text)))


def test_a_clear_cutout_gets_its_name_and_the_runner_up(tmp_path):
    labeller = stand_in_labeller(tmp_path, "red ball\ngreen leaf\nblue car\nstuff: grey wall\n")
    red, green = labeller.label([picture((220, 20, 20)), picture((10, 200, 40))])
    assert (red.name, red.trusted, red.background) == ("red ball", True, False)
    assert red.score > 0.9 and red.runner_up == "grey wall"
    assert red.score + red.runner_up_score <= 1.0 + 1e-9
    assert (green.name, green.runner_up) == ("green leaf", "grey wall")
    probabilities = labeller.probabilities([picture((220, 20, 20))])
    assert probabilities.shape == (1, 4)
    assert probabilities.sum() == pytest.approx(1.0)


def test_the_names_are_embedded_once_for_every_cutout_after(tmp_path):
    labeller = stand_in_labeller(tmp_path, "red ball\nblue car\n")
    for _ in range(3):
        labeller.label([picture((200, 0, 0))])
    assert labeller.embedder.names_embedded == 1
    assert labeller.label([]) == []


def test_a_cutout_named_as_stuff_is_background(tmp_path):
    labeller = stand_in_labeller(tmp_path, "red ball\nblue car\nstuff: grey wall\n")
    (wall,) = labeller.label([picture((128, 128, 128))])
    assert (wall.name, wall.background, wall.trusted) == ("grey wall", True, True)
    assert wall.background_score == pytest.approx(wall.score)
    assert wall.text().startswith("background: grey wall ")


def test_background_counts_all_stuff_words_together(tmp_path):
    # Two stuff words with one colour split a grey cut-out's probability: neither is
    # trusted alone, together they are background.
    labeller = stand_in_labeller(tmp_path,
                                 "red ball\nblue car\nstuff: grey wall\nstuff: grey floor\n")
    (wall,) = labeller.label([picture((128, 128, 128))])
    assert wall.name == "grey wall" and wall.runner_up == "grey floor"
    assert wall.score < 0.5 and not wall.trusted
    assert wall.background_score >= 0.5 and wall.background
    assert wall.text().startswith("background: grey wall? ")


def test_a_cutout_named_as_a_thing_is_never_background(tmp_path):
    # The thing comes first among three equals: stuff holds two thirds, the thing one.
    labeller = stand_in_labeller(tmp_path,
                                 "silver car\nred ball\nstuff: grey wall\nstuff: grey floor\n")
    (car,) = labeller.label([picture((128, 128, 128))])
    assert car.name == "silver car" and car.background_score > 0.5
    assert not car.background and not car.trusted


def test_below_the_threshold_a_name_is_not_trusted(tmp_path):
    # Two names for one thing share its probability: neither is trusted.
    labeller = stand_in_labeller(tmp_path, "red ball\nred apple\nblue car\n")
    (ball,) = labeller.label([picture((220, 20, 20))])
    assert (ball.name, ball.runner_up) == ("red ball", "red apple")
    assert 0.4 < ball.score < 0.5 and not ball.trusted
    assert ball.text() == (f"red ball? {ball.score:.2f} (runner-up: red apple "
                           f"{ball.runner_up_score:.2f})")
    vocabulary = read_vocabulary(vocabulary_file(tmp_path, "red ball\nstuff: grey wall\n"))
    (clear,) = Labeller(ColourEmbedder(), vocabulary).label([picture((220, 20, 20))])
    assert clear.trusted and 0.99 < clear.score < 0.999
    (doubted,) = Labeller(ColourEmbedder(), vocabulary, trust_threshold=0.999).label(
        [picture((220, 20, 20))])
    assert doubted.name == "red ball" and not doubted.trusted


def test_decide_at_the_threshold_and_its_record(tmp_path):
    vocabulary = read_vocabulary(vocabulary_file(tmp_path, "chair\ntable\nstuff: wall\n"))
    at = decide([0.5, 0.3, 0.2], vocabulary)
    assert at == Label("chair", 0.5, "table", 0.3, 0.2, trusted=True, background=False)
    below = decide([0.2, 0.49999, 0.30001], vocabulary)
    assert (below.name, below.runner_up, below.trusted) == ("table", "wall", False)
    wall = decide([0.1, 0.1, 0.8], vocabulary)
    assert wall.record() == {"name": "wall", "score": 0.8, "trusted": True,
                             "runner_up": "chair", "runner_up_score": 0.1,
                             "background": True, "background_score": 0.8}
    assert at.text() == "chair 0.50 (runner-up: table 0.30)"
    assert decide([0.5, 0.3, 0.2], vocabulary, threshold=0.6).trusted is False


def test_the_label_rides_in_the_cutout_png_without_touching_its_pixels():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[10:30, 5:25] = (200, 60, 10)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 5:25] = True
    png = encode_png(cut_out(image, mask).rgba)
    label = Label("chair", 0.8123, "table", 0.0712, 0.01, trusted=True, background=False)
    labelled = add_text_chunks(png, label.png_texts())
    assert read_text_chunks(labelled) == {PNG_TEXT_KEYWORD: "chair 0.81 (runner-up: table 0.07)"}
    pixels_at = png.index(b"IDAT") - 4  # the text goes in before the pixels, which stay as they are
    assert labelled.startswith(png[:pixels_at]) and labelled.endswith(png[pixels_at:])


def test_the_model_sees_the_cutout_on_neutral_grey():
    rgba = picture((250, 0, 0), side=8)
    shown = np.asarray(model_input(rgba))
    assert shown.shape == (8, 8, 3)
    assert tuple(shown[0, 0]) == (128, 128, 128)
    assert tuple(shown[4, 4]) == (250, 0, 0)


def test_the_settings_record_changes_with_what_changes_the_labels(tmp_path):
    vocabulary = default_vocabulary()
    record = settings_record(LabelSettings(), vocabulary)
    assert record == {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                      "vocabulary_sha256": vocabulary.sha256,
                      "prompts_sha256": record["prompts_sha256"], "trust_threshold": 0.5}
    other = read_vocabulary(vocabulary_file(tmp_path, "chair\ntable\n"))
    assert settings_record(LabelSettings(), other) != record
    assert settings_record(LabelSettings(trust_threshold=0.6), vocabulary) != record
    assert settings_record(LabelSettings(model="MobileCLIP-S2"), vocabulary)["pretrained"] == \
        "datacompdr"
    # Where the weights file is does not change the labels.
    assert settings_record(LabelSettings(checkpoint=tmp_path / "x.bin"), vocabulary) == record


# ---------------------------------------------------------------- a real (random) model
# (conftest.py's tiny_label_model: a random-weight ViT-tiny-test file)


def test_the_whole_path_with_a_random_weight_model(tiny_label_model):
    vocabulary = default_vocabulary()
    labeller = load_labeller(LabelSettings("ViT-tiny-test", tiny_label_model, "cpu"), vocabulary)
    assert labeller.name_vectors.shape == (len(vocabulary.names), 32)
    np.testing.assert_allclose(np.linalg.norm(labeller.name_vectors, axis=1), 1.0, rtol=1e-5)
    pictures = [picture((220, 20, 20), side) for side in (20, 224, 700)] + [picture((0, 90, 0))]
    labels = labeller.label(pictures)
    assert len(labels) == 4
    for label in labels:
        assert label.name in vocabulary.names and label.runner_up in vocabulary.names
        assert 0 < label.runner_up_score <= label.score <= 1
    probabilities = labeller.probabilities(pictures)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert not np.allclose(probabilities[0], probabilities[3])  # the picture matters
    np.testing.assert_allclose(labeller.probabilities(pictures), probabilities, rtol=1e-5)
    assert labeller.device == "cpu"


def test_the_name_vectors_are_kept_in_the_cache_for_the_next_process(tmp_path, tiny_label_model):
    vocabulary = read_vocabulary(vocabulary_file(tmp_path, "chair\ntable\nstuff: wall\n"))
    settings = LabelSettings("ViT-tiny-test", tiny_label_model, "cpu")
    first = load_labeller(settings, vocabulary, tmp_path / "cache")
    (kept,) = (tmp_path / "cache" / "labels").glob("names-*.npy")
    np.testing.assert_array_equal(np.load(kept), first.name_vectors)
    # What the next process reads is what the file holds: the text tower does not run.
    planted = np.tile(np.float32([1, 0] + [0] * 30), (3, 1))
    np.save(kept, planted)
    assert np.array_equal(load_labeller(settings, vocabulary, tmp_path / "cache").name_vectors,
                          planted)
    # Damaged, or of another vocabulary: embedded again.
    kept.write_bytes(b"not numpy")
    again = load_labeller(settings, vocabulary, tmp_path / "cache")
    np.testing.assert_allclose(again.name_vectors, first.name_vectors, rtol=1e-5)
    np.testing.assert_allclose(np.load(kept), first.name_vectors, rtol=1e-5)
    other = read_vocabulary(vocabulary_file(tmp_path, "chair\nsofa\nstuff: wall\n"))
    load_labeller(settings, other, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "labels").glob("names-*.npy"))) == 2


def test_a_random_weight_model_loads_in_float32_with_its_learned_scale(tiny_label_model):
    network = load_label_model("ViT-tiny-test", tiny_label_model)
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert not network.training
    # open_clip's initial temperature, 1 / 0.07, as the file holds it
    assert float(network.logit_scale.detach().exp()) == pytest.approx(1 / 0.07)
    assert len(PROMPT_TEMPLATES) == 6


def test_a_missing_model_file_names_the_official_file_and_address(tmp_path):
    path = tmp_path / "ViT-B-32-laion2b_s34b_b79k.bin"
    with pytest.raises(CheckpointError) as raised:
        load_label_model("ViT-B-32", path)
    assert str(raised.value) == (
        f"label model file {path} not found: download ViT-B-32-laion2b_s34b_b79k.bin from "
        "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
        "open_clip_pytorch_model.bin and pass --label-checkpoint PATH, or add --download")
    assert raised.value.exit_code == 2


def test_a_truncated_model_file_is_one_line(tmp_path, tiny_label_model):
    path = tmp_path / "ViT-B-32-laion2b_s34b_b79k.bin"
    path.write_bytes(tiny_label_model.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as raised:
        load_label_model("ViT-B-32", path)
    message = str(raised.value)
    assert message == (
        f"label model file {path} is not a PyTorch model file (100,000 bytes: cut short, damaged, "
        "or another kind of file): delete it and download ViT-B-32-laion2b_s34b_b79k.bin again "
        "from https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
        "open_clip_pytorch_model.bin")
    assert "\n" not in message


def test_a_model_file_of_another_architecture_says_which_it_is(tmp_path, tiny_label_model):
    with pytest.raises(CheckpointError) as raised:
        load_label_model("ViT-B-32", tiny_label_model)
    assert str(raised.value) == (
        f"label model file {tiny_label_model} does not fit label model ViT-B-32: it is a "
        "ViT-tiny-test model file: pass --label-model ViT-tiny-test")
    sam = save_random_checkpoint("vit_tiny", tmp_path / "sam_vit_tiny.pth")
    with pytest.raises(CheckpointError) as raised:
        load_label_model("ViT-tiny-test", sam)
    assert str(raised.value) == (f"label model file {sam} does not fit label model "
                                 "ViT-tiny-test: is it an open_clip model file?")
    weights = tmp_path / "list.bin"
    torch.save([torch.zeros(2)], weights)
    with pytest.raises(CheckpointError) as raised:
        load_label_model("ViT-tiny-test", weights)
    assert str(raised.value) == (f"label model file {weights} holds no model weights "
                                 "(expected a state_dict of tensors)")


def test_model_names_from_file_names():
    assert label_model_for(Path("/x/ViT-B-32-laion2b_s34b_b79k.bin")) == "ViT-B-32"
    assert label_model_for(Path("mobileclip-s2-datacompdr.bin")) == "MobileCLIP-S2"
    assert label_model_for(Path("ViT-tiny-test.bin")) == "ViT-tiny-test"
    assert label_model_for(Path("ViT-B-320.bin")) is None
    assert label_model_for(Path("open_clip_pytorch_model.bin")) is None


def test_only_labelling_imports_torch_and_open_clip():
    code = ("import sys; from drawpipe.sam import labels; v = labels.default_vocabulary(); "
            "labels.settings_record(labels.LabelSettings(), v); "
            "labels.decide([0.7, 0.3] + [0.0] * (len(v.names) - 2), v); "
            "print(sorted(m for m in ('torch', 'open_clip', 'timm') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=PROJECT_DIR, check=True)
    assert shown.stdout == "[]\n"


# ---------------------------------------------------------------- the download


def test_download_resumes_and_verifies_the_sum(tmp_path):
    official = CheckpointFile(VIT_B_32.file_name, VIT_B_32.url, PAYLOAD_SHA256)
    with FileServer(PAYLOAD, breaks=1, break_after=3 * 65536,
                    file_name=VIT_B_32.file_name) as server:
        mirror = server.url.rsplit("/", 1)[0]
        path = download_label_model("ViT-B-32", tmp_path, mirror, official=official,
                                    show_progress=False, backoff_seconds=0.01)
    assert path == label_model_path("ViT-B-32", tmp_path) == \
        tmp_path / "labels" / "ViT-B-32-laion2b_s34b_b79k.bin"
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=196608-"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_download_checks_the_official_sum_and_keeps_nothing(tmp_path):
    with FileServer(PAYLOAD, file_name=VIT_B_32.file_name) as server:
        mirror = server.url.rsplit("/", 1)[0]
        with pytest.raises(DownloadFailed) as raised:
            download_label_model("ViT-B-32", tmp_path, mirror, show_progress=False)
    assert str(raised.value) == (
        f"{mirror}/ViT-B-32-laion2b_s34b_b79k.bin downloaded with SHA-256 {PAYLOAD_SHA256}, "
        "expected 1bd3c7172de5b207ceac554f5ab5266166f3b9baccc9af5989bc801016d080ad: the file "
        "was deleted; run the same command again, or download it by hand")
    assert list((tmp_path / "labels").iterdir()) == []


def test_download_from_nowhere_says_how_to_fetch_it_by_hand(tmp_path):
    mirror = closed_port_url()
    with pytest.raises(DownloadFailed) as raised:
        download_label_model("ViT-B-32", tmp_path, mirror, show_progress=False, retries=0)
    assert str(raised.value) == (
        f"cannot download {mirror}/ViT-B-32-laion2b_s34b_b79k.bin (connection refused); run the "
        "same command again to resume, or download ViT-B-32-laion2b_s34b_b79k.bin by hand and "
        "pass --label-checkpoint")
