"""Draw Things' HTTP API as its source defines it: the derived table and the rules that read it.

Everything about the app's request format comes from ``api_table.json``,
written by ``tools/derive_drawthings_api.py`` from Draw Things' own source (each
entry names its upstream file and line; README says how to refresh it). Nothing
here lists keys: the client's checks (drawthings/payloads.py) and the simulator both call
``decode_body``, which follows the server's decoding step by step:

1. ``restore_faces`` (a bool), then ``init_images`` (base64 strings, each an image);
   HTTPAPIServer/ServerModels.swift ``RequestBody.init``.
2. Every parameter in ``allParameters()`` order (Invocation/Parameters.swift): a
   parameter sent under more than one of its keys (its key and its aliases) is
   refused; otherwise its value is decoded (ParameterTypes.swift: ``null`` keeps the
   app's value for numbers, booleans and lists, sets nil for strings, and is refused
   for enumerations) and its range checked.
3. Any key left over: "Unrecognized keys: [...]".

What the app then does with a valid body (sizes floored to a multiple of 64,
``upscaler_scale`` 0/1/3 meaning the upscaler's native factor, ControlNets and
LoRAs of another model family dropped without a word) is modelled by
``output_size`` and ``resolve_extras``.

Type errors are Swift ``DecodingError`` descriptions, which come from Apple's
Foundation, not from the app's source: they are rendered as Foundation prints them,
and ``RequestRejected.reason`` says the same in plain words.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drawpipe.errors import RequestRejected

DEFAULT_PORT = 7860
TABLE_PATH = Path(__file__).with_name("api_table.json")

# The ModelVersion raw values that LocalImageGenerator.swift special-cases for LoRAs:
# a Kandinsky 2.1 model also takes SD 1.x LoRAs.
_KANDINSKY_FAMILY, _SD1_FAMILY = "kandinsky2.1", "v1"


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Parameter:
    """One request parameter. ``type``: string, int, double, bool, enum or json;
    ``null``: keeps (the app's value stays), sets_nil or rejected; ``range``: inclusive
    (low, high) for numbers; ``options``: an enumeration's values; ``entries``: the
    Swift type of a json list's entries (JSLoRA, JSControl)."""

    key: str
    type: str
    null: str
    aliases: tuple[str, ...]
    title: str
    source: str
    range: tuple | None = None
    options: tuple[str, ...] | None = None
    entries: str | None = None

    @property
    def json_keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)

    @property
    def sendable(self) -> bool:
        """False for a parameter listed as its own alias (Parameters.swift does this for
        compression_artifacts, color_calibration, ...): the server then finds its key
        twice in every body that has it and refuses it ("More than one key"), so only
        the app's window can set it."""
        return self.key not in self.aliases


class ApiTable:
    """The contents of drawthings/api_table.json, indexed."""

    def __init__(self, data: dict):
        self.upstream: dict = data["upstream"]
        enumerations = data["enumerations"]
        self.parameters: dict[str, Parameter] = {}
        for entry in data["parameters"]:
            self.parameters[entry["key"]] = Parameter(
                key=entry["key"], type=entry["type"], null=entry["null"],
                aliases=tuple(entry["aliases"]), title=entry["title"], source=entry["source"],
                range=tuple(entry["range"]) if entry.get("range") else None,
                options=tuple(enumerations[entry["enumeration"]]) if "enumeration" in entry else None,
                entries=entry.get("entries"))
        self.parameter_of: dict[str, Parameter] = {
            json_key: parameter for parameter in self.parameters.values()
            for json_key in parameter.json_keys}
        self.extra_keys: tuple[str, ...] = tuple(data["extra_keys"]["keys"])
        self.entry_types: dict[str, dict] = data["entry_types"]
        self.control_inputs: tuple[str, ...] = tuple(data["control_inputs"])
        self.messages: dict[str, str] = {name: m["format"] for name, m in data["messages"].items()}
        self.refiner_groups = [frozenset(group) for group in data["refiner_groups"]]
        self.files: dict[str, dict[str, dict]] = data["files"]

    @property
    def json_keys(self) -> frozenset[str]:
        """Every key a request may hold: parameters, their aliases, the extra keys."""
        return frozenset(self.parameter_of) | frozenset(self.extra_keys)

    def message(self, name: str, **fields) -> str:
        return self.messages[name].format(**fields)

    def family(self, kind: str, file: str | None) -> str | None:
        """The model family (``version``) of a ``kind`` file ("models", "controlnets",
        "loras"), or None when the table does not know the file."""
        entry = self.files[kind].get(file) if file else None
        return entry.get("version") if entry else None

    def refiner_fits(self, model_family: str, refiner_family: str) -> bool:
        """ModelZoo.isCompatibleRefiner."""
        return model_family == refiner_family or any(
            model_family in group and refiner_family in group for group in self.refiner_groups)


@functools.cache
def api_table() -> ApiTable:
    """The table, read once (on first use: ``--help`` never pays for it)."""
    return ApiTable(json.loads(TABLE_PATH.read_text(encoding="utf-8")))


def canonical_key(key: str) -> str:
    """``cfg_scale`` -> ``guidance_scale``; other keys map to themselves."""
    parameter = api_table().parameter_of.get(key)
    return parameter.key if parameter else key


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodedBody:
    """A body the app accepts. ``values``: parameter key -> value, for the parameters
    sent (a null that keeps the app's value is left out; one that sets nil is None);
    ``sent_as``: parameter key -> the JSON key used (the key or an alias);
    ``init_images``: what ``decode_image`` returned for each, or None when not sent."""

    values: dict
    sent_as: dict
    restore_faces: bool = False
    init_images: list | None = None


# How Swift's JSONDecoder names a JSON value's type in its messages.
_JSON_TYPE_NAMES = {type(None): "null", bool: "bool", int: "number", float: "number",
                    str: "a string", list: "an array", dict: "a dictionary"}
_SWIFT_TYPES = {"string": "String", "int": "Int", "double": "Double", "bool": "Bool",
                "enum": "String", "json": "Array<Any>", "strings": "Array<String>"}
_PLAIN_TYPES = {"string": "a string", "int": "a whole number", "double": "a number",
                "bool": "true or false", "enum": "a string", "json": "a list",
                "strings": "a list of strings"}


def _coding_path(path: list) -> str:
    parts = []
    for index, part in enumerate(path):
        if isinstance(part, int):
            parts.append(f'_CodingKey(stringValue: "Index {part}", intValue: {part})')
        elif index == 0:
            parts.append(f'JSONKey(intValue: nil, stringValue: "{part}")')
        else:
            parts.append(f'CodingKeys(stringValue: "{part}", intValue: nil)')
    return "[" + ", ".join(parts) + "]"


def _where(path: list) -> str:
    return path[0] + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])


def _swift_number(value) -> str:
    """A number as Swift's description prints it: doubles always with a fraction."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _option_meant(value, options: tuple[str, ...]) -> str | None:
    """The option a mistyped enumeration value meant: the same but for case and spaces
    ("Euler A" -> "Euler a"), else a close spelling; None when nothing is close."""
    if not isinstance(value, str):
        return None
    folded = {option.casefold().replace(" ", ""): option for option in options}
    same = folded.get(value.casefold().replace(" ", ""))
    if same is not None:
        return same
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.75)
    return close[0] if close else None


def _type_mismatch(path: list, type_name: str, value) -> RequestRejected:
    swift_type = _SWIFT_TYPES[type_name]
    found = _JSON_TYPE_NAMES[type(value)]
    if value is None:
        detail = (f"valueNotFound(Swift.{swift_type}, Swift.DecodingError.Context(codingPath: "
                  f"{_coding_path(path)}, debugDescription: \"Expected {swift_type} value but found "
                  f"null instead.\", underlyingError: nil))")
    else:
        detail = (f"typeMismatch(Swift.{swift_type}, Swift.DecodingError.Context(codingPath: "
                  f"{_coding_path(path)}, debugDescription: \"Expected to decode {swift_type} but "
                  f"found {found} instead.\", underlyingError: nil))")
    return RequestRejected(detail, f"{_where(path)} must be {_PLAIN_TYPES[type_name]}, "
                                   f"not {json.dumps(value)}")


def _data_corrupted(path: list, description: str, reason: str) -> RequestRejected:
    return RequestRejected(
        f"dataCorrupted(Swift.DecodingError.Context(codingPath: {_coding_path(path)}, "
        f"debugDescription: \"{description}\", underlyingError: nil))", reason)


def _decode_value(type_name: str, value, path: list):
    """A JSON value decoded as Swift's JSONDecoder decodes ``type_name``."""
    if type_name in ("string", "enum"):
        if isinstance(value, str):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float):
            # Foundation accepts a number with a fraction only when it is whole.
            if math.isfinite(value) and value.is_integer():
                return int(value)
            raise _data_corrupted(path, f"Parsed JSON number <{value}> does not fit in Int.",
                                  f"{_where(path)} must be a whole number, not {value}")
    elif type_name == "double":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "strings":
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise _type_mismatch([*path, index], "string", item)
            return list(value)
    raise _type_mismatch(path, type_name, value)


def _decode_entries(parameter: Parameter, value, table: ApiTable) -> list[dict]:
    """``loras``/``controls``: a list of objects decoded as JSLoRA/JSControl. Unknown
    fields are ignored and optional ones may be null (Swift's synthesised Decodable)."""
    path = [parameter.key]
    if not isinstance(value, list):
        raise _type_mismatch(path, "json", value)
    fields = table.entry_types[parameter.entries]
    decoded = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise _type_mismatch([*path, index], "json", entry)
        result = {}
        for name, field in fields.items():
            field_path = [*path, index, name]
            if name not in entry or (entry[name] is None and field["required"]):
                if field["required"]:
                    raise RequestRejected(
                        f"keyNotFound(CodingKeys(stringValue: \"{name}\", intValue: nil), "
                        f"Swift.DecodingError.Context(codingPath: {_coding_path([*path, index])}, "
                        f"debugDescription: \"No value associated with key CodingKeys(stringValue: "
                        f"\\\"{name}\\\", intValue: nil) (\\\"{name}\\\").\", underlyingError: nil))",
                        f"{_where([*path, index])} needs \"{name}\" (every entry of {parameter.key} "
                        f"must have: {', '.join(n for n, f in fields.items() if f['required'])})")
                result[name] = None
                continue
            result[name] = None if entry[name] is None else _decode_value(
                field["type"], entry[name], field_path)
        decoded.append(result)
    return decoded


def _check_range(parameter: Parameter, value) -> None:
    low, high = parameter.range
    if not low <= value <= high:
        raise RequestRejected(api_table().message(
            "out_of_range", title=parameter.title, lower=_swift_number(low),
            upper=_swift_number(high), value=_swift_number(value)))


def _decode_init_images(value, decode_image: Callable[[bytes], object] | None) -> list:
    path = ["init_images"]
    if not isinstance(value, list):
        raise _type_mismatch(path, "json", value)
    images = []
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise _type_mismatch([*path, index], "string", text)
        try:
            # Foundation's Data(base64Encoded:) without options: no line breaks, no
            # "data:" prefix, padding required.
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _data_corrupted([*path, index], "Encountered Data is not valid Base64.",
                                  f"init_images[{index}] is not plain base64 (no \"data:\" "
                                  "prefix, no line breaks)") from None
        if decode_image is None:
            images.append(data)
            continue
        try:
            images.append(decode_image(data))
        except ValueError:
            raise RequestRejected(api_table().message("invalid_init_image")) from None
    return images


def decode_body(body: dict, decode_image: Callable[[bytes], object] | None = None,
                missing_keys: frozenset[str] = frozenset()) -> DecodedBody:
    """Decode a request body as the app does; RequestRejected with the app's 422 text.

    ``decode_image(bytes)``: turns an init image's bytes into an image, raising
    ValueError when they are not one (the simulator passes Pillow; the client passes
    nothing). ``missing_keys``: parameters an older app lacks (their keys are then
    unrecognised).
    """
    table = api_table()
    restore_faces = body.get("restore_faces")
    if restore_faces is not None and not isinstance(restore_faces, bool):
        raise _type_mismatch(["restore_faces"], "bool", restore_faces)
    init_images = None
    if "init_images" in body:
        init_images = _decode_init_images(body["init_images"], decode_image)
    values, sent_as = {}, {}
    for parameter in table.parameters.values():
        if parameter.key in missing_keys:
            continue
        present = [key for key in parameter.json_keys if key in body]
        if not present:
            continue
        # The server counts the keys of [key] + aliases present in the body, so a
        # parameter listed as its own alias is counted twice.
        if len(present) > 1 or not parameter.sendable:
            detail = table.message("more_than_one_key", title=parameter.title,
                                   keys=json.dumps(list(parameter.json_keys)))
            raise RequestRejected(detail, None if parameter.sendable else (
                f"{parameter.key} cannot be sent over HTTP: Draw Things lists it as its own "
                f"alias ({parameter.source}), so the app refuses it ({detail}); set it in the "
                "app's window instead"))
        json_key = present[0]
        sent_as[parameter.key] = json_key
        value = body[json_key]
        if value is None:
            if parameter.null == "rejected":
                raise _type_mismatch([json_key], parameter.type, None)
            if parameter.null == "sets_nil":
                values[parameter.key] = None
            continue
        if parameter.type == "json":
            values[parameter.key] = _decode_entries(parameter, value, table)
            continue
        decoded = _decode_value(parameter.type, value, [json_key])
        if parameter.options is not None and decoded not in parameter.options:
            detail = table.message("invalid_enumeration", key=json_key,
                                   options=json.dumps(list(parameter.options)))
            meant = _option_meant(decoded, parameter.options)
            raise RequestRejected(detail, detail + (f"; did you mean {meant!r}?" if meant else ""))
        if parameter.range is not None:
            _check_range(parameter, decoded)
        values[parameter.key] = decoded
    known = {key for parameter in table.parameters.values() if parameter.key not in missing_keys
             for key in parameter.json_keys} | set(table.extra_keys)
    unrecognized = [key for key in body if key not in known]
    if unrecognized:
        raise RequestRejected(table.message("unrecognized_keys", keys=json.dumps(unrecognized)))
    return DecodedBody(values, sent_as, bool(restore_faces), init_images)


# --------------------------------------------------------------------------- what the app does


def effective_parameters(values: dict, app_configuration: dict) -> dict:
    """The parameters a request runs with: the decoded body's ``values`` over the app's
    current values (its GET / answer). Same argument order as
    payloads.effective_parameters (what is sent, then the app's configuration)."""
    return {**app_configuration, **values}


def upscale_factor(parameters: dict) -> int:
    """1 without an upscaler; else ``upscaler_scale`` 2 or 4, and for 0, 1 or 3 the
    upscaler's native factor (LocalImageGenerator.swift: ``switch upscalerScaleFactor``)."""
    upscaler = parameters.get("upscaler")
    if not upscaler:
        return 1
    scale = parameters.get("upscaler_scale")
    if scale in (2, 4):
        return scale
    entry = api_table().files["upscalers"].get(upscaler)
    return entry["scale_factor"] if entry else 4  # UpscalerZoo.scaleFactorForModel: .x4


def output_size(parameters: dict) -> tuple[int, int]:
    """(width, height) px of each image a request with these effective parameters
    returns: sizes floored to a multiple of 64 (Invocation.swift ``/ 64``), then the
    upscaler's factor."""
    factor = upscale_factor(parameters)
    return (int(parameters["width"]) // 64 * 64 * factor,
            int(parameters["height"]) // 64 * 64 * factor)


def control_modifier(control: dict) -> str | None:
    """What a ControlNet entry conditions on: the file's own modifier, else its
    ``inputOverride`` matched case-insensitively (ScriptModels.swift createControl);
    None when it has neither (the app then drops the control)."""
    table = api_table()
    entry = table.files["controlnets"].get(control.get("file") or "")
    if entry and entry.get("modifier"):
        return entry["modifier"]
    wanted = (control.get("inputOverride") or "").lower()
    for name in table.control_inputs[1:]:  # [0] is "" (unspecified)
        if name.lower() == wanted:
            return name.lower()
    return None


@dataclass(frozen=True)
class Drop:
    """Something in a request the app leaves out without a word. ``kind``: model,
    refiner, lora, control or upscaler; ``index`` in ``loras``/``controls``; ``reason``:
    no_file, unknown_file, not_installed, family, same_as_model, weight or no_modifier;
    ``text``: for people."""

    kind: str
    index: int | None
    file: str | None
    reason: str
    text: str


@dataclass(frozen=True)
class Resolution:
    """What a request really runs with: the refiner (None: none or ignored), the LoRA
    and ControlNet entries applied, and what was dropped (or, for files the table does
    not know, could not be checked: reason unknown_file)."""

    refiner: str | None
    loras: list
    controls: list
    dropped: list


def resolve_extras(parameters: dict, installed: Callable[[str, str], bool] | None = None
                   ) -> Resolution:
    """Which refiner, LoRAs and ControlNets a request with these effective parameters
    gets, by the app's rules (Invocation.swift for the refiner; LocalImageGenerator.swift
    ``guard ControlNetZoo.versionForModel(file) == version``, ``control.weight > 0``, a
    modifier from the file or ``inputOverride``; a LoRA's family must be the model's or
    the refiner's).

    ``installed(kind, file)``: whether the app has a file (the simulator's view);
    None for the client, which cannot know: a file the table does not know is then
    reported as unknown_file instead of judged.
    """
    table = api_table()
    dropped: list[Drop] = []
    model = parameters.get("model")
    family = table.family("models", model)
    if model and family is None and installed is None:
        dropped.append(Drop("model", None, model, "unknown_file",
                            f"model {model} is not in drawpipe's table of Draw Things files: "
                            "its LoRAs and ControlNets cannot be checked"))

    def known(kind: str, file: str) -> bool:
        return file in table.files[kind] and (installed is None or installed(kind, file))

    refiner = parameters.get("refiner_model")
    refiner_family = None
    if refiner:
        refiner_family = table.family("models", refiner)
        if not known("models", refiner):
            reason = "unknown_file" if installed is None else "not_installed"
            dropped.append(Drop("refiner", None, refiner, reason,
                                f"refiner_model {refiner} is not in drawpipe's table of Draw Things "
                                "files; the app ignores an unknown refiner without a word"
                                if installed is None else
                                f"refiner_model {refiner} is not installed: ignored"))
            refiner, refiner_family = None, None
        elif family is not None and (refiner == model
                                     or not table.refiner_fits(family, refiner_family)):
            dropped.append(Drop("refiner", None, refiner, "same_as_model" if refiner == model
                                else "family",
                                f"refiner_model {refiner} ({refiner_family}) cannot refine {model} "
                                f"({family}): the app ignores it"))
            refiner, refiner_family = None, None

    loras = []
    for index, lora in enumerate(parameters.get("loras") or []):
        file, where = lora.get("file"), f"loras[{index}]"
        lora_family = table.family("loras", file)
        if not file:
            dropped.append(Drop("lora", index, None, "no_file", f"{where} has no file: the app "
                                                                "skips it"))
        elif lora_family is None and installed is None:
            dropped.append(Drop("lora", index, file, "unknown_file",
                                f"{where}: {file} is not in drawpipe's table of Draw Things LoRAs: "
                                "its model family cannot be checked"))
            loras.append(lora)
        elif family is not None and (lora_family or _SD1_FAMILY) not in (family, refiner_family) \
                and not (family == _KANDINSKY_FAMILY and lora_family == _SD1_FAMILY):
            dropped.append(Drop("lora", index, file, "family",
                                f"{where}: the app would ignore {file} without a word: it is a "
                                f"{lora_family} LoRA and {model} is {family}; "
                                + _suggest("loras", file, family)))
        else:
            loras.append(lora)

    controls = []
    for index, control in enumerate(parameters.get("controls") or []):
        file, where = control.get("file"), f"controls[{index}]"
        entry = table.files["controlnets"].get(file) if file else None
        modifier = control_modifier(control)
        if not file:
            dropped.append(Drop("control", index, None, "no_file",
                                f"{where} has no file: the app would ignore it"))
        elif entry is None and installed is None:
            dropped.append(Drop("control", index, file, "unknown_file",
                                f"{where}: {file} is not in drawpipe's table of Draw Things "
                                "ControlNets: its model family cannot be checked"))
            controls.append(control)
        elif not known("controlnets", file):
            dropped.append(Drop("control", index, file, "not_installed",
                                f"{where}: {file} is not installed: the app ignores it"))
        elif family is not None and entry["version"] != family:
            dropped.append(Drop("control", index, file, "family",
                                f"{where}: the app would ignore {file} without a word: it is a "
                                f"{entry['version']} ControlNet and {model} is {family}; "
                                + _suggest("controlnets", file, family, modifier)))
        elif (control.get("weight") or 0) <= 0:
            dropped.append(Drop("control", index, file, "weight",
                                f"{where}: weight {control.get('weight')}: the app skips {file}"))
        elif modifier is None:
            choices = ", ".join(f'"{name}"' for name in table.control_inputs[1:])
            dropped.append(Drop("control", index, file, "no_modifier",
                                f"{where}: {file} conditions on nothing: the app would ignore it; "
                                f"set its \"inputOverride\" to one of {choices}"))
        else:
            controls.append(control)

    upscaler = parameters.get("upscaler")
    if upscaler and upscaler not in table.files["upscalers"] and installed is None:
        dropped.append(Drop("upscaler", None, upscaler, "unknown_file",
                            f"upscaler {upscaler} is not one of Draw Things' built-in upscalers: "
                            "the app must have it installed"))
    return Resolution(refiner, loras, controls, dropped)


# Drops that mean a LoRA or ControlNet of the template would not be used: errors for
# the client. The others are worth a warning (a refiner ignored, a weight of 0, a file
# drawpipe's table does not know and so cannot check).
_BLOCKING_REASONS = frozenset({"family", "no_modifier", "no_file"})


def is_blocking(drop: Drop) -> bool:
    return drop.kind in ("lora", "control") and drop.reason in _BLOCKING_REASONS


def _suggest(kind: str, file: str, family: str, modifier: str | None = None) -> str:
    """"use X" naming a file of ``family``: for a ControlNet one conditioning on
    ``modifier`` (or a union ControlNet told to), for a LoRA the most similar name."""
    files = {name: entry for name, entry in api_table().files[kind].items()
             if entry.get("version") == family}
    if kind == "controlnets" and modifier is not None:
        exact = sorted(name for name, entry in files.items() if entry.get("modifier") == modifier)
        if exact:
            return f"use {exact[0]}"
        unions = sorted(name for name, entry in files.items()
                        if entry.get("type") == "controlnetunion")
        if unions:
            return (f'use {unions[0]} with "inputOverride": "{modifier}" (a union ControlNet '
                    "of that family)")
    close = difflib.get_close_matches(file, sorted(files), n=1, cutoff=0.5)
    if close:
        return f"use {close[0]}"
    return f"use a {'LoRA' if kind == 'loras' else 'ControlNet'} made for {family} models"
