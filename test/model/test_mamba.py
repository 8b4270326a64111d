"""Mamba v1 mixer: official layout, chunked == whole sequence, == token-by-token step recurrence."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tv3s_ros.model.mamba import Mamba, MambaBlock, RMSNorm, add_rms_norm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny ops: intra-op threads only add overhead on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mixer(seed=0, d_model=32, d_state=8, d_conv=4, expand=2) -> Mamba:
    torch.manual_seed(seed)
    m = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    with torch.no_grad():  # non-trivial A, D and conv bias so every term matters
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
        m.D.normal_()
        m.conv1d.bias.normal_(std=0.2)
    return m


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _step_reference(m: Mamba, x: torch.Tensor):
    """Token-by-token Mamba v1 ``step`` semantics (mamba_simple, no fused kernels), written
    independently: conv state of width d_conv rolled by one per token, SSM state updated as
    h = exp(dt*A) h + dt*B*x, y = <h, C> + D*x, gated by SiLU(z)."""
    n, length, _ = x.shape
    w_conv = m.conv1d.weight[:, 0, :]                       # [D, K]
    conv_state = torch.zeros(n, m.d_inner, m.d_conv)
    h = torch.zeros(n, m.d_inner, m.d_state)
    a = -torch.exp(m.A_log)
    outs = []
    for i in range(length):
        xz = x[:, i] @ m.in_proj.weight.T
        xi, z = xz[:, :m.d_inner], xz[:, m.d_inner:]
        conv_state = torch.cat([conv_state[:, :, 1:], xi[:, :, None]], dim=2)
        xc = F.silu((conv_state * w_conv).sum(-1) + m.conv1d.bias)
        dbl = xc @ m.x_proj.weight.T
        dt_low, b, c = dbl[:, :m.dt_rank], dbl[:, m.dt_rank:m.dt_rank + m.d_state], dbl[:, m.dt_rank + m.d_state:]
        dt = F.softplus(dt_low @ m.dt_proj.weight.T + m.dt_proj.bias)          # [N, D]
        h = torch.exp(dt[:, :, None] * a) * h + dt[:, :, None] * b[:, None, :] * xc[:, :, None]
        y = (h * c[:, None, :]).sum(-1) + m.D * xc
        outs.append((y * F.silu(z)) @ m.out_proj.weight.T)
    return torch.stack(outs, dim=1), conv_state[:, :, 1:], h


def test_parameter_names_shapes_and_init():
    m = Mamba(256)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert list(shapes) == ["A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                            "dt_proj.weight", "dt_proj.bias", "out_proj.weight"]
    assert shapes == {"A_log": (512, 16), "D": (512,), "in_proj.weight": (1024, 256), "conv1d.weight": (512, 1, 4),
                      "conv1d.bias": (512,), "x_proj.weight": (48, 512), "dt_proj.weight": (512, 16),
                      "dt_proj.bias": (512,), "out_proj.weight": (256, 512)}
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).expand(512, 16))
    assert torch.equal(m.D, torch.ones(512))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_proj.weight.abs().max() <= 16 ** -0.5
    assert sum(p.numel() for p in m.parameters()) == 438016 - 256  # spec: block incl. norm 438,016
    block = MambaBlock(256)
    assert list(block.state_dict())[-1] == "norm.weight"
    assert sum(p.numel() for p in block.parameters()) == 438016


@torch.no_grad()
def test_matches_token_by_token_step():
    m = _mixer()
    x = torch.randn(3, 13, 32)
    y, tail, h = m(x)
    y_ref, tail_ref, h_ref = _step_reference(m, x)
    assert _rel(y, y_ref) < 1e-5
    assert _rel(tail, tail_ref) < 1e-6
    assert _rel(h, h_ref) < 1e-5
    assert h.dtype == torch.float32 and tail.shape == (3, 64, 3)


@torch.no_grad()
def test_zero_state_equals_official_full_path():
    """With no state the conv is the official padded Conv1d truncated to L."""
    m = _mixer(seed=1)
    x = torch.randn(2, 9, 32)
    xz = (x @ m.in_proj.weight.T).transpose(1, 2)
    xs = xz[:, :m.d_inner]
    conv_official = F.silu(m.conv1d(xs)[..., :9])
    y, tail, _ = m(x)
    y_step, _, _ = _step_reference(m, x)
    assert _rel(y, y_step) < 1e-5
    # the returned tail is the last d_conv-1 pre-conv inputs
    assert torch.allclose(tail, xs[:, :, -3:])
    # and the conv used matches the official padded convolution
    from tv3s_ros.model.scan_ref import causal_conv1d_ref
    ours, _ = causal_conv1d_ref(xs, m.conv1d.weight[:, 0], m.conv1d.bias)
    assert _rel(ours, conv_official) < 1e-6


@torch.no_grad()
def test_chunked_with_carried_state_equals_whole_sequence():
    m = _mixer(seed=2)
    x = torch.randn(4, 23, 32)
    y_full, tail_full, h_full = m(x)
    for cuts in ([1, 2, 3, 17], [5, 5, 5, 8], [23], [1] * 23, [2, 21]):
        tail, h, ys = None, None, []
        start = 0
        for c in cuts:
            y, tail, h = m(x[:, start:start + c], tail, h)
            ys.append(y)
            start += c
        assert _rel(torch.cat(ys, dim=1), y_full) < 1e-5, cuts
        assert _rel(h, h_full) < 1e-5
        assert torch.allclose(tail, tail_full)


@torch.no_grad()
def test_state_matters_and_sequences_are_independent():
    m = _mixer(seed=3)
    x = torch.randn(2, 12, 32)
    y_full, _, _ = m(x)
    y_restart, _, _ = m(x[:, 6:])            # second half from zero state: must differ
    assert _rel(y_restart, y_full[:, 6:]) > 1e-2
    _, tail, h = m(x[:, :6])
    y_no_tail, _, _ = m(x[:, 6:], None, h)   # dropping only the conv tail changes the first tokens
    assert _rel(y_no_tail[:, :3], y_full[:, 6:9]) > 1e-3
    # sequence 0 does not depend on sequence 1
    x2 = x.clone()
    x2[1] = torch.randn(12, 32)
    assert torch.equal(m(x2)[0][0], y_full[0])


def test_add_rms_norm_semantics():
    torch.manual_seed(0)
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
    h = torch.randn(5, 16).to(torch.bfloat16)
    r = torch.randn(5, 16)
    out, res = add_rms_norm(h, r, norm.weight, 1e-5)
    s = h.float() + r
    assert res.dtype == torch.float32 and torch.equal(res, s)
    assert out.dtype == torch.bfloat16
    expected = s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(out.float(), expected, rtol=1e-2, atol=1e-2)
    out0, res0 = add_rms_norm(r, None, norm.weight, 1e-5)  # first block: residual = hidden
    assert torch.equal(res0, r)
    assert torch.allclose(out0, r / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight, atol=1e-6)
    assert norm.eps == 1e-5 and list(norm.state_dict()) == ["weight"]
