"""Payload templates: load them and check them as the app would take them.

A template is a JSON object of request keys (drawthings/api.py; the keys come from
Draw Things' source). Keys starting with "_" are notes for people and are never
sent. Draw Things takes every key left out from whatever the app's window is set
to, so templates name every field that matters, with null/[]/false where a feature
must be off.

``"prompt"`` may contain ``{prompt}``, replaced by the queue's prompt variant.

Checks, all before the first request:
- ``check_payload``: what the app would refuse (an unknown key, a key with its
  alias, a wrong type, a value out of range, a sampler that is not one) and what it
  would silently drop (a LoRA or ControlNet of another model family, a union
  ControlNet without ``inputOverride``): an InputFileError naming the file. What
  cannot be checked or is probably not meant comes back as warning lines.
- ``check_against_app``: the same against the running app's ``GET /`` answer: a
  key that app does not have (an older app) is a ServerIncompatible error, and the
  app's current values stand in for the keys the template leaves out.

Overrides (``--set KEY=VALUE``, ``--set STEP:KEY=VALUE``) change a template's values
from the command line; ``parse_override`` checks each against the table at once,
and the template it lands in is checked again as a whole.
"""

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from drawpipe.drawthings import api as drawthings
from drawpipe.errors import InputFileError, ServerIncompatible, UsageError
from drawpipe.files import read_user_text

PROMPT_PLACEHOLDER = "{prompt}"

# Keys whose values the app floors to a multiple of 64 without a word (Invocation.swift).
_FLOORED_TO_64 = ("width", "height", "hires_fix_width", "hires_fix_height")
# Entry fields the app reads as one of a few words, taking a default for anything else
# (ScriptModels.swift createControl/createLora): field -> (accepted, default).
_ENTRY_WORDS = {
    ("controls", "controlImportance"): (("balanced", "prompt", "control"), "balanced"),
    ("loras", "mode"): (("all", "base", "refiner"), "all"),
}


def read_json_file(path: Path):
    """Parse a JSON file a user wrote (payloads, recipes, prompt sets, queues).

    InputFileError naming the file, and for bad JSON the line and column.
    """
    text = read_user_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputFileError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def without_notes(template: dict) -> dict:
    return {key: value for key, value in template.items() if not key.startswith("_")}


def _similar_keys(key: str) -> list[str]:
    """Known keys a mistyped or invented ``key`` may have meant: close spellings, else
    keys sharing a word stem (``face_restoration`` -> ``restore_faces``)."""
    known = sorted(drawthings.api_table().json_keys)
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    if close:
        return close
    stems = {word[:4] for word in key.lower().split("_") if len(word) >= 4}
    return [name for name in known
            if stems and stems <= {word[:4] for word in name.split("_") if len(word) >= 4}][:2]


def _rejection(exc: drawthings.RequestRejected, payload: dict, source: str) -> InputFileError:
    unknown = [key for key in payload if key not in drawthings.api_table().json_keys]
    if not unknown:
        return InputFileError(f"{source}: {exc.reason}")
    commit = drawthings.api_table().upstream["draw-things-community"]["commit"][:12]
    hints = []
    for key in unknown:
        similar = _similar_keys(key)
        if similar:
            hints.append(f'"{key}" -> {" or ".join(json.dumps(s) for s in similar)}')
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    names = ", ".join(json.dumps(key) for key in unknown)
    return InputFileError(f"{source}: {names} {'is not a key' if len(unknown) == 1 else 'are not keys'}"
                          f" of Draw Things' HTTP API (draw-things-community {commit}): the app "
                          f"answers {exc.detail}{hint}")


def check_payload(payload: dict, source: str, app_configuration: dict | None = None) -> list[str]:
    """Check one request (a template, or a recipe step) before anything is sent.

    Raises InputFileError("<source>: ...") for what the app would refuse or silently
    drop; returns warning lines for what it would do without saying so and cannot be
    checked here. ``app_configuration``: the app's GET / answer, whose values stand in
    for keys the payload leaves out (the model, say); None before a server is known.
    """
    try:
        decoded = drawthings.decode_body(payload)
    except drawthings.RequestRejected as exc:
        raise _rejection(exc, payload, source) from None
    warnings = []
    for key in _FLOORED_TO_64:
        value = decoded.values.get(key)
        if isinstance(value, int) and value % 64:
            warnings.append(f"{source}: {key} {value} is not a multiple of 64: the app uses "
                            f"{value // 64 * 64}")
    for (list_key, field), (words, default) in _ENTRY_WORDS.items():
        for index, entry in enumerate(decoded.values.get(list_key) or []):
            word = entry.get(field)
            if word is not None and word.lower() not in words:
                warnings.append(f"{source}: {list_key}[{index}].{field} \"{word}\" is not one of "
                                f"{', '.join(words)}: the app uses \"{default}\"")
    parameters = drawthings.effective_parameters(decoded.values, app_configuration or {})
    for drop in drawthings.resolve_extras(parameters).dropped:
        if drawthings.is_blocking(drop):
            raise InputFileError(f"{source}: {drop.text}")
        warnings.append(f"{source}: {drop.text}")
    return warnings


def check_against_app(payload: dict, source: str, app_configuration: dict, server: str) -> list[str]:
    """``check_payload`` against the running app: its GET / answer lists every key that
    version of the app knows (HTTPAPIServer.swift WelcomeResponse)."""
    table = drawthings.api_table()
    for key in payload:
        parameter = table.parameter_of.get(key)
        if parameter is not None and parameter.key not in app_configuration:
            raise ServerIncompatible(
                f'{source}: "{key}" is not a key of the Draw Things app at {server} (its GET / does '
                "not list it: the app is older than this template): update Draw Things, or "
                f'remove "{key}" from {source}')
    return _window_only_warnings(app_configuration, server) + check_payload(
        payload, source, app_configuration)


def preflight(client, payloads: list[tuple[dict, str]], on_warning=None) -> dict:
    """Before a worker's first request: the app's GET / answer (ServerUnreachable when
    there is none), with every ``(payload, source)`` checked against that app
    (``check_against_app``); what it finds worth a warning goes to ``on_warning(line)``.
    ``client``: the worker's SdapiClient."""
    app_configuration = client.check_server()
    for payload, source in payloads:
        for line in check_against_app(payload, source, app_configuration, client.base_url):
            if on_warning is not None:
                on_warning(line)
    return app_configuration


def _window_only_warnings(app_configuration: dict, server: str) -> list[str]:
    """Parameters only the app's window can set (drawthings.Parameter.sendable), left on:
    every image gets them, and no request can say otherwise."""
    warnings = []
    for parameter in drawthings.api_table().parameters.values():
        if parameter.sendable or parameter.key not in app_configuration:
            continue
        off = parameter.options[0] if parameter.options else (
            False if parameter.type == "bool" else None)
        value = app_configuration[parameter.key]
        if off is not None and value != off:
            warnings.append(f"the app at {server} has {parameter.key} {json.dumps(value)} set in "
                            "its window, and requests cannot change it (the server refuses that "
                            f"key): every image gets it; set it to {json.dumps(off)} in Draw Things "
                            "if that is not meant")
    return warnings


def load_payload(path: Path) -> tuple[dict, list[str]]:
    """(a checked single-request template without its notes, warning lines)."""
    template = read_json_file(path)
    if not isinstance(template, dict):
        raise InputFileError(f"{path}: a payload template must be a JSON object {{...}}")
    payload = without_notes(template)
    return payload, check_payload(payload, str(path))


def fill_prompt(template_prompt: str, prompt: str) -> str:
    """Put the queue's prompt where the template says; without a placeholder, prepend it."""
    if PROMPT_PLACEHOLDER in template_prompt:
        return template_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return f"{prompt}, {template_prompt}" if template_prompt else prompt


def effective_parameters(payload: dict, app_configuration: dict) -> dict:
    """What the app will use: its configuration, overridden by the (valid) payload
    (decoded: aliases and types as the app reads them; api.effective_parameters)."""
    return drawthings.effective_parameters(drawthings.decode_body(payload).values,
                                           app_configuration)


# Keys the client sets on every request: an override of them would be overwritten.
CLIENT_KEYS = {
    "seed": "the seed comes from each file's name (use --seed-offset for another take)",
    "init_images": "the client sends the input image",
}


@dataclass(frozen=True)
class Override:
    """``--set [STEP:]KEY=VALUE``. ``key``: the parameter's key (an alias given on the
    command line is resolved); ``step``: a recipe step's name or number, None for every
    step that sends the key (or the template); ``text``: as the user wrote it."""

    key: str
    value: object
    step: str | None
    text: str

    @property
    def name(self) -> str:
        """The key as the user wrote it: ``key`` or one of its aliases (``cfg_scale``)."""
        return self.text.partition("=")[0].rpartition(":")[2].strip()


def parse_override(text: str, steps: bool = False) -> Override:
    """``"steps=20"``, ``"2:strength=0.35"``, ``"sampler=Euler a"`` -> Override.

    VALUE is JSON when it parses as JSON (numbers, true, false, null, lists, quoted
    strings), else the text itself. UsageError naming the option when the key or the
    value would be refused by the app. ``steps``: the command has recipe steps, so the
    STEP:KEY=VALUE form is offered too (upscale.py).
    """
    where, equals, value_text = text.partition("=")
    step, colon, key = where.rpartition(":")
    key = key.strip()
    if not equals or not key:
        forms = "KEY=VALUE or STEP:KEY=VALUE" if steps else "KEY=VALUE"
        raise UsageError(f"--set {text}: expected {forms}")
    try:
        value = json.loads(value_text)
    except ValueError:
        value = value_text
    if key in CLIENT_KEYS:
        raise UsageError(f"--set {text}: {key} cannot be set: {CLIENT_KEYS[key]}")
    try:
        drawthings.decode_body({key: value})
    except drawthings.RequestRejected as exc:
        if key not in drawthings.api_table().json_keys:
            similar = _similar_keys(key)
            hint = f"; did you mean {' or '.join(similar)}?" if similar else ""
            raise UsageError(f'--set {text}: "{key}" is not a key of Draw Things\' HTTP API{hint}') \
                from None
        raise UsageError(f"--set {text}: {exc.reason}") from None
    return Override(drawthings.canonical_key(key), value, step.strip() if colon else None, text)


def sends(payload: dict, key: str) -> bool:
    """Whether ``payload`` sends parameter ``key`` under its name or an alias."""
    return any(name in payload for name in drawthings.api_table().parameters[key].json_keys)


def with_override(payload: dict, override: Override) -> dict:
    """``payload`` with the override's value under the parameter's key (any alias the
    payload used is removed: the app refuses a key sent with its alias)."""
    aliases = drawthings.api_table().parameters[override.key].json_keys
    result = {key: value for key, value in payload.items() if key not in aliases}
    result[override.key] = override.value
    return result


@dataclass(frozen=True)
class Overridden:
    """``override_payloads``' answer: each step's payload with the overrides, and for each
    override (in the order given) the 1-based steps where its value stands."""

    payloads: tuple[dict, ...]
    steps: tuple[tuple[int, ...], ...]


def override_payloads(payloads: list[dict], overrides: list[Override],
                    step_names: list[str] | None, owner: str) -> Overridden:
    """The one place ``--set`` lands, for a template and for a recipe's steps alike.

    ``step_names`` None: ``payloads`` is one template (``owner``: the script, e.g.
    "generate.py"); KEY=VALUE changes or adds KEY, STEP:KEY=VALUE is a UsageError.
    Otherwise a recipe (``owner``: its name) whose steps are named ``step_names``:
    KEY=VALUE changes KEY in every step that sends it (a UsageError when none does),
    STEP:KEY=VALUE changes or adds it in that step (its name or number). A later
    override of a key wins over an earlier one in the steps both set.
    """
    _check_one_name_each(overrides)
    payloads = [dict(payload) for payload in payloads]
    changed: list[list[int]] = []
    for override in overrides:
        if step_names is None:
            if override.step is not None:
                raise UsageError(f"--set {override.text}: {owner} has one template, no steps: "
                                 "use --set KEY=VALUE")
            numbers = [1]
        elif override.step is None:
            numbers = [n for n, payload in enumerate(payloads, 1) if sends(payload, override.key)]
            if not numbers:
                raise UsageError(f"--set {override.text}: no step of {owner} sends "
                                 f"{override.key}; add it to one step with --set "
                                 f"STEP:{override.text} ({_step_list(step_names)})")
        else:
            numbers = [_step_number(step_names, override, owner)]
        for number in numbers:
            payloads[number - 1] = with_override(payloads[number - 1], override)
        for earlier, previous in zip(overrides, changed):  # a later value stands there now
            if earlier.key == override.key:
                previous[:] = [n for n in previous if n not in numbers]
        changed.append(numbers)
    return Overridden(tuple(payloads), tuple(tuple(numbers) for numbers in changed))


def _check_one_name_each(overrides: list[Override]) -> None:
    """UsageError for one parameter set under two of its names (``guidance_scale`` and
    ``cfg_scale``): Draw Things refuses a key sent with its alias, and the command line
    holds to the same rule rather than let one name silently win."""
    first_named: dict[str, Override] = {}
    for override in overrides:
        first = first_named.setdefault(override.key, override)
        if first.name != override.name:
            raise UsageError(f"--set {override.text}: {override.name} and {first.name} name the "
                             f"same setting ({override.key}), already given by --set "
                             f"{first.text}; Draw Things refuses a key sent with its alias: "
                             "set it once, under one name")


def _step_list(step_names: list[str]) -> str:
    return "steps: " + ", ".join(f"{n} '{name}'" for n, name in enumerate(step_names, 1))


def _step_number(step_names: list[str], override: Override, owner: str) -> int:
    wanted = override.step
    for number, name in enumerate(step_names, 1):
        if wanted == str(number) or wanted.lower() == name.lower():
            return number
    raise UsageError(f"--set {override.text}: {owner} has no step \"{wanted}\" "
                     f"({_step_list(step_names)})")
