"""numpy <-> sensor_msgs/Image: exact round trips, padded rows, byte order, and clear errors."""

from __future__ import annotations

import array

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from uois_sam_ros.ros.image import (
    ImageConversionError,
    decode_pixels,
    encode_pixels,
    image_to_numpy,
    numpy_to_image,
    pixel_format,
    to_rgb,
)

REQUIRED = ["rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1"]
EXTRA = ["rgba8", "bgra8", "8UC1", "8UC3"]


def random_pixels(encoding: str, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    fmt = pixel_format(encoding)
    rng = np.random.default_rng(seed)
    shape = (h, w) if fmt.channels == 1 else (h, w, fmt.channels)
    if fmt.dtype.kind == "f":
        return rng.normal(0.0, 1e3, shape).astype(fmt.dtype)
    info = np.iinfo(fmt.dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=fmt.dtype)


@pytest.mark.parametrize("encoding", REQUIRED + EXTRA)
@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("bigendian", [False, True])
def test_round_trip_exact(encoding: str, pad: int, bigendian: bool) -> None:
    a = random_pixels(encoding)
    fmt = pixel_format(encoding)
    row = a.shape[1] * fmt.bytes_per_pixel
    header = Header(stamp=Time(sec=17, nanosec=123), frame_id="cam")
    msg = numpy_to_image(a, encoding, header, step=row + pad, bigendian=bigendian)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (5, 7, encoding, row + pad)
    assert len(msg.data) == msg.step * msg.height
    assert msg.is_bigendian == (1 if bigendian and fmt.dtype.itemsize > 1 else 0)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 17
    back = image_to_numpy(msg, expected_encoding=encoding)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.tobytes() == a.tobytes()  # bit-exact, also for float NaN payloads
    if pad:  # padding bytes are zeros and do not leak into the pixels
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        assert not rows[:, row:].any()


def test_output_dtypes_and_shapes() -> None:
    cases = {"rgb8": ((4, 3, 3), np.uint8), "bgr8": ((4, 3, 3), np.uint8), "mono8": ((4, 3), np.uint8),
             "mono16": ((4, 3), np.uint16), "16UC1": ((4, 3), np.uint16), "32FC1": ((4, 3), np.float32)}
    for enc, (shape, dtype) in cases.items():
        out = image_to_numpy(numpy_to_image(np.zeros(shape, dtype), enc))
        assert out.shape == shape and out.dtype == dtype, enc


def test_big_endian_bytes_on_the_wire() -> None:
    depth = np.array([[0x0102, 0xA0B0]], np.uint16)
    data, step = encode_pixels(depth, "16UC1", bigendian=True)
    assert data == bytes([0x01, 0x02, 0xA0, 0xB0]) and step == 4
    data_le, _ = encode_pixels(depth, "16UC1", bigendian=False)
    assert data_le == bytes([0x02, 0x01, 0xB0, 0xA0])
    f = np.array([[1.0]], np.float32)
    assert encode_pixels(f, "32FC1", bigendian=True)[0] == bytes([0x3F, 0x80, 0x00, 0x00])
    # a foreign big-endian message (e.g. from another machine) decodes to native values
    msg = Image(height=1, width=2, encoding="mono16", is_bigendian=1, step=4,
                data=array.array("B", [0x01, 0x02, 0xA0, 0xB0]))
    out = image_to_numpy(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative and out.tolist() == [[0x0102, 0xA0B0]]


def test_decode_padded_rows_by_hand() -> None:
    # 2x2 rgb8 with step 8: 6 pixel bytes + 2 padding bytes (0xEE) per row
    raw = bytes([1, 2, 3, 4, 5, 6, 0xEE, 0xEE, 7, 8, 9, 10, 11, 12, 0xEE, 0xEE])
    out = decode_pixels(raw, 2, 2, "rgb8", 8)
    assert out.tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    out[0, 0, 0] = 99  # a copy: the message buffer is untouched
    assert raw[0] == 1


def test_colour_orders_to_rgb() -> None:
    rgb = random_pixels("rgb8")
    assert np.array_equal(to_rgb(numpy_to_image(rgb, "rgb8")), rgb)
    assert np.array_equal(to_rgb(numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8")), rgb)
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    assert np.array_equal(to_rgb(numpy_to_image(np.concatenate([rgb, alpha], 2), "rgba8")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], 2)
    assert np.array_equal(to_rgb(numpy_to_image(bgra, "bgra8")), rgb)
    with pytest.raises(ImageConversionError, match="colour image encoding 'mono8' is not supported"):
        to_rgb(numpy_to_image(np.zeros((2, 2), np.uint8), "mono8"))


def test_single_channel_accepts_trailing_axis() -> None:
    a = random_pixels("mono16")[:, :, None]
    assert np.array_equal(image_to_numpy(numpy_to_image(a, "mono16")), a[:, :, 0])


# ----------------------------------------------------------------------------- errors


def test_unknown_encoding() -> None:
    with pytest.raises(ImageConversionError, match="unsupported image encoding 'yuv422'"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "yuv422")
    msg = numpy_to_image(np.zeros((2, 2), np.uint8), "mono8")
    msg.encoding = "bayer_rggb8x"
    with pytest.raises(ImageConversionError, match="unsupported image encoding 'bayer_rggb8x'"):
        image_to_numpy(msg)


def test_truncated_and_oversized_data() -> None:
    msg = numpy_to_image(random_pixels("rgb8"), "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match=r"truncated: 104 bytes, expected step \* height = 105"):
        image_to_numpy(msg)
    msg = numpy_to_image(random_pixels("16UC1"), "16UC1", step=20)
    msg.height = 6  # header claims one row more than the data holds
    with pytest.raises(ImageConversionError, match=r"truncated: 100 bytes, expected step \* height = 120"):
        image_to_numpy(msg)
    msg = numpy_to_image(random_pixels("mono8"), "mono8")
    msg.data.extend([0, 0, 0])
    with pytest.raises(ImageConversionError, match="too long: 38 bytes"):
        image_to_numpy(msg)


def test_step_smaller_than_row() -> None:
    with pytest.raises(ImageConversionError, match=r"step 20 is smaller than width \* bytes per pixel = 21"):
        numpy_to_image(random_pixels("rgb8"), "rgb8", step=20)
    msg = numpy_to_image(random_pixels("32FC1"), "32FC1")
    msg.width = 8  # 8 * 4 bytes > step 28
    with pytest.raises(ImageConversionError, match=r"step 28 is smaller than width \* bytes per pixel = 32"):
        image_to_numpy(msg)


def test_expected_encoding_mismatch() -> None:
    msg = numpy_to_image(random_pixels("bgr8"), "bgr8")
    with pytest.raises(ImageConversionError, match="image encoding is 'bgr8', expected 'rgb8'"):
        image_to_numpy(msg, expected_encoding="rgb8")


@pytest.mark.parametrize(("array_", "encoding", "got"), [
    (np.zeros((4, 5), np.uint8), "rgb8", r"got shape \(4, 5\) and dtype uint8"),
    (np.zeros((4, 5, 4), np.uint8), "bgr8", r"got shape \(4, 5, 4\)"),
    (np.zeros((4, 5), np.uint16), "mono8", r"got shape \(4, 5\) and dtype uint16"),
    (np.zeros((4, 5), np.float64), "32FC1", r"got shape \(4, 5\) and dtype float64"),
    (np.zeros((4, 5), np.int32), "16UC1", r"got shape \(4, 5\) and dtype int32"),
    (np.zeros((4, 5, 3), np.uint16), "mono16", r"got shape \(4, 5, 3\)"),
])
def test_wrong_array_for_encoding(array_: np.ndarray, encoding: str, got: str) -> None:
    fmt = pixel_format(encoding)
    with pytest.raises(ImageConversionError, match=f"encoding '{encoding}' needs an array of shape .* and "
                                                    f"dtype {fmt.dtype.name}; {got}"):
        numpy_to_image(array_, encoding)


def test_errors_are_value_errors() -> None:
    assert issubclass(ImageConversionError, ValueError)
