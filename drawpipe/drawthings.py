"""What Draw Things' HTTP API accepts, as tables.

Read from Draw Things' public source (draw-things-community: HTTPAPIServer.swift,
Parameters.swift) and its users' reports; see DESIGN.md. The client validates
payload templates against these tables before its first request, and the
simulator uses them to answer like the app does.

A request body is a flat JSON object. Every key must be known (unknown keys are a
422 "Unrecognized keys"), a key and its alias must not both be sent, and any key
left out takes its value from the app's current configuration.
"""

import json
from dataclasses import dataclass

DEFAULT_PORT = 7860

SAMPLERS = (
    "DPM++ 2M Karras",
    "Euler a",
    "DDIM",
    "PLMS",
    "DPM++ SDE Karras",
    "UniPC",
    "LCM",
    "Euler A Substep",
    "DPM++ SDE Substep",
    "TCD",
    "Euler A Trailing",
    "DPM++ SDE Trailing",
    "DPM++ 2M AYS",
    "Euler A AYS",
    "DPM++ SDE AYS",
    "DPM++ 2M Trailing",
    "DDIM Trailing",
    "UniPC Trailing",
    "UniPC AYS",
)

SEED_MODES = ("Legacy", "Torch CPU Compatible", "Scale Alike", "NVIDIA GPU Compatible")


@dataclass(frozen=True)
class Param:
    """One request key. ``kind``: "str", "int", "float", "bool", "list" or "image_list".

    ``nullable``: null is accepted (the feature is off). ``minimum``/``maximum`` are
    inclusive; ``multiple_of`` is for pixel sizes; ``choices`` for enumerations.
    """

    kind: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] | None = None
    label: str | None = None  # the name Draw Things uses in its error messages


def _size(label: str) -> Param:
    return Param("int", minimum=64, maximum=8192, multiple_of=64, label=label)


def _tile(label: str) -> Param:
    return Param("int", minimum=64, maximum=4096, multiple_of=64, label=label)


PARAMETERS: dict[str, Param] = {
    "prompt": Param("str"),
    "negative_prompt": Param("str"),
    "model": Param("str"),
    "width": _size("Width"),
    "height": _size("Height"),
    "seed": Param("int", minimum=0, maximum=4294967295, label="Seed"),
    "seed_mode": Param("str", choices=SEED_MODES, label="seed_mode"),
    "steps": Param("int", minimum=1, maximum=150, label="Steps"),
    "guidance_scale": Param("float", minimum=0, maximum=50, label="Text Guidance"),
    "sampler": Param("str", choices=SAMPLERS, label="sampler"),
    "strength": Param("float", minimum=0, maximum=1, label="Strength"),
    "batch_count": Param("int", minimum=1, maximum=100, label="Batch Count"),
    "batch_size": Param("int", minimum=1, maximum=4, label="Batch Size"),
    "clip_skip": Param("int", minimum=1, maximum=23, label="CLIP Skip"),
    "sharpness": Param("float", minimum=0, maximum=30, label="Sharpness"),
    "shift": Param("float", minimum=0.1, maximum=8, label="Shift"),
    "hires_fix": Param("bool"),
    "hires_fix_width": _size("Hires Fix Width"),
    "hires_fix_height": _size("Hires Fix Height"),
    "hires_fix_strength": Param("float", minimum=0, maximum=1, label="Hires Fix Strength"),
    "refiner_model": Param("str", nullable=True),
    "refiner_start": Param("float", minimum=0, maximum=1, label="Refiner Start"),
    "upscaler": Param("str", nullable=True),
    "upscaler_scale": Param("int", minimum=0, maximum=4, label="Upscaler Scale Factor"),
    "tiled_diffusion": Param("bool"),
    "diffusion_tile_width": _tile("Diffusion Tile Width"),
    "diffusion_tile_height": _tile("Diffusion Tile Height"),
    "diffusion_tile_overlap": Param("int", minimum=64, maximum=1024, multiple_of=64,
                                    label="Diffusion Tile Overlap"),
    "tiled_decoding": Param("bool"),
    "decoding_tile_width": _tile("Decoding Tile Width"),
    "decoding_tile_height": _tile("Decoding Tile Height"),
    "decoding_tile_overlap": Param("int", minimum=64, maximum=1024, multiple_of=64,
                                   label="Decoding Tile Overlap"),
    "loras": Param("list"),
    "controls": Param("list"),
    "stochastic_sampling_gamma": Param("float", minimum=0, maximum=1,
                                       label="Stochastic Sampling Gamma"),
    "preserve_original_after_inpaint": Param("bool"),
    "image_guidance_scale": Param("float", minimum=0, maximum=50, label="Image Guidance"),
    "mask_blur": Param("float", minimum=0, maximum=50, label="Mask Blur"),
    "mask_blur_outset": Param("int", minimum=-100, maximum=1000, label="Mask Blur Outset"),
    "face_restoration": Param("str", nullable=True),
    "aesthetic_score": Param("float", minimum=0, maximum=10),
    "negative_aesthetic_score": Param("float", minimum=0, maximum=10),
    "zero_negative_prompt": Param("bool"),
    "original_width": Param("int", minimum=64, maximum=8192),
    "original_height": Param("int", minimum=64, maximum=8192),
    "target_width": Param("int", minimum=64, maximum=8192),
    "target_height": Param("int", minimum=64, maximum=8192),
    "crop_left": Param("int", minimum=0, maximum=8192),
    "crop_top": Param("int", minimum=0, maximum=8192),
    "tea_cache": Param("bool"),
    "init_images": Param("image_list"),
}

# alias -> canonical key; Draw Things accepts either, never both.
ALIASES: dict[str, str] = {
    "cfg_scale": "guidance_scale",
    "sampler_name": "sampler",
    "denoising_strength": "strength",
    "n_iter": "batch_count",
    "enable_hr": "hires_fix",
    "upscaler_scale_factor": "upscaler_scale",
}

KNOWN_KEYS = frozenset(PARAMETERS) | frozenset(ALIASES)

# Fields inside each entry of "controls" (camelCase, as the app expects).
CONTROL_FIELDS = (
    "file",
    "weight",
    "guidanceStart",
    "guidanceEnd",
    "noPrompt",
    "globalAveragePooling",
    "downSamplingRate",
    "controlImportance",
    "inputOverride",
    "targetBlocks",
)
LORA_FIELDS = ("file", "weight", "mode")

# Upscaler factors the app offers; 0 means the upscaler is off even if one is named.
UPSCALER_FACTORS = (0, 2, 4)


def canonical_key(key: str) -> str:
    """``cfg_scale`` -> ``guidance_scale``; canonical keys map to themselves."""
    return ALIASES.get(key, key)



# --------------------------------------------------------------------------- validation
# Shared by the client (templates are checked before the first request) and the
# simulator (which answers 422 with the same ``detail``).

class RequestRejected(Exception):
    """The body is invalid: the server answers 422 with ``detail`` as its text."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class _WrongType(Exception):
    """Raised by a coercer: the value is not of the parameter's kind."""


def _format_number(value) -> str:
    """``30.0`` -> ``"30"``, ``0.5`` -> ``"0.5"``: how the app prints numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _format_value(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_str(value):
    if not isinstance(value, str):
        raise _WrongType
    return value


def _as_int(value):
    # bool is an int in Python but not in JSON; integral floats (30.0) are accepted.
    if isinstance(value, bool):
        raise _WrongType
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _WrongType


def _as_float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _WrongType
    return float(value)


def _as_bool(value):
    if not isinstance(value, bool):
        raise _WrongType
    return value


def _as_list(value):
    if not isinstance(value, list):
        raise _WrongType
    return value


def _as_image_list(value):
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _WrongType
    return value


# Param.kind -> (coercer, name used in "Invalid type" details)
_KINDS = {
    "str": (_as_str, "string"),
    "int": (_as_int, "int"),
    "float": (_as_float, "float"),
    "bool": (_as_bool, "bool"),
    "list": (_as_list, "array"),
    "image_list": (_as_image_list, "array of strings"),
}

# list parameter -> the fields each of its entries may have
_ENTRY_FIELDS = {"loras": LORA_FIELDS, "controls": CONTROL_FIELDS}


def _check_keys(body: dict) -> None:
    unknown = sorted(key for key in body if key not in KNOWN_KEYS)
    if unknown:
        raise RequestRejected(f"Unrecognized keys: {json.dumps(unknown)}")
    for alias, canonical in ALIASES.items():
        if alias in body and canonical in body:
            raise RequestRejected(f'Duplicate keys: "{alias}" is an alias of "{canonical}"')


def _coerce_values(body: dict) -> dict:
    """Canonical key -> value of the parameter's kind; RequestRejected on a wrong type."""
    values = {}
    for key, value in body.items():
        canonical = canonical_key(key)
        param = PARAMETERS[canonical]
        coerce, type_name = _KINDS[param.kind]
        if value is None and param.nullable:
            values[canonical] = None
            continue
        try:
            values[canonical] = coerce(value)
        except _WrongType:
            expected = f"{type_name} or null" if param.nullable else type_name
            raise RequestRejected(
                f"Invalid type for {key} (expected {expected}, was {_format_value(value)})"
            ) from None
        if canonical in _ENTRY_FIELDS:
            _check_entries(canonical, values[canonical], _ENTRY_FIELDS[canonical])
    return values


def _check_entries(key: str, entries: list, allowed_fields: tuple[str, ...]) -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RequestRejected(
                f"Invalid type for {key}[{index}] (expected object, was {_format_value(entry)})"
            )
        unknown = sorted(name for name in entry if name not in allowed_fields)
        if unknown:
            raise RequestRejected(f"Unrecognized keys in {key}[{index}]: {json.dumps(unknown)}")


def _check_ranges(values: dict) -> None:
    for key, value in values.items():
        param = PARAMETERS[key]
        label = param.label or key
        if value is None:
            continue
        if param.kind in ("int", "float"):
            low, high = param.minimum, param.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                raise RequestRejected(
                    f"Value for {label} must be between {_format_number(low)} and "
                    f"{_format_number(high)}, inclusive (was {_format_number(value)})"
                )
            if param.multiple_of and value % param.multiple_of:
                raise RequestRejected(
                    f"Value for {label} must be a multiple of {param.multiple_of} "
                    f"(was {_format_number(value)})"
                )
        if param.choices is not None and value not in param.choices:
            raise RequestRejected(
                f"Invalid value for {label} (options: {json.dumps(list(param.choices))})"
            )


def upscale_factor(parameters: dict) -> int:
    """1, or the upscaler's factor when an upscaler is named and its scale is 2 or 4."""
    scale = parameters.get("upscaler_scale")
    if parameters.get("upscaler") and scale in UPSCALER_FACTORS and scale > 1:
        return scale
    return 1


def validate_values(body: dict) -> dict:
    """Check a request body's keys and values as Draw Things does.

    Returns {canonical key: value of the parameter's kind}; raises RequestRejected
    whose ``detail`` is the app's 422 text. Order: unknown keys, a key sent with
    its alias, types (and ``controls``/``loras`` entry fields), ranges, the
    upscaler factor. What only the app can know (model files, the init image's
    size against the effective width/height) is not checked here.
    """
    _check_keys(body)
    values = _coerce_values(body)
    _check_ranges(values)
    scale = values.get("upscaler_scale")
    if values.get("upscaler") and scale is not None and scale not in UPSCALER_FACTORS:
        raise RequestRejected(
            f"Value for {PARAMETERS['upscaler_scale'].label} must be one of "
            f"{json.dumps(list(UPSCALER_FACTORS))} when an upscaler is set "
            f"(was {_format_number(scale)})"
        )
    return values


def output_size(parameters: dict) -> tuple[int, int]:
    """(width, height) px of each image a request with these *effective* (canonical)
    parameters returns: the upscaler runs after generation."""
    factor = upscale_factor(parameters)
    return int(parameters["width"]) * factor, int(parameters["height"]) * factor
