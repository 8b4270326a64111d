"""Streaming == the official state-sharing inference mode, re-derived independently.

The official tester's ``--mode 2`` ("Frame_1_greedy_seq") feeds one frame per call and keeps
the Mamba states of every block between calls; it runs each block *token by token* through
mamba's ``step`` (conv state of width d_conv rolled by one, SSM state
``h = exp(dt*A) h + dt*B*x``). State lives in one cache for the unshifted layers and in nine
caches for the shifted layers (one per official border group: main, a1, b3, c3, d, b1, b2,
c1, c2), each holding one state per layer index and per window of that group. A new video
gets fresh caches.

Below that procedure is written out from its description, using only our parameters (not
our mixer / partition code), and compared frame by frame with ``decode_head.temporal`` fed
one frame at a time with a :class:`StreamState` (what ``forward_stream`` runs). Each batch
entry is an independent official stream; resetting one entry = fresh caches for it.
See docs/official_equivalence.md for the comparison against the official code itself.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_overrides

from tv3s_ros.model.config import ModelConfig
from tv3s_ros.model.tv3s import TV3S

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int, **overrides) -> TV3S:
    torch.manual_seed(seed)
    cfg = tiny_overrides(backbone="mit_b0", embed_dim=16, shift=1, n_mambas=4, num_classes=5)
    model = TV3S(ModelConfig(**{**cfg, **overrides}))
    with torch.no_grad():  # nothing trivially zero / one
        for layer in model.decode_head.vs.layers:
            mx = layer.mixer
            mx.A_log.add_(0.3 * torch.randn_like(mx.A_log))
            mx.D.normal_()
            mx.conv1d.bias.normal_(std=0.2)
            layer.norm.weight.normal_(1.0, 0.2)
        model.decode_head.vs.norm_f.weight.normal_(1.0, 0.2)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def _step(mixer, u: torch.Tensor, state: List[torch.Tensor]) -> torch.Tensor:
    """One token ``u [N, E]`` through Mamba v1 ``step``; ``state = [conv [N, D, K], h [N, D, S]]``
    is updated in place (like the official cache)."""
    d, r, n = mixer.d_inner, mixer.dt_rank, mixer.d_state
    xz = u @ mixer.in_proj.weight.T
    x, z = xz[:, :d], xz[:, d:]
    state[0] = torch.cat([state[0][:, :, 1:], x[:, :, None]], dim=2)
    x = F.silu((state[0] * mixer.conv1d.weight[:, 0, :]).sum(-1) + mixer.conv1d.bias)
    dbl = x @ mixer.x_proj.weight.T
    dt = F.softplus(dbl[:, :r] @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
    b, c = dbl[:, r:r + n], dbl[:, r + n:]
    a = -torch.exp(mixer.A_log)
    state[1] = torch.exp(dt[:, :, None] * a) * state[1] + dt[:, :, None] * b[:, None, :] * x[:, :, None]
    y = (state[1] * c[:, None, :]).sum(-1) + mixer.D * x
    return (y * F.silu(z)) @ mixer.out_proj.weight.T


def _windows(a: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """``[E, h, w]`` -> ``[nh*nw, ph*pw, E]``: windows row-major, tokens row-major inside."""
    e, h, w = a.shape
    return a.reshape(e, h // ph, ph, w // pw, pw).permute(1, 3, 2, 4, 0).reshape(-1, ph * pw, e)


def _unwindows(s: torch.Tensor, h: int, w: int, ph: int, pw: int) -> torch.Tensor:
    e = s.shape[-1]
    return s.reshape(h // ph, w // pw, ph, pw, e).permute(4, 0, 2, 1, 3).reshape(e, h, w)


Caches = Tuple[Dict[int, List[torch.Tensor]], List[Dict[int, List[torch.Tensor]]]]


def _new_caches() -> Caches:
    return {}, [{} for _ in range(9)]


def _official_mode2_frame(vs, x: torch.Tensor, caches: Caches) -> torch.Tensor:
    """One frame of one stream, ``x [E, H, W]`` on the grid -> final-normalised ``[E, H, W]``."""
    win, s = vs.window, vs.shift
    r = win - s
    groups = [  # official shifted groups in rolled coordinates, in call order
        (slice(None, -win), slice(None, -win), win, win), (slice(-s, None), slice(-s, None), s, s),
        (slice(-win, -s), slice(-s, None), r, s), (slice(-s, None), slice(-win, -s), s, r),
        (slice(-win, -s), slice(-win, -s), r, r), (slice(None, -win), slice(-s, None), win, s),
        (slice(None, -win), slice(-win, -s), win, r), (slice(-s, None), slice(None, -win), s, win),
        (slice(-win, -s), slice(None, -win), r, win)]
    hidden, residual = x, torch.zeros_like(x)
    for n, layer in enumerate(vs.layers):
        shift = 0 if n % 2 == 0 else s
        pieces = ([(caches[0], slice(None), slice(None), win, win)] if n % 2 == 0
                  else [(caches[1][k], *g) for k, g in enumerate(groups)])
        h_roll = torch.roll(hidden, (-shift, -shift), (1, 2))
        r_roll = torch.roll(residual, (-shift, -shift), (1, 2))
        h_out, r_out = torch.zeros_like(h_roll), torch.zeros_like(r_roll)
        for cache, rs, cs, ph, pw in pieces:
            hp, rp = h_roll[:, rs, cs], r_roll[:, rs, cs]
            if hp.numel() == 0:
                continue
            hs = _windows(hp, ph, pw)
            res = _windows(rp, ph, pw) + hs  # block 0: residual := hidden (residual starts at 0)
            mixer = layer.mixer
            state = cache.setdefault(n, [torch.zeros(hs.shape[0], mixer.d_inner, mixer.d_conv),
                                         torch.zeros(hs.shape[0], mixer.d_inner, mixer.d_state)])
            ys = [_step(mixer, _rms(res[:, i], layer.norm.weight, layer.norm.eps), state)
                  for i in range(hs.shape[1])]
            h_out[:, rs, cs] = _unwindows(torch.stack(ys, 1), hp.shape[1], hp.shape[2], ph, pw)
            r_out[:, rs, cs] = _unwindows(res, hp.shape[1], hp.shape[2], ph, pw)
        hidden = torch.roll(h_out, (shift, shift), (1, 2))
        residual = torch.roll(r_out, (shift, shift), (1, 2))
    out = _rms((hidden + residual).permute(1, 2, 0), vs.norm_f.weight, vs.norm_f.eps)
    return out.permute(2, 0, 1)


@pytest.mark.parametrize("overrides,c1,grid", [
    (dict(), (24, 14), (12, 8)),                      # 3x2 windows, 1-cell border pieces
    (dict(shift=3, n_mambas=2), (18, 30), (12, 16)),  # 3-cell / 1-cell pieces, anisotropic resize
])
def test_stream_equals_official_token_by_token_state_sharing(overrides, c1, grid):
    model = _model(seed=3, **overrides)
    head, vs = model.decode_head, model.decode_head.vs
    assert head.grid_size(*c1) == grid
    frames, batch, reset_at = 4, 2, 2  # entry 1 starts a new video at frame index 2
    torch.manual_seed(4)
    fused = torch.randn(frames, batch, head.embed_dim, *c1)
    state = model.new_state(batch)
    caches = [_new_caches() for _ in range(batch)]
    with torch.no_grad():
        for t in range(frames):
            if t == reset_at:
                state.reset(torch.tensor([False, True]))
                caches[1] = _new_caches()
            ours = head.temporal(fused[t], batch, state)
            x = F.interpolate(fused[t], size=grid, mode="bilinear", align_corners=False)
            expected = torch.stack([_official_mode2_frame(vs, x[b], caches[b]) for b in range(batch)])
            assert _rel(ours, expected) < TOL, t
            if t in (1, 3):  # the carried state matters (the check is not vacuous)
                alone = head.temporal(fused[t], batch)
                assert _rel(alone, expected) > 1e-2
    # one state per window and layer, as in the official caches
    n_official = sum(st[0].shape[0] for even, odd in caches for c in [even, *odd] for st in c.values())
    n_ours = sum(buf.shape[0] * buf.shape[1] for layer in state.ssm_states for buf in layer)
    assert n_ours == n_official
