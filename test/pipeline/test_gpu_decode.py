"""gpu_decode: jpeg to the GPU decoder when enabled, everything else (and every error) to OpenCV.

torchvision is optional; the GPU branch is exercised on CPU with a stand-in decoder.
"""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from tv3s_ros import gpu_decode
from tv3s_ros.gpu_decode import ImageDecoder, resolve_gpu_jpeg
from tv3s_ros.image_codec import ImageDecodeError, decode_compressed


def _image(seed=0, h=24, w=32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _jpeg(image):
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1])
    assert ok
    return data.tobytes()


@pytest.fixture
def fake_gpu(monkeypatch):
    """An ImageDecoder whose 'GPU' decoder is OpenCV returning a CHW tensor (records calls)."""
    calls = []

    def fake_decode(data, device):
        calls.append((data.dtype, data.dim(), str(device)))
        bgr = cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError("fake nvjpeg: cannot decode")
        return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)

    monkeypatch.setattr(gpu_decode, "_torchvision_decode_jpeg", lambda: fake_decode)
    decoder = ImageDecoder("cpu", gpu_jpeg=False)
    decoder.gpu_jpeg = True            # as on a CUDA machine with torchvision
    return decoder, calls


def test_jpeg_goes_to_the_gpu_decoder(fake_gpu):
    decoder, calls = fake_gpu
    image = _image(1)
    data = _jpeg(image)
    for payload in (data, bytearray(data), array.array("B", data), np.frombuffer(data, np.uint8)):
        out = decoder.decode_compressed("rgb8; jpeg compressed bgr8", payload)
        assert isinstance(out, torch.Tensor) and out.shape == (24, 32, 3) and out.dtype == torch.uint8
        np.testing.assert_array_equal(out.numpy(), decode_compressed("jpeg", data))
    assert decoder.decode_compressed("", data).shape == (24, 32, 3)     # empty format, jpeg signature
    assert calls == [(torch.uint8, 1, "cpu")] * 5 and decoder.gpu_decoded == 5


def test_png_truncated_and_undecodable_jpeg_go_to_opencv(fake_gpu):
    decoder, calls = fake_gpu
    image = _image(2)
    ok, png = cv2.imencode(".png", image[:, :, ::-1])
    out = decoder.decode_compressed("png", png.tobytes())
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, image)
    data = _jpeg(image)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decoder.decode_compressed("jpeg", data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="depth"):
        decoder.decode_compressed("16UC1; compressedDepth png", png.tobytes())
    assert calls == []
    # Complete markers but corrupt inside: the GPU decoder fails, OpenCV decides (and errors).
    corrupt = data[:200] + bytes(len(data) - 202) + data[-2:]
    try:
        result = decoder.decode_compressed("jpeg", corrupt)
    except ImageDecodeError:
        result = None
    assert result is None or isinstance(result, np.ndarray)
    assert decoder.gpu_failures == 1 and decoder.gpu_decoded == 0


def test_raw_images_and_messages():
    decoder = ImageDecoder("cpu")
    assert decoder.gpu_jpeg is False
    image = _image(3)
    raw = SimpleNamespace(encoding="bgr8", height=24, width=32, step=96, data=image[:, :, ::-1].tobytes())
    np.testing.assert_array_equal(decoder.decode_msg(raw), image)
    msg = SimpleNamespace(format="jpeg", data=_jpeg(image))
    np.testing.assert_array_equal(decoder.decode_msg(msg), decode_compressed("jpeg", msg.data))


def test_settings():
    assert resolve_gpu_jpeg("auto", torch.device("cpu")) is False
    assert resolve_gpu_jpeg(False, torch.device("cpu")) is False
    assert resolve_gpu_jpeg("false", torch.device("cpu")) is False
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_gpu_jpeg(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="auto, true or false"):
        resolve_gpu_jpeg("maybe", torch.device("cpu"))


@pytest.mark.gpu
def test_real_gpu_jpeg_close_to_opencv():
    if not gpu_decode.gpu_jpeg_available():
        pytest.skip("torchvision not installed")
    decoder = ImageDecoder("cuda", gpu_jpeg=True)
    image = _image(4, 480, 640)
    data = _jpeg(image)
    out = decoder.decode_compressed("jpeg", data)
    assert out.is_cuda and out.shape == (480, 640, 3)
    diff = np.abs(out.cpu().numpy().astype(int) - decode_compressed("jpeg", data).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 16     # nvJPEG vs libjpeg-turbo IDCT / upsampling


@pytest.mark.parametrize("broken", ["raises", "wrong_pixels", "wrong_shape"])
def test_gpu_decoding_is_turned_off_when_the_start_up_check_fails(monkeypatch, caplog, broken):
    # torchvision importing says nothing about nvJPEG: the decoder proves it on a tiny jpeg.
    def bad_decode(data, device):
        if broken == "raises":
            raise RuntimeError("nvjpeg not available (simulated)")
        bgr = cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR)
        chw = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)
        return 255 - chw if broken == "wrong_pixels" else chw[:, :8]

    monkeypatch.setattr(gpu_decode, "_torchvision_decode_jpeg", lambda: bad_decode)
    monkeypatch.setattr(gpu_decode, "resolve_gpu_jpeg", lambda setting, device: True)  # "CUDA + torchvision"
    with caplog.at_level("WARNING", logger=gpu_decode.__name__):
        decoder = ImageDecoder("cpu", gpu_jpeg="auto")
    assert decoder.gpu_jpeg is False and decoder.gpu_jpeg_error
    lines = [r.getMessage() for r in caplog.records if "GPU jpeg decoding is off" in r.getMessage()]
    assert len(lines) == 1
    image = np.zeros((8, 8, 3), np.uint8)
    assert decoder.decode_compressed("jpeg", _jpeg(image)).shape == (8, 8, 3)   # OpenCV serves


def test_gpu_decoding_stays_on_when_the_start_up_check_passes(monkeypatch):
    def decode(data, device):
        bgr = cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR)
        return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)

    monkeypatch.setattr(gpu_decode, "_torchvision_decode_jpeg", lambda: decode)
    monkeypatch.setattr(gpu_decode, "resolve_gpu_jpeg", lambda setting, device: True)
    decoder = ImageDecoder("cpu", gpu_jpeg="auto")
    assert decoder.gpu_jpeg is True and decoder.gpu_jpeg_error is None
