"""Pure-PyTorch Mamba v1 selective scan and causal conv1d that start from a carried state.

These are the exact reference ("oracle") implementations: every faster backend (the Triton
kernel, mamba-ssm) is tested against them. Layouts follow mamba_ssm so kernels can be
swapped: channels D, state size S, sequence length L, N independent sequences.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 24  # [chunk, N, D, S] fp32 elements per chunk buffer (64 MiB)


def selective_scan_ref(
    u: torch.Tensor,                 # [N, D, L] input after conv + SiLU
    delta: torch.Tensor,             # [N, D, L] dt before bias/softplus
    A: torch.Tensor,                 # [D, S] (= -exp(A_log)), fp32
    B: torch.Tensor,                 # [N, S, L]
    C: torch.Tensor,                 # [N, S, L]
    D: Optional[torch.Tensor] = None,        # [D] skip
    z: Optional[torch.Tensor] = None,        # [N, D, L] gate
    delta_bias: Optional[torch.Tensor] = None,  # [D]
    h0: Optional[torch.Tensor] = None,       # [N, D, S] fp32 incoming SSM state
    delta_softplus: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(y [N, D, L] in u's dtype, h_last [N, D, S] fp32)``.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t;  y_t = <h_t, C_t> + D * u_t;  y *= silu(z).
    Running a sequence in chunks with the returned state carried equals running it at once.
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20 like the CUDA kernel
    A = A.float()
    B = B.float()
    C = C.float()
    n, d, length = u.shape
    n_state = A.shape[1]
    h = torch.zeros(n, d, n_state, device=u.device, dtype=torch.float32) if h0 is None else h0.float().clone()
    y = u.new_empty(n, d, length)
    # Tokens go in chunks: the per-step factors of one chunk at a time ([chunk, N, D, S]) keep
    # memory bounded (a whole clip would need GBs), and each step is a single fused op that
    # writes h_t into the chunk's buffer, so y of the chunk is one contraction. The recurrence
    # itself is sequential. out= cannot record autograd, so with gradients the steps stack.
    track_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, h))
    chunk = max(1, min(64, _CHUNK_ELEMENTS // max(1, n * d * n_state)))
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        dt = delta[:, :, start:stop]
        dA = torch.exp(torch.einsum("ndl,ds->lnds", dt, A))                             # [l, N, D, S]
        dBu = torch.einsum("ndl,nsl,ndl->lnds", dt, B[:, :, start:stop], u[:, :, start:stop])
        if track_grad:
            steps = []
            for t in range(stop - start):
                h = torch.addcmul(dBu[t], dA[t], h)                                      # dA*h + dBu
                steps.append(h)
            hs = torch.stack(steps)
        else:
            hs = torch.empty_like(dA)
            for t in range(stop - start):
                h = torch.addcmul(dBu[t], dA[t], h, out=hs[t])
        y[:, :, start:stop] = torch.einsum("lnds,nsl->ndl", hs, C[:, :, start:stop])
    h = h.clone() if length and not track_grad else h   # not a view of the last chunk's buffer
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in), h


def causal_conv1d_ref(
    x: torch.Tensor,                 # [N, D, L]
    weight: torch.Tensor,            # [D, K] depthwise kernel
    bias: Optional[torch.Tensor] = None,     # [D]
    tail: Optional[torch.Tensor] = None,     # [N, D, K-1] last K-1 inputs before this chunk
    activation: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over L with the previous chunk's tail; returns ``(out, new_tail)``.

    ``new_tail`` holds the last K-1 inputs (zeros-padded history included), so chunks chain
    exactly. ``out`` has SiLU applied when ``activation``.
    """
    n, d, length = x.shape
    k = weight.shape[-1]
    if tail is None:
        tail = x.new_zeros(n, d, k - 1)
    xt = torch.cat([tail.to(x.dtype), x], dim=2)                     # [N, D, K-1+L]
    out = F.conv1d(xt, weight.to(x.dtype).unsqueeze(1), bias.to(x.dtype) if bias is not None else None, groups=d)
    if activation:
        out = F.silu(out)
    return out, xt[:, :, xt.shape[2] - (k - 1):].contiguous()
