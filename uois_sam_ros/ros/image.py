"""numpy <-> sensor_msgs/Image without cv_bridge (broken on numpy 2 / OpenCV 5).

The byte-level work lives in `encode_pixels` / `decode_pixels`, which take plain bytes,
so row padding (`step`) and `is_bigendian` can be tested without building messages.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header


class ImageConversionError(ValueError):
    """An image message or array that does not match its declared encoding."""


@dataclass(frozen=True)
class PixelFormat:
    dtype: np.dtype  # native-order element type
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


def _fmt(dtype: type, channels: int) -> PixelFormat:
    return PixelFormat(np.dtype(dtype), channels)


# sensor_msgs/image_encodings.hpp names; colour encodings keep their channel order as sent.
ENCODINGS: dict[str, PixelFormat] = {
    "rgb8": _fmt(np.uint8, 3),
    "bgr8": _fmt(np.uint8, 3),
    "rgba8": _fmt(np.uint8, 4),
    "bgra8": _fmt(np.uint8, 4),
    "mono8": _fmt(np.uint8, 1),
    "mono16": _fmt(np.uint16, 1),
    "8UC1": _fmt(np.uint8, 1),
    "8UC3": _fmt(np.uint8, 3),
    "8UC4": _fmt(np.uint8, 4),
    "16UC1": _fmt(np.uint16, 1),
    "16SC1": _fmt(np.int16, 1),
    "32SC1": _fmt(np.int32, 1),
    "32FC1": _fmt(np.float32, 1),
    "32FC3": _fmt(np.float32, 3),
    "64FC1": _fmt(np.float64, 1),
}


def pixel_format(encoding: str) -> PixelFormat:
    """The element type and channel count of an encoding; clear error for unknown ones."""
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}") from None


def _expected_shape(fmt: PixelFormat) -> str:
    return "(H, W)" if fmt.channels == 1 else f"(H, W, {fmt.channels})"


def encode_pixels(array_: np.ndarray, encoding: str, step: int | None = None,
                  bigendian: bool = False) -> tuple[bytes, int]:
    """Pack an (H, W[, C]) array into image bytes; returns (data, step).

    step defaults to width * bytes-per-pixel; a larger step pads each row with zeros.
    """
    rows, step = _pack_rows(array_, encoding, step, bigendian)
    return rows.tobytes(), step


def _pack_rows(array_: np.ndarray, encoding: str, step: int | None, bigendian: bool) -> tuple[np.ndarray, int]:
    """The (H, step) uint8 rows of the image bytes, and step: a view of `array_` when it already has
    the wire layout (contiguous, wire byte order, no padding), so the caller makes the one copy."""
    fmt = pixel_format(encoding)
    a = np.asarray(array_)
    if fmt.channels == 1 and a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    shape_ok = a.ndim == 2 if fmt.channels == 1 else (a.ndim == 3 and a.shape[2] == fmt.channels)
    if not shape_ok or a.dtype != fmt.dtype:
        raise ImageConversionError(
            f"encoding {encoding!r} needs an array of shape {_expected_shape(fmt)} and dtype "
            f"{fmt.dtype.name}; got shape {a.shape} and dtype {a.dtype.name}")
    height, width = int(a.shape[0]), int(a.shape[1])
    row_bytes = width * fmt.bytes_per_pixel
    if step is None:
        step = row_bytes
    step = int(step)
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width * bytes per pixel = {row_bytes} "
            f"(width {width}, {fmt.bytes_per_pixel} bytes per pixel for {encoding!r})")
    wire = fmt.dtype.newbyteorder(">" if bigendian else "<") if fmt.dtype.itemsize > 1 else fmt.dtype
    packed = np.ascontiguousarray(a, dtype=wire).view(np.uint8).reshape(height, row_bytes)
    if step == row_bytes:
        return packed, step
    out = np.zeros((height, step), np.uint8)
    out[:, :row_bytes] = packed
    return out, step


def decode_pixels(data: bytes | bytearray | memoryview | array.array | np.ndarray, height: int, width: int,
                  encoding: str, step: int, is_bigendian: bool = False, copy: bool = True) -> np.ndarray:
    """Unpack image bytes into a (H, W[, C]) array: a native-order copy, safe to modify; or with
    copy=False a read-only view of `data` where its rows are unpadded (else a copy), possibly in
    the wire byte order, for a caller that converts it anyway (depth to float)."""
    fmt = pixel_format(encoding)
    height, width, step = int(height), int(width), int(step)
    row_bytes = width * fmt.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width * bytes per pixel = {row_bytes} "
            f"(width {width}, {fmt.bytes_per_pixel} bytes per pixel for {encoding!r})")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    need = step * height
    if buf.size < need:
        raise ImageConversionError(
            f"image data is truncated: {buf.size} bytes, expected step * height = {need} "
            f"(step {step} x height {height}, encoding {encoding!r})")
    if buf.size > need:
        raise ImageConversionError(
            f"image data is too long: {buf.size} bytes, expected step * height = {need} "
            f"(step {step} x height {height}, encoding {encoding!r})")
    rows = buf.reshape(height, step)[:, :row_bytes]
    wire = fmt.dtype.newbyteorder(">" if is_bigendian else "<") if fmt.dtype.itemsize > 1 else fmt.dtype
    shape = (height, width) if fmt.channels == 1 else (height, width, fmt.channels)
    if not copy:
        view = np.ascontiguousarray(rows).view(wire).reshape(shape)
        view.flags.writeable = False
        return view
    out = np.ascontiguousarray(rows).view(wire).astype(fmt.dtype, copy=True)
    return out.reshape(shape)


def numpy_to_image(array_: np.ndarray, encoding: str, header: Header | None = None,
                   step: int | None = None, bigendian: bool = False) -> Image:
    """A sensor_msgs/Image holding `array_` in `encoding` (little-endian unless asked).

    The pixels are copied once, straight into the message's buffer."""
    rows, step = _pack_rows(array_, encoding, step, bigendian)
    data = array.array("B")
    data.frombytes(rows)  # C-contiguous (H, step) uint8: read through the buffer protocol
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = int(np.asarray(array_).shape[0])
    msg.width = int(np.asarray(array_).shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 1 if (bigendian and pixel_format(encoding).dtype.itemsize > 1) else 0
    msg.step = step
    msg.data = data
    return msg


def image_to_numpy(msg: Image, expected_encoding: str | None = None, copy: bool = True) -> np.ndarray:
    """The pixels of an Image as (H, W) or (H, W, C), in the message's own channel order.

    rgb8/bgr8 -> (H, W, 3) uint8, mono8/8UC1 -> (H, W) uint8, mono16/16UC1 -> (H, W) uint16,
    32FC1 -> (H, W) float32. expected_encoding rejects anything else with a clear error.
    copy=False: a read-only view of the message's buffer where possible (decode_pixels).
    """
    if expected_encoding is not None and msg.encoding != expected_encoding:
        raise ImageConversionError(f"image encoding is {msg.encoding!r}, expected {expected_encoding!r}")
    return decode_pixels(msg.data, msg.height, msg.width, msg.encoding, msg.step, bool(msg.is_bigendian), copy)


def to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any of rgb8, bgr8, rgba8, bgra8 (alpha dropped)."""
    a = image_to_numpy(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return a
    if enc == "bgr8":
        return np.ascontiguousarray(a[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(a[:, :, :3])
    if enc == "bgra8":
        return np.ascontiguousarray(a[:, :, 2::-1])
    raise ImageConversionError(
        f"colour image encoding {enc!r} is not supported; expected rgb8, bgr8, rgba8 or bgra8")


def paste_crop(crop: np.ndarray, x: int, y: int, height: int, width: int, what: str,
               error: type[Exception] = ValueError) -> np.ndarray:
    """A full (height, width) bool mask from a mask crop whose top-left corner is (x, y): how an
    Instance's roi + mask (live or read from a bag) becomes a mask. A crop reaching past the image
    raises `error`, naming `what`."""
    h, w = crop.shape[:2]
    if x + w > width or y + h > height:
        raise error(f"{what}: roi x={x} y={y} {w}x{h} extends past the {width}x{height} image")
    out = np.zeros((height, width), bool)
    out[y:y + h, x:x + w] = crop != 0
    return out
