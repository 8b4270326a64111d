"""The chunked PyTorch scan (``scan_chunked``) against the oracle ``scan_ref`` and the recurrence
written out step by step: values, carried state, extremes, segment boundaries and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tv3s_ros.model import scan_chunked
from tv3s_ros.model.scan_chunked import selective_scan_chunked
from tv3s_ros.model.scan_ref import selective_scan_ref

TOL = 1e-5


def recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, h0=None, delta_softplus=True):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t; y_t = <h_t, C_t> + D u_t; y *= silu(z) (float64)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    dt = delta + (0 if delta_bias is None else delta_bias.double()[None, :, None])
    dt = F.softplus(dt) if delta_softplus else dt
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, 2) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.double()[None, :, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def inputs(n, d, s, length, seed=0, dt_shift=-1.0, dt_scale=0.5, a_scale=0.5, a_shift=0.0,
           dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    kw = dict(u=r(n, d, length), delta=r(n, d, length) * dt_scale + dt_shift,
              A=-torch.exp(r(d, s) * a_scale + a_shift), B=r(n, s, length), C=r(n, s, length), D=r(d),
              z=r(n, d, length), delta_bias=r(d) * 0.1, h0=r(n, d, s))
    return {k: v.to(dtype) for k, v in kw.items()}


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture
def segments(monkeypatch):
    """Set the segment budget (tokens per segment = elements // (N*D*S), at least ``min_tokens``)."""
    def set_(elements, min_tokens=1):
        monkeypatch.setattr(scan_chunked, "_SEGMENT_ELEMENTS", elements)
        monkeypatch.setattr(scan_chunked, "_MIN_SEGMENT", min_tokens)
    return set_


# ----------------------------------------------------------------------------- forward values

@pytest.mark.parametrize("n,d,s,length", [
    (3, 8, 4, 1), (3, 8, 4, 2), (3, 8, 4, 3), (2, 16, 16, 17), (4, 12, 16, 63), (4, 12, 16, 100),
    (2, 8, 16, 257), (1, 32, 16, 400), (2, 16, 16, 1599), (2, 16, 16, 1600),
])
def test_forward_matches_reference_and_recurrence(n, d, s, length):
    kw = inputs(n, d, s, length, seed=length)
    with torch.no_grad():
        y, h = selective_scan_chunked(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    y_rec, h_rec = recurrence(**kw)
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and h.is_contiguous()
    assert y.shape == (n, d, length) and h.shape == (n, d, s)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    assert rel(y, y_rec) < TOL and rel(h, h_rec) < TOL


def test_thousands_of_sequences():
    kw = inputs(3000, 4, 4, 21, seed=3)
    with torch.no_grad():
        y, h = selective_scan_chunked(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL


@pytest.mark.parametrize("case", ["strong", "none", "mixed"])
@pytest.mark.parametrize("length", [7, 400])
def test_extreme_decays(case, length):
    """strong: dt*A down to about -1e6 (exp underflows to 0, subnormals on the way); none: dt*A
    about -1e-7 (h sums the inputs over the whole sequence); mixed: both in one tensor, per
    channel and state."""
    if case == "strong":
        kw = inputs(2, 8, 16, length, seed=5, dt_shift=20.0, dt_scale=10.0, a_shift=6.0, a_scale=2.0)
    elif case == "none":
        kw = inputs(2, 8, 16, length, seed=6, dt_shift=0.0, dt_scale=1.0, a_shift=-16.0)
    else:
        kw = inputs(2, 8, 16, length, seed=7, dt_shift=0.0, dt_scale=8.0, a_scale=6.0)
    with torch.no_grad():
        y, h = selective_scan_chunked(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    y_rec, h_rec = recurrence(**kw)
    assert rel(y, y_rec) < TOL and rel(h, h_rec) < TOL


@pytest.mark.parametrize("elements,length", [(1, 9), (1, 64), (2 * 8 * 4 * 5, 37), (2 * 8 * 4 * 8, 64)])
def test_segment_boundaries_and_one_token_segments(segments, elements, length):
    segments(elements)              # 1 element: one token per segment, the state passed each time
    kw = inputs(2, 8, 4, length, seed=elements)
    with torch.no_grad():
        y, h = selective_scan_chunked(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL


def test_carried_state_equals_the_whole_sequence():
    kw = inputs(3, 16, 16, 1600, seed=11)
    with torch.no_grad():
        y_all, h_all = selective_scan_chunked(**kw)
        h, ys, start = kw["h0"], [], 0
        for piece in (1, 399, 400, 3, 797):        # frames, odd cuts, a single token
            sl = slice(start, start + piece)
            part = {k: (v[:, :, sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
            y, h = selective_scan_chunked(**{**part, "h0": h})
            ys.append(y)
            start += piece
        assert start == 1600
    assert rel(torch.cat(ys, 2), y_all) < TOL and rel(h, h_all) < TOL


def test_optional_arguments_and_dtypes():
    kw = inputs(2, 8, 4, 30, seed=13)
    for drop in ("D", "z", "delta_bias", "h0"):
        part = {**kw, drop: None}
        with torch.no_grad():
            y, h = selective_scan_chunked(**part)
            y_ref, h_ref = selective_scan_ref(**part)
        assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL, drop
    with torch.no_grad():
        pos = {**kw, "delta": kw["delta"].abs() * 0.1}
        y, h = selective_scan_chunked(**pos, delta_softplus=False)
        y_ref, h_ref = selective_scan_ref(**pos, delta_softplus=False)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    with torch.no_grad():
        y, h = selective_scan_chunked(**half)
        y_ref, h_ref = selective_scan_ref(**half)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert rel(y.float(), y_ref.float()) < 1e-2 and rel(h, h_ref) < TOL


def test_empty_sequence_returns_the_incoming_state():
    kw = inputs(2, 4, 3, 0)
    y, h = selective_scan_chunked(**kw)
    assert y.shape == (2, 4, 0) and torch.equal(h, kw["h0"]) and h is not kw["h0"]


# ----------------------------------------------------------------------------- gradients

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


@pytest.mark.parametrize("elements,length", [(None, 1), (None, 7), (2 * 3 * 2 * 3, 10), (1, 5)])
def test_gradcheck_float64(segments, elements, length):
    if elements is not None:
        segments(elements)          # several segments (3 tokens; 1 token): the backward carry
    kw = {k: v.double().requires_grad_() for k, v in inputs(2, 3, 2, length, seed=17 + length).items()}
    f = lambda *args: selective_scan_chunked(**dict(zip(NAMES, args)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(kw[k] for k in NAMES))


def test_gradcheck_strong_and_weak_decay(segments):
    segments(2 * 3 * 4 * 4)
    kw = inputs(2, 3, 4, 9, seed=19, dt_shift=0.0, dt_scale=4.0, a_scale=3.0)
    kw = {k: v.double().requires_grad_() for k, v in kw.items()}
    f = lambda *args: selective_scan_chunked(**dict(zip(NAMES, args)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(kw[k] for k in NAMES))


@pytest.mark.parametrize("n,d,s,length", [(2, 64, 16, 400), (1, 32, 16, 1600)])
def test_gradients_match_the_reference_on_realistic_shapes(n, d, s, length):
    """A window of 20x20 tokens (400) and a 4-frame clip of it (1600), d_state 16."""
    kw = inputs(n, d, s, length, seed=23)
    g = torch.Generator().manual_seed(29)
    w_y = torch.randn(n, d, length, generator=g)
    w_h = torch.randn(n, d, s, generator=g)
    grads = []
    for fn in (selective_scan_chunked, selective_scan_ref):
        leaf = {k: v.clone().requires_grad_() for k, v in kw.items()}
        y, h = fn(**leaf)
        ((y * w_y).sum() + (h * w_h).sum()).backward()
        grads.append({k: v.grad for k, v in leaf.items()})
    ours, ref = grads
    for k in NAMES:
        assert rel(ours[k], ref[k]) < 1e-4, (k, rel(ours[k], ref[k]))


def test_only_the_final_state_needs_grad():
    kw = inputs(2, 8, 4, 12, seed=31)
    leaf = {k: v.clone().requires_grad_() for k, v in kw.items()}
    _, h = selective_scan_chunked(**leaf)
    h.sum().backward()
    leaf_ref = {k: v.clone().requires_grad_() for k, v in kw.items()}
    _, h_ref = selective_scan_ref(**leaf_ref)
    h_ref.sum().backward()
    for k in ("u", "delta", "A", "B", "h0", "delta_bias"):
        assert rel(leaf[k].grad, leaf_ref[k].grad) < 1e-4, k
    assert leaf["C"].grad is None or leaf["C"].grad.abs().max() == 0


# ----------------------------------------------------------------------------- device

@pytest.mark.gpu
def test_cuda_matches_the_cpu_reference():
    kw = inputs(4, 64, 16, 401, seed=37)
    with torch.no_grad():
        y, h = selective_scan_chunked(**{k: v.cuda() for k, v in kw.items()})
        y_ref, h_ref = selective_scan_ref(**kw)
    assert y.is_cuda and rel(y.cpu(), y_ref) < TOL and rel(h.cpu(), h_ref) < TOL
    leaf = {k: v.cuda().requires_grad_() for k, v in kw.items()}
    y, h = selective_scan_chunked(**leaf)
    (y.square().sum() + h.sum()).backward()
    leaf_ref = {k: v.clone().requires_grad_() for k, v in kw.items()}
    y_ref, h_ref = selective_scan_ref(**leaf_ref)
    (y_ref.square().sum() + h_ref.sum()).backward()
    for k in NAMES:
        assert rel(leaf[k].grad.cpu(), leaf_ref[k].grad) < 1e-4, k


# ----------------------------------------------------------------------------- dispatch

@pytest.mark.parametrize("env,fused_builds,expected", [
    (None, True, "fused"), ("auto", True, "fused"), (None, False, "chunked"), ("auto", False, "chunked"),
    ("chunked", True, "chunked"), ("fused", True, "fused"), ("ref", True, "ref")])
def test_dispatch_on_cpu(monkeypatch, env, fused_builds, expected):
    """The fused C++ scan is the CPU default (with or without autograd), the chunked scan where it
    cannot be built; ``chunked`` and ``ref`` (the oracle) can still be forced."""
    from tv3s_ros.model import scan, scan_fused
    calls = []
    monkeypatch.setattr(scan, "selective_scan_chunked",
                        lambda *a: calls.append("chunked") or selective_scan_chunked(*a))
    monkeypatch.setattr(scan, "selective_scan_ref", lambda *a: calls.append("ref") or selective_scan_ref(*a))
    fused = scan_fused.selective_scan_fused
    monkeypatch.setattr(scan_fused, "selective_scan_fused", lambda *a: calls.append("fused") or fused(*a))
    monkeypatch.setattr(scan_fused, "available", lambda: fused_builds)
    if env is None:
        monkeypatch.delenv(scan.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(scan.ENV_VAR, env)
    kw = inputs(2, 8, 4, 9, seed=41)
    with torch.no_grad():
        scan.selective_scan(**kw)
    leaf = {k: v.clone().requires_grad_() for k, v in kw.items()}
    y, _ = scan.selective_scan(**leaf)
    y.sum().backward()
    assert calls == [expected, expected] and leaf["u"].grad is not None
    x = torch.randn(2, 8, 5)
    w, b, tail = torch.randn(8, 4), torch.randn(8), torch.randn(2, 8, 3)
    from tv3s_ros.model.scan_ref import causal_conv1d_ref
    out, new_tail = scan.causal_conv1d(x, w, b, tail)          # no chunked conv: the reference serves
    ref_out, ref_tail = causal_conv1d_ref(x, w, b, tail)
    assert scan.backend_status()["scan_backend.causal_conv1d"] == ("fused" if expected == "fused" else "ref")
    assert rel(out, ref_out) < TOL and torch.equal(new_tail, ref_tail)
