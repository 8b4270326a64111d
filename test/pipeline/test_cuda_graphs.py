"""CudaGraphStreamer / StreamerPool: the static-buffer streaming step equals plain forward_stream.

On CPU the step runs eagerly on the static buffers (capture off), which exercises all of the
bookkeeping: state sizing before the first frame, in-place updates at fixed addresses,
per-row resets, re-capture on a new size or new outputs, cameras moving between rows.
The ``gpu`` tests compare the captured graph with the eager step on a real GPU.
"""
from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny import tiny_overrides

from tv3s_ros.engine.cuda_graphs import (
    CudaGraphStreamer,
    StaticPreprocess,
    StreamerPool,
    load_state_row,
    state_row_view,
)
from tv3s_ros.model import build_model
from tv3s_ros.outputs import OUTPUT_NAMES
from tv3s_ros.postprocess import Postprocessor
from tv3s_ros.preprocess import logits_to_size, to_model_input

TINY = tiny_overrides(backbone="mit_b0", num_classes=5)
PRESET = "tv3s_b1_cityscapes"
POLICY = "keep_aspect:64"          # 48x64 -> 64x96, 40x120 -> 64x192
ALL = frozenset(OUTPUT_NAMES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(PRESET, **TINY)


def _video(b, h, w, n, seed):
    """``n`` batches ``[b, h, w, 3]`` uint8 of moving random textures."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(b, h, w + 4 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, :, 4 * i:4 * i + w]) for i in range(n)]


def _buffers(state):
    return [t for layer in state.conv_tails + state.ssm_states for t in layer]


class Reference:
    """Plain forward_stream, one batch-1 state per row (the oracle)."""

    def __init__(self, model, rows, policy=POLICY, dtype=torch.float32):
        self.model, self.policy, self.dtype = model, policy, dtype
        self.states = [model.new_state(1) for _ in range(rows)]

    def reset(self, row):
        self.states[row] = self.model.new_state(1)

    def logits(self, images):
        out = []
        with torch.inference_mode():
            for row, image in enumerate(images):
                x = to_model_input(image[None], self.model.cfg, self.policy)
                with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
                    logits, _ = self.model.forward_stream(x, self.states[row])
                out.append(logits_to_size(logits, image.shape[:2]))
        return torch.cat(out)


# -- preprocessing ------------------------------------------------------------------------

@pytest.mark.parametrize("policy,cfg_scale", [("official", (96, 64)), ("official", (100, 70)),
                                              ("40x56", None), ("keep_aspect:64", None)])
def test_static_preprocess_equals_to_model_input(model, policy, cfg_scale):
    cfg = model.cfg
    if cfg_scale is not None:   # a small official scale, with and without the size divisor
        cfg = SimpleNamespace(test_scale=cfg_scale, size_divisor=32 if cfg_scale == (100, 70) else None,
                              mean=model.cfg.mean, std=model.cfg.std)
    images = torch.from_numpy(_video(2, 45, 61, 1, seed=1)[0])
    pre = StaticPreprocess(cfg, policy, 45, 61, "cpu")
    expected = to_model_input(images, cfg, policy)
    got = pre(images)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert tuple(got.shape[-2:]) == pre.output_size
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="expected images"):
        pre(images[:, :40])


# -- the eager (capture off) step -----------------------------------------------------------

def test_eager_step_equals_forward_stream_and_updates_state_in_place(model):
    streamer = CudaGraphStreamer(model, 2, 48, 64, input_size=POLICY, outputs=ALL, keep_logits=True)
    assert not streamer.capture and not streamer.graphed and streamer.captures == 1
    # The state is sized before the first frame, zero, at fixed addresses from then on.
    assert streamer.state.is_allocated and streamer.state.input_size == (64, 96)
    assert all(not t.any() for t in _buffers(streamer.state))
    assert streamer.state.frames_seen.tolist() == [0, 0]
    addresses = [t.data_ptr() for t in _buffers(streamer.state)]
    ref = Reference(model, 2)
    post = Postprocessor(5, model.cfg.palette)
    for t, images in enumerate(_video(2, 48, 64, 4, seed=2)):
        outs = streamer.step(images)
        expected = ref.logits(images)
        torch.testing.assert_close(outs["logits"], expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(outs["labels"].numpy(), expected.argmax(1).numpy())
        want = post.device_outputs(outs["logits"], torch.from_numpy(images), ALL)
        assert set(outs) == set(want) | {"logits"}
        for name, tensor in want.items():
            assert torch.equal(outs[name], tensor), name
        assert streamer.state.frames_seen.tolist() == [t + 1, t + 1]
    assert [t.data_ptr() for t in _buffers(streamer.state)] == addresses
    for row in range(2):
        for mine, theirs in zip(_buffers(streamer.state), _buffers(ref.states[row])):
            torch.testing.assert_close(mine[row], theirs[0], rtol=0, atol=1e-5)


def test_reset_one_row_in_place(model):
    streamer = CudaGraphStreamer(model, 2, 48, 64, input_size=POLICY, outputs={"labels"})
    addresses = [t.data_ptr() for t in _buffers(streamer.state)]
    ref = Reference(model, 2)
    for t, images in enumerate(_video(2, 48, 64, 5, seed=3)):
        if t == 3:
            streamer.reset(1)
            ref.reset(1)
            assert streamer.state.frames_seen.tolist() == [3, 0]
            assert all(not b[1].any() for b in _buffers(streamer.state))
            assert all(b[0].any() for b in streamer.state.ssm_states[0])
        labels = streamer.step(images)["labels"]
        np.testing.assert_array_equal(labels.numpy(), ref.logits(images).argmax(1).numpy())
    assert streamer.state.frames_seen.tolist() == [5, 2]
    assert [t.data_ptr() for t in _buffers(streamer.state)] == addresses
    streamer.reset()
    assert streamer.state.frames_seen.tolist() == [0, 0] and not any(b.any() for b in _buffers(streamer.state))
    streamer.reset(torch.tensor([False, True]))   # a bool mask works too


def test_new_size_recaptures_with_a_fresh_state_and_new_products_keep_it(model):
    streamer = CudaGraphStreamer(model, 1, 48, 64, input_size=POLICY, outputs={"labels"})
    frames = _video(1, 48, 64, 4, seed=4)
    ref = Reference(model, 1)
    for images in frames[:2]:
        streamer.step(images)
        ref.logits(images)
    assert streamer.set_size(1, 48, 64) is False and streamer.captures == 1

    # More outputs: re-capture, the carried state (and its addresses) stay.
    state, addresses = streamer.state, [t.data_ptr() for t in _buffers(streamer.state)]
    assert streamer.set_outputs({"labels", "coverage"}) is True and streamer.captures == 2
    assert streamer.set_outputs({"coverage", "labels"}) is False
    assert streamer.state is state and [t.data_ptr() for t in _buffers(state)] == addresses
    outs = streamer.step(frames[2])
    assert set(outs) == {"labels", "counts", "conf_sum"}
    np.testing.assert_array_equal(outs["labels"].numpy(), ref.logits(frames[2]).argmax(1).numpy())
    assert int(outs["counts"].sum()) == 48 * 64

    # A new size: new input buffer, new zero state for the new grid, new capture.
    old_grid = streamer.state.grid
    assert streamer.set_size(2, 40, 120) is True and streamer.captures == 3
    assert streamer.key == (2, 40, 120) and tuple(streamer.input.shape) == (2, 40, 120, 3)
    assert streamer.model_input_size == (64, 192) and streamer.state.grid != old_grid
    assert streamer.state.frames_seen.tolist() == [0, 0]
    wide = _video(2, 40, 120, 2, seed=5)
    ref = Reference(model, 2)
    for images in wide:
        np.testing.assert_array_equal(streamer.step(images)["labels"].numpy(),
                                      ref.logits(images).argmax(1).numpy())


def test_model_output_resolution_and_no_outputs(model):
    streamer = CudaGraphStreamer(model, 1, 40, 120, input_size=POLICY, output_resolution="model",
                               outputs={"labels", "overlay"})
    outs = streamer.step(_video(1, 40, 120, 1, seed=6)[0])
    assert outs["labels"].shape == (1, 64, 192) and outs["overlay"].shape == (1, 64, 192, 3)
    quiet = CudaGraphStreamer(model, 1, 40, 120, input_size=POLICY)
    assert quiet.step(_video(1, 40, 120, 1, seed=6)[0]) == {}
    assert quiet.state.frames_seen.tolist() == [1]     # the state advanced anyway


def test_bf16_on_cpu_keeps_the_ssm_state_fp32(model):
    streamer = CudaGraphStreamer(model, 1, 48, 64, torch.bfloat16, input_size=POLICY, outputs={"labels"},
                               keep_logits=True)
    ref = Reference(model, 1, dtype=torch.bfloat16)
    for images in _video(1, 48, 64, 2, seed=7):
        outs = streamer.step(images)
        assert torch.equal(outs["labels"].long(), ref.logits(images).argmax(1))
    assert all(t.dtype == torch.float32 for layer in streamer.state.ssm_states for t in layer)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="CUDA graph capture needs a CUDA device"):
        CudaGraphStreamer(model, 1, 48, 64, input_size=POLICY, capture=True)
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        CudaGraphStreamer(model, 1, 48, 64, torch.float16, input_size=POLICY)
    with pytest.raises(ValueError, match="unknown output"):
        CudaGraphStreamer(model, 1, 48, 64, input_size=POLICY, outputs={"segments"})
    with pytest.raises(ValueError, match="batch and size must be positive"):
        CudaGraphStreamer(model, 0, 48, 64, input_size=POLICY)
    streamer = CudaGraphStreamer(model, 1, 48, 64, input_size=POLICY)
    with pytest.raises(ValueError, match="expected uint8 images"):
        streamer.step(np.zeros((1, 48, 65, 3), np.uint8))


@pytest.mark.parametrize("policy", ["official", POLICY])
def test_step_body_is_capturable(model, policy):
    """What a CUDA graph cannot hold, checked on CPU: host syncs (``.item()``, ``bool(t)``,
    ``nonzero``...), tensors built from Python data, copies to another device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    forbidden = ("_local_scalar_dense", "lift_fresh", "nonzero", "masked_select", "unique", "item",
                 "to.device", "_pin_memory")
    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            moves = (kwargs or {}).get("device") is not None and "zeros" not in name and "arange" not in name \
                and "ones" not in name and "empty" not in name
            if moves or any(word in name for word in forbidden):
                seen.append(name)
            return func(*args, **(kwargs or {}))

    if policy == "official":   # a small official scale (VSPW-like: two resize steps), same weights
        model = copy.copy(model)
        model.cfg = dataclasses.replace(model.cfg, test_scale=(100, 70), size_divisor=32)
    streamer = CudaGraphStreamer(model, 2, 48, 64, input_size=policy, outputs=ALL, keep_logits=True)
    assert policy != "official" or len(streamer._pre.steps) == 2
    with torch.inference_mode(), Recorder():
        streamer._body(streamer.state)
    assert seen == []


class _FakeGraph:
    """CPU stand-in for a CUDA graph with the same observable semantics: capture records the
    step without running it (no state change), replay runs the kernels into the captured
    output tensors and runs no Python (no frames_seen bookkeeping)."""

    capturing = []

    def __init__(self):
        self.streamer = self.outputs = None
        self.replays = 0

    def replay(self):
        state = self.streamer.state
        seen = state.frames_seen.clone()
        fresh = _FakeGraph.real_body(self.streamer, state)
        state.frames_seen.copy_(seen)
        for name, tensor in self.outputs.items():
            tensor.copy_(fresh[name])
        self.replays += 1


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    import contextlib

    real_body = CudaGraphStreamer._body
    _FakeGraph.real_body = real_body

    @contextlib.contextmanager
    def graph(g, capture_error_mode="global"):
        assert capture_error_mode == "thread_local"
        _FakeGraph.capturing.append(g)
        try:
            yield
        finally:
            _FakeGraph.capturing.pop()

    def body(self, state):
        if not _FakeGraph.capturing:
            return real_body(self, state)
        saved = [t.clone() for t in _buffers(state)]
        out = real_body(self, state)
        for t, old in zip(_buffers(state), saved):   # capturing runs no kernel
            t.copy_(old)
        g = _FakeGraph.capturing[-1]
        g.streamer, g.outputs = self, out
        return out

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(CudaGraphStreamer, "_body", body)

    def make(*args, **kw):
        streamer = CudaGraphStreamer(*args, capture=False, **kw)
        streamer.capture = True           # as on CUDA: rebuild with a capture
        streamer._release()
        streamer._build()
        assert streamer.graphed
        return streamer

    return make


def test_capture_mode_bookkeeping_with_a_fake_graph(model, fake_cuda_graphs):
    kw = dict(input_size=POLICY, keep_logits=True)
    graphed = fake_cuda_graphs(model, 2, 48, 64, outputs={"labels"}, **kw)
    eager = CudaGraphStreamer(model, 2, 48, 64, outputs={"labels"}, **kw)
    # Warm-up and capture left the live state untouched.
    assert graphed.state.frames_seen.tolist() == [0, 0] and not any(t.any() for t in _buffers(graphed.state))
    outputs = graphed.last_step
    for t, images in enumerate(_video(2, 48, 64, 5, seed=24)):
        if t == 2:
            graphed.reset(1)
            eager.reset(1)
        if t == 3:   # re-capture with the live state kept
            graphed.set_outputs({"labels", "coverage"})
            eager.set_outputs({"labels", "coverage"})
            outputs = graphed.last_step
        a, b = graphed.step(images), eager.step(images)
        assert a is outputs                       # graph-owned tensors, overwritten in place
        for name in b:
            assert torch.equal(a[name], b[name]), (name, t)
        assert graphed.state.frames_seen.tolist() == eager.state.frames_seen.tolist()
    assert graphed.state.frames_seen.tolist() == [5, 3]
    assert graphed._graph.replays == 2 and graphed.captures == 3
    for x, y in zip(_buffers(graphed.state), _buffers(eager.state)):
        assert torch.equal(x, y)


def test_overlay_alpha_changes_reach_a_captured_graph(model, fake_cuda_graphs):
    kw = dict(input_size=POLICY, outputs={"overlay", "labels"})
    graphed = fake_cuda_graphs(model, 1, 48, 64, **kw)
    eager = CudaGraphStreamer(model, 1, 48, 64, **kw)
    for t, images in enumerate(_video(1, 48, 64, 3, seed=26)):
        alpha = (0.5, 0.9, 0.0)[t]
        graphed.postprocessor.overlay_alpha = eager.postprocessor.overlay_alpha = alpha
        a, b = graphed.step(images)["overlay"], eager.step(images)["overlay"]
        assert torch.equal(a, b)
    assert torch.equal(a, torch.from_numpy(images))      # alpha 0: the camera image itself


def test_engine_capture_mode_with_a_fake_graph(model, fake_cuda_graphs, monkeypatch):
    from tv3s_ros.engine import Engine, FrameInput

    monkeypatch.setattr(Engine, "_make_streamer", lambda self, b, h, w, outputs: fake_cuda_graphs(
        self.model, b, h, w, input_size=self.input_policy, postprocessor=self.postprocessor, outputs=outputs))
    graphed = Engine(model, device="cpu", input_size=POLICY, graphs="no_capture")
    eager = Engine(model, device="cpu", input_size=POLICY, graphs="off")
    videos = {n: _video(1, 48, 64, 5, seed=25 + k) for k, n in enumerate("ab")}
    for t in range(5):
        cams = "ab" if t != 2 else "b"
        frames = [FrameInput(c, videos[c][t][0], t * 100_000_000) for c in cams]
        for g, e in zip(graphed.process(frames, {"labels", "coverage"}), eager.process(frames, {"labels", "coverage"})):
            np.testing.assert_array_equal(g.labels, e.labels)
            np.testing.assert_array_equal(g.pixel_count, e.pixel_count)
    assert all(s.graphed for s in graphed._pool.streamers.values())
    assert graphed.state("a").frames_seen.tolist() == [4] and graphed.state("b").frames_seen.tolist() == [5]


# -- rows of a static state ----------------------------------------------------------------

def test_row_views_and_loading_rows(model):
    streamer = CudaGraphStreamer(model, 3, 48, 64, input_size=POLICY)
    for images in _video(3, 48, 64, 2, seed=8):
        streamer.step(images)
    state = streamer.state
    view = state_row_view(state, 1)
    assert view.batch_size == 1 and view.grid == state.grid
    snapshot = view.clone()
    # A view shares memory: a reset through it zeroes the row of the static state.
    with torch.inference_mode():   # the buffers are inference tensors, as in the engine
        view.reset()
    assert state.frames_seen.tolist() == [2, 0, 2]
    assert all(not t[1].any() for t in _buffers(state)) and all(t[0].any() for t in state.ssm_states[0])
    # Loading a standalone state back restores the row exactly; a fresh one zeroes it.
    load_state_row(state, 1, snapshot)
    assert state.frames_seen.tolist() == [2, 2, 2]
    assert all(torch.equal(a[1], b[0]) for a, b in zip(_buffers(state), _buffers(snapshot)))
    load_state_row(state, 2, model.new_state(1))
    assert state.frames_seen.tolist() == [2, 2, 0] and all(not t[2].any() for t in _buffers(state))
    # A stream with history from another input size cannot join.
    other = CudaGraphStreamer(model, 1, 40, 120, input_size=POLICY)
    other.step(_video(1, 40, 120, 1, seed=9)[0])
    with pytest.raises(ValueError, match="cannot join"):
        load_state_row(state, 0, other.row_state(0))
    with pytest.raises(IndexError):
        state_row_view(state, 3)


def test_pool_keeps_streams_in_their_rows_and_moves_them_when_the_batch_changes(model):
    made = []

    def make(batch, height, width, outputs):
        made.append((batch, height, width))
        return CudaGraphStreamer(model, batch, height, width, input_size=POLICY, outputs=outputs)

    pool = StreamerPool(make, max_streamers=2)
    states = {}
    refs = {name: Reference(model, 1) for name in "abc"}
    video = {name: _video(1, 48, 64, 6, seed=10 + k) for k, name in enumerate("abc")}
    schedule = ["ab", "ab", "ba", "abc", "c", "ab", "ca"]
    copies = []
    for t, names in enumerate(schedule):
        t_frame = min(t, 5)
        streamer, rows = pool.acquire(list(names), states, 48, 64, {"labels"})
        assert sorted(rows) == list(range(len(names)))
        for name, row in zip(names, rows):
            streamer.input[row].copy_(torch.from_numpy(video[name][t_frame][0]))
            assert states[name].ssm_states[0][0].data_ptr() == streamer.state.ssm_states[0][0][row].data_ptr()
        labels = streamer.step()["labels"]
        for name, row in zip(names, rows):
            expected = refs[name].logits(video[name][t_frame]).argmax(1)[0]
            np.testing.assert_array_equal(labels[row].numpy(), expected.numpy(), err_msg=f"{name} at {t}")
        copies.append(pool.copies_in)
    # Steps 1 and 2 reuse the rows of step 0 (no copy even though "ba" is listed the other way).
    assert copies[0] == 2 and copies[1] == 2 and copies[2] == 2
    # At most 2 streamers live: (3,..) evicted (1,..) ... made again on demand.
    assert made == [(2, 48, 64), (3, 48, 64), (1, 48, 64), (2, 48, 64)]
    assert len(pool.streamers) == 2
    # A stream whose state the caller replaced is no longer at home: it gets loaded afresh.
    states["a"] = model.new_state(1)
    before = pool.copies_in
    streamer, rows = pool.acquire(["c", "a"], states, 48, 64, {"labels"})
    assert pool.copies_in == before + 1
    assert streamer.state.frames_seen[rows[1]] == 0
    c_view = states["c"]
    pool.clear(states)              # streams in rows get standalone copies
    assert not pool.streamers and states["c"] is not c_view
    assert states["c"].frames_seen.tolist() == [3] and states["c"].ssm_states[0][0]._base is None
    assert torch.equal(states["c"].ssm_states[0][0], c_view.ssm_states[0][0])
    pool.forget("a")
    with pytest.raises(ValueError, match="each stream once"):
        pool.acquire(["a", "a"], states, 48, 64)


# -- GPU: the captured graph ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_model(model):
    return copy.deepcopy(model).to("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_equals_eager_exactly(cuda_model, dtype):
    kw = dict(input_size=POLICY, outputs=ALL, keep_logits=True)
    graphed = CudaGraphStreamer(cuda_model, 2, 48, 64, dtype, capture=True, **kw)
    eager = CudaGraphStreamer(cuda_model, 2, 48, 64, dtype, capture=False, **kw)
    assert graphed.graphed and not eager.graphed       # captured before the first frame
    for t, images in enumerate(_video(2, 48, 64, 6, seed=20)):
        if t == 3:
            graphed.reset(0)
            eager.reset(0)
        batch = torch.from_numpy(images).cuda()
        a, b = graphed.step(batch), eager.step(batch)
        assert set(a) == set(b)
        for name in a:
            if name == "conf_sum":   # float64 atomics: summation order may differ
                torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-9)
            else:
                assert torch.equal(a[name], b[name]), (name, t)
        assert graphed.state.frames_seen.tolist() == eager.state.frames_seen.tolist()
    for x, y in zip(_buffers(graphed.state), _buffers(eager.state)):
        assert torch.equal(x, y)
    assert all(t.dtype == torch.float32 for layer in graphed.state.ssm_states for t in layer)


@pytest.mark.gpu
def test_graph_bf16_close_to_fp32(cuda_model):
    fp32 = CudaGraphStreamer(cuda_model, 1, 96, 160, torch.float32, input_size="keep_aspect:96",
                           outputs={"labels"})
    bf16 = CudaGraphStreamer(cuda_model, 1, 96, 160, torch.bfloat16, input_size="keep_aspect:96",
                           outputs={"labels"})
    agree = []
    for images in _video(1, 96, 160, 4, seed=21):
        batch = torch.from_numpy(images).cuda()
        agree.append((fp32.step(batch)["labels"] == bf16.step(batch)["labels"]).float().mean().item())
    # Random weights give small logit margins; CPU bf16 (a proxy) agrees on 99.2-99.7% per frame.
    assert np.mean(agree) > 0.99 and min(agree) > 0.98


@pytest.mark.gpu
def test_graph_set_size_and_outputs_on_gpu(cuda_model):
    streamer = CudaGraphStreamer(cuda_model, 1, 48, 64, input_size=POLICY, outputs={"labels"}, capture=True)
    eager = CudaGraphStreamer(cuda_model, 1, 48, 64, input_size=POLICY, outputs={"labels"}, capture=False)
    frames = [torch.from_numpy(f).cuda() for f in _video(1, 48, 64, 3, seed=22)]
    for f in frames[:2]:
        streamer.step(f)
        eager.step(f)
    streamer.set_outputs({"labels", "coverage"})
    eager.set_outputs({"labels", "coverage"})
    assert streamer.graphed and streamer.captures == 2
    a, b = streamer.step(frames[2]), eager.step(frames[2])
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["counts"], b["counts"])
    streamer.set_size(2, 40, 120)
    out = streamer.step(torch.from_numpy(_video(2, 40, 120, 1, seed=23)[0]).cuda())
    assert out["labels"].shape == (2, 40, 120) and streamer.graphed
