"""Camera buffers -> the uint8 arrays the scorers take -> PNG or JPEG bytes for `camera.frames`.

Pixel formats are named as GenICam's PFNC does (the names `arv-tool-0.8` lists); codes are PFNC's, so this
module needs no Aravis. Deeper-than-8-bit data keeps its 8 most significant bits: the scorers and the wire
contract take uint8. Bayer mosaics are demosaiced by FFmpeg's swscale (through PyAV) to RGB.

>>> to_array(bytes(range(6)), 3, 2, "Mono8").tolist()
[[0, 1, 2], [3, 4, 5]]
>>> to_array(np.array([4095, 16], "<u2").tobytes(), 2, 1, "Mono12").tolist()
[[255, 1]]
>>> content_type("jpeg"), encode(np.zeros((8, 8), np.uint8), "png")[:4]
('image/jpeg', b'\\x89PNG')
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Literal

import numpy as np

Encoding = Literal["png", "jpeg"]

# PFNC code -> name for the formats `to_array` converts (tests check the codes against Aravis's constants).
PIXEL_FORMATS: dict[int, str] = {
    0x01080001: "Mono8",
    0x01100003: "Mono10",
    0x01100005: "Mono12",
    0x01100025: "Mono14",
    0x01100007: "Mono16",
    0x010C0006: "Mono12Packed",
    0x010C0047: "Mono12p",
    0x01080008: "BayerGR8",
    0x01080009: "BayerRG8",
    0x0108000A: "BayerGB8",
    0x0108000B: "BayerBG8",
    0x0110000C: "BayerGR10",
    0x0110000D: "BayerRG10",
    0x0110000E: "BayerGB10",
    0x0110000F: "BayerBG10",
    0x01100010: "BayerGR12",
    0x01100011: "BayerRG12",
    0x01100012: "BayerGB12",
    0x01100013: "BayerBG12",
    0x0110002E: "BayerGR16",
    0x0110002F: "BayerRG16",
    0x01100030: "BayerGB16",
    0x01100031: "BayerBG16",
    0x02180014: "RGB8",
    0x02180015: "BGR8",
}
SUPPORTED = tuple(PIXEL_FORMATS.values())


def pixel_format_name(code: int) -> str:
    """The PFNC name of a buffer's pixel format code, or a ValueError naming the supported ones."""
    try:
        return PIXEL_FORMATS[code]
    except KeyError:
        raise ValueError(f"pixel format 0x{code:08x} is not supported; use one of {', '.join(SUPPORTED)}") from None


def _bits(name: str) -> int:
    return int("".join(c for c in name if c.isdigit()) or 8)


def _words(data: bytes, n: int, bits: int) -> np.ndarray:
    """Unpacked little-endian 16-bit samples -> their top 8 significant bits."""
    return (np.frombuffer(data, "<u2", count=n) >> (bits - 8)).astype(np.uint8)


def _mono12_packed(data: bytes, n: int, lsb_first: bool) -> np.ndarray:
    """Two 12-bit pixels in three bytes -> the top 8 bits of each (GigE `Mono12Packed` or PFNC `Mono12p`)."""
    b = np.frombuffer(data, np.uint8, count=n * 3 // 2).reshape(-1, 3)
    out = np.empty((len(b), 2), np.uint8)
    if lsb_first:  # p0 = b0 | (b1 & 0xF) << 8, p1 = b1 >> 4 | b2 << 4
        out[:, 0] = (b[:, 0] >> 4) | ((b[:, 1] & 0x0F) << 4)
    else:  # p0 = b0 << 4 | (b1 & 0xF), p1 = b2 << 4 | b1 >> 4
        out[:, 0] = b[:, 0]
    out[:, 1] = b[:, 2]
    return out.reshape(-1)[:n]


def _demosaic(mosaic: np.ndarray, name: str) -> np.ndarray:
    """RGB from a Bayer mosaic. FFmpeg's converter aborts the process on an odd height, so an odd mosaic gets
    its second-to-last row again (the same colour row as the missing one) and the result is cut back."""
    import av

    height = mosaic.shape[0]
    if height < 2:
        raise ValueError(f"{name} needs at least 2 lines to demosaic, got {height}; use a mono format or more lines")
    if height % 2:
        mosaic = np.concatenate([mosaic, mosaic[-2:-1]])
    pattern = name[5:7].lower()  # BayerRG8 -> "rg"
    fmt = {"rg": "bayer_rggb8", "gr": "bayer_grbg8", "gb": "bayer_gbrg8", "bg": "bayer_bggr8"}[pattern]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(mosaic), format=fmt)
    return frame.reformat(format="rgb24").to_ndarray()[:height]


def _needed_bytes(pixel_format: str, n: int) -> int:
    if pixel_format in ("Mono12Packed", "Mono12p"):
        return n * 3 // 2
    if pixel_format in ("RGB8", "BGR8"):
        return n * 3
    return n if _bits(pixel_format) == 8 else n * 2


def to_array(data: bytes, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A raw image buffer -> uint8 [H, W] (mono) or [H, W, 3] (RGB, Bayer demosaiced).

    Raises ValueError when the format is not supported or the buffer is shorter than the format needs.
    """
    if pixel_format not in SUPPORTED:
        raise ValueError(f"pixel format {pixel_format!r} is not supported; use one of {', '.join(SUPPORTED)}")
    n = width * height
    bits = _bits(pixel_format)
    need = _needed_bytes(pixel_format, n)
    if len(data) < need:
        raise ValueError(f"{pixel_format} {width}x{height} needs {need} bytes, the buffer holds {len(data)}")
    if pixel_format in ("Mono12Packed", "Mono12p"):
        return _mono12_packed(data, n, lsb_first=pixel_format == "Mono12p").reshape(height, width)
    if pixel_format in ("RGB8", "BGR8"):
        rgb = np.frombuffer(data, np.uint8, count=n * 3).reshape(height, width, 3)
        return rgb[..., ::-1] if pixel_format == "BGR8" else rgb
    plane = (np.frombuffer(data, np.uint8, count=n) if bits == 8 else _words(data, n, bits)).reshape(height, width)
    return _demosaic(plane, pixel_format) if pixel_format.startswith("Bayer") else plane


def content_type(encoding: Encoding) -> str:
    return {"png": "image/png", "jpeg": "image/jpeg"}[encoding]


def encode(image: np.ndarray, encoding: Encoding, jpeg_quality: int = 90, png_level: int = 1) -> bytes:
    """PNG (lossless; `png_level` 0-9 trades CPU for size) or JPEG at `jpeg_quality` (1-100).

    `codecs.encode_image` has no quality or compression knob, and a camera feeder needs both: PNG level 6
    (Pillow's default) costs several times the CPU of level 1 for a few percent smaller frames.
    """
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(image))
    if encoding == "jpeg":
        img.save(buf, format="JPEG", quality=int(jpeg_quality))
    elif encoding == "png":
        img.save(buf, format="PNG", compress_level=int(png_level))
    else:
        raise ValueError(f"encoding must be 'png' or 'jpeg', got {encoding!r}")
    return buf.getvalue()


def encoder(encoding: Encoding, jpeg_quality: int = 90, png_level: int = 1) -> Callable[[np.ndarray], bytes]:
    """`encode` with its options fixed: what the feeder's encoding threads call."""
    return lambda image: encode(image, encoding, jpeg_quality, png_level)
