"""The PyTorch reference scan (the oracle of every other backend) against the recurrence
written out step by step, across its internal chunk boundaries and on the autograd path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tv3s_ros.model import scan_ref


def recurrence(u, delta, A, B, C, D, z, delta_bias, h0):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t; y_t = <h_t, C_t> + D u_t; y *= silu(z)."""
    dt = F.softplus(delta + delta_bias[None, :, None])
    h, ys = h0.clone(), []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, 2) + u * D[None, :, None]
    return y * F.silu(z), h


def inputs(n, d, s, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(u=r(n, d, length), delta=r(n, d, length) * 0.5 - 1, A=-torch.exp(r(d, s) * 0.5),
                B=r(n, s, length), C=r(n, s, length), D=r(d), z=r(n, d, length),
                delta_bias=r(d) * 0.1, h0=r(n, d, s))


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("length", [1, 63, 64, 65, 150])
@pytest.mark.parametrize("chunk_elements", [None, 1, 3 * 8 * 4 * 5])   # default, 1-token chunks, 5-token chunks
def test_reference_equals_the_recurrence_across_chunks(monkeypatch, length, chunk_elements):
    if chunk_elements is not None:
        monkeypatch.setattr(scan_ref, "_CHUNK_ELEMENTS", chunk_elements)
    kw = inputs(3, 8, 4, length)
    y_ref, h_ref = recurrence(**kw)
    with torch.no_grad():
        y, h = scan_ref.selective_scan_ref(**kw)
    assert rel(y, y_ref) < 1e-5 and rel(h, h_ref) < 1e-5
    assert h.is_contiguous() and h.dtype == torch.float32
    assert h.untyped_storage().nbytes() == h.numel() * 4   # not a view into a chunk buffer


def test_autograd_path_gives_the_same_values_and_gradients(monkeypatch):
    monkeypatch.setattr(scan_ref, "_CHUNK_ELEMENTS", 3 * 8 * 4 * 7)   # several chunks
    kw = inputs(3, 8, 4, 30, seed=1)
    leaf = {k: v.clone().requires_grad_() for k, v in kw.items() if k in ("u", "delta", "B")}
    y, h = scan_ref.selective_scan_ref(**{**kw, **leaf})
    (y.square().sum() + h.sum()).backward()
    leaf_ref = {k: v.detach().clone().requires_grad_() for k, v in leaf.items()}
    y_ref, h_ref = recurrence(**{**kw, **leaf_ref})
    (y_ref.square().sum() + h_ref.sum()).backward()
    assert rel(y.detach(), y_ref.detach()) < 1e-5
    for k in leaf:
        assert rel(leaf[k].grad, leaf_ref[k].grad) < 1e-4, k


def test_empty_sequence_returns_the_incoming_state():
    kw = inputs(2, 4, 3, 0)
    y, h = scan_ref.selective_scan_ref(**kw)
    assert y.shape == (2, 4, 0) and torch.equal(h, kw["h0"])
