"""Exact streaming: forward_stream over frames 1..t == forward_clip(frames[:t]).

Random weights, random frames, fp32 on CPU. Small models (MiT-B0, embed_dim 32, 2 Mamba
layers) keep it fast; one case uses the real window 20 / shift 10.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_overrides

from tv3s_ros.model.config import ModelConfig
from tv3s_ros.model.state import StreamState
from tv3s_ros.model.tv3s import TV3S

TOL = 1e-4
SMALL = tiny_overrides(backbone="mit_b0", num_classes=5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The reference scan runs thousands of tiny ops; on a shared, busy CPU intra-op threads
    only add spin-wait overhead (10x slower here), so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0, **overrides) -> TV3S:
    torch.manual_seed(seed)
    model = TV3S(ModelConfig(**{**SMALL, **overrides}))
    with torch.no_grad():  # non-trivial BN statistics and Mamba skip terms
        bn = model.decode_head.linear_fuse.bn
        bn.running_mean.normal_(std=0.1)
        bn.running_var.uniform_(0.5, 1.5)
        for layer in model.decode_head.vs.layers:
            layer.mixer.D.normal_()
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# (overrides, input H, W, expected grid) — grids are never the raw half-c1 size, except by chance
CASES = {
    "w4s2_grid12x16": (dict(), 72, 104, (12, 16)),                 # c1 18x26 -> 9x13 -> 12x16
    "w4s2_half_is_window_plus_2": (dict(), 40, 48, (8, 8)),         # c1 10x12 -> 5x6 -> 8x8
    "w4s1_thin_1px_border_pieces": (dict(shift=1), 72, 56, (12, 8)),
    "w4s3_thin_asymmetric": (dict(shift=3), 40, 72, (8, 12)),
    "w4s2_single_window_row": (dict(), 32, 72, (4, 12)),            # only border pieces in the row
    "w20s10_real_window": (dict(window=20, shift=10), 64, 176, (20, 40)),
    "w4s2_expand_no_real_shift": (dict(real_shift=False), 40, 48, (12, 12)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stream_equals_clip_every_t(name):
    overrides, h, w, grid = CASES[name]
    model = _model(**overrides)
    batch = 1 if overrides.get("window") == 20 else 2
    torch.manual_seed(1)
    frames = torch.randn(batch, 6, 3, h, w)
    state = model.new_state(batch)
    assert not state.is_allocated
    sizes = []
    for t in range(6):
        logits, state = model.forward_stream(frames[:, t], state)
        clip = model.forward_clip(frames[:, :t + 1])
        assert logits.shape == (batch, 5, h, w)
        assert _rel(logits, clip) < TOL, (name, t)
        shapes = [[tuple(x.shape) for x in layer] for layer in state.ssm_states + state.conv_tails]
        sizes.append((state.nbytes(), shapes))
    assert state.grid == grid
    assert state.frames_seen.tolist() == [6] * batch
    assert all(s == sizes[0] for s in sizes), "state size must not grow with frames"
    # the temporal context matters: the last frame alone gives different logits
    assert _rel(model.forward_clip(frames[:, 5:6]), clip) > 1e-2


def test_batch_streams_reset_at_different_frames():
    model = _model(seed=3)
    torch.manual_seed(4)
    frames = torch.randn(2, 7, 3, 40, 56)
    resets = {0: {2, 5}, 1: {4}}          # frame index -> entry reset just before it
    start = [0, 0]
    state = model.new_state(2)
    for t in range(7):
        mask = torch.tensor([t in resets[0], t in resets[1]])
        state.reset(mask)
        for b in range(2):
            if mask[b]:
                start[b] = t
        logits, state = model.forward_stream(frames[:, t], state)
        assert state.frames_seen.tolist() == [t + 1 - start[0], t + 1 - start[1]]
        for b in range(2):
            clip = model.forward_clip(frames[b:b + 1, start[b]:t + 1])
            assert _rel(logits[b:b + 1], clip) < TOL, (t, b)
            if t > start[b]:  # without the reset the history would differ
                longer = model.forward_clip(frames[b:b + 1, 0 if start[b] else 1:t + 1])
                assert _rel(logits[b:b + 1], longer) > TOL


def _continue(model: TV3S, state: StreamState, frames: torch.Tensor):
    out = []
    for t in range(frames.shape[1]):
        logits, state = model.forward_stream(frames[:, t], state)
        out.append(logits)
    return torch.stack(out, 1)


def test_state_save_load_to_select_stack_round_trips():
    model = _model(seed=5)
    torch.manual_seed(6)
    frames = torch.randn(2, 5, 3, 40, 48)
    state = model.new_state(2)
    _continue(model, state, frames[:, :3])

    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    loaded = model.new_state(2)
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    assert state.to("cpu") is state
    moved = state.clone().to("cpu")
    copy = state.clone()
    swapped = StreamState.stack([state.select([1]), state.select([0])])
    assert loaded.frames_seen.tolist() == [3, 3] and loaded.grid == state.grid

    reference = _continue(model, state, frames[:, 3:])
    assert torch.equal(_continue(model, loaded, frames[:, 3:]), reference)
    assert torch.equal(_continue(model, moved, frames[:, 3:]), reference)
    assert torch.equal(_continue(model, copy, frames[:, 3:]), reference)
    out_swapped = _continue(model, swapped, frames[:, 3:].flip(0))
    assert _rel(out_swapped.flip(0), reference) < 1e-5
    # the whole stream still equals the clip
    assert _rel(reference[:, -1], model.forward_clip(frames)) < TOL


def test_stack_with_fresh_state_and_reset_everything():
    model = _model(seed=7)
    torch.manual_seed(8)
    frames = torch.randn(2, 4, 3, 40, 48)
    old = model.new_state(1)
    _continue(model, old, frames[:1, :2])
    fresh = model.new_state(1)
    both = StreamState.stack([old, fresh])
    assert both.frames_seen.tolist() == [2, 0]
    out = _continue(model, both, frames[:, 2:])
    assert _rel(out[:1, -1], model.forward_clip(frames[:1])) < TOL
    assert _rel(out[1:, -1], model.forward_clip(frames[1:, 2:])) < TOL
    both.reset()
    assert both.frames_seen.tolist() == [0, 0]
    assert all(float(x.abs().sum()) == 0 for layer in both.ssm_states + both.conv_tails for x in layer)
    assert _rel(_continue(model, both, frames[:, :1])[:, 0], model.forward_clip(frames[:, :1])) < TOL


def test_size_change_needs_reset_and_batch_must_match():
    model = _model(seed=9)
    state = model.new_state(2)
    model.forward_stream(torch.randn(2, 3, 40, 48), state)
    with pytest.raises(ValueError, match="reset"):
        model.forward_stream(torch.randn(2, 3, 72, 56), state)
    with pytest.raises(ValueError, match="batch"):
        model.forward_stream(torch.randn(1, 3, 40, 48), state)
    other = _model(seed=9, n_mambas=3)
    with pytest.raises(ValueError, match="do not fit"):
        other.forward_stream(torch.randn(2, 3, 40, 48), state)
    state.reset(torch.tensor([True, True]))
    frame = torch.randn(2, 3, 72, 56)
    logits, state = model.forward_stream(frame, state)   # new size accepted after a full reset
    assert state.grid == (12, 8)
    assert _rel(logits, model.forward_clip(frame[:, None])) < TOL


def test_state_layout_for_cityscapes_b1_grid():
    model = _model(window=20, shift=10, n_mambas=4)
    layout = model.decode_head.vs.state_layout((80, 140))
    assert layout == [[28], [18, 4, 6, 12], [28], [18, 4, 6, 12]]   # 28 windows / 40 shifted regions


def test_baseline_and_inference_only():
    model = _model(seed=10)
    frame = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        head = model.decode_head
        expected = F.interpolate(head.linear_pred(head.fuse(model.backbone(frame))), size=(40, 48),
                                 mode="bilinear", align_corners=False)
    base = model.forward_baseline(frame)
    assert base.shape == (2, 5, 40, 48) and torch.equal(base, expected)
    assert _rel(base, model.forward_clip(frame[:, None])) > 1e-2  # linear_pred != Mamba path
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.forward_clip(frame[:, None])


@pytest.mark.gpu
def test_state_moves_between_devices():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = _model(seed=11)
    torch.manual_seed(12)
    frames = torch.randn(2, 4, 3, 40, 48)
    state = model.new_state(2)
    _continue(model, state, frames[:, :2])
    reference = _continue(model, state.clone(), frames[:, 2:])
    moved = state.clone().to("cuda")
    assert moved.device.type == "cuda"
    model.cuda()
    first = _continue(model, moved, frames[:, 2:3].cuda()).cpu()
    moved.to("cpu")                      # and back: continue on the CPU
    model.cpu()
    second = _continue(model, moved, frames[:, 3:])
    assert _rel(torch.cat([first, second], 1), reference) < TOL


def _official_vs(vs, x: torch.Tensor) -> torch.Tensor:
    """Transcription of the official ShiftedMambaBlocks.forward structure (Normal mode):
    every block call sees window-flattened hidden *and* residual tensors (norm inside the
    pieces), odd blocks roll by -shift, cut 9 blocks, run, merge and roll back.
    x [B, T, E, H, W] -> last frame [B, E, H, W]."""
    from tv3s_ros.model.mamba import add_rms_norm

    win, s = vs.window, vs.shift
    r = win - s

    def flat(a, ph, pw):
        b, t, c, h, w = a.shape
        return a.reshape(b, t, c, h // ph, ph, w // pw, pw).permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, t * ph * pw, c)

    def unflat(a, shape, ph, pw):
        b, t, c, h, w = shape
        return a.reshape(b, h // ph, w // pw, t, ph, pw, c).permute(0, 3, 6, 1, 4, 2, 5).reshape(shape)

    def call(layer, h, res, ph, pw):
        normed, res_out = add_rms_norm(flat(h, ph, pw), None if res is None else flat(res, ph, pw),
                                       layer.norm.weight, layer.norm.eps)
        y, _, _ = layer.mixer(normed)
        return unflat(y, h.shape, ph, pw), unflat(res_out, h.shape, ph, pw)

    blocks = [(slice(None, -win), slice(None, -win), win, win), (slice(-s, None), slice(-s, None), s, s),
              (slice(-win, -s), slice(-s, None), r, s), (slice(-s, None), slice(-win, -s), s, r),
              (slice(-win, -s), slice(-win, -s), r, r), (slice(None, -win), slice(-s, None), win, s),
              (slice(None, -win), slice(-win, -s), win, r), (slice(-s, None), slice(None, -win), s, win),
              (slice(-win, -s), slice(None, -win), r, win)]
    hidden, residual = x, None
    for idx, layer in enumerate(vs.layers):
        if idx % 2 == 0:
            hidden, residual = call(layer, hidden, residual, win, win)
            continue
        h_roll = torch.roll(hidden, (-s, -s), (-2, -1))
        r_roll = torch.roll(residual, (-s, -s), (-2, -1))
        h_out, r_out = torch.zeros_like(h_roll), torch.zeros_like(r_roll)
        for rs, cs, ph, pw in blocks:
            if h_roll[..., rs, cs].numel() == 0:
                continue
            h_out[..., rs, cs], r_out[..., rs, cs] = call(layer, h_roll[..., rs, cs], r_roll[..., rs, cs], ph, pw)
        hidden, residual = torch.roll(h_out, (s, s), (-2, -1)), torch.roll(r_out, (s, s), (-2, -1))
    out, _ = add_rms_norm(flat(hidden, win, win), flat(residual, win, win), vs.norm_f.weight, vs.norm_f.eps)
    return unflat(out, hidden.shape, win, win)[:, -1]


@pytest.mark.parametrize("overrides,grid", [(dict(), (12, 16)), (dict(shift=1, n_mambas=4), (8, 12)),
                                            (dict(window=20, shift=10), (40, 40))])
def test_vs_matches_official_structure(overrides, grid):
    model = _model(seed=13, **overrides)
    vs = model.decode_head.vs
    torch.manual_seed(14)
    x = torch.randn(2, 3, 32, *grid)
    with torch.no_grad():
        ours = vs(x.flatten(3).transpose(2, 3), grid).transpose(1, 2).reshape(2, 32, *grid)
        official = _official_vs(vs, x)
    assert _rel(ours, official) < 1e-5
