"""Payload templates: load, validate against Draw Things' keys, merge overrides.

A template is a JSON object of request keys (see drawthings.py). Keys starting
with "_" are notes for people and are never sent. Draw Things takes every key
left out from whatever the app's window is set to, so templates name every field
that matters, with null/[]/false where a feature must be off.

``"prompt"`` may contain ``{prompt}``, replaced by the queue's prompt variant.
"""

import difflib
import json
from pathlib import Path

from . import drawthings
from .errors import InputFileError

PROMPT_PLACEHOLDER = "{prompt}"


def read_json_file(path: Path):
    """Parse a JSON file a user wrote (payloads, recipes, prompt sets, queues).

    InputFileError naming the file, and for bad JSON the line and column.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a folder, not a file") from None
    except OSError as error:
        raise InputFileError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows may add a BOM
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputFileError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def without_notes(template: dict) -> dict:
    return {key: value for key, value in template.items() if not key.startswith("_")}


def check_payload(payload: dict, source: str) -> None:
    """InputFileError("<source>: <what Draw Things would say>") if the server would refuse it."""
    try:
        drawthings.validate_values(payload)
        return
    except drawthings.RequestRejected as exc:
        problem = exc.detail
    unknown = [key for key in payload if key not in drawthings.KNOWN_KEYS]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(drawthings.KNOWN_KEYS), n=1)
        if close:
            hints.append(f'"{key}" -> "{close[0]}"')
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise InputFileError(f"{source}: {problem}{hint}")


def load_payload(path: Path) -> dict:
    """A validated single-request template (a JSON object), notes removed."""
    template = read_json_file(path)
    if not isinstance(template, dict):
        raise InputFileError(f"{path}: a payload template must be a JSON object {{...}}")
    payload = without_notes(template)
    check_payload(payload, str(path))
    return payload


def fill_prompt(template_prompt: str, prompt: str) -> str:
    """Put the queue's prompt where the template says; without a placeholder, prepend it."""
    if PROMPT_PLACEHOLDER in template_prompt:
        return template_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return f"{prompt}, {template_prompt}" if template_prompt else prompt


def effective_parameters(payload: dict, app_configuration: dict) -> dict:
    """What the server will use: its configuration, overridden by the payload (aliases mapped)."""
    parameters = dict(app_configuration)
    parameters.update({drawthings.canonical_key(key): value for key, value in payload.items()})
    return parameters
