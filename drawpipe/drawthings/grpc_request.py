"""A template's request -> Draw Things' gRPC ``ImageGenerationRequest``, as the app builds it.

The same JSON keys as over HTTP (a template, a recipe step, ``--set``), checked by the
same table and the same rules (``drawthings.decode_body``: unknown keys, aliases,
types, ranges, enumerations; an init image's size against width x height, height
first), become what the app's own gRPC client sends
(RemoteImageGenerator.swift:97-190):

- ``configuration``: a ``GenerationConfiguration`` FlatBuffer (config.fbs), made with the
  code flatc generated (drawthings/generated/config) by the rules of ``grpc_table.json``:
  each field from the key that sets it in ``Invocation.init`` (Invocation.swift:113-196),
  converted the same way (sizes ``/ 64``, enumeration words to their values, the model
  and refiner by file or display name, ``restore_faces`` to the face restoration file).
- ``prompt``, ``negativePrompt`` (an absent negative prompt is "", Invocation.swift:199).
- ``image``: the init image as a tensor (drawthings/tensors.py), by its SHA-256; its bytes
  in ``contents`` (the server looks a 32-byte field up there:
  ImageGenerationServiceImpl.swift:404-414). No hints: a template cannot hold any.
- ``chunked``: true (answers over 4 MiB come in 4 MiB pieces), ``user``, ``device``,
  ``sharedSecret`` when one is given, ``scaleFactor`` 1.

What differs from HTTP: no app window stands behind a gRPC request, so a key left out
takes the app's default configuration (Defaults.swift ``GenerationConfiguration.default``),
else the schema's default; ``width``, ``height`` and ``seed`` have no fixed default there
(the device's size, a random seed) and must be sent. txt2img sends strength 1, as the
HTTP server sets it (HTTPAPIServer.swift:89-91). img2img needs exactly one init image:
HTTP would silently draw on the app's canvas without one, and gRPC has no canvas.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from drawpipe.drawthings import api as drawthings
from drawpipe.errors import RequestRejected

TABLE_PATH = Path(__file__).with_name("grpc_table.json")
REQUIRED_KEYS = {"width": "the device's default size", "height": "the device's default size",
                 "seed": "a random seed"}
CLIENT_NAME = "drawpipe"


@functools.cache
def grpc_table() -> dict:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


def _python_name(field: str) -> str:
    """flatc's Python name of a field: ``stage_2_steps`` -> ``Stage2Steps``."""
    return "".join(part[:1].upper() + part[1:] for part in field.split("_"))


def _enumeration_of(field: dict) -> dict | None:
    """{word: raw value} when the field's schema type is an enumeration."""
    entry = grpc_table()["enumerations"].get(field["type"])
    return entry["values"] if entry else None


# --------------------------------------------------------------------------- defaults


def _schema_default(field: dict):
    """A field's config.fbs default as a value (an enumeration's as its raw value)."""
    text = field["schema_default"]
    if text is None:
        return None
    if _enumeration_of(field) is not None:
        return _schema_enumerations()[field["type"]].index(text)
    return json.loads(text)


def _key_value(field: dict, value):
    """A field's value -> the key's (the inverse of ``_field_value``)."""
    words = _enumeration_of(field)
    if words is not None:
        return {raw: word for word, raw in words.items()}[value]
    if field.get("conversion") == "divide_by_64":
        return value * 64
    if field["type"] in ("float", "double"):
        return float(value)
    return value


@functools.cache
def _default_configuration() -> dict:
    table = grpc_table()
    defaults = table["defaults"]["values"]
    result = {key: None for key in REQUIRED_KEYS}
    for field in table["fields"]:
        key, conversion = field.get("key"), field.get("conversion")
        if key is None or key in REQUIRED_KEYS or conversion in ("positive", "face_restoration"):
            continue
        if key not in drawthings.api_table().parameters:
            continue  # a field the HTTP API cannot set (stage_2_steps): never sent as a key
        if conversion in ("loras", "controls"):
            result[key] = []
            continue
        value = defaults[field["field"]] if field["field"] in defaults else _schema_default(field)
        result[key] = None if value is None else _key_value(field, value)
    result["prompt"], result["negative_prompt"] = "", ""
    return result


@functools.cache
def _schema_enumerations() -> dict:
    """{enumeration: its names in value order}, from the generated code."""
    import importlib

    enumerations = {}
    for name in grpc_table()["enumerations"]:
        module = importlib.import_module(f"drawpipe.drawthings.generated.config.{name}")
        members = {value: key for key, value in vars(getattr(module, name)).items()
                   if not key.startswith("_")}
        enumerations[name] = [members[index] for index in range(len(members))]
    return enumerations


def default_configuration() -> dict:
    """What a gRPC request's keys are when a template leaves them out, as the HTTP API's
    keys (the shape of the app's ``GET /`` answer, so the HTTP preflight's checks and
    predictions run unchanged); ``width``, ``height`` and ``seed`` are None (REQUIRED_KEYS)."""
    return dict(_default_configuration())


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class BuiltRequest:
    """``message``: the ImageGenerationRequest."""

    message: object


def _decode_png(data: bytes):
    """An init image's bytes -> HxWx3 uint8 RGB; ValueError when they are not an image."""
    import numpy as np
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValueError("not an image") from None
    return np.asarray(image.convert("RGB"))


def resolved_model(name: str | None) -> str | None:
    """A model given by file or display name -> its file (ModelZoo.specificationForModel,
    then specificationForHumanReadableModel); a name the table does not know is kept (a
    model the user converted: FilesExist says whether the server has it)."""
    if not name:
        return name
    models = drawthings.api_table().files["models"]
    if name in models:
        return name
    by_name = [file for file, entry in models.items() if entry.get("name") == name]
    return by_name[0] if by_name else name


def effective_request_parameters(mode: str, decoded: drawthings.DecodedBody) -> dict:
    """The parameters a request runs with over gRPC: the defaults, the values of the
    payload (``decoded``: drawthings.decode_body's answer), strength 1 for txt2img, the
    model and refiner as files. RequestRejected when the HTTP API would refuse the
    payload or a required key is missing."""
    table = drawthings.api_table()
    parameters = drawthings.effective_parameters(decoded.values, default_configuration())
    if mode == "txt2img":
        if decoded.init_images is not None:
            raise RequestRejected(table.message("init_images_txt2img"))
        parameters["strength"] = 1.0
    parameters["restore_faces"] = decoded.restore_faces
    for key, why in REQUIRED_KEYS.items():
        if parameters.get(key) is None:
            raise RequestRejected(f"{key} is missing", f"send {key}: over gRPC nothing stands in "
                                                       f"for it (Draw Things' default is {why})")
    if parameters.get("model") is None:
        raise RequestRejected(table.message("missing_model"))
    if parameters.get("prompt") is None:
        raise RequestRejected(table.message("missing_prompt"))
    parameters["model"] = resolved_model(parameters["model"])
    if parameters.get("refiner_model"):
        parameters["refiner_model"] = resolved_model(parameters["refiner_model"])
    return parameters


def build_request(mode: str, payload: dict, shared_secret: str | None = None,
                  upload_codec: str = "fpzip") -> BuiltRequest:
    """``mode`` "txt2img" or "img2img"; ``payload``: the HTTP API's request body (for img2img
    with ``init_images``: one base64 PNG, as SdapiClient sends). RequestRejected(detail,
    reason) for what the app would refuse, in the HTTP server's words where it has them.
    ``upload_codec``: how the init image is compressed ("fpzip", as the app; "raw" costs
    no client CPU and the server takes it too)."""
    from drawpipe.drawthings import tensors
    from drawpipe.drawthings.generated import imageService_pb2 as service

    table = drawthings.api_table()
    decoded = drawthings.decode_body(payload, _decode_png)  # the init image decoded once
    init_images = decoded.init_images
    parameters = effective_request_parameters(mode, decoded)
    message = service.ImageGenerationRequest(
        prompt=parameters["prompt"], negativePrompt=parameters.get("negative_prompt") or "",
        configuration=configuration_bytes(parameters), scaleFactor=1, user=CLIENT_NAME,
        device=service.LAPTOP, chunked=True)
    if shared_secret:
        message.sharedSecret = shared_secret
    if mode == "img2img":
        if init_images is None or len(init_images) != 1:
            raise RequestRejected(
                f"{0 if init_images is None else len(init_images)} init images",
                "img2img over gRPC needs exactly one init image (there is no canvas to draw on)")
        rgb = init_images[0]
        height, width = rgb.shape[:2]
        if height != parameters["height"]:
            raise RequestRejected(table.message("init_height_mismatch", image=height,
                                                request=parameters["height"]))
        if width != parameters["width"]:
            raise RequestRejected(table.message("init_width_mismatch", image=width,
                                                request=parameters["width"]))
        data = tensors.encode_tensor(tensors.image_tensor(rgb), upload_codec)
        message.image = hashlib.sha256(data).digest()
        message.contents.append(data)
    return BuiltRequest(message)


def _field_value(field: dict, parameters: dict):
    """A GenerationConfiguration field's value from the parameters (None: leave it out)."""
    conversion = field.get("conversion")
    if conversion == "constant":
        return field["constant"]
    key = field.get("key")
    if key is None or (key not in parameters and conversion != "face_restoration"):
        return None
    value = parameters.get(key)
    if conversion == "face_restoration":
        return grpc_table()["face_restoration_file"] if parameters.get("restore_faces") else None
    if value is None:
        return None
    words = _enumeration_of(field)
    if words is not None:
        return words[value]
    if conversion == "divide_by_64":
        return int(value) // 64
    if conversion == "seed":
        return random.randint(0, 2**32 - 1) if value == -1 else int(value)
    if conversion in ("uint32", "int32", "uint8"):
        return int(value)
    if conversion == "float32":
        return float(value)
    if conversion == "positive":
        return int(value) > 0
    if conversion == "at_least_0":
        return max(int(value), 0)
    return value  # value, model, refiner, loras, controls: as they are


def configuration_bytes(parameters: dict) -> bytes:
    """Effective parameters (the HTTP API's keys) -> the GenerationConfiguration FlatBuffer."""
    import flatbuffers

    from drawpipe.drawthings.generated.config import Control, GenerationConfiguration, LoRA

    table = grpc_table()
    defaults = table["defaults"]["values"]
    builder = flatbuffers.Builder(1024)
    values, offsets = {}, {}
    for field in table["fields"]:
        if field.get("deprecated"):
            continue
        value = _field_value(field, parameters)
        if value is None and field.get("key") not in parameters:
            value = defaults.get(field["field"])
        if value is None:
            continue
        if field["conversion"] in ("loras", "controls"):
            module = LoRA if field["conversion"] == "loras" else Control
            offsets[field["field"]] = _entry_vector(builder, GenerationConfiguration, module,
                                                    field, value, table)
        elif field["type"] == "string":
            offsets[field["field"]] = builder.CreateString(value)
        else:
            values[field["field"]] = value
    GenerationConfiguration.Start(builder)
    for field in table["fields"]:
        name = field["field"]
        if name in offsets:
            getattr(GenerationConfiguration, "Add" + _python_name(name))(builder, offsets[name])
        elif name in values:
            getattr(GenerationConfiguration, "Add" + _python_name(name))(builder, values[name])
    builder.Finish(GenerationConfiguration.End(builder))
    return bytes(builder.Output())


def _entry_vector(builder, configuration_module, module, field: dict, entries: list, table: dict):
    """A ``loras``/``controls`` list -> a vector of LoRA/Control tables
    (ScriptModels.swift createLora/createControl)."""
    rules = table["entries"][field["conversion"]]["fields"]
    made = []
    for entry in entries:
        strings, scalars = {}, {}
        for name, rule in rules.items():
            value = entry.get(rule["json"])
            if value is None:
                continue
            enumeration = rule.get("enumeration")
            if enumeration is not None:
                # The app matches the word case-insensitively; anything else is value 0.
                scalars[name] = table["enumerations"][enumeration]["values"].get(value.lower(), 0)
            elif isinstance(value, str):
                strings[name] = builder.CreateString(value)
            elif isinstance(value, list):
                names = [builder.CreateString(item) for item in value]
                getattr(module, "Start" + _python_name(name) + "Vector")(builder, len(names))
                for offset in reversed(names):
                    builder.PrependUOffsetTRelative(offset)
                strings[name] = builder.EndVector()
            else:
                scalars[name] = value
        module.Start(builder)
        for name, offset in strings.items():
            getattr(module, "Add" + _python_name(name))(builder, offset)
        for name, value in scalars.items():
            getattr(module, "Add" + _python_name(name))(builder, value)
        made.append(module.End(builder))
    getattr(configuration_module, "Start" + _python_name(field["field"]) + "Vector")(builder, len(made))
    for offset in reversed(made):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


# --------------------------------------------------------------------------- reading one back


def read_configuration(data: bytes) -> dict:
    """A GenerationConfiguration FlatBuffer -> {field: value} of every field the schema
    has (its defaults where the buffer leaves one out): what the server reads
    (``GenerationConfiguration.from(data:)``, ImageGenerationServiceImpl.swift:194)."""
    from drawpipe.drawthings.generated.config.GenerationConfiguration import \
        GenerationConfiguration

    root = GenerationConfiguration.GetRootAs(data, 0)
    values = {}
    for field in grpc_table()["fields"]:
        if field.get("deprecated"):
            continue
        name = _python_name(field["field"])
        if field.get("conversion") in ("loras", "controls"):
            values[field["field"]] = [_read_entry(getattr(root, name)(index), field)
                                      for index in range(getattr(root, name + "Length")())]
            continue
        value = getattr(root, name)()
        values[field["field"]] = value.decode("utf-8") if isinstance(value, bytes) else value
    return values


def _read_entry(entry, field: dict) -> dict:
    rules = grpc_table()["entries"][field["conversion"]]["fields"]
    result = {}
    for name in rules:
        reader = getattr(entry, _python_name(name))
        if name == "target_blocks":
            result[name] = [entry.TargetBlocks(i).decode("utf-8")
                            for i in range(entry.TargetBlocksLength())]
            continue
        value = reader()
        result[name] = value.decode("utf-8") if isinstance(value, bytes) else value
    return result


def parameters_of_configuration(configuration: dict, prompt: str, negative_prompt: str) -> dict:
    """What a server reads from a request, as the HTTP API's keys (the inverse of the
    table's conversions): the simulator predicts sizes, files and pictures from it
    exactly as for an HTTP request."""
    import numpy as np

    table = grpc_table()
    known = drawthings.api_table().parameters
    parameters = {"prompt": prompt, "negative_prompt": negative_prompt}
    for field in table["fields"]:
        key, conversion = field.get("key"), field.get("conversion")
        if key not in known or field.get("deprecated") or conversion in ("positive",
                                                                          "face_restoration"):
            continue
        value = configuration[field["field"]]
        if field["type"] == "float":
            # The decimal the request's JSON held: the shortest that gives this Float32.
            value = float(str(np.float32(value)))
        if conversion in ("loras", "controls"):
            rules = table["entries"][conversion]["fields"]
            parameters[key] = [_entry_as_json(entry, rules, table) for entry in value]
        else:
            parameters[key] = _key_value(field, value)
    return parameters


def _entry_as_json(entry: dict, rules: dict, table: dict) -> dict:
    import numpy as np

    result = {}
    for name, rule in rules.items():
        value = entry[name]
        if isinstance(value, float):
            value = float(str(np.float32(value)))
        if rule.get("enumeration") is not None:
            words = table["enumerations"][rule["enumeration"]]["values"]
            value = {raw: word for word, raw in words.items()}[value]
        result[rule["json"]] = value
    return result
