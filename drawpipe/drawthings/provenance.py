"""Provenance of a Draw Things request, as PNG text: what PNG-info tools read and what
drawpipe reads back.

    infotext(payload)               the A1111 "parameters" text PNG-info tools show
    provenance_chunks(payload, ...) {"parameters": ..., "drawpipe": JSON} for png.add_text_chunks
"""

import json

from drawpipe.drawthings.api import canonical_key


def _number(value) -> str:
    """30.0 -> "30", 7.5 -> "7.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(value: str) -> str:
    # A1111's infotext quoting (modules/infotext_utils.quote): a value holding a
    # separator becomes a JSON string, so "Key: value, Key: value" still parses.
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _present(value) -> bool:
    return value is not None and value is not False and value != "" and value != []


def _size(p: dict):
    if _present(p.get("width")) and _present(p.get("height")):
        return f"{_number(p['width'])}x{_number(p['height'])}"
    return None


def _strength(p: dict):
    strength = p.get("strength")
    # 1.0 is a full denoise (txt2img); A1111 leaves the field out then.
    return strength if _present(strength) and strength != 1 else None


def _hires_upscale(p: dict):
    if not p.get("hires_fix"):
        return None
    width, first_pass = p.get("width"), p.get("hires_fix_width")
    if isinstance(width, (int, float)) and isinstance(first_pass, (int, float)) and first_pass > 0:
        return f"{width / first_pass:g}"
    return "on"


def _files(key: str):
    def files(p: dict):
        entries = []
        for entry in p.get(key) or ():
            if isinstance(entry, dict):
                if not _present(entry.get("file")):
                    continue
                weight = entry.get("weight")
                entries.append(str(entry["file"]) + (f": {_number(weight)}" if weight is not None else ""))
            else:
                entries.append(str(entry))
        return ", ".join(entries) or None

    return files


def _when(condition_key: str, key: str):
    return lambda p: p.get(key) if _present(p.get(condition_key)) else None


def _above(key: str, threshold: float):
    return lambda p: p.get(key) if isinstance(p.get(key), (int, float)) and p[key] > threshold else None


# (A1111-style label, value from the canonical payload or None to leave the field out)
_INFOTEXT_FIELDS = (
    ("Steps", lambda p: p.get("steps")),
    ("Sampler", lambda p: p.get("sampler")),
    ("CFG scale", lambda p: p.get("guidance_scale")),
    ("Seed", lambda p: p.get("seed")),
    ("Size", _size),
    ("Model", lambda p: p.get("model")),
    ("Denoising strength", _strength),
    ("Refiner", lambda p: p.get("refiner_model")),
    ("Refiner start", _when("refiner_model", "refiner_start")),
    ("Hires upscale", _hires_upscale),
    ("Hires strength", _when("hires_fix", "hires_fix_strength")),
    ("Upscaler", lambda p: p.get("upscaler")),
    ("Upscaler scale", _when("upscaler", "upscaler_scale")),
    ("Seed mode", lambda p: p.get("seed_mode")),
    ("Clip skip", _above("clip_skip", 1)),
    ("Sharpness", _above("sharpness", 0)),
    ("Loras", _files("loras")),
    ("Controls", _files("controls")),
)


def infotext(payload: dict) -> str:
    """The A1111 "parameters" text that PNG-info tools read, from a Draw Things payload.

    Line 1 the prompt, line 2 "Negative prompt: ..." (left out when empty), line 3
    "Steps: 30, Sampler: ..., CFG scale: 7.5, Seed: 123, Size: 1024x1024, Model: ...".
    Aliases (cfg_scale, sampler_name, denoising_strength, ...) count as their
    canonical keys. Only meaningful fields appear: no refiner start without a
    refiner, no strength at 1.0 (txt2img), no clip skip 1, no sharpness 0, nothing
    null/empty/false. Loras and controls are listed as "file: weight". Values holding
    ",", ":" or a newline are JSON-quoted as A1111 does.
    """
    p = {canonical_key(key): value for key, value in payload.items()}
    lines = [str(p.get("prompt") or "")]
    negative = p.get("negative_prompt")
    if _present(negative) and str(negative).strip():
        lines.append(f"Negative prompt: {negative}")
    fields = []
    for label, value_of in _INFOTEXT_FIELDS:
        value = value_of(p)
        if _present(value):
            fields.append(f"{label}: {_quote(_number(value))}")
    if fields:
        lines.append(", ".join(fields))
    return "\n".join(lines)


def _without_images(request: dict) -> dict:
    return {key: value for key, value in request.items() if key != "init_images"}


def provenance_chunks(payload: dict, steps: list[dict] | None = None,
                      overrides: list[str] | None = None, take: int | None = None
                      ) -> dict[str, str]:
    """Texts for add_text_chunks: {"parameters": infotext(payload), "drawpipe": JSON}.

    The JSON is {"request": payload, "steps": steps, "overrides": the command line's
    --set options, "take": the take number of a generated image} (all but the request
    only when given), sorted keys, UTF-8. ``init_images`` are dropped from the payload
    and from every step: base64 images never go into metadata.
    """
    record = {"request": _without_images(payload)}
    if steps is not None:
        record["steps"] = [_without_images(step) if isinstance(step, dict) else step for step in steps]
    if overrides:
        record["overrides"] = list(overrides)
    if take is not None:
        record["take"] = take
    return {
        "parameters": infotext(payload),
        "drawpipe": json.dumps(record, sort_keys=True, ensure_ascii=False),
    }
