"""Draw Things' tensor format: the bytes gRPC's image fields carry.

``ImageGenerationRequest.image`` and the hints' tensors (by their SHA-256, the bytes in
``contents``), ``ImageGenerationResponse.generatedImages`` and ``previewImage`` hold one
tensor each, as s4nnc's ``Tensor.data(using:)`` writes it and ``Tensor(data:using:)``
reads it (liuliu/s4nnc e96e311, the commit draw-things-community pins;
nnc/Tensor.swift:1909-2035)::

    UInt32 identifier | ccv_nnc_tensor_param_t (64 bytes) | data           all little-endian

    ccv_nnc_tensor_param_t (liuliu/ccv lib/nnc/ccv_nnc_tfb.h:79-85):
        int32 type (1: CPU memory), format (2: NHWC), datatype (0x20000: Float16), reserved,
        int32 dim[12] (unused dimensions 0)

    identifier  data
    0           the elements as they are                         (Tensor.swift:1924-1935)
    0xf7217     fpzip: Float16 widened to Float32 and written at precision 19, which keeps
                every Float16 bit; nx..nf = the last dimension .. the first
                (nnc/Store.swift:2242-2307; read back at :2309-2378)
    0x217       zip: raw DEFLATE of the elements                 (Store.swift:2380-2421, 2551-2627)

The server writes images with ``[.zip, .fpzip]`` when response compression is on (the
default of gRPCServerCLI, gRPCServerCLI.swift:527-531) and raw otherwise; a codec that
fails or does not shrink the data falls back to raw (Tensor.swift:1948-1961,
Store.swift:2303). It reads a request's tensors with ``[.zip, .fpzip]``, which also
takes raw ones (identifier 0, Tensor.swift:1991). The app's own client sends its image
compressed the same way (RemoteImageGenerator.swift:144-149).

An image is NHWC (1, height, width, 3) of ``FloatType``, Float16 on every machine but
an Intel Mac (SwiftDiffusion FloatType.swift), from -1 to 1. The app converts pixels
in Float16 arithmetic (LocalImageGenerator ImageConverter.swift):

    RGB byte -> value   byte * 2 / 255 - 1                                  (:2037-2042)
    value -> RGB byte   Int((value + 1) * 127.5), clamped to 0...255, 0 if not finite (:566-571)

The second truncates, so a byte converted there and back may come back one lower; the
simulator uses ``rgb_from_request_tensor`` and ``tensor_decoding_to`` instead, which
round-trip exactly (a real server never turns the request's tensor into bytes).

Arrays here are numpy arrays; numpy computes Float16 arithmetic in Float32 and rounds
each result to Float16, which gives the same value as native Float16 for + - * /.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

CPU_MEMORY = 0x1  # CCV_TENSOR_CPU_MEMORY
NHWC = 0x02  # CCV_TENSOR_FORMAT_NHWC
FLOAT16 = 0x20000  # CCV_16F (liuliu/ccv lib/ccv.h)
MAX_DIMENSIONS = 12  # CCV_NNC_MAX_DIM_ALLOC

RAW, ZIP, FPZIP = 0, 0x217, 0xF7217
CODECS = {"raw": RAW, "zip": ZIP, "fpzip": FPZIP}

# ccv data types (lib/ccv.h) -> numpy element types.
DATA_TYPES = {
    0x01000: np.dtype("u1"),  # CCV_8U
    0x02000: np.dtype("<i4"),  # CCV_32S
    0x04000: np.dtype("<f4"),  # CCV_32F
    0x08000: np.dtype("<i8"),  # CCV_64S
    0x10000: np.dtype("<f8"),  # CCV_64F
    FLOAT16: np.dtype("<f2"),  # CCV_16F
}
_FLOATS = (0x04000, 0x10000, FLOAT16)
_FPZIP_PRECISION = {FLOAT16: 19, 0x04000: 32, 0x10000: 64}  # Store.swift:2259-2271

_HEADER = struct.Struct("<I4i12i")
HEADER_BYTES = _HEADER.size  # 4 + 64


class TensorFormatError(ValueError):
    """Bytes that are not a tensor this reader can decode; the message says why."""


def _data_type_of(array: np.ndarray) -> int:
    for data_type, dtype in DATA_TYPES.items():
        if array.dtype == dtype or array.dtype == dtype.newbyteorder("="):
            return data_type
    raise TypeError(f"no ccv data type for {array.dtype}")


def encode_tensor(array: np.ndarray, codec: str = "fpzip", tensor_format: int = NHWC) -> bytes:
    """An array -> the tensor's bytes. ``codec``: "raw", "zip" or "fpzip" (which, as in
    s4nnc, applies to floating-point data only and falls back to raw when it does not
    shrink the data; "zip" likewise)."""
    if array.ndim == 0 or array.ndim > MAX_DIMENSIONS:
        raise ValueError(f"a tensor has 1 to {MAX_DIMENSIONS} dimensions, not {array.ndim}")
    data_type = _data_type_of(array)
    elements = np.ascontiguousarray(array, dtype=DATA_TYPES[data_type])
    raw = elements.tobytes()
    identifier, data = RAW, raw
    if codec == "fpzip" and data_type in _FLOATS:
        import fpzip

        shape = elements.shape
        # fpzip takes up to four dimensions: leading ones fold into the last (nf), as
        # s4nnc does (Store.swift:2272-2283).
        folded = elements.reshape((-1, *shape[-3:]) if len(shape) > 4 else shape)
        wide = folded.astype(np.float32) if data_type == FLOAT16 else folded
        compressed = fpzip.compress(wide, precision=_FPZIP_PRECISION[data_type], order="C")
        if len(compressed) <= len(raw):
            identifier, data = FPZIP, compressed
    elif codec in ("zip", "fpzip"):
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        compressed = deflate.compress(raw) + deflate.flush()
        if len(compressed) <= len(raw):
            identifier, data = ZIP, compressed
    elif codec != "raw":
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    dims = list(elements.shape) + [0] * (MAX_DIMENSIONS - elements.ndim)
    return _HEADER.pack(identifier, CPU_MEMORY, tensor_format, data_type, 0, *dims) + data


def decode_tensor(data: bytes) -> np.ndarray:
    """The tensor's bytes -> an array of its shape and element type. TensorFormatError
    for anything else: too short, an unknown data type or codec, data that does not
    decode to the header's size."""
    if len(data) < HEADER_BYTES:
        raise TensorFormatError(f"{len(data)} bytes, shorter than a tensor header ({HEADER_BYTES})")
    identifier, _type, _format, data_type, _reserved, *dims = _HEADER.unpack_from(data)
    shape = []
    for dim in dims:  # ccv_nnc_tensor_nd: the dimensions before the first 0
        if dim == 0:
            break
        shape.append(dim)
    if not shape or any(dim < 0 for dim in shape):
        raise TensorFormatError(f"a tensor header with dimensions {dims}")
    dtype = DATA_TYPES.get(data_type)
    if dtype is None:
        raise TensorFormatError(f"data type 0x{data_type:x} is not one this reader knows")
    count = int(np.prod(shape, dtype=np.int64))
    payload = memoryview(data)[HEADER_BYTES:]
    if identifier == RAW:
        if len(payload) < count * dtype.itemsize:
            raise TensorFormatError(f"{len(payload)} bytes of data for {count} elements of "
                                    f"{dtype.itemsize} bytes (cut off?)")
        return np.frombuffer(payload, dtype=dtype, count=count).reshape(shape)
    if identifier == ZIP:
        try:
            raw = zlib.decompress(payload, -zlib.MAX_WBITS, count * dtype.itemsize)
        except zlib.error as exc:
            raise TensorFormatError(f"zip data that does not inflate ({exc})") from None
        if len(raw) != count * dtype.itemsize:
            raise TensorFormatError(f"zip data inflates to {len(raw)} bytes, not "
                                    f"{count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if identifier == FPZIP:
        if data_type not in _FLOATS:
            raise TensorFormatError(f"fpzip data for data type 0x{data_type:x}")
        import fpzip

        # fpzip reads without a length: only whole gRPC messages reach it (gRPC frames them).
        try:
            values = fpzip.decompress(bytes(payload), order="C")
        except Exception as exc:  # fpzip's own FpzipReadError, and what its C code reports
            raise TensorFormatError(f"fpzip data that does not decode ({exc})") from None
        if values.size != count:
            raise TensorFormatError(f"fpzip data of {values.size} values for a {shape} tensor")
        return values.reshape(shape).astype(dtype, copy=False)
    raise TensorFormatError(f"codec identifier 0x{identifier:x} is not raw, zip or fpzip")


# --------------------------------------------------------------------------- pixels


@functools.cache
def _rgb_of_float16() -> np.ndarray:
    """Every Float16 bit pattern -> the byte the app makes of it (ImageConverter.swift:566-571)."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(all="ignore"):
        scaled = (values + np.float16(1)) * np.float16(127.5)
    scaled = np.where(np.isfinite(scaled), scaled, np.float16(0)).astype(np.float64)
    return np.clip(np.trunc(scaled), 0, 255).astype(np.uint8)


@functools.cache
def _float16_of_rgb() -> np.ndarray:
    """Every byte -> the Float16 value the app makes of it (ImageConverter.swift:2037-2042)."""
    byte = np.arange(256).astype(np.float16)
    return byte * np.float16(2) / np.float16(255) - np.float16(1)


def image_tensor(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, H, W, 3) Float16, as the app converts a picture."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.dtype} {rgb.shape}")
    return _float16_of_rgb()[rgb][np.newaxis]


def rgb_from_image_tensor(tensor: np.ndarray) -> np.ndarray:
    """(1, H, W, 3) (or (H, W, 3)) floating point -> HxWx3 uint8 RGB, as the app converts an
    answer: the value is taken as Float16, then ``Int((value + 1) * 127.5)``, clamped."""
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[2] != 3:
        raise ValueError(f"an image tensor is (1, height, width, 3), not {tensor.shape}")
    half = tensor if tensor.dtype == np.float16 else tensor.astype(np.float16)
    return _rgb_of_float16()[half.view(np.uint16)]


@functools.cache
def _float16_decoding_to() -> np.ndarray:
    """For every byte, the Float16 value nearest the byte's middle ((byte + 0.5) / 127.5 - 1)
    that the app converts back to exactly that byte."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.isfinite(values)
    bytes_of = _rgb_of_float16()
    table = np.empty(256, dtype=np.float16)
    for byte in range(256):
        candidates = values[finite & (bytes_of == byte)].astype(np.float64)
        middle = (byte + 0.5) / 127.5 - 1
        table[byte] = candidates[np.argmin(np.abs(candidates - middle))]
    return table


def tensor_decoding_to(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, H, W, 3) Float16 that ``rgb_from_image_tensor`` turns back into
    exactly ``rgb``: what the simulator answers, so both transports give the same pixels."""
    return _float16_decoding_to()[rgb][np.newaxis]


def rgb_from_request_tensor(tensor: np.ndarray) -> np.ndarray:
    """(1, H, W, 3) values -> HxWx3 uint8, rounding to the nearest byte: the inverse of
    ``image_tensor`` (the simulator reads a request's init image with it)."""
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    scaled = (tensor.astype(np.float64) + 1) * 127.5
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
