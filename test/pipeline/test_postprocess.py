"""postprocess: labels, confidence, colours, overlay and coverage against plain numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tv3s_ros import postprocess
from tv3s_ros.model.palette import default_palette, make_palette
from tv3s_ros.outputs import OUTPUT_NAMES, label_dtype
from tv3s_ros.postprocess import Postprocessor

ALL = set(OUTPUT_NAMES)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: intra-op threads only cost time (spinning) on shared CI cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(b=2, k=5, h=7, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * 3
    images = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    return logits, images


def _softmax_np(logits):
    x = logits.double().numpy()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_labels_confidence_color_overlay_match_numpy():
    logits, images = _batch()
    pp = Postprocessor(5, palette=None, overlay_alpha=0.3)
    results = pp(logits, images, [ALL, ALL])
    prob = _softmax_np(logits)
    for i, res in enumerate(results):
        labels = prob[i].argmax(axis=0)
        assert res.labels.dtype == np.uint8 and res.labels.shape == (7, 9)
        np.testing.assert_array_equal(res.labels, labels)
        conf = np.floor(prob[i].max(axis=0) * 255 + 0.5)
        assert res.confidence.dtype == np.uint8
        assert np.abs(res.confidence.astype(int) - conf).max() <= 1
        np.testing.assert_array_equal(res.color, pp.palette[labels])
        expected = np.floor(0.7 * images[i].numpy() + 0.3 * pp.palette[labels].astype(float) + 0.5)
        assert res.overlay.dtype == np.uint8
        assert np.abs(res.overlay.astype(int) - expected).max() <= 1
        assert (res.height, res.width) == (7, 9)


def test_coverage_matches_numpy_and_sums_to_one():
    logits, _ = _batch(b=3, k=6, h=16, w=12, seed=3)
    logits[1, 4] += 100  # frame 1 is all class 4
    results = Postprocessor(6)(logits, None, [{"coverage"}] * 3)
    prob = _softmax_np(logits)
    for i, res in enumerate(results):
        labels = prob[i].argmax(axis=0)
        ids, counts = np.unique(labels, return_counts=True)
        np.testing.assert_array_equal(res.class_ids, ids)
        assert res.class_ids.dtype == np.uint16 and res.pixel_count.dtype == np.uint32
        np.testing.assert_array_equal(res.pixel_count, counts)
        assert res.fraction.dtype == np.float32
        np.testing.assert_allclose(res.fraction, counts / labels.size, rtol=1e-6)
        assert abs(float(res.fraction.sum()) - 1.0) < 1e-6
        maxp = prob[i].max(axis=0)
        np.testing.assert_allclose(res.mean_confidence, [maxp[labels == c].mean() for c in ids], rtol=1e-5)
        assert res.labels is None and res.color is None and res.confidence is None
    np.testing.assert_array_equal(results[1].class_ids, [4])
    np.testing.assert_array_equal(results[1].fraction, [1.0])


def test_ties_take_the_first_class():
    logits = torch.zeros(1, 4, 2, 3)
    res = Postprocessor(4)(logits, None, [{"labels", "confidence", "coverage"}])[0]
    assert (res.labels == 0).all()
    assert (res.confidence == round(255 / 4)).all()
    np.testing.assert_allclose(res.mean_confidence, [0.25])


def test_many_classes_give_uint16_labels():
    k = 300
    logits = torch.randn(2, k, 4, 5)
    logits[0, 299] += 50                      # ids above 255 must survive
    logits[1, 256, :2] += 50
    results = Postprocessor(k)(logits, None, [{"labels", "coverage", "color"}] * 2)
    assert label_dtype(k) == np.uint16 and label_dtype(255) == np.uint8
    assert results[0].labels.dtype == np.uint16
    assert (results[0].labels == 299).all()
    np.testing.assert_array_equal(results[1].labels, logits[1].argmax(0).numpy())
    assert 256 in results[1].class_ids.tolist()
    assert results[0].color.shape == (4, 5, 3)


def test_only_requested_outputs_are_computed(monkeypatch):
    calls = []
    for name in ("blend", "colorize", "quantize_confidence", "class_histogram"):
        real = getattr(postprocess, name)
        monkeypatch.setattr(postprocess, name,
                            lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    real_lc = postprocess.labels_and_confidence
    monkeypatch.setattr(postprocess, "labels_and_confidence",
                        lambda logits, with_confidence=True: (calls.append(("conf", with_confidence)),
                                                              real_lc(logits, with_confidence))[1])
    logits, images = _batch()
    pp = Postprocessor(5)
    res = pp(logits, images, [{"labels"}, {"labels"}])
    assert calls == [("conf", False)]
    assert all(r.color is None and r.overlay is None and r.confidence is None and r.class_ids is None
               for r in res)
    calls.clear()
    res = pp(logits, images, [{"overlay"}, {"coverage"}])
    assert sorted(map(str, calls)) == sorted(map(str, [("conf", True), "colorize", "blend", "class_histogram"]))
    # Per-frame selection: frame 0 gets only its overlay, frame 1 only its coverage.
    assert res[0].overlay is not None and res[0].class_ids is None and res[0].labels is None
    assert res[1].overlay is None and res[1].class_ids is not None
    calls.clear()
    assert pp(logits, images, [set(), set()])[0].labels is None
    assert calls == []


def test_overlay_resizes_image_to_label_size():
    logits = torch.zeros(1, 3, 4, 6)
    logits[0, 2] = 1.0                                   # everything class 2
    image = torch.full((1, 8, 12, 3), 200, dtype=torch.uint8)
    pp = Postprocessor(3, palette=[[0, 0, 0], [0, 0, 0], [100, 0, 50]], overlay_alpha=0.5)
    res = pp(logits, image, [{"overlay"}])[0]
    assert res.overlay.shape == (4, 6, 3)
    assert (res.overlay == np.array([150, 100, 125], np.uint8)).all()


def test_overlay_alpha_extremes():
    logits, images = _batch()
    pp0 = Postprocessor(5, overlay_alpha=0.0)
    pp1 = Postprocessor(5, overlay_alpha=1.0)
    np.testing.assert_array_equal(pp0(logits, images, [{"overlay"}] * 2)[0].overlay, images[0].numpy())
    r1 = pp1(logits, images, [{"overlay", "color"}] * 2)[1]
    np.testing.assert_array_equal(r1.overlay, r1.color)
    with pytest.raises(ValueError, match="overlay_alpha"):
        Postprocessor(5, overlay_alpha=1.5)
    with pytest.raises(ValueError, match="without input images"):
        pp0(logits, None, [{"overlay"}] * 2)


def test_palettes():
    pal = default_palette(19)
    assert pal.shape == (19, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal, default_palette(19))               # deterministic
    assert len({tuple(c) for c in pal.tolist()}) == 19                    # distinct colours
    np.testing.assert_array_equal(make_palette(None, 19), pal)
    short = make_palette([[1, 2, 3], [4, 5, 6]], 4)
    np.testing.assert_array_equal(short[:2], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(short[2:], default_palette(4)[2:])
    np.testing.assert_array_equal(make_palette([[9, 9, 9]] * 5, 3), [[9, 9, 9]] * 3)
    with pytest.raises(ValueError, match="triplets"):
        make_palette([[1, 2]], 3)
    with pytest.raises(ValueError, match="0..255"):
        make_palette([[1, 2, 256]], 3)
    with pytest.raises(ValueError, match="num_classes"):
        make_palette(None, 0)


def test_bad_requests():
    logits, images = _batch()
    pp = Postprocessor(5)
    with pytest.raises(ValueError, match="unknown output"):
        pp(logits, images, [{"segments"}, set()])
    with pytest.raises(ValueError, match="2 output sets for a batch of 1"):
        pp(logits[:1], images[:1], [set(), set()])
    with pytest.raises(ValueError, match="logits have 5 classes, postprocessor expects 4"):
        Postprocessor(4)(logits, images, [set(), set()])


def test_half_precision_logits():
    logits, images = _batch()
    full = Postprocessor(5)(logits, images, [ALL] * 2)
    half = Postprocessor(5)(logits.half().float(), images, [ALL] * 2)
    from_half = Postprocessor(5)(logits.half(), images, [ALL] * 2)
    for a, b in zip(half, from_half):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.pixel_count, b.pixel_count)
    assert full[0].labels.shape == half[0].labels.shape


@pytest.mark.gpu
def test_cuda_matches_cpu():
    logits, images = _batch(b=3, k=300, h=33, w=17)
    cpu = Postprocessor(300, overlay_alpha=0.4)(logits, images, [ALL] * 3)
    gpu = Postprocessor(300, overlay_alpha=0.4, device="cuda")(logits.cuda(), images.cuda(), [ALL] * 3)
    for a, b in zip(cpu, gpu):
        for name in ("labels", "color", "class_ids", "pixel_count"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert np.abs(a.overlay.astype(int) - b.overlay.astype(int)).max() <= 1
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1
        np.testing.assert_allclose(a.mean_confidence, b.mean_confidence, rtol=1e-5)
        assert isinstance(b.labels, np.ndarray) and b.labels.dtype == np.uint16


def test_device_part_and_host_part_compose_to_call():
    logits, images = _batch(b=3, k=6, h=8, w=10, seed=4)
    pp = Postprocessor(6, overlay_alpha=0.25)
    wanted = [{"labels", "overlay"}, set(), {"coverage", "confidence", "labels"}]
    direct = pp(logits, images, wanted)
    device_out = pp.device_outputs(logits, images, ALL)
    assert set(device_out) == {"labels", "color", "overlay", "confidence", "counts", "conf_sum"}
    assert device_out["labels"].shape == (3, 8, 10) and device_out["counts"].shape == (3, 6)
    split = pp.to_results(device_out, wanted, 8, 10)
    coverage = ("class_ids", "pixel_count", "fraction", "mean_confidence")
    for a, b, want in zip(direct, split, wanted):
        for name in ("labels", "color", "overlay", "confidence") + coverage:
            x, y = getattr(a, name), getattr(b, name)
            requested = ("coverage" if name in coverage else name) in want
            assert (x is not None) == (y is not None) == requested, name
            if requested:
                np.testing.assert_array_equal(x, y)
    assert pp.device_outputs(logits, images, set()) == {}


def test_to_results_needs_the_wanted_device_outputs():
    logits, images = _batch()
    pp = Postprocessor(5)
    labels_only = pp.device_outputs(logits, images, {"labels"})
    assert set(labels_only) == {"labels"}
    with pytest.raises(ValueError, match="lack"):
        pp.to_results(labels_only, [{"labels"}, {"coverage"}], 7, 9)
    with pytest.raises(ValueError, match="unknown output"):
        pp.to_results(labels_only, [{"labels"}, {"segments"}], 7, 9)
    with pytest.raises(ValueError, match="without input images"):
        pp.device_outputs(logits, None, {"overlay"})
    res = pp.to_results(labels_only, [set(), {"labels"}], 7, 9)
    assert res[0].labels is None and res[1].labels.shape == (7, 9)


@pytest.mark.gpu
def test_cuda_partial_transfers():
    logits, images = _batch(b=3, k=5, h=33, w=17)
    pp_cpu, pp_gpu = Postprocessor(5), Postprocessor(5, device="cuda")
    wanted = [{"labels"}, {"overlay", "coverage"}, set()]
    for a, b in zip(pp_cpu(logits, images, wanted), pp_gpu(logits.cuda(), images.cuda(), wanted)):
        for name in ("labels", "class_ids", "pixel_count"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        assert (a.overlay is None) == (b.overlay is None)


def test_overlay_alpha_can_change_between_frames():
    logits, images = _batch()
    pp = Postprocessor(5, overlay_alpha=0.2)
    pp.overlay_alpha = 1.0
    assert pp.overlay_alpha == 1.0
    res = pp(logits, images, [{"overlay", "color"}] * 2)
    np.testing.assert_array_equal(res[0].overlay, res[0].color)
    with pytest.raises(ValueError, match="overlay_alpha"):
        pp.overlay_alpha = -0.1
    assert pp.overlay_alpha == 1.0
