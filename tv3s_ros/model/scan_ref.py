"""Pure-PyTorch Mamba v1 selective scan and causal conv1d that start from a carried state.

These are the exact reference ("oracle") implementations: every faster backend (the Triton
kernel, mamba-ssm) is tested against them. Layouts follow mamba_ssm so kernels can be
swapped: channels D, state size S, sequence length L, N independent sequences.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


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
    h = torch.zeros(n, d, A.shape[1], device=u.device, dtype=torch.float32) if h0 is None else h0.float().clone()
    # Precompute the per-step factors once; the recurrence itself is sequential.
    dA = torch.exp(torch.einsum("ndl,ds->nlds", delta, A))          # [N, L, D, S]
    dBu = torch.einsum("ndl,nsl,ndl->nlds", delta, B, u)             # [N, L, D, S]
    Ct = C.transpose(1, 2)                                           # [N, L, S]
    ys = []
    for t in range(length):
        h = dA[:, t] * h + dBu[:, t]
        ys.append(torch.einsum("nds,ns->nd", h, Ct[:, t]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(n, d, 0)
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
