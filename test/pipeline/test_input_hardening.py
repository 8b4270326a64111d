"""Hardening of the ROS-free core: non-finite states, frame geometry limits,
decompression bombs, per-camera retry, 16-bit/float encodings and corrupt jpeg.

Real model, real codec, real engine; the node-level checks are in test_ros_input_hardening.py.
"""
from __future__ import annotations

import os
import types

import cv2
import numpy as np
import pytest
import torch
from tiny import tiny_overrides

from tv3s_ros.engine import Engine, FrameErrors, FrameInput, FrameRejected
from tv3s_ros.image_codec import ImageDecodeError, compressed_size, decode_compressed, decode_image
from tv3s_ros.model import build_model
from tv3s_ros.preprocess import check_geometry, model_input_size
from tv3s_ros.streams import ResetPolicy

TINY = tiny_overrides(backbone="mit_b0", num_classes=5)
MS = 1_000_000


@pytest.fixture(scope="module")
def model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny ops: intra-op threads only spin on shared CI cores
    torch.manual_seed(0)
    yield build_model("tv3s_b1_cityscapes", **TINY)
    torch.set_num_threads(before)


def _engine(model, **kw):
    kw.setdefault("input_size", "keep_aspect:64")
    return Engine(model, device="cpu", reset_policy=ResetPolicy(max_gap_s=1.0), **kw)


def _frames(h, w, n, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w + 4 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, 4 * i:4 * i + w]) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# non-finite state


@pytest.mark.parametrize("graphs", ["off", "no_capture"])
def test_nan_state_resets_that_camera_only(model, graphs):
    """A NaN in one camera's state: that frame is lost, the next one starts clean (reason
    non_finite, counted); the other camera in the same batch never notices."""
    engine, fresh = _engine(model, graphs=graphs), _engine(model, graphs="off")
    bad, good = _frames(48, 64, 4, 1), _frames(48, 64, 4, 2)
    clean = _engine(model, graphs="off")
    for t in range(2):
        engine.process([FrameInput("bad", bad[t], t * 100 * MS), FrameInput("good", good[t], t * 100 * MS)])
        clean.process([FrameInput("good", good[t], t * 100 * MS)])
    # fp16 overflow or a bad weight would do this; here one entry of the carried SSM state.
    with torch.inference_mode():
        engine.state("bad").ssm_states[0][0].view(-1)[0] = float("nan")

    poisoned, good2 = engine.process([FrameInput("bad", bad[2], 200 * MS), FrameInput("good", good[2], 200 * MS)])
    assert engine.stats()["bad"].non_finite == 1 and engine.stats()["good"].non_finite == 0
    after, good3 = engine.process([FrameInput("bad", bad[3], 300 * MS), FrameInput("good", good[3], 300 * MS)])
    assert (after.reset_reason, after.frames_since_reset) == ("non_finite", 0)
    # Clean: exactly what a camera starting on this frame gets.
    expected = fresh.process([FrameInput("bad", bad[3], 0)])[0]
    np.testing.assert_array_equal(after.labels, expected.labels)
    np.testing.assert_array_equal(after.pixel_count, expected.pixel_count)
    assert np.all(after.mean_confidence > 0)
    stats = engine.stats()["bad"]
    assert stats.resets["non_finite"] == 1 and stats.non_finite == 1
    # The other camera kept its state and its results.
    assert (good2.reset_reason, good3.reset_reason, good3.frames_since_reset) == ("", "", 3)
    clean.process([FrameInput("good", good[2], 200 * MS)])
    np.testing.assert_array_equal(good3.labels, clean.process([FrameInput("good", good[3], 300 * MS)])[0].labels)


def test_nan_weight_resets_every_frame_and_is_reported(model):
    """A checkpoint with a NaN in the Mamba state path: every frame is flagged and reset."""
    torch.manual_seed(0)
    broken = build_model("tv3s_b1_cityscapes", **TINY)
    with torch.no_grad():
        broken.decode_head.vs.layers[0].mixer.dt_proj.bias[0] = float("nan")
    engine = _engine(broken)
    reasons = [engine.process([FrameInput("cam", f, i * 100 * MS)])[0].reset_reason
               for i, f in enumerate(_frames(48, 64, 3, 3))]
    assert reasons == ["first_frame", "non_finite", "non_finite"]
    assert engine.stats()["cam"].non_finite == 3


def test_finite_rows_flags_only_the_bad_row(model):
    state = model.new_state(2)
    with torch.inference_mode():
        x = torch.zeros(2, 3, 64, 96)
        model.forward_stream(x, state)
        assert state.finite_rows().tolist() == [True, True]
        state.conv_tails[-1][0][1].view(-1)[0] = float("inf")
        assert state.finite_rows().tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# geometry, keep_aspect cap, bombs, per-camera retry


def test_keep_aspect_caps_the_model_input(model):
    cfg = model.cfg
    assert model_input_size("keep_aspect:512", cfg, 1, 4000) == (32, 2048)
    assert model_input_size("keep_aspect:512", cfg, 4000, 2) == (2048, 32)
    assert model_input_size("keep_aspect:512", cfg, 1080, 3840) == (512, 1824)   # 3.6:1 unchanged
    assert model_input_size("keep_aspect:512", cfg, 480, 854) == (512, 896)


@pytest.mark.parametrize("policy", ["official", "keep_aspect:64", "64x96"])
@pytest.mark.parametrize("size", [(1, 4000), (2, 4000), (4000, 1)])
def test_degenerate_frames_are_rejected_before_the_model(model, policy, size):
    engine = _engine(model, input_size=policy)
    with pytest.raises(FrameRejected) as info:
        engine.check_frame_size(*size)
    assert info.value.reason == "bad_size"
    with pytest.raises(FrameRejected):
        engine.process([FrameInput("cam", np.zeros(size + (3,), np.uint8), 0)])
    assert engine.stats() == {}     # nothing counted, no state touched
    engine.check_frame_size(48, 64)


def test_geometry_limits():
    cfg = types.SimpleNamespace(test_scale=(2048, 1024), size_divisor=None)
    assert check_geometry("official", cfg, 1024, 2048, 40_000_000, 16) is None
    assert "max_pixels" in check_geometry("official", cfg, 8000, 8000, 40_000_000, 16)
    assert "aspect" in check_geometry("official", cfg, 100, 2000, 0, 16)
    assert check_geometry("official", cfg, 100, 2000, 0, 0) is None       # 0 disables
    assert "at least 32" in check_geometry("official", cfg, 2, 4000, 0, 0)


def _png(image):
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def test_png_bomb_is_refused_from_its_header(model):
    """A ~62 KB png of 8000x8000: refused by the engine's decoder before any decoding."""
    bomb = _png(np.zeros((8000, 8000), np.uint8))
    assert len(bomb) < 200_000
    assert compressed_size("png", bomb) == (8000, 8000)
    engine = _engine(model)
    msg = types.SimpleNamespace(format="png", data=bomb)
    with pytest.raises(ImageDecodeError, match="8000x8000 has 64000000 pixels, more than max_pixels") as info:
        engine.decode_msg(msg)
    assert info.value.reason == "bad_size"
    # The codec on its own refuses it from the header too.
    with pytest.raises(ImageDecodeError, match="refused before decoding"):
        decode_compressed("png", bomb, max_pixels=40_000_000)


def _grey_png(height, width):
    """A valid 8-bit grey png written by hand (OpenCV refuses to encode very wide images)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = (b"\x00" + bytes(width)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def test_thin_png_is_refused_before_decoding(model):
    """Geometry (aspect, model input size) is checked on the header's size, before decoding."""
    thin = _grey_png(2, 1_000_000)      # 2 MP in two rows: a 2 KB file, a 2 MB decode
    assert len(thin) < 10_000 and cv2.imdecode(np.frombuffer(thin, np.uint8), cv2.IMREAD_UNCHANGED).shape == (2, 1_000_000)
    engine = _engine(model)
    with pytest.raises(FrameRejected, match="aspect ratio"):
        engine.decode_msg(types.SimpleNamespace(format="png", data=thin))
    # Proof that no decoding happened: the same header with garbage pixel data is still
    # refused for its size, not reported as corrupt.
    garbage = thin[:33] + b"\x00\x00\x00\x10IDAT" + bytes(16) + b"\x00\x00\x00\x00"
    with pytest.raises(FrameRejected, match="aspect ratio"):
        engine.decode_msg(types.SimpleNamespace(format="png", data=garbage))
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_compressed("png", garbage)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_size_from_sof_header(progressive):
    image = np.zeros((600, 700, 3), np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    data = cv2.imencode(".jpg", image, params)[1].tobytes()
    assert compressed_size("jpeg", data) == (700, 600)
    with pytest.raises(ImageDecodeError, match="more than max_pixels") as info:
        decode_compressed("jpeg", data, max_pixels=400_000)
    assert info.value.reason == "bad_size"
    assert decode_compressed("jpeg", data, max_pixels=420_000).shape == (600, 700, 3)


def test_raw_image_above_max_pixels_is_refused():
    with pytest.raises(ImageDecodeError, match="max_pixels") as info:
        decode_image("mono8", 100, 100, 100, bytes(10_000), max_pixels=9_999)
    assert info.value.reason == "bad_size"


@pytest.mark.parametrize("graphs", ["off", "no_capture"])
def test_failed_batch_is_retried_camera_by_camera(model, graphs):
    """A frame that still fails inside a batched forward costs only its own camera."""
    engine, alone = _engine(model, graphs=graphs), _engine(model, graphs="off")
    a, b, c = _frames(48, 64, 3, 4), _frames(48, 64, 3, 5), _frames(40, 120, 1, 6)
    engine.process([FrameInput("a", a[0], 0), FrameInput("b", b[0], 0), FrameInput("c", c[0], 0)])
    alone.process([FrameInput("a", a[0], 0)])
    # b's state now belongs to another input size while it keeps sending 48x64 (a corrupted
    # state: it cannot join a's batch nor run on its own).
    with torch.inference_mode():
        engine._states["b"] = engine.state("c").clone()
    with pytest.raises(FrameErrors) as info:
        engine.process([FrameInput("a", a[1], 100 * MS), FrameInput("b", b[1], 100 * MS)])
    results, errors = info.value.results, info.value.errors
    assert set(errors) == {1} and results[1] is None
    assert results[0].camera == "a" and results[0].reset_reason == ""
    np.testing.assert_array_equal(results[0].labels, alone.process([FrameInput("a", a[1], 100 * MS)])[0].labels)
    # b starts afresh at its next frame; a carries on.
    outs = engine.process([FrameInput("a", a[2], 200 * MS), FrameInput("b", b[2], 200 * MS)])
    assert [(o.reset_reason, o.frames_since_reset) for o in outs] == [("", 2), ("error", 0)]


def test_degenerate_frame_without_the_check_fails_alone(model):
    """With the geometry check off a 1x4000 frame raises in the model: only its camera loses it."""
    engine = _engine(model, input_size="official", check_geometry=False)
    frames = [FrameInput("good", _frames(48, 64, 1, 7)[0], 0), FrameInput("bad", np.zeros((1, 4000, 3), np.uint8), 0)]
    with pytest.raises(FrameErrors) as info:
        engine.process(frames)
    assert set(info.value.errors) == {1} and info.value.results[0].camera == "good"


@pytest.mark.gpu
def test_graphs_stay_on_after_a_frame_error(model):
    """Only a capture error turns CUDA graphs off, not a frame that fails the eager warm-up."""
    import copy

    engine = Engine(copy.deepcopy(model), device="cuda", input_size="official", graphs="on",
                    check_geometry=False)
    good = FrameInput("good", _frames(48, 64, 1, 8)[0], 0)
    # 2x4000 raises a RuntimeError (a conv kernel larger than its input) in the eager warm-up
    # that precedes the capture: before the fix that switched graphs off for good.
    with pytest.raises(FrameErrors) as info:
        engine.process([good, FrameInput("bad", np.zeros((2, 4000, 3), np.uint8), 0)])
    assert isinstance(info.value.errors[1], RuntimeError)
    assert engine.graphs == "on" and engine._pool is not None
    out = engine.process([FrameInput("good", _frames(48, 64, 2, 8)[1], 100 * MS)])[0]
    assert out.reset_reason == "" and engine.graphs == "on"


# ---------------------------------------------------------------------------------------------
# 16-bit / float encodings, corrupt jpeg


@pytest.mark.parametrize("encoding,bpp", [("16UC1", 2), ("mono16", 2), ("rgb16", 6), ("bayer_rggb16", 2)])
def test_16bit_encodings_need_the_camera_to_allow_them(model, encoding, bpp):
    h, w = 48, 64
    msg = types.SimpleNamespace(encoding=encoding, height=h, width=w, step=w * bpp, data=bytes(h * w * bpp),
                                is_bigendian=0)
    engine = _engine(model)
    with pytest.raises(ImageDecodeError, match="depth image") as info:
        engine.decode_msg(msg)
    assert info.value.reason == "unsupported_encoding"
    assert engine.decode_msg(msg, allow_16bit=True).shape == (h, w, 3)


@pytest.mark.parametrize("encoding", ["32FC1", "64FC1", "16SC1", "32FC3"])
def test_float_encodings_name_depth(encoding):
    with pytest.raises(ImageDecodeError, match="depth image") as info:
        decode_image(encoding, 4, 4, 16, bytes(64))
    assert info.value.reason == "unsupported_encoding"


def test_16bit_png_needs_the_camera_to_allow_it(model):
    data = _png(np.full((48, 64), 1000, np.uint16))
    engine = _engine(model)
    with pytest.raises(ImageDecodeError, match="depth image"):
        engine.decode_msg(types.SimpleNamespace(format="mono16; png compressed mono16", data=data))
    assert engine.decode_msg(types.SimpleNamespace(format="png", data=data), allow_16bit=True).shape == (48, 64, 3)


def _corrupt_jpegs():
    rng = np.random.default_rng(0)
    image = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    good = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    truncated = good[:len(good) // 2] + b"\xff\xd9"          # end marker intact
    flipped = bytearray(good)
    start = flipped.find(b"\xff\xda") + 40                   # inside the entropy-coded data
    for k in range(5):
        flipped[start + 7 * k] ^= 0x55
    return good, {"truncated": truncated, "bit_flipped": bytes(flipped)}


@pytest.mark.parametrize("kind", ["truncated", "bit_flipped"])
def test_jpeg_with_corrupt_data_warning_is_rejected_and_stderr_stays_clean(kind, capfd):
    good, corrupt = _corrupt_jpegs()
    data = corrupt[kind]
    assert data.endswith(b"\xff\xd9")
    # libjpeg does decode it (with a warning): the rejection is ours.
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    capfd.readouterr()
    with pytest.raises(ImageDecodeError, match="libjpeg: Corrupt JPEG data"):
        decode_compressed("jpeg", data)
    assert decode_compressed("jpeg", good).shape == (64, 96, 3)
    err = capfd.readouterr().err
    assert "Corrupt JPEG" not in err, err


def test_other_stderr_output_during_a_decode_is_passed_on(capfd):
    """Bytes on fd 2 that are not libjpeg's reach the real stderr after the decode."""
    from tv3s_ros import image_codec

    _, corrupt = _corrupt_jpegs()
    capfd.readouterr()
    real_imdecode = cv2.imdecode
    original = image_codec.cv2
    fake = types.SimpleNamespace(**{k: getattr(cv2, k) for k in ("IMREAD_UNCHANGED", "error")})
    # Like a log line of another thread landing in the decode window (it mentions jpeg too).
    line = b"[WARN] [1.0] [tv3s_node]: another thread's log line about a jpeg marker\n"
    fake.imdecode = lambda buf, flags: (os.write(2, line), real_imdecode(buf, flags))[1]
    image_codec.cv2 = fake
    try:
        with pytest.raises(ImageDecodeError):
            decode_compressed("jpeg", corrupt["truncated"])
    finally:
        image_codec.cv2 = original
    err = capfd.readouterr().err
    assert line.decode() in err and "Corrupt JPEG" not in err
