"""image_codec: every encoding against an independent conversion, padding, byte order, rejections."""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage

from tv3s_ros.image_codec import (
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_compressed,
    decode_image,
    decode_msg,
)

H, W = 6, 10
RNG = np.random.default_rng(7)

# (encoding, channels, dtype) of the encodings rosbags-image converts to rgb8 as well.
ROSBAGS_CHECKED = [
    ("rgb8", 3, np.uint8), ("bgr8", 3, np.uint8), ("rgba8", 4, np.uint8), ("bgra8", 4, np.uint8),
    ("mono8", 1, np.uint8), ("mono16", 1, np.uint16),
    ("rgb16", 3, np.uint16), ("bgr16", 3, np.uint16), ("rgba16", 4, np.uint16), ("bgra16", 4, np.uint16),
    ("yuv422", 2, np.uint8), ("uyvy", 2, np.uint8), ("yuv422_yuy2", 2, np.uint8), ("yuyv", 2, np.uint8),
    ("bayer_rggb8", 1, np.uint8), ("bayer_bggr8", 1, np.uint8),
    ("bayer_gbrg8", 1, np.uint8), ("bayer_grbg8", 1, np.uint8),
    ("bayer_rggb16", 1, np.uint16), ("bayer_bggr16", 1, np.uint16),
    ("bayer_gbrg16", 1, np.uint16), ("bayer_grbg16", 1, np.uint16),
]


def _random_samples(channels, dtype, h=H, w=W):
    high = 256 if dtype == np.uint8 else 65536
    return RNG.integers(0, high, size=(h, w, channels)).astype(dtype)


def _message(encoding, samples, step_pad=0, bigendian=False):
    """Image message fields for samples [h, w, c]: rows padded by step_pad bytes."""
    h, w = samples.shape[:2]
    order = ">" if bigendian else "<"
    row = samples.astype(samples.dtype.newbyteorder(order)).reshape(h, -1).view(np.uint8)
    padded = np.zeros((h, row.shape[1] + step_pad), np.uint8)
    padded[:, :row.shape[1]] = row
    return SimpleNamespace(encoding=encoding, height=h, width=w, step=padded.shape[1],
                           data=padded.tobytes(), is_bigendian=int(bigendian))


def _decode(msg):
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


@pytest.mark.parametrize("encoding,channels,dtype", ROSBAGS_CHECKED, ids=[e[0] for e in ROSBAGS_CHECKED])
def test_matches_rosbags_image(encoding, channels, dtype):
    samples = _random_samples(channels, dtype)
    msg = _message(encoding, samples)
    ours = _decode(msg)
    # rosbags-image reads the buffer itself (it ignores step, so no padding here).
    ref = np.asarray(message_to_cvimage(msg, "rgb8"))
    assert ours.shape == (H, W, 3) and ours.dtype == np.uint8
    if dtype == np.uint16:
        # rosbags truncates v * 255/65535, we round: at most one level apart.
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1
    else:
        np.testing.assert_array_equal(ours, ref)


def test_every_supported_encoding_is_tested():
    tested = {e[0] for e in ROSBAGS_CHECKED} | {"8UC1", "8UC3", "16UC1"}
    assert tested == set(SUPPORTED_ENCODINGS)


def test_channel_orders_independent_of_opencv():
    rgb = _random_samples(3, np.uint8)
    alpha = _random_samples(1, np.uint8)
    np.testing.assert_array_equal(_decode(_message("rgb8", rgb)), rgb)
    np.testing.assert_array_equal(_decode(_message("8UC3", rgb)), rgb)
    np.testing.assert_array_equal(_decode(_message("bgr8", rgb[:, :, ::-1])), rgb)
    np.testing.assert_array_equal(_decode(_message("rgba8", np.concatenate([rgb, alpha], 2))), rgb)
    np.testing.assert_array_equal(_decode(_message("bgra8", np.concatenate([rgb[:, :, ::-1], alpha], 2))), rgb)
    for enc in ("mono8", "8UC1"):
        out = _decode(_message(enc, alpha))
        np.testing.assert_array_equal(out, np.repeat(alpha, 3, axis=2))


def test_mono16_full_range_scaling():
    values = np.array([0, 1, 128, 129, 257, 257 * 100, 65534, 65535], np.uint16)
    samples = np.tile(values, (2, 1))[:, :, None]
    expected = np.floor(values.astype(float) * 255 / 65535 + 0.5).astype(np.uint8)
    for enc in ("mono16", "16UC1"):
        out = _decode(_message(enc, samples))
        np.testing.assert_array_equal(out[0, :, 0], expected)
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    assert expected[0] == 0 and expected[-1] == 255 and expected[5] == 100


@pytest.mark.parametrize("encoding,channels", [("mono16", 1), ("16UC1", 1), ("rgb16", 3),
                                               ("bgra16", 4), ("bayer_grbg16", 1)])
def test_big_endian_16bit(encoding, channels):
    samples = _random_samples(channels, np.uint16)
    little = _decode(_message(encoding, samples, bigendian=False))
    big_msg = _message(encoding, samples, bigendian=True)
    assert big_msg.data != _message(encoding, samples).data  # the bytes really are swapped
    np.testing.assert_array_equal(_decode(big_msg), little)


@pytest.mark.parametrize("encoding,channels,dtype",
                         [("rgb8", 3, np.uint8), ("bgr8", 3, np.uint8), ("rgba8", 4, np.uint8),
                          ("bgra8", 4, np.uint8), ("mono8", 1, np.uint8), ("mono16", 1, np.uint16),
                          ("yuv422", 2, np.uint8), ("yuv422_yuy2", 2, np.uint8),
                          ("bayer_gbrg8", 1, np.uint8), ("bayer_rggb16", 1, np.uint16)])
@pytest.mark.parametrize("pad", [1, 3, 64])
def test_step_padding_is_skipped(encoding, channels, dtype, pad):
    samples = _random_samples(channels, dtype)
    tight = _decode(_message(encoding, samples))
    padded_msg = _message(encoding, samples, step_pad=pad)
    # Fill the padding with garbage: it must not leak into the image.
    raw = np.frombuffer(padded_msg.data, np.uint8).reshape(H, -1).copy()
    raw[:, -pad:] = 0xAB
    padded_msg.data = raw.tobytes()
    np.testing.assert_array_equal(_decode(padded_msg), tight)


def _bt601_limited(y, u, v):
    """Independent YUV (BT.601, limited range) -> RGB, the matrix OpenCV uses for YUV422."""
    y = y.astype(float) - 16
    u = u.astype(float) - 128
    v = v.astype(float) - 128
    r = 1.164 * y + 1.596 * v
    g = 1.164 * y - 0.391 * u - 0.813 * v
    b = 1.164 * y + 2.018 * u
    return np.clip(np.stack([r, g, b], -1) + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"),
                                            ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
def test_yuv422_byte_order(encoding, order):
    # Pixel pairs with distinct luma and strongly coloured chroma: a swapped U/V or Y/UV
    # byte order gives clearly different colours.
    y = RNG.integers(16, 236, size=(H, W)).astype(np.uint8)
    u = RNG.integers(16, 241, size=(H, W // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, size=(H, W // 2)).astype(np.uint8)
    packed = np.zeros((H, W // 2, 4), np.uint8)
    if order == "uyvy":
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    out = decode_image(encoding, H, W, W * 2, packed.tobytes())
    expected = _bt601_limited(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("encoding,pattern", [("bayer_rggb8", "RGGB"), ("bayer_bggr8", "BGGR"),
                                              ("bayer_gbrg8", "GBRG"), ("bayer_grbg8", "GRBG"),
                                              ("bayer_rggb16", "RGGB"), ("bayer_grbg16", "GRBG")])
def test_bayer_pattern_on_flat_colour(encoding, pattern):
    # A flat colour seen through the named filter must demosaic back to that colour.
    colour = {"R": 200, "G": 90, "B": 30}
    scale = 257 if encoding.endswith("16") else 1
    mosaic = np.zeros((8, 8), np.uint16 if scale > 1 else np.uint8)
    for i, ch in enumerate(pattern):
        mosaic[i // 2::2, i % 2::2] = colour[ch] * scale
    msg = _message(encoding, mosaic[:, :, None])
    out = _decode(msg)
    np.testing.assert_array_equal(out[2:-2, 2:-2].reshape(-1, 3),
                                  np.tile([200, 90, 30], (16, 1)))


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview, lambda b: array.array("B", b),
                                  lambda b: np.frombuffer(b, np.uint8), list])
def test_payload_container_types(make):
    rgb = _random_samples(3, np.uint8)
    msg = _message("rgb8", rgb)
    out = decode_image("rgb8", H, W, msg.step, make(msg.data))
    np.testing.assert_array_equal(out, rgb)


def test_rgb8_is_zero_copy():
    rgb = _random_samples(4, np.uint8)
    buf = bytearray(_message("rgba8", rgb, step_pad=8).data)
    out = decode_image("rgba8", H, W, W * 4 + 8, buf)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))
    np.testing.assert_array_equal(out, rgb[:, :, :3])


@pytest.mark.parametrize("args,match", [
    (("rgb9", H, W, W * 3, bytes(H * W * 3)), r"unsupported image encoding 'rgb9'"),
    (("32FC1", H, W, W * 4, bytes(H * W * 4)), r"unsupported image encoding '32FC1'"),
    (("rgb8", 0, W, W * 3, b""), r"zero size \(10x0\)"),
    (("rgb8", H, 0, 0, b""), r"zero size \(0x6\)"),
    (("rgb8", H, W, W * 3 - 1, bytes((W * 3 - 1) * H)), r"step 29 is smaller than one row \(30 bytes\)"),
    (("rgb8", H, W, W * 3, bytes(H * W * 3 - 1)), r"data has 179 bytes, expected step \* height = 180"),
    (("rgb8", H, W, W * 3, bytes(H * W * 3 + 30)), r"data has 210 bytes, expected"),
    (("mono16", H, W, W, bytes(H * W)), r"step 10 is smaller than one row \(20 bytes\)"),
    (("yuv422", H, 5, 10, bytes(H * 10)), r"needs an even width, got 5"),
])
def test_rejections_have_clear_messages(args, match):
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_image(*args)
    assert "\n" not in str(info.value)


# -- CompressedImage ---------------------------------------------------------------------

def _smooth_rgb(h=32, w=48):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 5, yy * 7, 255 - xx * 5], -1).clip(0, 255).astype(np.uint8)


def _encode(ext, bgr_or_gray, params=()):
    ok, buf = cv2.imencode(ext, bgr_or_gray, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["jpeg", "JPEG", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", ""])
def test_jpeg_colour_matches_rosbags(fmt):
    rgb = _smooth_rgb()
    data = _encode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed(fmt, data)
    ref = message_to_cvimage(SimpleNamespace(format="jpeg", data=np.frombuffer(data, np.uint8)), "rgb8")
    np.testing.assert_array_equal(out, ref)
    # Independent of the reference: the colours come back in RGB order (lossy, so close).
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", ""])
def test_png_is_lossless(fmt):
    rgb = RNG.integers(0, 256, size=(9, 13, 3)).astype(np.uint8)
    np.testing.assert_array_equal(decode_compressed(fmt, _encode(".png", rgb[:, :, ::-1])), rgb)


def test_png_gray_alpha_and_16bit():
    gray = RNG.integers(0, 256, size=(5, 7)).astype(np.uint8)
    np.testing.assert_array_equal(decode_compressed("mono8; png compressed mono8", _encode(".png", gray)),
                                  np.repeat(gray[:, :, None], 3, 2))
    bgra = RNG.integers(0, 256, size=(5, 7, 4)).astype(np.uint8)
    np.testing.assert_array_equal(decode_compressed("png", _encode(".png", bgra)), bgra[:, :, 2::-1])
    deep = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(decode_compressed("mono16; png compressed mono16", _encode(".png", deep))[0, :, 0],
                                  [0, 1, 255])


def test_jpeg_gray():
    gray = _smooth_rgb()[:, :, 0]
    out = decode_compressed("mono8; jpeg compressed mono8", _encode(".jpg", gray))
    assert out.shape == gray.shape + (3,)
    assert np.abs(out[:, :, 1].astype(int) - gray).mean() < 3


def test_decode_msg_dispatches_on_fields():
    rgb = _random_samples(3, np.uint8)
    np.testing.assert_array_equal(decode_msg(_message("bgr8", rgb[:, :, ::-1])), rgb)
    png = SimpleNamespace(format="png", data=_encode(".png", rgb[:, :, ::-1]))
    np.testing.assert_array_equal(decode_msg(png), rgb)


def _compressed_rejections():
    jpeg = _encode(".jpg", _smooth_rgb())
    png = _encode(".png", _smooth_rgb())
    return [
        ("jpeg", b"", r"has no data"),
        ("jpeg", jpeg[: len(jpeg) // 2], r"jpeg data \(\d+ bytes\) is truncated"),
        ("jpeg", b"\x00" * 100, r"does not start with a jpeg marker"),
        ("jpeg", jpeg[:3] + bytes(200) + jpeg[-2:], r"corrupt or truncated jpeg data"),
        ("png", png[: len(png) // 2], r"corrupt or truncated png data"),
        ("png", b"hello world, not an image", r"corrupt or truncated png data"),
        ("tiff", png, r"unsupported compressed format 'tiff'"),
        ("16UC1; compressedDepth png", png, r"depth image"),
        ("", b"GIF89a" + bytes(20), r"neither jpeg nor png"),
    ]


@pytest.mark.parametrize("fmt,data,match", _compressed_rejections())
def test_compressed_rejections(fmt, data, match):
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_compressed(fmt, data)
    assert "\n" not in str(info.value)
