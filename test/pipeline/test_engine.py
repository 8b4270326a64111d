"""Engine: equals offline forward_stream with the same resets, batching, outputs, settings."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from tiny import tiny_overrides

from tv3s_ros.engine import Engine, EngineSettings, FrameInput
from tv3s_ros.model import build_model, save_checkpoint
from tv3s_ros.preprocess import logits_to_size, to_model_input
from tv3s_ros.streams import ResetPolicy

TINY = tiny_overrides(backbone="mit_b0", num_classes=5)
PRESET = "tv3s_b1_cityscapes"
POLICY = "keep_aspect:64"   # small model inputs: 48x64 and 60x80 -> 64x96, 40x120 -> 64x192
MS = 1_000_000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's ops are far too small for intra-op threads; on shared CI cores the
    # thread pool's spinning makes them ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return build_model(PRESET, **TINY)


def _engine(model, **kw):
    kw.setdefault("input_size", POLICY)
    kw.setdefault("reset_policy", ResetPolicy(max_gap_s=1.0))
    return Engine(model, device="cpu", **kw)


def _video(h, w, n, seed):
    """A moving random texture: consecutive frames are related, as in a video."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w + 4 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, 4 * i:4 * i + w]) for i in range(n)]


class Offline:
    """Reference: the model's own forward_stream per camera, resets applied by hand."""

    def __init__(self, model, policy=POLICY, resolution="input"):
        self.model, self.policy, self.resolution = model, policy, resolution
        self.states = {}

    def labels(self, camera, image, reset=False):
        if reset or camera not in self.states:
            self.states[camera] = self.model.new_state(1)
        x = to_model_input(image[None], self.model.cfg, self.policy)
        with torch.inference_mode():
            logits, self.states[camera] = self.model.forward_stream(x, self.states[camera])
        if self.resolution == "input":
            logits = logits_to_size(logits, image.shape[:2])
        return logits.argmax(1)[0].numpy()


def test_two_cameras_of_different_sizes_equal_offline_with_resets(model):
    engine = _engine(model)
    offline = Offline(model)
    front, side = _video(48, 64, 6, seed=1), _video(40, 120, 6, seed=2)
    front_stamps = [0, 100, 200, -5000, -4900, -4800]       # a bag loop before frame 3
    side_stamps = [0, 100, 200, 300, 2000, 2100]            # a 1.7 s gap before frame 4
    expected_reasons = {"front": ["first_frame", "", "", "time_backwards", "", ""],
                        "side": ["first_frame", "", "", "", "gap", ""]}
    for t in range(6):
        frames = [FrameInput("front", front[t], front_stamps[t] * MS, "front_link"),
                  FrameInput("side", side[t], side_stamps[t] * MS, "side_link")]
        outs = engine.process(frames, {"labels", "coverage"})
        assert [o.camera for o in outs] == ["front", "side"]
        for o, img in zip(outs, (front[t], side[t])):
            assert o.reset_reason == expected_reasons[o.camera][t]
            ref = offline.labels(o.camera, img, reset=bool(o.reset_reason))
            assert o.labels.dtype == np.uint8 and o.labels.shape == img.shape[:2]
            np.testing.assert_array_equal(o.labels, ref)
            assert (o.height, o.width) == img.shape[:2] and o.num_classes == 5
    assert [o.frames_since_reset for o in outs] == [2, 1]
    stats = engine.stats()
    assert stats["front"].resets["time_backwards"] == 1 and stats["side"].resets["gap"] == 1
    assert stats["front"].processed == 6


def test_state_is_carried(model):
    # Sanity check of the test itself: with the state dropped, labels do change.
    engine = _engine(model)
    frames = _video(48, 64, 4, seed=3)
    carried = [engine.process([FrameInput("cam", f, i * 100 * MS)], {"labels"})[0].labels
               for i, f in enumerate(frames)]
    fresh = Offline(model).labels("cam", frames[3], reset=True)
    assert not np.array_equal(carried[3], fresh)


def test_batching_equal_sizes_matches_one_by_one(model, monkeypatch):
    cams = {"a": _video(48, 64, 4, 4), "b": _video(48, 64, 4, 5), "c": _video(60, 80, 4, 6)}
    batch_sizes = []
    real_forward = model.forward_stream
    monkeypatch.setattr(model, "forward_stream",
                        lambda x, s: (batch_sizes.append(x.shape[0]), real_forward(x, s))[1])
    batched, single = _engine(model), _engine(model)
    for t in range(4):
        frames = [FrameInput(c, v[t], t * 100 * MS) for c, v in cams.items()]
        together = batched.process(frames, {"labels", "confidence", "coverage"})
        alone = [single.process([f], {"labels", "confidence", "coverage"})[0] for f in frames]
        for x, y in zip(together, alone):
            assert x.camera == y.camera
            np.testing.assert_array_equal(x.labels, y.labels)
            assert np.abs(x.confidence.astype(int) - y.confidence.astype(int)).max() <= 1
            np.testing.assert_array_equal(x.pixel_count, y.pixel_count)
    # All three cameras share the 64x96 model input: one forward of 3, then 3 forwards of 1.
    assert batch_sizes == [3, 1, 1, 1] * 4


def test_coverage_is_consistent_with_labels(model):
    engine = _engine(model)
    frames = [FrameInput("a", _video(48, 64, 1, 7)[0], 0), FrameInput("b", _video(40, 120, 1, 8)[0], 0)]
    for o in engine.process(frames):
        ids, counts = np.unique(o.labels, return_counts=True)
        np.testing.assert_array_equal(o.class_ids, ids)
        np.testing.assert_array_equal(o.pixel_count, counts)
        assert abs(float(o.fraction.sum()) - 1.0) < 1e-6
        assert o.pixel_count.sum() == o.width * o.height
        assert ((o.mean_confidence > 1 / 5 - 1e-6) & (o.mean_confidence <= 1 + 1e-6)).all()
        assert o.color.shape == (o.height, o.width, 3) and o.overlay.shape == o.color.shape
        assert o.confidence.shape == (o.height, o.width)
        np.testing.assert_array_equal(o.color, engine.palette[o.labels])
        assert o.model_time_s > 0 and o.latency_s >= o.model_time_s * 0.5


def test_many_classes_give_mono16_labels():
    torch.manual_seed(1)
    big = build_model(PRESET, **dict(TINY, num_classes=300))
    engine = _engine(big)
    img = _video(48, 64, 1, 9)[0]
    out = engine.process([FrameInput("cam", img, 0)], {"labels", "coverage"})[0]
    assert out.labels.dtype == np.uint16 and out.num_classes == 300
    np.testing.assert_array_equal(out.labels, Offline(big).labels("cam", img))
    assert out.class_ids.dtype == np.uint16


def test_model_output_resolution(model):
    engine = _engine(model, output_resolution="model")
    offline = Offline(model, resolution="model")
    for t, img in enumerate(_video(40, 120, 2, 10)):
        out = engine.process([FrameInput("cam", img, t * MS)], {"labels", "overlay", "coverage"})[0]
        assert out.labels.shape == (64, 192) and (out.height, out.width) == (64, 192)
        assert out.overlay.shape == (64, 192, 3)
        np.testing.assert_array_equal(out.labels, offline.labels("cam", img))
        assert out.pixel_count.sum() == 64 * 192


def test_requested_reset_and_size_change_reset_only_that_camera(model):
    engine, offline = _engine(model), Offline(model)
    a, b = _video(48, 64, 5, 11), _video(48, 64, 5, 12)
    big_b = _video(60, 80, 5, 13)
    for t in range(5):
        if t == 2:
            assert engine.reset("a") == ["a"]
        b_img = big_b[t] if t >= 3 else b[t]
        outs = engine.process([FrameInput("a", a[t], t * 100 * MS), FrameInput("b", b_img, t * 100 * MS)],
                              {"labels"})
        reasons = [o.reset_reason for o in outs]
        assert reasons == {0: ["first_frame"] * 2, 2: ["service", ""], 3: ["", "size_changed"]}.get(t, ["", ""])
        for o, img in zip(outs, (a[t], b_img)):
            np.testing.assert_array_equal(o.labels, offline.labels(o.camera, img, reset=bool(o.reset_reason)))
    assert [o.frames_since_reset for o in outs] == [2, 1]


def test_several_frames_of_one_camera_in_one_call_run_in_order(model):
    frames = [FrameInput("cam", img, t * 100 * MS) for t, img in enumerate(_video(48, 64, 3, 14))]
    together = _engine(model).process(frames, {"labels"})
    one_by_one = _engine(model)
    for f, o in zip(frames, together):
        np.testing.assert_array_equal(o.labels, one_by_one.process([f], {"labels"})[0].labels)
    assert [o.frames_since_reset for o in together] == [0, 1, 2]


def test_outputs_selection_and_skipped_frames(model):
    engine = _engine(model)
    img = _video(48, 64, 1, 15)[0]
    engine.note_skipped("a", 0)
    outs = engine.process([FrameInput("a", img, 50 * MS), FrameInput("b", img, 0)],
                          {"a": ["coverage"], "b": "labels"})
    assert outs[0].labels is None and outs[0].class_ids is not None and outs[0].skipped_frames == 1
    assert outs[1].labels is not None and outs[1].class_ids is None and outs[1].skipped_frames == 0
    outs = engine.process([FrameInput("a", img, 100 * MS)], ())
    assert outs[0].labels is None and outs[0].frames_since_reset == 1   # state still advanced
    with pytest.raises(ValueError, match="unknown output"):
        engine.process([FrameInput("a", img, 200 * MS)], {"segments"})


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_bad_images_are_rejected_before_any_state_change(model, bad):
    engine = _engine(model)
    with pytest.raises(ValueError, match="camera 'x': image must be"):
        engine.process([FrameInput("ok", _video(48, 64, 1, 0)[0], 0), FrameInput("x", bad, 0)])
    assert engine.stats() == {}


def test_strided_and_tensor_images(model):
    img = _video(48, 64, 1, 16)[0]
    padded = np.zeros((48, 70, 4), np.uint8)
    padded[:, :64, :3] = img
    view = padded[:, :64, :3]                       # what image_codec returns for padded rgba8
    a = _engine(model).process([FrameInput("c", view, 0)], {"labels"})[0].labels
    b = _engine(model).process([FrameInput("c", torch.from_numpy(img), 0)], {"labels"})[0].labels
    np.testing.assert_array_equal(a, b)


# -- settings ---------------------------------------------------------------------------

def _settings(**kw):
    base = dict(model=PRESET, device="cpu", input_size=POLICY, model_overrides=TINY)
    base.update(kw)
    return Engine.from_settings(EngineSettings(**base))


def test_refuses_to_start_without_weights(tmp_path):
    with pytest.raises(ValueError, match="no weights given"):
        _settings()
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        _settings(weights=str(tmp_path / "missing.pth"))


def test_random_weights_warn_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="tv3s_ros.engine"):
        engine = _settings(allow_random_weights=True, max_gap_s=2.5, max_state_frames=4)
    assert "RANDOM WEIGHTS" in caplog.text and "MEANINGLESS" in caplog.text
    assert engine.random_weights and engine.weights is None
    assert engine.streams.policy == ResetPolicy(2.5, 4)
    assert engine.preset == PRESET and engine.device.type == "cpu"


def test_weights_are_loaded(model, tmp_path, caplog):
    path = tmp_path / "tiny.pth"
    save_checkpoint(model, path, meta={"class_names": ["a", "b", "c", "d", "e"],
                                       "palette": [[i, i, i] for i in range(5)]})
    torch.manual_seed(123)                          # from_settings builds other random weights first
    with caplog.at_level(logging.WARNING, logger="tv3s_ros.engine"):
        engine = _settings(weights=str(path))
    assert "RANDOM WEIGHTS" not in caplog.text and not engine.random_weights
    assert engine.class_names == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(engine.palette[:, 0], np.arange(5))
    img = _video(48, 64, 1, 17)[0]
    out = engine.process([FrameInput("cam", img, 0)], {"labels"})[0]
    np.testing.assert_array_equal(out.labels, Offline(model).labels("cam", img))


@pytest.mark.parametrize("kw,error,match", [
    (dict(precision="fp16"), ValueError, "fp16 is not supported on CPU"),
    (dict(precision="fp64"), ValueError, "precision must be one of"),
    (dict(device="tpu"), ValueError, "device must be"),
    (dict(output_resolution="native"), ValueError, "output_resolution"),
    (dict(input_size="huge"), ValueError, "invalid input size"),
    (dict(overlay_alpha=2.0), ValueError, "overlay_alpha"),
    (dict(max_state_frames=-1), ValueError, "max_state_frames"),
])
def test_bad_settings(kw, error, match):
    with pytest.raises(error, match=match):
        _settings(allow_random_weights=True, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        _settings(allow_random_weights=True, device="cuda")


def test_bf16_on_cpu_runs(model):
    engine = _engine(model, precision="bf16")
    outs = engine.process([FrameInput("cam", img, t * MS) for t, img in enumerate(_video(48, 64, 2, 18))],
                          {"labels", "coverage"})
    for o in outs:
        assert o.labels.max() < 5 and abs(float(o.fraction.sum()) - 1) < 1e-6
    # The carried SSM state stays fp32 whatever the compute precision.
    assert all(t.dtype == torch.float32 for layer in engine.state("cam").ssm_states for t in layer)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_matches_cpu(model, precision):
    import copy
    gpu_model = copy.deepcopy(model)
    gpu = Engine(gpu_model, device="cuda", precision=precision, input_size=POLICY)
    cpu = _engine(model)
    frames = [FrameInput(c, img, t * 100 * MS) for t in range(3)
              for c, img in (("a", _video(48, 64, 3, 19)[t]), ("b", _video(48, 64, 3, 20)[t]))]
    for f in frames:
        g = gpu.process([f])[0]
        c = cpu.process([f])[0]
        agree = (g.labels == c.labels).mean()
        assert agree > (0.99 if precision == "fp32" else 0.9)
        assert isinstance(g.labels, np.ndarray) and abs(float(g.fraction.sum()) - 1) < 1e-6
    assert all(t.dtype == torch.float32 for layer in gpu.state("a").ssm_states for t in layer)


# -- graph path (static buffers, cameras in rows; captured on CUDA, eager on CPU) -----------

def test_graph_path_equals_eager_path_on_a_random_schedule(model):
    """Random camera subsets, resets, gaps, a size change and a forget: same outputs."""
    rng = np.random.default_rng(30)
    graphed, eager = _engine(model, graphs="no_capture"), _engine(model, graphs="off")
    assert graphed.graphs == "no_capture" and eager.graphs == "off"
    videos = {"a": _video(48, 64, 12, 31), "b": _video(48, 64, 12, 32), "c": _video(48, 64, 12, 33),
              "d": _video(40, 120, 12, 34), "c_big": _video(60, 80, 12, 35)}
    stamps = {name: 0 for name in "abcd"}
    kinds = ["labels", "confidence", "coverage", "overlay", "color"]
    for t in range(12):
        names = [n for n in "abcd" if rng.random() < 0.7] or ["a"]
        rng.shuffle(names)
        if t == 5:
            for engine in (graphed, eager):
                engine.reset("b")
        if t == 8:
            for engine in (graphed, eager):
                engine.forget("a")
        frames = []
        for n in names:
            stamps[n] += 100 if rng.random() < 0.85 else 2000     # some gaps reset the state
            image = videos["c_big" if n == "c" and t >= 6 else n][t]   # c changes size at 6
            frames.append(FrameInput(n, image, stamps[n] * MS))
        wanted = {n: [k for k in kinds if rng.random() < 0.5] for n in names}
        for g, e in zip(graphed.process(frames, wanted), eager.process(frames, wanted)):
            assert (g.camera, g.reset_reason, g.frames_since_reset) == (e.camera, e.reset_reason,
                                                                      e.frames_since_reset)
            for name in ("labels", "color", "overlay", "class_ids", "pixel_count"):
                a, b = getattr(g, name), getattr(e, name)
                assert (a is None) == (b is None), (name, t)
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=f"{name} of {g.camera} at {t}")
            if g.confidence is not None:
                assert np.abs(g.confidence.astype(int) - e.confidence.astype(int)).max() <= 1
    for n in "abcd":
        assert graphed.state(n).frames_seen.tolist() == eager.state(n).frames_seen.tolist()


def test_graph_path_steady_state_moves_no_state(model):
    engine = _engine(model, graphs="no_capture")
    a, b = _video(48, 64, 6, 36), _video(48, 64, 6, 37)
    offline = Offline(model)
    for t in range(6):
        outs = engine.process([FrameInput("a", a[t], t * 100 * MS), FrameInput("b", b[t], t * 100 * MS)],
                              {"labels"})
        for o, img in zip(outs, (a[t], b[t])):
            np.testing.assert_array_equal(o.labels, offline.labels(o.camera, img))
        if t == 0:
            copies = engine._pool.copies_in
    assert engine._pool.copies_in == copies == 2      # each camera loaded into its row once
    (streamer,) = engine._pool.streamers.values()
    assert streamer.captures == 1 and streamer.outputs == {"labels"}
    # More outputs later: one re-capture with the union, the states stay in their rows.
    engine.process([FrameInput("a", a[0], 700 * MS), FrameInput("b", b[0], 700 * MS)], {"labels", "coverage"})
    engine.process([FrameInput("a", a[1], 800 * MS), FrameInput("b", b[1], 800 * MS)], {"labels"})
    assert streamer.captures == 2 and engine._pool.copies_in == 2
    assert engine.state("a").frames_seen.tolist() == [8]


def test_graphs_setting():
    with pytest.raises(ValueError, match="graphs=on needs a CUDA device"):
        _settings(allow_random_weights=True, graphs="on")
    with pytest.raises(ValueError, match="graphs must be one of"):
        _settings(allow_random_weights=True, graphs="sometimes")
    assert _settings(allow_random_weights=True).graphs == "off"            # auto on CPU
    assert _settings(allow_random_weights=True, graphs=False).graphs == "off"
    assert _settings(allow_random_weights=True, graphs="no_capture").graphs == "no_capture"
    with pytest.raises(ValueError, match="gpu_jpeg=true needs a CUDA device"):
        _settings(allow_random_weights=True, gpu_jpeg=True)


def test_decode_msg_without_gpu_jpeg(model):
    from types import SimpleNamespace

    import cv2

    from tv3s_ros.image_codec import decode_compressed

    engine = _engine(model)
    img = _video(48, 64, 1, 38)[0]
    ok, jpeg = cv2.imencode(".jpg", img[:, :, ::-1])
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
    decoded = engine.decode_msg(msg)
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, decode_compressed(msg.format, msg.data))
    raw = SimpleNamespace(encoding="rgb8", height=48, width=64, step=64 * 3, data=img.tobytes(), is_bigendian=0)
    np.testing.assert_array_equal(engine.decode_msg(raw), img)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_match_eager_cuda_and_cpu(model, precision, monkeypatch):
    import copy
    # cuDNN convolutions default to TF32 on Ampere+ (matmuls do not); fp32 here should mean fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    graphed = Engine(copy.deepcopy(model), device="cuda", precision=precision, input_size=POLICY,
                     graphs="on")
    eager = Engine(copy.deepcopy(model), device="cuda", precision=precision, input_size=POLICY,
                   graphs="off")
    cpu = _engine(model)
    agree = []
    for t in range(4):
        frames = [FrameInput("a", _video(48, 64, 4, 39)[t], t * 100 * MS),
                  FrameInput("b", _video(48, 64, 4, 40)[t], t * 100 * MS),
                  FrameInput("d", _video(40, 120, 4, 41)[t], t * 100 * MS)]
        for g, e, c in zip(graphed.process(frames), eager.process(frames), cpu.process(frames)):
            np.testing.assert_array_equal(g.labels, e.labels)        # graph == eager, same device
            np.testing.assert_array_equal(g.pixel_count, e.pixel_count)
            np.testing.assert_array_equal(g.overlay, e.overlay)
            agree.append((g.labels == c.labels).mean())
    assert graphed.graphs == "on" and all(s.graphed for s in graphed._pool.streamers.values())
    if precision == "fp32":
        assert min(agree) > 0.995
    else:   # random weights, small margins: CPU bf16 (a proxy) agrees on 99.1-99.7% per frame
        assert np.mean(agree) > 0.99 and min(agree) > 0.98
    assert all(t.dtype == torch.float32 for layer in graphed.state("a").ssm_states for t in layer)


@pytest.mark.gpu
def test_cuda_graph_engine_takes_gpu_tensors(model):
    import copy
    engine = Engine(copy.deepcopy(model), device="cuda", input_size=POLICY)
    img = _video(48, 64, 1, 42)[0]
    on_gpu = torch.from_numpy(img).cuda().permute(2, 0, 1).contiguous().permute(1, 2, 0)  # a strided view
    a = engine.process([FrameInput("gpu", on_gpu, 0)], {"labels"})[0].labels
    b = Engine(copy.deepcopy(model), device="cuda", input_size=POLICY).process(
        [FrameInput("host", img, 0)], {"labels"})[0].labels
    np.testing.assert_array_equal(a, b)


def test_graph_path_passes_the_precision(model):
    graphed = _engine(model, precision="bf16", graphs="no_capture")
    eager = _engine(model, precision="bf16")
    for t, img in enumerate(_video(48, 64, 3, 43)):
        g = graphed.process([FrameInput("cam", img, t * 100 * MS)], {"labels"})[0]
        e = eager.process([FrameInput("cam", img, t * 100 * MS)], {"labels"})[0]
        np.testing.assert_array_equal(g.labels, e.labels)
        assert g.model_time_s > 0
    (streamer,) = graphed._pool.streamers.values()
    assert streamer.dtype == torch.bfloat16 and not streamer.capture
    assert all(t.dtype == torch.float32 for layer in graphed.state("cam").ssm_states for t in layer)
