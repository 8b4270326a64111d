"""Pre-processing: official resize arithmetic, policies, normalisation, torch/numpy/cv2 agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tv3s_ros.model.presets import load_config
from tv3s_ros.preprocess import (
    InputPolicy,
    cv2_resize_linear_u8,
    logits_to_size,
    model_input_size,
    official_resize_steps,
    parse_input_size,
    to_model_input,
)

VSPW = load_config("tv3s_b1_vspw")
CITY = load_config("tv3s_b1_cityscapes")


def _image(h, w, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if batch is None else (batch, h, w, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --- sizes ------------------------------------------------------------------------------------

def test_official_sizes_from_spec():
    assert official_resize_steps(VSPW, 480, 854) == [(479, 853), (480, 864)]
    assert model_input_size("official", VSPW, 480, 854) == (480, 864)
    assert model_input_size("official", VSPW, 480, 640) == (480, 640)
    assert official_resize_steps(CITY, 1024, 2048) == [(512, 1024)]
    assert model_input_size("official", CITY, 1024, 2048) == (512, 1024)


def test_official_sizes_other_inputs():
    # Portrait and small frames: the long/short limits apply to the long/short image sides.
    assert official_resize_steps(VSPW, 854, 480) == [(853, 479), (864, 480)]
    assert model_input_size("official", VSPW, 240, 320) == (480, 640)        # up-scaled
    assert model_input_size("official", CITY, 720, 1280) == (512, 910)       # no 32-alignment
    assert model_input_size("official", VSPW, 720, 1280) == (480, 864)       # 480x853 -> 480x864


def test_parse_input_size():
    assert parse_input_size("official") == InputPolicy("official") == parse_input_size(None)
    assert parse_input_size("512x1024") == InputPolicy("fixed", 512, 1024)
    assert parse_input_size([512, 1024]) == InputPolicy("fixed", 512, 1024)
    assert parse_input_size("keep_aspect:512") == InputPolicy("keep_aspect", short_side=512)
    assert str(parse_input_size(" 256 x 512 ")) == "256x512"
    for bad in ("big", "512x", [512], [0, 10], "keep_aspect:x"):
        with pytest.raises(ValueError):
            parse_input_size(bad)


def test_fixed_and_keep_aspect_sizes():
    assert model_input_size("256x512", CITY, 1080, 1920) == (256, 512)
    # short side 512: 854 * 512/480 = 910.9 -> nearest multiple of 32 = 896
    assert model_input_size("keep_aspect:512", VSPW, 480, 854) == (512, 896)
    assert model_input_size("keep_aspect:512", VSPW, 854, 480) == (896, 512)
    assert model_input_size("keep_aspect:500", VSPW, 1000, 1000) == (512, 512)


# --- tensors ----------------------------------------------------------------------------------

def test_normalisation_values():
    img = np.empty((1, 64, 96, 3), np.uint8)
    img[...] = (124, 116, 103)
    x = to_model_input(img, CITY, "64x96")
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    expected = [(124 - 123.675) / 58.395, (116 - 116.28) / 57.12, (103 - 103.53) / 57.375]
    torch.testing.assert_close(x[0, :, 5, 7], torch.tensor(expected), rtol=0, atol=1e-6)


def test_bgr_flag_swaps_channels():
    img = _image(40, 60)
    rgb = to_model_input(img, CITY, "40x60")
    bgr = to_model_input(img[..., ::-1].copy(), CITY, "40x60", bgr=True)
    torch.testing.assert_close(rgb, bgr, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["official", "96x160", "keep_aspect:64"])
def test_torch_and_numpy_paths_agree(policy):
    img = _image(120, 214, batch=2)
    a = to_model_input(img, VSPW, policy)
    b = to_model_input(torch.from_numpy(img), VSPW, policy)
    assert a.shape == b.shape == (2, 3) + model_input_size(policy, VSPW, 120, 214)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A single HWC frame gets a batch dimension.
    torch.testing.assert_close(to_model_input(img[1], VSPW, policy), a[1:], rtol=0, atol=0)


def test_fixed_policy_is_float_bilinear():
    img = _image(50, 70)
    x = to_model_input(img, CITY, "64x96")
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(64, 96),
                        mode="bilinear", align_corners=False)
    mean = torch.tensor(CITY.mean).view(1, 3, 1, 1)
    std = torch.tensor(CITY.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ref - mean) / std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("src,dst", [((480, 854), (479, 853)), ((479, 853), (480, 864)),
                                     ((37, 51), (100, 77)), ((64, 64), (32, 32)), ((13, 300), (50, 31))])
def test_uint8_resize_is_bit_exact_with_opencv(src, dst):
    cv2 = pytest.importorskip("cv2")
    img = _image(*src, seed=3)
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    ours = cv2_resize_linear_u8(torch.from_numpy(img).permute(2, 0, 1), dst).permute(1, 2, 0)
    assert np.array_equal(ours.numpy().astype(np.uint8), ref)


def test_official_pipeline_matches_mmcv_arithmetic():
    cv2 = pytest.importorskip("cv2")
    img = _image(480, 854, seed=5)
    ref = img
    for h, w in official_resize_steps(VSPW, 480, 854):      # mmcv: imrescale, then align to 32
        ref = cv2.resize(ref, (w, h), interpolation=cv2.INTER_LINEAR)
    mean = np.array(VSPW.mean, np.float32)
    inv_std = (1.0 / np.array(VSPW.std, np.float64)).astype(np.float32)
    ref = (ref.astype(np.float32) - mean) * inv_std
    ours = to_model_input(img, VSPW, "official")[0].permute(1, 2, 0).numpy()
    assert ours.shape == (480, 864, 3)
    assert np.array_equal(ours, ref)


def test_logits_to_size():
    logits = torch.randn(2, 5, 120, 216)
    out = logits_to_size(logits, (480, 854))
    assert out.shape == (2, 5, 480, 854)
    ref = F.interpolate(logits, size=(480, 854), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert logits_to_size(logits, (120, 216)) is logits
    # Round trip of model_input_size: the inverse returns the original frame size.
    x = to_model_input(_image(480, 854, batch=1), VSPW)
    assert logits_to_size(torch.zeros(1, 3, *x.shape[-2:]), (480, 854)).shape[-2:] == (480, 854)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    img = _image(480, 854, batch=2)
    cpu = to_model_input(img, VSPW)
    gpu = to_model_input(torch.from_numpy(img).cuda(), VSPW)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    half = to_model_input(img, VSPW, "keep_aspect:256", device="cuda", dtype=torch.float16)
    assert half.is_cuda and half.dtype == torch.float16
