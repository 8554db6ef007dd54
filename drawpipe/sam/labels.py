"""Names for cut-outs: a zero-shot image-text model (open_clip) against a vocabulary.

segment.py --label names every cut-out ("chair", "woman", "wall") so that the objects
can be sorted and searched, and so that background SAM cut out ("wall", "sky") leaves
the objects. The model compares each cut-out with every name of a vocabulary; the
name it finds most probable is the cut-out's label, with its score and the runner-up.

    Vocabulary                    the names, which of them are stuff, a SHA-256 of them
    read_vocabulary(path)         a vocabulary file -> Vocabulary (InputFileError, exit 2)
    default_vocabulary()          the bundled one: drawpipe/bundled/labels/vocabulary.txt
    Label, decide(probs, ...)     one cut-out's name, score, runner-up, background or not
    LABEL_MODELS                  name -> LabelModel: open_clip architecture, pretrained
                                  tag, official file (Hugging Face URL, SHA-256)
    label_model_for(path)         the label model a file name says, or None
    label_model_path(name, root)  where the official file goes in the cache folder
    download_label_model(...)     fetch it (resumable, SHA-256 checked: checkpoints.py)
    load_label_model(name, file, device)   an open_clip model, in eval mode
    save_random_label_model(...)  a random-weight model file, for tests and benchmarks
    LabelSettings                 model, file, device, trust threshold (no torch)
    label_picture(rgba)           a cut-out shrunk to what the labeller needs
    settings_record(settings, vocabulary)  what cutouts.json records for the redo rule
    ClipEmbedder                  cut-outs and names -> unit vectors, with one model
    Labeller                      names once, then label(cut-outs) -> [Label]
    load_labeller(settings, vocabulary, cache_root)   the model loaded once, the names
                                  embedded once (and kept in the cache folder)

**The vocabulary file** is UTF-8 text, one name per line, as it would end "a photo of
the ...". A line ``stuff: NAME`` names background (wall, floor, sky): a cut-out named
so is background, not an object. Blank lines and lines starting with ``#`` are
ignored. Names compare without case and extra spaces; a repeated name, a file with no
names, one name only, only stuff, a name over MAX_NAME_CHARS characters or a file that
is not UTF-8 text is one InputFileError naming the file and line. Its SHA-256 is of the
names as read (comments and spacing do not count), so an edited comment redoes nothing.

**The decision** (decide): the model's probabilities over the whole vocabulary (a
softmax of its logits, at the model's own learned temperature). The best name and the
runner-up are recorded with their probabilities. The name is *trusted* when its
probability is at least TRUST_THRESHOLD = 0.5: the model then finds this name more
probable than all the other names together, the one cut-off whose meaning does not
change with the size of the vocabulary (1/N would). A cut-out whose best name is a stuff
word is *background* when the stuff words together reach the same threshold: a piece of
pavement often spreads its probability over "pavement", "road" and "ground", and is
background all the same; a cut-out named as a thing is never background, so no object
is dropped on a stuff word's say-so that the model itself does not trust.

**What the model sees**: the cut-out as a user sees it, the object alone, composited on
mid-grey (NEUTRAL_BACKGROUND): grey keeps the outline of light and dark objects alike
(a white shirt vanishes on white, a black coat on black) and is close to the colour
CLIP normalises to zero. The masked crop with its surroundings was not chosen because a
label should name what was cut out, not its neighbours. (Not verified by looking: no
trained CLIP weights can be had on the machine this was built on.) The names are
embedded as open_clip's zero-shot classifier does: each name in PROMPT_TEMPLATES, the
text embeddings averaged and normalised (open_clip build_zero_shot_classifier).

**The model**: ViT-B-32 with LAION-2B weights (laion2b_s34b_b79k) by default: MIT
licence, 66.6 % ImageNet zero-shot, 605 MB, 224 px input, a well-known baseline that
open_clip supports without extra code. MobileCLIP-S2 is more accurate (74.4 %) and
smaller (398 MB) but its weights' licence (Apple AMLR) allows research use only, which
a dataset made for print and design may not be: it is offered, not the default.
"ViT-tiny-test" has ViT-B-32's geometry with tiny widths, no published weights, for
tests (like sam/models.py's vit_tiny). torch and open_clip are imported only inside the
functions that need them: without --label nothing of them is loaded.

**Wiring into segment.py** (the lead's; nothing here reads the command line):
  - options: ``--label``, ``--labels FILE``, ``--label-model NAME`` (LABEL_MODELS),
    ``--label-checkpoint FILE``, ``--keep-background``; ``--download``/``--download-from``
    and ``--cache-dir`` as for SAM. Read the vocabulary first (read_vocabulary or
    default_vocabulary), so a bad file stops the run before anything loads.
  - the file: ``--label-checkpoint``, else label_model_path(name, cache root) (the
    root is default_cache_dir(environ) or --cache-dir; files go into its ``labels/``);
    missing and --download: download_label_model(name, root, mirror); still missing:
    CheckpointError(missing_label_model_message(name, path)).
  - the stage: one Labeller per process, made on first use like its Segmenter
    (load_labeller, with the cache root), so a run with nothing to do loads nothing.
    Per image: ``labels = labeller.label([cutout.rgba, ...])``; each entry of cutouts.json gets
    ``"label": label.record()``; each PNG ``add_text_chunks(encode_png(rgba),
    label.png_texts())`` (png.py: no re-encoding). A cut-out with ``label.background``
    is, unless --keep-background, not written as a PNG and goes to cutouts.json's
    ``"background"`` list (bbox, polygons, label) instead of ``"cutouts"``.
  - the redo rule: cutouts.json records ``"labels": settings_record(settings,
    vocabulary)`` (model, pretrained tag, vocabulary and prompt SHA-256, threshold); a
    run whose record differs redoes the image; None there when not labelling.
"""

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drawpipe.bundled import DEFAULT_VOCABULARY
from drawpipe.errors import CheckpointError, InputFileError, UsageError
from drawpipe.files import read_user_text
from drawpipe.sam.checkpoints import CheckpointFile, download_checkpoint
from drawpipe.settings import default

# ---------------------------------------------------------------- the vocabulary

STUFF_MARK = "stuff:"
COMMENT_MARK = "#"
# A name and a template must fit CLIP's 77 text tokens; 60 characters leave room.
MAX_NAME_CHARS = 60


@dataclass(frozen=True)
class Vocabulary:
    """``names``: as written, in file order; ``stuff``: the names marked ``stuff:``;
    ``sha256``: of the names as read, one per line, stuff marked (the redo rule's key);
    ``source``: the file it came from."""

    names: tuple[str, ...]
    stuff: frozenset[str]
    sha256: str
    source: str

    def is_stuff(self, name: str) -> bool:
        return name in self.stuff


def read_vocabulary(path: Path) -> Vocabulary:
    """The vocabulary in the file at ``path`` (format: the module docstring). Raises
    InputFileError with the file, the line and what to do."""
    text = read_user_text(path)
    if "\x00" in text:
        raise InputFileError(f"{path}: not text (it holds NUL bytes); write one name per line")
    names, stuff, seen = [], set(), {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith(COMMENT_MARK):
            continue
        is_stuff = entry.lower().startswith(STUFF_MARK)
        name = " ".join((entry[len(STUFF_MARK):] if is_stuff else entry).split())
        where = f"{path}: line {number}"
        if not name:
            raise InputFileError(f'{where}: "{STUFF_MARK}" without a name')
        if len(name) > MAX_NAME_CHARS:
            raise InputFileError(f"{where}: a name of {len(name)} characters; at most "
                                 f"{MAX_NAME_CHARS} fit the model's text")
        key = name.lower()
        if key in seen:
            raise InputFileError(f'{where}: "{name}" is already on line {seen[key]}; give each '
                                 "name once")
        seen[key] = number
        names.append(name)
        if is_stuff:
            stuff.add(name)
    if not names:
        raise InputFileError(f'{path}: no names in it; write one name per line ("{STUFF_MARK} '
                             'NAME" for background such as walls and sky)')
    if len(names) == 1:
        raise InputFileError(f'{path}: only one name ("{names[0]}"); a label is chosen between '
                             "at least two names")
    if len(stuff) == len(names):
        raise InputFileError(f'{path}: every name is marked "{STUFF_MARK}" (background); add '
                             "the names of the things to find")
    canonical = "\n".join(f"{STUFF_MARK} {name}" if name in stuff else name for name in names)
    return Vocabulary(tuple(names), frozenset(stuff),
                      hashlib.sha256(canonical.encode("utf-8")).hexdigest(), str(path))


def default_vocabulary() -> Vocabulary:
    """The bundled vocabulary (people, clothing, furniture, kitchen and dining, food, tools
    and work equipment, vehicles, animals, plants, buildings, signs, and stuff words)."""
    return read_vocabulary(DEFAULT_VOCABULARY)


# ---------------------------------------------------------------- the decision

# Probability the best name needs to be trusted, and the stuff words together to make a
# cut-out named as stuff background (the module docstring says why one half); segment.py's
# --label-threshold (the settings table's label_threshold).
TRUST_THRESHOLD = default("label_threshold")

# open_clip's zero-shot prompts (src/open_clip/zero_shot_metadata.py,
# OPENAI_IMAGENET_TEMPLATES, from OpenAI's CLIP ImageNet notebook): the photographic
# ones in "the" form ("a photo of the elderly person", never "a elderly person"). Six,
# not all 80: each one costs a pass of the text tower over every name.
PROMPT_TEMPLATES = (
    "a photo of the {}.",
    "a cropped photo of the {}.",
    "a close-up photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
)
PROMPTS_SHA256 = hashlib.sha256("\n".join(PROMPT_TEMPLATES).encode("utf-8")).hexdigest()

# The keyword of the PNG text chunk that carries a cut-out's label.
PNG_TEXT_KEYWORD = "label"


@dataclass(frozen=True)
class Label:
    """One cut-out's label. ``name``: the most probable name, ``score`` its probability
    (0..1, over the whole vocabulary); ``runner_up`` and ``runner_up_score`` the next;
    ``background_score``: the stuff words' probabilities together; ``trusted``: score at
    least the threshold; ``background``: named as stuff and background_score at least
    the threshold."""

    name: str
    score: float
    runner_up: str
    runner_up_score: float
    background_score: float
    trusted: bool
    background: bool

    def record(self) -> dict:
        """The entry's ``"label"`` in cutouts.json; probabilities rounded to 4 places."""
        return {"name": self.name, "score": round(self.score, 4), "trusted": self.trusted,
                "runner_up": self.runner_up, "runner_up_score": round(self.runner_up_score, 4),
                "background": self.background,
                "background_score": round(self.background_score, 4)}

    def text(self) -> str:
        """One line for people: "chair 0.81 (runner-up: table 0.07)"; an untrusted name
        gets a question mark, background says so."""
        name = self.name if self.trusted else f"{self.name}?"
        prefix = "background: " if self.background else ""
        return (f"{prefix}{name} {self.score:.2f} "
                f"(runner-up: {self.runner_up} {self.runner_up_score:.2f})")

    def png_texts(self) -> dict[str, str]:
        """Texts for png.add_text_chunks: {PNG_TEXT_KEYWORD: text()}."""
        return {PNG_TEXT_KEYWORD: self.text()}


def decide(probabilities, vocabulary: Vocabulary, threshold: float = TRUST_THRESHOLD) -> Label:
    """The Label of one cut-out from its ``probabilities`` (N floats summing to 1, in the
    order of ``vocabulary.names``; N >= 2)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best, second = np.argsort(-probabilities, kind="stable")[:2]
    name = vocabulary.names[best]
    stuff = [index for index, each in enumerate(vocabulary.names) if each in vocabulary.stuff]
    background_score = float(probabilities[stuff].sum()) if stuff else 0.0
    score = float(probabilities[best])
    return Label(name=name, score=score, runner_up=vocabulary.names[second],
                 runner_up_score=float(probabilities[second]),
                 background_score=background_score, trusted=score >= threshold,
                 background=vocabulary.is_stuff(name) and background_score >= threshold)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of an n x N array (float64, stable)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exponents = np.exp(shifted)
    return exponents / exponents.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- the model table

# Cut-outs are composited on this colour before the model sees them (the module docstring).
NEUTRAL_BACKGROUND = (128, 128, 128)
# A cut-out is handed to the labeller at most this many pixels a side (label_picture): the
# models see 224 (ViT-B-32) or 256 px (MobileCLIP-S2), and their own resize takes it the
# rest of the way; 30 cut-outs of a 2048 px image then take 30 MB, not 500.
LABEL_PICTURE_PX = 512
LABELS_CACHE_FOLDER = "labels"  # below the cache root, beside SAM's "sam"
# The preprocessing of a model without a pretrained tag: CLIP's (open_clip constants.py
# OPENAI_DATASET_MEAN/STD, bicubic, shortest side).
CLIP_PREPROCESSING = {"mean": (0.48145466, 0.4578275, 0.40821073),
                      "std": (0.26862954, 0.26130258, 0.27577711),
                      "interpolation": "bicubic", "resize_mode": "shortest"}


@dataclass(frozen=True)
class LabelModel:
    """One label model: ``architecture``, open_clip's model config name (or ``config``,
    an open_clip model config, for a model open_clip does not list); ``pretrained``,
    open_clip's tag of the official weights (their preprocessing, and the record);
    ``official``: where the weights are published; ``licence`` of those weights."""

    architecture: str
    pretrained: str | None
    official: CheckpointFile | None
    licence: str = ""
    config: dict | None = None


# The SHA-256 sums are the files' Git LFS object ids, which Hugging Face shows on each
# file's page ("Git LFS Details"). ViT-B-32: laion/CLIP-ViT-B-32-laion2B-s34B-b79K,
# open_clip_pytorch_model.bin (605 MB, initial commit 11e0f39); Jina AI's independent
# copy (jinaai/clip-models, ViT-B-32-laion2b-s34b-b79k.bin) has the same sum.
# MobileCLIP-S2: apple/MobileCLIP-S2-OpenCLIP, open_clip_pytorch_model.bin (398 MB,
# commit a406a1b). The file names here are drawpipe's, so that a --download-from
# mirror can hold both under distinct names.
LABEL_MODELS = {
    "ViT-B-32": LabelModel(
        "ViT-B-32", "laion2b_s34b_b79k",
        CheckpointFile(
            "ViT-B-32-laion2b_s34b_b79k.bin",
            "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
            "open_clip_pytorch_model.bin",
            "1bd3c7172de5b207ceac554f5ab5266166f3b9baccc9af5989bc801016d080ad"),
        licence="MIT"),
    "MobileCLIP-S2": LabelModel(
        "MobileCLIP-S2", "datacompdr",
        CheckpointFile(
            "MobileCLIP-S2-datacompdr.bin",
            "https://huggingface.co/apple/MobileCLIP-S2-OpenCLIP/resolve/main/"
            "open_clip_pytorch_model.bin",
            "64553a972ead2f84f6f59ee0c854751db0fdd2203efbd6e7e0c258ecbf24d8d8"),
        licence="Apple AMLR (research use only)"),
    # For tests only: ViT-B-32's geometry (224 px, 32 px patches, CLIP's tokenizer) with
    # one narrow layer per tower, ~1.7 M parameters (most of them the token embedding).
    "ViT-tiny-test": LabelModel(
        "ViT-tiny-test", None, None,
        config={"embed_dim": 32,
                "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32,
                               "patch_size": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                             "heads": 2, "layers": 1}}),
}
DEFAULT_LABEL_MODEL = "ViT-B-32"


def label_model_for(path: Path) -> str | None:
    """The label model named in a file's name ("ViT-B-32-laion2b_s34b_b79k.bin" ->
    "ViT-B-32"), or None."""
    name = Path(path).name.lower()
    for model in sorted(LABEL_MODELS, key=len, reverse=True):
        if re.search(rf"(?<![a-z0-9]){re.escape(model.lower())}(?![a-z0-9])", name):
            return model
    return None


def label_model_path(model: str, cache_root: Path) -> Path:
    """Where the official file of ``model`` lives in the cache: <root>/labels/<file>."""
    return Path(cache_root) / LABELS_CACHE_FOLDER / _official(model).file_name


def missing_label_model_message(model: str, path: Path) -> str:
    official = _architecture(model).official
    if official is None:
        return (f"label model file {path} not found ({model} is a test model: make one with "
                "drawpipe.sam.labels.save_random_label_model)")
    return (f"label model file {path} not found: download {official.file_name} from "
            f"{official.url} and pass --label-checkpoint PATH, or add --download")


def download_label_model(model: str, cache_root: Path, mirror: str | None = None, *,
                         official: CheckpointFile | None = None,
                         destination: Path | None = None,
                         show_progress: bool | None = None, **download_options) -> Path:
    """Fetch the official file of ``model`` (or ``official``) into the cache (or to
    ``destination``: a --label-checkpoint path) unless it is there; returns its path.
    Resumes a broken download, checks the SHA-256 before the file gets its name
    (checkpoints.download_checkpoint); ``mirror``: a folder URL holding the same file
    name (--download-from). DownloadFailed when it cannot."""
    official = official or _official(model)
    if destination is None:
        destination = Path(cache_root) / LABELS_CACHE_FOLDER / official.file_name
    return download_checkpoint(official.address(mirror), destination, official.sha256,
                               show_progress=show_progress, by_hand_flag="--label-checkpoint",
                               **download_options)


def _architecture(model: str) -> LabelModel:
    if model not in LABEL_MODELS:
        raise UsageError(f"unknown label model {model!r}: expected one of "
                         f"{', '.join(LABEL_MODELS)}")
    return LABEL_MODELS[model]


def _official(model: str) -> CheckpointFile:
    official = _architecture(model).official
    if official is None:
        raise UsageError(f"label model {model} has no published weights: pass --label-checkpoint")
    return official


# ---------------------------------------------------------------- loading (torch from here)


def import_open_clip():
    """(torch, open_clip), torch imported first with the MPS fallback on
    (models.import_torch)."""
    from drawpipe.sam.models import import_torch

    torch = import_torch()
    try:
        import open_clip
    except ImportError as exc:
        raise UsageError(f"labelling needs open_clip ({exc}): pip install -e '.[label]'") from None
    return torch, open_clip


def _model_config(model: str) -> dict:
    architecture = _architecture(model)
    if architecture.config is not None:
        return dict(architecture.config)
    return dict(import_open_clip()[1].get_model_config(architecture.architecture))


def build_label_model(model: str, device: str | None = None):
    """An untrained open_clip model of ``model`` (random weights; on ``device``, or on
    "meta" - shapes only)."""
    torch, open_clip = import_open_clip()
    config = _model_config(model)
    kind = open_clip.CustomTextCLIP if config.pop("custom_text", False) else open_clip.CLIP
    with torch.device(device or "cpu"):
        built = kind(**config)
    return built.eval()


def preprocessing(model: str) -> dict:
    """{"image_size", "mean", "std", "interpolation", "resize_mode"} the model's weights
    were trained with (open_clip's pretrained table; CLIP's for a test model)."""
    architecture = _architecture(model)
    settings = dict(CLIP_PREPROCESSING)
    if architecture.pretrained is not None:
        found = import_open_clip()[1].get_pretrained_cfg(architecture.architecture,
                                                      architecture.pretrained)
        settings.update({key: found[key] for key in settings if key in found})
    size = _model_config(model)["vision_cfg"]["image_size"]
    settings["image_size"] = size if isinstance(size, int) else size[0]
    return settings


def save_random_label_model(model: str, path: Path, seed: int = 0) -> Path:
    """Save a random-weight ``model`` file (a state_dict, like the official files) to
    ``path``: for tests and benchmarks where no trained weights can be had."""
    torch, _ = import_open_clip()
    torch.manual_seed(seed)
    torch.save(build_label_model(model).state_dict(), path)
    return Path(path)


def detect_label_model(state_dict: dict) -> str | None:
    """The label model whose parameter names and shapes a state_dict has, or None."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()
              if hasattr(value, "shape")}
    for model in LABEL_MODELS:
        expected = {key: tuple(value.shape)
                    for key, value in build_label_model(model, "meta").state_dict().items()}
        if expected == shapes:
            return model
    return None


def load_label_model(model: str, checkpoint: Path, device: str = "cpu"):
    """The open_clip model of ``model`` with the weights in ``checkpoint``, in eval mode
    on ``device`` (float32).

    Raises CheckpointError (one line: what is wrong, what to do) for a missing file, a
    file that is not a PyTorch file (corrupt, cut short), or weights of another model.
    """
    from drawpipe.sam.models import read_weights

    _, open_clip = import_open_clip()
    checkpoint = Path(checkpoint)
    official = _architecture(model).official
    if not checkpoint.is_file():
        raise CheckpointError(missing_label_model_message(model, checkpoint))
    built = build_label_model(model)
    try:  # open_clip converts older layouts of its weights as it reads them
        open_clip.load_checkpoint(built, str(checkpoint), strict=True, weights_only=True)
    except Exception:  # unreadable, no weights, or weights of another model
        # Read only now, not before every load: a good file (605 MB) is read once.
        # read_weights says in one line what is wrong with an unreadable file.
        detected = detect_label_model(read_weights(checkpoint, "label model file", official))
        hint = (f"it is a {detected} model file: pass --label-model {detected}" if detected
                else "is it an open_clip model file?")
        raise CheckpointError(f"label model file {checkpoint} does not fit label model "
                              f"{model}: {hint}") from None
    return built.to(device).eval()


# ---------------------------------------------------------------- labelling


@dataclass(frozen=True)
class LabelSettings:
    """Which model names the cut-outs. ``checkpoint``: its weights file (the official
    one from label_model_path when the user names none); ``device`` as for SAM
    (models.choose_device); ``trust_threshold``: decide()'s threshold."""

    model: str = DEFAULT_LABEL_MODEL
    checkpoint: Path | None = None
    device: str = "auto"
    trust_threshold: float = TRUST_THRESHOLD


def settings_record(settings: LabelSettings, vocabulary: Vocabulary) -> dict:
    """What cutouts.json records about the labels: labels made with another record are
    stale (the redo rule). Needs no model: a run decides what to redo before loading."""
    architecture = _architecture(settings.model)
    return {"model": settings.model, "pretrained": architecture.pretrained,
            "vocabulary_sha256": vocabulary.sha256, "prompts_sha256": PROMPTS_SHA256,
            "trust_threshold": settings.trust_threshold}


def label_picture(rgba: np.ndarray) -> np.ndarray:
    """A cut-out (side x side x 4 uint8 RGBA) no larger than LABEL_PICTURE_PX a side, for
    Labeller.label: the same picture, shrunk (bicubic; Pillow weights colours by alpha)."""
    from PIL import Image

    if rgba.shape[0] <= LABEL_PICTURE_PX:
        return rgba
    picture = Image.fromarray(rgba, "RGBA")
    size = (LABEL_PICTURE_PX, LABEL_PICTURE_PX)
    return np.asarray(picture.resize(size, Image.Resampling.BICUBIC))


def model_input(rgba: np.ndarray, background=NEUTRAL_BACKGROUND):
    """A cut-out (side x side x 4 uint8 RGBA) as the model is shown it: a PIL RGB image
    of the object on ``background`` (alpha-blended)."""
    from PIL import Image

    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + np.float32(background) * (1.0 - alpha)
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


class ClipEmbedder:
    """One loaded open_clip model: names and cut-outs -> unit vectors in its joint space.
    ``logit_scale``: the model's learned inverse temperature (about 100 when trained)."""

    BATCH_IMAGES = 32
    BATCH_NAMES = 16  # names per text batch; each brings len(PROMPT_TEMPLATES) prompts

    def __init__(self, model: str, network, device: str):
        torch, open_clip = import_open_clip()
        self.torch, self.network, self.device = torch, network, device
        settings = preprocessing(model)
        self.transform = open_clip.image_transform(
            settings["image_size"], is_train=False, mean=settings["mean"], std=settings["std"],
            resize_mode=settings["resize_mode"], interpolation=settings["interpolation"])
        context_length = _model_config(model)["text_cfg"].get("context_length", 77)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        self.logit_scale = float(network.logit_scale.detach().exp())

    def embed_names(self, names) -> np.ndarray:
        """N x D float32, one unit row per name: its prompts' embeddings averaged."""
        from open_clip import build_zero_shot_classifier

        with self.torch.inference_mode():
            weights = build_zero_shot_classifier(self.network, self.tokenizer, list(names),
                                                 PROMPT_TEMPLATES, self.BATCH_NAMES, self.device)
        return weights.T.float().cpu().numpy()

    def embed_cutouts(self, pictures) -> np.ndarray:
        """n x D float32 unit rows, one per cut-out (side x side x 4 uint8 RGBA)."""
        rows = []
        with self.torch.inference_mode():
            for start in range(0, len(pictures), self.BATCH_IMAGES):
                batch = self.torch.stack([self.transform(model_input(picture))
                                          for picture in pictures[start:start + self.BATCH_IMAGES]])
                features = self.network.encode_image(batch.to(self.device), normalize=True)
                rows.append(features.float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


class Labeller:
    """Names cut-outs. ``embedder``: anything with ``embed_names(names)`` and
    ``embed_cutouts(pictures)`` (unit rows) and ``logit_scale`` - ClipEmbedder, or a
    stand-in in tests. The names are embedded once, here, unless ``name_vectors`` (N x D
    unit rows, in the vocabulary's order) are given."""

    def __init__(self, embedder, vocabulary: Vocabulary, trust_threshold: float = TRUST_THRESHOLD,
                 device: str | None = None, name_vectors: np.ndarray | None = None):
        self.embedder = embedder
        self.vocabulary = vocabulary
        self.trust_threshold = trust_threshold
        self.device = device
        if name_vectors is None:
            name_vectors = embedder.embed_names(vocabulary.names)
        self.name_vectors = np.asarray(name_vectors, dtype=np.float32)

    def probabilities(self, pictures) -> np.ndarray:
        """n x N: each cut-out's probability of each name (softmax of the model's logits)."""
        if not len(pictures):
            return np.zeros((0, len(self.vocabulary.names)))
        vectors = np.asarray(self.embedder.embed_cutouts(pictures), dtype=np.float32)
        return softmax(self.embedder.logit_scale * vectors @ self.name_vectors.T)

    def label(self, pictures) -> list[Label]:
        """One Label per cut-out (side x side x 4 uint8 RGBA), in order."""
        return [decide(row, self.vocabulary, self.trust_threshold)
                for row in self.probabilities(pictures)]


def names_cache_path(settings: LabelSettings, vocabulary: Vocabulary, cache_root: Path) -> Path:
    """Where the vocabulary's name vectors for this model file are kept:
    <root>/labels/names-<key>.npy, the key a SHA-256 of the model, its file (path, size,
    modification time), the vocabulary and the prompts: any of them changed, another file."""
    stat = Path(settings.checkpoint).stat()
    identity = {"model": settings.model, "vocabulary_sha256": vocabulary.sha256,
                "checkpoint": [str(Path(settings.checkpoint).resolve()), stat.st_size,
                               stat.st_mtime_ns],
                "prompts_sha256": PROMPTS_SHA256}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    return Path(cache_root) / LABELS_CACHE_FOLDER / f"names-{key[:32]}.npy"


def _cached_name_vectors(path: Path, count: int) -> np.ndarray | None:
    """The N x D float32 unit rows in ``path``, or None (missing, damaged, other shape)."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (vectors.ndim != 2 or vectors.shape[0] != count or vectors.dtype != np.float32
            or not np.all(np.isfinite(vectors))
            or not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)):
        return None
    return vectors


def load_labeller(settings: LabelSettings, vocabulary: Vocabulary,
                  cache_root: Path | None = None) -> Labeller:
    """The model of ``settings`` loaded on its device and the vocabulary's names embedded,
    so a process makes one and keeps it. Embedding the names runs the text tower over
    every name in every prompt (1,236 prompts for the bundled vocabulary: ViT-B-32 took
    4 min on 2 busy CPU cores), so with ``cache_root`` the vectors are kept in its
    labels/ folder (names_cache_path) and a later process reads them in milliseconds.
    CheckpointError/UsageError as load_label_model."""
    from drawpipe.files import write_atomically
    from drawpipe.sam.models import choose_device

    if settings.checkpoint is None:
        raise UsageError("no label model file given (LabelSettings.checkpoint)")
    device = choose_device(settings.device)
    network = load_label_model(settings.model, settings.checkpoint, device)
    embedder = ClipEmbedder(settings.model, network, device)
    cached = cache_path = None
    if cache_root is not None:
        cache_path = names_cache_path(settings, vocabulary, cache_root)
        cached = _cached_name_vectors(cache_path, len(vocabulary.names))
    labeller = Labeller(embedder, vocabulary, settings.trust_threshold, device, cached)
    if cache_path is not None and cached is None:
        buffer = io.BytesIO()
        np.save(buffer, labeller.name_vectors, allow_pickle=False)
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cache_path, buffer.getvalue())
        except OSError:
            pass  # a cache that cannot be written costs the next process time, nothing else
    return labeller
