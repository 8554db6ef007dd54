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


def _number_text(value) -> str:
    """30.0 -> "30", 0.25 -> "0.25": numbers as Draw Things prints them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_list(names) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


_KIND_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "image_list": lambda v: isinstance(v, list),
}

_ENTRY_FIELDS = {"controls": CONTROL_FIELDS, "loras": LORA_FIELDS}


def request_problem(body: dict) -> str | None:
    """The first reason Draw Things would refuse ``body`` (its 422 ``detail``), or None.

    Checks keys (unknown, key sent with its alias), JSON types, ranges, multiples
    of 64, enumerations and the fields of ``controls``/``loras`` entries. It does
    not check what only the app knows (model files) nor the init image.
    """
    unknown = sorted(key for key in body if key not in KNOWN_KEYS)
    if unknown:
        return f"Unrecognized keys: {_json_list(unknown)}"
    for alias, canonical in ALIASES.items():
        if alias in body and canonical in body:
            return f'Duplicate keys: "{alias}" is an alias of "{canonical}"'
    for key, value in body.items():
        param = PARAMETERS[canonical_key(key)]
        if value is None and param.nullable:
            continue
        if not _KIND_CHECKS[param.kind](value):
            return f"Invalid type for {key} (expected {param.kind}, was {json.dumps(value)[:60]})"
        label = param.label or key
        if param.choices is not None and value not in param.choices:
            return f"Invalid value for {label} (options: {_json_list(param.choices)})"
        if param.minimum is not None and not (param.minimum <= value <= param.maximum):
            return (
                f"Value for {label} must be between {_number_text(param.minimum)} and "
                f"{_number_text(param.maximum)}, inclusive (was {_number_text(value)})"
            )
        if param.multiple_of and int(value) % param.multiple_of:
            return f"Value for {label} must be a multiple of {param.multiple_of} (was {_number_text(value)})"
        fields = _ENTRY_FIELDS.get(canonical_key(key))
        for index, entry in enumerate(value if fields else ()):
            if not isinstance(entry, dict):
                return f"Invalid type for {key}[{index}] (expected object)"
            extra = sorted(set(entry) - set(fields))
            if extra:
                return f"Unrecognized keys in {key}[{index}]: {_json_list(extra)}"
    upscaler = body.get("upscaler")
    factor = body.get("upscaler_scale", body.get("upscaler_scale_factor"))
    if upscaler and factor is not None and factor not in UPSCALER_FACTORS[1:]:
        return f"Value for Upscaler Scale Factor must be 2 or 4 (was {_number_text(factor)})"
    return None


def output_size(parameters: dict) -> tuple[int, int]:
    """(width, height) in px of the image a request with these *effective* parameters returns.

    The upscaler runs after generation, multiplying the size by ``upscaler_scale``.
    """
    width, height = int(parameters["width"]), int(parameters["height"])
    factor = parameters.get("upscaler_scale", parameters.get("upscaler_scale_factor")) or 0
    if parameters.get("upscaler") and factor in UPSCALER_FACTORS[1:]:
        return width * int(factor), height * int(factor)
    return width, height
