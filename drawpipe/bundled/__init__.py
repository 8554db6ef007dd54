"""The data drawpipe ships: payload templates, upscale recipes, prompt sets, and the
vocabulary that names cut-outs.

Package data, found beside this file in a checkout and in an installed wheel alike;
in a checkout the folders ``payloads/`` and ``prompts/`` at the top are links here,
so the files users edit are these.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
PAYLOADS = FOLDER / "payloads"
PROMPTS = FOLDER / "prompts"
LABELS = FOLDER / "labels"
TXT2IMG_TEMPLATE = PAYLOADS / "txt2img.json"
DEFAULT_RECIPE = PAYLOADS / "creative_upscale.json"
PROMPT_SETS = PROMPTS / "variable_sets.json"
DEFAULT_VOCABULARY = LABELS / "vocabulary.txt"


def recipe_names() -> list[str]:
    """The bundled upscale recipes' names ("creative_upscale", ...): every payload but
    the txt2img template."""
    return sorted(path.stem for path in PAYLOADS.glob("*.json") if path != TXT2IMG_TEMPLATE)
