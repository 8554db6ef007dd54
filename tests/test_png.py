import io
import json
import os
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from drawpipe.drawthings.provenance import infotext, provenance_chunks
from drawpipe.png import add_text_chunks, read_text_chunks


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC: an independent walker."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        chunk_type = png[offset + 4 : offset + 8]
        data = png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(chunk_type + data), chunk_type
        chunks.append((chunk_type, data))
        offset += 12 + length
    return chunks


def idat_bytes(png: bytes) -> bytes:
    return b"".join(data for chunk_type, data in png_chunks(png) if chunk_type == b"IDAT")


@pytest.fixture
def noise_image() -> Image.Image:
    return Image.frombytes("RGB", (96, 64), os.urandom(96 * 64 * 3))


@pytest.fixture
def png_bytes(noise_image) -> bytes:
    buffer = io.BytesIO()
    noise_image.save(buffer, "PNG")
    return buffer.getvalue()


def test_text_chunks_round_trip_with_non_ascii_text(png_bytes, noise_image, tmp_path):
    texts = {"parameters": "Straße bei Nacht, 夜の街 — «photo»\nNegative prompt: blur", "Comment": "plain"}

    out = add_text_chunks(png_bytes, texts)

    assert read_text_chunks(out) == texts
    path = tmp_path / "out.png"
    path.write_bytes(out)
    assert read_text_chunks(path) == texts
    assert read_text_chunks(str(path)) == texts
    types = [chunk_type for chunk_type, _ in png_chunks(out)]
    assert types[types.index(b"IDAT") - 2 : types.index(b"IDAT")] == [b"iTXt", b"iTXt"]
    with Image.open(io.BytesIO(out)) as image:  # seen before any pixel is decoded
        assert {key: image.info[key] for key in texts} == texts
    with Image.open(io.BytesIO(out)) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.text == texts
        assert image.info["parameters"] == texts["parameters"]
        assert image.tobytes() == noise_image.tobytes()


def test_pixel_data_is_copied_byte_for_byte(png_bytes):
    out = add_text_chunks(png_bytes, {"drawpipe": "{}"})

    assert idat_bytes(out) == idat_bytes(png_bytes)
    assert [chunk for chunk in png_chunks(out) if chunk[0] != b"iTXt"] == png_chunks(png_bytes)
    first_idat = png_bytes.index(b"IDAT") - 4
    assert out.endswith(png_bytes[first_idat:])  # every pixel byte, CRCs and IEND unchanged


def test_accepts_bytearray_and_memoryview(png_bytes):
    expected = add_text_chunks(png_bytes, {"k": "v"})
    assert add_text_chunks(bytearray(png_bytes), {"k": "v"}) == expected
    assert add_text_chunks(memoryview(png_bytes), {"k": "v"}) == expected
    assert read_text_chunks(bytearray(expected)) == {"k": "v"}


def test_reads_text_ztxt_and_compressed_itxt_written_by_pillow(noise_image, png_bytes):
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "café")  # Latin-1: tEXt
    info.add_text("Description", "long " * 50, zip=True)  # zTXt
    info.add_itxt("Author", "Ünïcode 作者", zip=True)  # compressed iTXt
    buffer = io.BytesIO()
    noise_image.save(buffer, "PNG", pnginfo=info)

    texts = read_text_chunks(buffer.getvalue())

    assert texts == {"Title": "café", "Description": "long " * 50, "Author": "Ünïcode 作者"}
    assert read_text_chunks(png_bytes) == {}


def test_not_a_png_raises(png_bytes, tmp_path):
    with pytest.raises(ValueError, match=r"^not a PNG: bad signature$"):
        add_text_chunks(b"GIF89a" + png_bytes[6:], {"k": "v"})
    with pytest.raises(ValueError, match=r"^not a PNG: bad signature$"):
        add_text_chunks(b"", {"k": "v"})
    with pytest.raises(ValueError, match=r"^not a PNG: no IEND chunk in \d+ bytes$"):
        add_text_chunks(png_bytes[:-12], {"k": "v"})
    broken_length = png_bytes[:8] + struct.pack(">I", 1 << 30) + png_bytes[12:]
    with pytest.raises(ValueError, match=r"^not a PNG: bad chunk length 1073741824 at byte 8$"):
        add_text_chunks(broken_length, {"k": "v"})
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes[: len(png_bytes) // 2])
    with pytest.raises(ValueError, match=r"^not a PNG: bad chunk length"):
        read_text_chunks(truncated)


def test_bad_keywords_raise(png_bytes):
    with pytest.raises(ValueError, match="not Latin-1"):
        add_text_chunks(png_bytes, {"名前": "v"})
    for keyword in ("", "k" * 80, " lead", "two  spaces", "tab\tkey"):
        with pytest.raises(ValueError, match="1-79 printable Latin-1"):
            add_text_chunks(png_bytes, {keyword: "v"})
    with pytest.raises(ValueError, match="NUL"):
        add_text_chunks(png_bytes, {"k": "a\x00b"})


TXT2IMG = {
    "prompt": "a family at dinner, golden hour",
    "negative_prompt": "blurry, lowres",
    "model": "sd_xl_base_1.0_f16.ckpt",
    "width": 1024,
    "height": 1024,
    "seed": 123,
    "seed_mode": "Scale Alike",
    "steps": 30,
    "guidance_scale": 7.5,
    "sampler": "DPM++ 2M Karras",
    "strength": 1.0,
    "clip_skip": 1,
    "sharpness": 0,
    "hires_fix": False,
    "refiner_model": "sd_xl_refiner_1.0_f16.ckpt",
    "refiner_start": 0.7,
    "upscaler": None,
    "upscaler_scale": 0,
    "loras": [],
    "controls": [],
}


def test_infotext_for_a_txt2img_payload():
    assert infotext(TXT2IMG) == (
        "a family at dinner, golden hour\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 123, Size: 1024x1024, "
        "Model: sd_xl_base_1.0_f16.ckpt, Refiner: sd_xl_refiner_1.0_f16.ckpt, Refiner start: 0.7, "
        "Seed mode: Scale Alike"
    )


def test_infotext_reads_aliases_and_quotes_like_a1111():
    payload = {
        "prompt": "portrait",
        "negative_prompt": "",
        "steps": 8,
        "sampler_name": "Euler a",
        "cfg_scale": 7.0,
        "seed": 42,
        "width": 2048,
        "height": 2048,
        "model": "juggernaut, xl: v9.ckpt",
        "denoising_strength": 0.3,
        "hires_fix": True,
        "hires_fix_width": 512,
        "hires_fix_height": 512,
        "hires_fix_strength": 0.6,
        "upscaler": "4x_ultrasharp_f16.ckpt",
        "upscaler_scale_factor": 2,
        "clip_skip": 2,
        "sharpness": 2.0,
        "refiner_start": 0.7,  # no refiner: left out
        "loras": [{"file": "detail.safetensors", "weight": 0.8, "mode": "all"}],
        "controls": [{"file": "controlnet_tile_f16.ckpt", "weight": 0.5}, {"file": "b.ckpt", "weight": 1}],
        "init_images": ["iVBORw0KGgo="],
    }

    assert infotext(payload) == (
        "portrait\n"
        'Steps: 8, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 2048x2048, Model: "juggernaut, xl: v9.ckpt", '
        "Denoising strength: 0.3, Hires upscale: 4, Hires strength: 0.6, Upscaler: 4x_ultrasharp_f16.ckpt, "
        'Upscaler scale: 2, Clip skip: 2, Sharpness: 2, Loras: "detail.safetensors: 0.8", '
        'Controls: "controlnet_tile_f16.ckpt: 0.5, b.ckpt: 1"'
    )


def test_infotext_of_a_prompt_alone_is_one_line():
    assert infotext({"prompt": "just this", "negative_prompt": "  "}) == "just this"
    assert infotext({"model": 'say "hi", ok'}) == '\nModel: "say \\"hi\\", ok"'


def test_provenance_never_stores_init_images(png_bytes):
    payload = dict(TXT2IMG, init_images=["iVBORw0KGgoAAAANSUhEUg=="], strength=0.3)
    steps = [{"upscaler": "4x_ultrasharp_f16.ckpt", "init_images": ["AAAA"]}, {"strength": 0.3}]

    chunks = provenance_chunks(payload, steps)

    assert set(chunks) == {"parameters", "drawpipe"}
    assert chunks["parameters"] == infotext(payload)
    record = json.loads(chunks["drawpipe"])
    assert record == {
        "request": {key: value for key, value in payload.items() if key != "init_images"},
        "steps": [{"upscaler": "4x_ultrasharp_f16.ckpt"}, {"strength": 0.3}],
    }
    assert "iVBORw0KGgo" not in chunks["drawpipe"] and "AAAA" not in chunks["drawpipe"]
    assert list(json.loads(provenance_chunks(payload)["drawpipe"])) == ["request"]
    out = add_text_chunks(png_bytes, chunks)
    with Image.open(io.BytesIO(out)) as image:
        assert json.loads(image.info["drawpipe"]) == record
