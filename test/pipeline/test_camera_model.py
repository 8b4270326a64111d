"""Camera intrinsics for the label image (tv3s_ros.camera_model): the arithmetic checked by
projecting known 3D points, and the claim it rests on -- every input_size policy maps the camera
image onto the model input by a half-pixel-centre resize of the whole frame -- checked on
preprocess.to_model_input itself."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tv3s_ros.camera_model import (
    AxisMap,
    CameraModel,
    crop_map,
    image_model,
    label_model,
    project,
    resize_map,
    transform,
)
from tv3s_ros.model.presets import load_config
from tv3s_ros.preprocess import model_input_size, to_model_input

K = (800.0, 0.0, 955.3, 0.0, 790.0, 541.7, 0.0, 0.0, 1.0)
# A right stereo camera's P: Tx = -fx * baseline (0.12 m).
P = (780.0, 0.0, 950.1, -780.0 * 0.12, 0.0, 780.0, 540.2, 0.0, 0.0, 0.0, 1.0, 0.0)
D = (-0.28, 0.07, 0.0005, -0.0003, 0.0)
R = (0.9998, -0.0175, 0.0, 0.0175, 0.9998, 0.0, 0.0, 0.0, 1.0)
INFO = CameraModel(width=1920, height=1080, k=K, p=P, d=D, r=R, distortion_model="plumb_bob")
# Points in front of the camera spread over the image (x, y, z in metres, camera frame).
POINTS = [(x, y, z) for z in (4.0, 11.0, 30.0) for x in (-2.0, -0.3, 0.0, 1.7) for y in (-1.0, 0.2, 0.9)]


def _expected(pixels, mx: AxisMap, my: AxisMap):
    return np.array([(mx(u), my(v)) for u, v in pixels])


def test_resize_map_is_half_pixel_centred():
    m = resize_map(1920, 960)
    assert (m.scale, m.offset) == (0.5, -0.25)
    assert m(-0.5) == -0.5 and m(1919.5) == 959.5          # the image edges stay the edges
    assert resize_map(4, 4)(2.0) == 2.0
    assert crop_map(10)(15.0) == 5.0
    assert resize_map(100, 50).then(resize_map(50, 200)) == resize_map(100, 200)   # resizes compose
    with pytest.raises(ValueError):
        resize_map(0, 10)


@pytest.mark.parametrize("label_hw", [(1080, 1920), (512, 1024), (544, 960), (480, 854), (256, 256)])
def test_projection_through_published_k_and_p_lands_on_the_scaled_pixels(label_hw):
    out, note = label_model(INFO, (1080, 1920), label_hw)
    assert note is None
    assert (out.width, out.height) == (label_hw[1], label_hw[0])
    mx, my = resize_map(1920, label_hw[1]), resize_map(1080, label_hw[0])
    for original, published in ((INFO.k, out.k), (INFO.p, out.p)):
        want = _expected(project(original, POINTS), mx, my)
        assert np.allclose(project(published, POINTS), want, atol=1e-9)
    assert out.d == D and out.r == R and out.distortion_model == "plumb_bob"
    assert (out.binning_x, out.binning_y, out.roi) == (0, 0, (0, 0, 0, 0, False))
    if label_hw == (1080, 1920):
        assert out.k == INFO.k and out.p == INFO.p      # output_resolution input: unchanged


def test_distorted_projection_scales_too():
    """D is unchanged: distortion acts on normalised coordinates (cv2.projectPoints with D)."""
    out, _ = label_model(INFO, (1080, 1920), (512, 1024))
    pts = np.array(POINTS, np.float64)
    zero = np.zeros(3)
    orig, _ = cv2.projectPoints(pts, zero, zero, np.array(INFO.k).reshape(3, 3), np.array(D))
    new, _ = cv2.projectPoints(pts, zero, zero, np.array(out.k).reshape(3, 3), np.array(out.d))
    want = _expected(orig.reshape(-1, 2), resize_map(1920, 1024), resize_map(1080, 512))
    assert np.allclose(new.reshape(-1, 2), want, atol=1e-6)


def test_the_formula_by_hand():
    out, _ = label_model(INFO, (1080, 1920), (540, 480))    # sx = 0.25, sy = 0.5
    assert out.k[0] == pytest.approx(800 * 0.25) and out.k[4] == pytest.approx(790 * 0.5)
    assert out.k[2] == pytest.approx((955.3 + 0.5) * 0.25 - 0.5)
    assert out.k[5] == pytest.approx((541.7 + 0.5) * 0.5 - 0.5)
    assert out.p[3] == pytest.approx(-780.0 * 0.12 * 0.25)   # Tx scales with fx
    assert out.k[6:] == (0.0, 0.0, 1.0) and out.p[8:] == (0.0, 0.0, 1.0, 0.0)


def test_crop_then_resize():
    out, _ = label_model(INFO, (1080, 1920), (256, 512), crop=(100, 40, 1024, 512))
    mx, my = crop_map(100).then(resize_map(1024, 512)), crop_map(40).then(resize_map(512, 256))
    assert np.allclose(project(out.k, POINTS), _expected(project(K, POINTS), mx, my))


def test_binning_and_roi_are_folded_in():
    """The camera image is the sensor's roi (x 100, y 60, 1280x720) binned 2x2: 640x360."""
    info = CameraModel(width=1920, height=1080, k=K, p=P, binning_x=2, binning_y=2,
                       roi=(100, 60, 1280, 720, False))
    image, note = image_model(info, 640, 360)
    assert note is None and (image.binning_x, image.roi) == (0, (0, 0, 0, 0, False))
    # The centre of bin j covers sensor pixels 2j, 2j+1 (+ the roi offset): centre 2j + 0.5.
    mx, my = crop_map(100).then(resize_map(2, 1)), crop_map(60).then(resize_map(2, 1))
    assert np.allclose(project(image.k, POINTS), _expected(project(K, POINTS), mx, my))
    assert mx(100 + 2 * 7 + 0.5) == pytest.approx(7.0)
    out, _ = label_model(info, (360, 640), (180, 320))
    assert np.allclose(project(out.p, POINTS),
                       _expected(project(P, POINTS), mx.then(resize_map(640, 320)), my.then(resize_map(360, 180))))


def test_an_image_of_another_size_is_taken_as_a_resize():
    image, note = image_model(INFO, 960, 540)
    assert note is not None and "1920x1080" in note and "960x540" in note
    assert np.allclose(project(image.k, POINTS),
                       _expected(project(K, POINTS), resize_map(1920, 960), resize_map(1080, 540)))
    # width/height 0 (not filled in): the image's own size.
    image, note = image_model(CameraModel(width=0, height=0, k=K, p=P), 960, 540)
    assert note is None and image.k == K


def test_uncalibrated_stays_zero_and_bad_lengths_are_refused():
    zero = CameraModel(width=640, height=480, k=(0.0,) * 9, p=(0.0,) * 12)
    assert not zero.calibrated
    out, _ = label_model(zero, (480, 640), (240, 320))
    assert out.k == (0.0,) * 9 and out.p == (0.0,) * 12 and (out.width, out.height) == (320, 240)
    with pytest.raises(ValueError):
        CameraModel(width=1, height=1, k=(1.0,) * 8, p=(0.0,) * 12)


def test_transform_keeps_skew_consistent():
    skewed = CameraModel(width=100, height=100, k=(100.0, 3.0, 50.0, 0.0, 90.0, 40.0, 0.0, 0.0, 1.0),
                         p=(100.0, 3.0, 50.0, 0.0, 0.0, 90.0, 40.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    mx, my = resize_map(100, 37), resize_map(100, 61)
    out = transform(skewed, mx, my, 37, 61)
    assert np.allclose(project(out.k, POINTS), _expected(project(skewed.k, POINTS), mx, my))


# --- the mapping the node relies on: preprocess resizes the whole frame, half-pixel centred ----

@pytest.mark.parametrize("preset, policy, hw", [
    ("tv3s_b1_vspw", "official", (480, 854)),        # two resizes: 853x479, then 864x480
    ("tv3s_b1_cityscapes", "official", (600, 1000)),
    ("tv3s_b1_cityscapes", "160x320", (300, 400)),     # aspect not kept
    ("tv3s_b1_cityscapes", "keep_aspect:96", (250, 420)),
])
def test_model_input_is_a_half_pixel_resize_of_the_frame(preset, policy, hw):
    """A frame whose channels hold each pixel's own x and y: after to_model_input, the model
    input pixel (u, v) holds the frame coordinate that resize_map sends to (u, v)."""
    cfg = load_config(preset)
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = torch.from_numpy(np.stack([xs, ys, np.zeros_like(xs)], -1))
    x = to_model_input(frame, cfg, policy)[0]
    std = torch.tensor(cfg.std).view(3, 1, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    values = (x * std + mean).numpy()
    mh, mw = model_input_size(policy, cfg, h, w)
    assert values.shape[1:] == (mh, mw)
    mx, my = resize_map(w, mw), resize_map(h, mh)
    us = (np.arange(mw) - mx.offset) / mx.scale          # the frame x that lands on column u
    vs = (np.arange(mh) - my.offset) / my.scale
    inner = slice(3, -3)                                 # bilinear clamps at the borders
    assert np.allclose(values[0][inner, inner], np.broadcast_to(us[None, inner], values[0][inner, inner].shape),
                       atol=2e-3)
    assert np.allclose(values[1][inner, inner], np.broadcast_to(vs[inner, None], values[1][inner, inner].shape),
                       atol=2e-3)
