"""Compressed output images (tv3s_ros.image_encode): compressed_image_transport's format strings
and payloads, exact PNG round trips, JPEG within tolerance, and our decoders reading them back."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tv3s_ros.image_codec import ImageDecodeError, decode_compressed
from tv3s_ros.image_encode import (
    check_jpeg_quality,
    compressed_format,
    decode_compressed_exact,
    encode_compressed,
)
from tv3s_ros.outputs import COMPRESSED_OUTPUTS, IMAGE_OUTPUTS, OUTPUTS, image_encoding


def _world_frame(h=72, w=128):
    from tv3s_ros.data.world import World

    image, labels, _ = World(seed=5, size=(h, w)).render(3)
    return image, labels


# The strings CompressedPublisher::publish builds (image_transport_plugins, compressed_publisher.cpp):
# format = encoding + "; jpeg compressed " + (isColor ? "bgr8" : "mono8"), or
# encoding + "; png compressed " + (isColor ? "bgr<bitDepth>" : "") -- grey PNG has no target.
@pytest.mark.parametrize("encoding, codec, expected", [
    ("rgb8", "jpeg", "rgb8; jpeg compressed bgr8"),
    ("bgr8", "jpeg", "bgr8; jpeg compressed bgr8"),
    ("mono8", "jpeg", "mono8; jpeg compressed mono8"),
    ("rgb8", "png", "rgb8; png compressed bgr8"),
    ("mono8", "png", "mono8; png compressed "),
    ("mono16", "png", "mono16; png compressed "),
])
def test_format_strings_are_compressed_image_transports(encoding, codec, expected):
    assert compressed_format(encoding, codec) == expected
    assert encode_compressed(np.zeros((4, 6, 3) if "rgb" in encoding or "bgr" in encoding else (4, 6),
                                      np.uint16 if encoding == "mono16" else np.uint8),
                             encoding, codec).format == expected


def test_labels_png_round_trip_is_exact():
    _, labels = _world_frame()
    labels = labels.copy()
    labels[:4, :9] = 255                                    # ignore pixels too
    assert len(np.unique(labels)) > 5                       # a real label image
    enc = encode_compressed(labels, "mono8", "png")
    assert bytes(enc.data[:8]) == b"\x89PNG\r\n\x1a\n"
    back, encoding = decode_compressed_exact(enc.format, enc.data.tobytes())
    assert encoding == "mono8" and back.dtype == np.uint8 and np.array_equal(back, labels)
    # Any PNG reader (here OpenCV, as compressed_image_transport's subscriber) gets the same ids.
    assert np.array_equal(cv2.imdecode(enc.data, cv2.IMREAD_UNCHANGED), labels)
    # The node's input decoder reads it too (grey -> RGB model input).
    rgb = decode_compressed(enc.format, enc.data)
    assert rgb.shape == labels.shape + (3,) and np.array_equal(rgb[:, :, 0], labels)


def test_mono16_labels_png_round_trip_is_exact():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, size=(40, 60)).astype(np.uint16)
    labels[:, :30] = 65535
    enc = encode_compressed(labels, "mono16", "png")
    assert enc.format == "mono16; png compressed "
    back, encoding = decode_compressed_exact(enc.format, enc.data)
    assert encoding == "mono16" and back.dtype == np.uint16 and np.array_equal(back, labels)
    raw = cv2.imdecode(enc.data, cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and np.array_equal(raw, labels)   # a 16-bit PNG, native values


def test_colour_png_is_exact_and_bgr_in_the_payload():
    image, _ = _world_frame()
    enc = encode_compressed(image, "rgb8", "png")
    back, encoding = decode_compressed_exact(enc.format, enc.data)
    assert encoding == "rgb8" and np.array_equal(back, image)
    assert np.array_equal(cv2.imdecode(enc.data, cv2.IMREAD_UNCHANGED), image[:, :, ::-1])


def test_colour_jpeg_is_close_bgr_and_quality_matters():
    image, _ = _world_frame(144, 256)
    enc = encode_compressed(image, "rgb8", "jpeg", jpeg_quality=90)
    assert enc.format == "rgb8; jpeg compressed bgr8" and bytes(enc.data[:3]) == b"\xff\xd8\xff"
    back, encoding = decode_compressed_exact(enc.format, enc.data)
    assert encoding == "rgb8" and back.shape == image.shape
    err = np.abs(back.astype(int) - image.astype(int))
    assert err.mean() < 6.0, err.mean()          # the world frame has sensor noise: JPEG smooths it
    # BGR payload: decoding it as RGB would swap red and blue (a large error on this frame).
    swapped = cv2.imdecode(enc.data, cv2.IMREAD_COLOR)
    assert np.abs(swapped.astype(int) - image.astype(int)).mean() > 2 * err.mean()
    # image_codec (the node's input path) reads our JPEG the same way.
    assert np.array_equal(decode_compressed(enc.format, enc.data), back)
    small = encode_compressed(image, "rgb8", "jpeg", jpeg_quality=20)
    assert small.nbytes < enc.nbytes


def test_bgr8_png_payload_keeps_bgr():
    image, _ = _world_frame()
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    enc = encode_compressed(bgr, "bgr8", "png")
    assert np.array_equal(cv2.imdecode(enc.data, cv2.IMREAD_UNCHANGED), bgr)
    back, encoding = decode_compressed_exact(enc.format, enc.data)
    assert encoding == "bgr8" and np.array_equal(back, bgr)


def test_mono8_jpeg_and_hxwx1_arrays():
    _, labels = _world_frame()
    conf = cv2.GaussianBlur(labels, (9, 9), 3)
    enc = encode_compressed(conf[:, :, None], "mono8", "jpeg")
    back, encoding = decode_compressed_exact(enc.format, enc.data)
    assert encoding == "mono8" and back.shape == conf.shape
    assert np.abs(back.astype(int) - conf.astype(int)).mean() < 3


@pytest.mark.parametrize("call, match", [
    (lambda: compressed_format("mono16", "jpeg"), "cannot be JPEG"),
    (lambda: compressed_format("rgb16", "png"), "cannot compress encoding"),
    (lambda: compressed_format("mono8", "tiff"), "unknown codec"),
    (lambda: encode_compressed(np.zeros((4, 4), np.uint8), "rgb8", "jpeg"), "HxWx3 uint8"),
    (lambda: encode_compressed(np.zeros((4, 4), np.uint16), "mono8", "png"), "HxW uint8"),
    (lambda: encode_compressed(np.zeros((0, 4), np.uint8), "mono8", "png"), "non-empty"),
    (lambda: encode_compressed(np.zeros((4, 4, 3), np.uint8), "rgb8", "jpeg", jpeg_quality=0), "1..100"),
    (lambda: check_jpeg_quality(101), "1..100"),
    (lambda: check_jpeg_quality(True), "1..100"),
    (lambda: check_jpeg_quality(90.0), "1..100"),
])
def test_bad_requests_are_refused_with_a_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("fmt, data, match", [
    ("png", b"\x89PNG", "names no supported image encoding"),
    ("rgba8; png compressed bgra8", b"\x89PNG", "names no supported image encoding"),
    ("mono8; png compressed ", b"", "corrupt or empty"),
    ("mono8; png compressed ", b"\x89PNG\r\n\x1a\nnot really", "corrupt or empty"),
])
def test_decode_exact_refuses_what_it_cannot_read(fmt, data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_compressed_exact(fmt, data)


def test_decode_exact_refuses_a_payload_of_another_encoding():
    enc = encode_compressed(np.zeros((4, 4, 3), np.uint8), "rgb8", "png")
    with pytest.raises(ImageDecodeError, match="not mono8"):
        decode_compressed_exact("mono8; png compressed ", enc.data)


def test_the_output_table_never_jpegs_values():
    assert set(COMPRESSED_OUTPUTS) == set(IMAGE_OUTPUTS)
    assert OUTPUTS["labels"].compressed == "png"          # lossy compression changes class ids
    assert OUTPUTS["confidence"].compressed == "png"
    assert OUTPUTS["color"].compressed == OUTPUTS["overlay"].compressed == "jpeg"
    # Every output's encoding (both label widths) has a format for its codec.
    for name in COMPRESSED_OUTPUTS:
        samples = [np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint16)] if name == "labels" else [None]
        for sample in samples:
            encoding = image_encoding(name, sample) if sample is not None else OUTPUTS[name].encoding
            assert compressed_format(encoding, OUTPUTS[name].compressed)
