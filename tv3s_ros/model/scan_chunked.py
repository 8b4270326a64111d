"""Selective scan without a Python loop over tokens: a blocked parallel scan in plain PyTorch.

Same signature and semantics as :func:`scan_ref.selective_scan_ref` (Mamba v1: diagonal A per
channel and state, input-dependent dt, B and C, D skip, z gate, carried state ``h0`` in, final
state out), fp32 maths and fp32 state, CPU and CUDA, autograd. ``scan_ref`` stays the oracle.

Algorithm. The recurrence ``h_t = a_t * h_{t-1} + x_t`` (``a_t = exp(dt_t A)``, ``x_t = dt_t u_t
B_t``) is an associative scan over the pairs ``(a_t, x_t)``. :func:`_scan_` runs it in place as
a Blelloch-style tree: pair neighbours ``(2i, 2i+1)``, recurse on the odd elements (half as many,
a strided view: no copy), then fix up the even elements from the state before them. That is
log2(L) levels of three large in-place tensor ops each (plus a threshold that keeps decay
products out of the slow subnormal range, see ``_TINY``), about three fused multiply-adds per
(token, channel, state) element in all, and no allocation. Only products of decays ``a`` (each
in [0, 1]) are formed, never ``exp`` of a cumulative sum: strong decay underflows to 0
harmlessly, no decay stays 1, and nothing can overflow.

Chosen by measurement (one B0 window layer: N=8 windows, D=512, S=16, L=400, 2 threads, shared
2-core AMD EPYC, no grad; ``scan_ref`` 180-235 ms): a Hillis-Steele / blocked scan over whole
[L, N*D*S] tensors with out-of-place steps took 810-1120 ms (100 MB temporaries per step: page
faults and DRAM traffic), the same on 16-token segments 280-305 ms, this in-place tree on
cache-sized segments about 50 ms (and 53 ms against 218 ms for a 1600-token clip window). The
chunked SSD closed form was not built: with A diagonal per (channel, state) its masked
segment-sum decay matrix is [N, D, S, T, T] per chunk, T/2 times the elementwise work of a
scan, and its factorised form needs ``exp(-cumsum)``, which overflows.

Tokens go in segments of at most ``_SEGMENT_ELEMENTS`` ([tokens, N, D, S] fp32 elements) so the
two work buffers stay in cache and are reused (no page faults from fresh large allocations);
the state is passed from one segment to the next, so the Python loop is over segments (a
400-token window at N*D*S = 65k is one to four segments), never over tokens.

Gradients come from a custom ``torch.autograd.Function`` around the core (dt, u, A, B, C, h0 ->
<h, C>, h_last): the forward saves only its inputs and the state at each segment start; the
backward recomputes each segment's states and runs the reverse scan ``G_t = g_t + a_{t+1}
G_{t+1}`` with the mirrored tree (:func:`_rscan_`). softplus, delta_bias, the D skip and the
z gate stay outside in ordinary autograd. Model-level numbers: benchmarks/README.md ("chunked
scan vs the reference scan").
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

# [segment tokens, N, D, S] fp32 elements per work buffer (two buffers: a and x/h). 1 Mi
# elements = 4 MiB each, so both stay in a CPU's L2/L3 cache. See module docstring.
_SEGMENT_ELEMENTS = 1 << 20
_MIN_SEGMENT = 16          # at least this many tokens per segment (tiny N*D*S: few segments)
# Decay products below this are set to 0. Products of decays in [0, 1] drift through the
# subnormal range (below 1.2e-38), where x86 CPUs compute 10-100x slower; with every factor
# either 0 or >= 1e-18, no product of two is subnormal. What is dropped is a state contribution
# scaled by under 1e-18: far below fp32 resolution unless that state is 1e13 times larger than
# the current one.
_TINY = 1e-18


def _scan_(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> None:
    """In place: ``x[t] <- h_t = a[t] * h_{t-1} + x[t]`` along dim 0, ``h_{-1} = h0``; ``a`` is clobbered.

    a, x: [L, M] (any strides along dim 0, rows contiguous or not), h0: [M]. Tree (Blelloch)
    scan on strided views: the pair products of level k live at the odd positions of level k-1.
    """
    length = a.shape[0]
    if length == 0:
        return
    if length == 1:
        x[0].addcmul_(a[0], h0)
        return
    if length % 2:
        _scan_(a[:-1], x[:-1], h0)
        x[-1].addcmul_(a[-1], x[-2])
        return
    a2 = a.unflatten(0, (length // 2, 2))
    x2 = x.unflatten(0, (length // 2, 2))
    a_even, a_odd = a2[:, 0], a2[:, 1]
    x_even, x_odd = x2[:, 0], x2[:, 1]
    x_odd.addcmul_(a_odd, x_even)          # (a1, x1) o (a0, x0) = (a1 a0, a1 x0 + x1)
    a_odd.mul_(a_even)
    F.threshold_(a_odd, _TINY, 0.0)        # no subnormal decays (see _TINY)
    _scan_(a_odd, x_odd, h0)               # odd positions now hold the true states
    x_even[0].addcmul_(a_even[0], h0)
    if length > 2:
        x_even[1:].addcmul_(a_even[1:], x_odd[:-1])


def _log2e_times(A: torch.Tensor) -> torch.Tensor:
    """``A * log2(e)`` rounded once from float64, so ``exp2(dt * that) = exp(dt * A)``."""
    return (A.double() * 1.4426950408889634).to(A.dtype)


def _rscan_(b: torch.Tensor, x: torch.Tensor, carry: torch.Tensor) -> None:
    """In place, backwards: ``x[t] <- G_t = x[t] + b[t] * G_{t+1}``, ``G_L = carry``; ``b`` is clobbered.

    The mirror image of :func:`_scan_` (pairs combine into the even positions), so the reverse
    scan of the backward pass needs no flipped copies.
    """
    length = b.shape[0]
    if length == 0:
        return
    if length == 1:
        x[0].addcmul_(b[0], carry)
        return
    if length % 2:
        _rscan_(b[1:], x[1:], carry)
        x[0].addcmul_(b[0], x[1])
        return
    b2 = b.unflatten(0, (length // 2, 2))
    x2 = x.unflatten(0, (length // 2, 2))
    b_even, b_odd = b2[:, 0], b2[:, 1]
    x_even, x_odd = x2[:, 0], x2[:, 1]
    x_even.addcmul_(b_even, x_odd)
    b_even.mul_(b_odd)
    F.threshold_(b_even, _TINY, 0.0)
    _rscan_(b_even, x_even, carry)         # even positions now hold the true G
    x_odd[-1].addcmul_(b_odd[-1], carry)
    if length > 2:
        x_odd[:-1].addcmul_(b_odd[:-1], x_even[1:])


def _segment_len(m: int) -> int:
    return max(_MIN_SEGMENT, _SEGMENT_ELEMENTS // max(1, m))


class _Buffers:
    """Two reusable [seg, N, D, S] fp32 work buffers (a, and x which becomes h)."""

    def __init__(self, seg: int, n: int, d: int, s: int, device, dtype):
        self.a = torch.empty(seg, n, d, s, device=device, dtype=dtype)
        self.x = torch.empty(seg, n, d, s, device=device, dtype=dtype)

    def states(self, dt, v, A, B, h_start):
        """Fill ``x`` with the states h_t of one segment (dt, v = dt*u: [l, N, D]; B: [l, N, S])."""
        length = dt.shape[0]
        a, x = self.a[:length], self.x[:length]
        torch.mul(dt[..., None], _log2e_times(A), out=a)
        a.exp2_()           # = exp(dt*A); exp2 is 2x faster than exp on CPU. Subnormal only for
        #                     dt*A in (-103, -87): rare; the tree thresholds its products.
        torch.mul(v[..., None], B[:, :, None, :], out=x)
        _scan_(a.view(length, -1), x.view(length, -1), h_start.reshape(-1))
        return x


def _forward_core(dt, u, A, B, C, h0, save_starts: bool):
    """dt, u: [L, N, D]; A: [D, S]; B, C: [L, N, S]; h0: [N, D, S] -> (yc [L, N, D], h_last, starts)."""
    length, n, d = dt.shape
    s = A.shape[1]
    seg = min(max(length, 1), _segment_len(n * d * s))
    buf = _Buffers(seg, n, d, s, dt.device, dt.dtype)
    v = dt * u
    yc = dt.new_empty(length, n, d)
    h = h0
    starts: List[torch.Tensor] = []
    for st in range(0, length, seg):
        en = min(st + seg, length)
        if save_starts:
            starts.append(h)
        hs = buf.states(dt[st:en], v[st:en], A, B[st:en], h)
        torch.linalg.vecdot(hs, C[st:en, :, None, :], out=yc[st:en])   # <h_t, C_t> over S (2x a bmm)
        h = hs[-1].clone()
    return yc, h, starts


class _ScanCore(torch.autograd.Function):
    """(dt, u, A, B, C, h0) in the [L, N, ...] layout -> (yc [L, N, D], h_last [N, D, S])."""

    @staticmethod
    def forward(ctx, dt, u, A, B, C, h0):
        yc, h_last, starts = _forward_core(dt, u, A, B, C, h0, save_starts=True)
        ctx.save_for_backward(dt, u, A, B, C, *starts)
        return yc, h_last

    @staticmethod
    def backward(ctx, g_yc, g_h):
        dt, u, A, B, C, *starts = ctx.saved_tensors
        length, n, d = dt.shape
        s = A.shape[1]
        seg = min(max(length, 1), _segment_len(n * d * s))
        buf = _Buffers(seg, n, d, s, dt.device, dt.dtype)
        g_buf = torch.empty(seg, n, d, s, device=dt.device, dtype=dt.dtype)   # G, dL/dh_t
        b_buf = torch.empty(seg, n, d, s, device=dt.device, dtype=dt.dtype)   # a_{t+1}, then dL/d(dt A)
        A2 = _log2e_times(A)
        g_yc = torch.zeros_like(dt) if g_yc is None else g_yc.to(dt.dtype)
        carry = dt.new_zeros(n, d, s) if g_h is None else g_h.to(dt.dtype).clone()
        v = dt * u
        g_dt = torch.empty_like(dt)
        g_u = torch.empty_like(u)
        g_B = torch.empty_like(B)
        g_C = torch.empty_like(C)
        g_A = torch.zeros_like(A)
        seg_starts = list(range(0, length, seg))
        for i in reversed(range(len(seg_starts))):
            st = seg_starts[i]
            en = min(st + seg, length)
            ln = en - st
            h_start = starts[i]
            hs = buf.states(dt[st:en], v[st:en], A, B[st:en], h_start)          # h_t, [l, N, D, S]
            gy = g_yc[st:en]
            torch.linalg.vecdot(hs, gy[..., None], dim=2, out=g_C[st:en])       # sum_d gy * h
            a = buf.a[:ln]                                                      # (the scan clobbered it)
            torch.mul(dt[st:en, :, :, None], A2, out=a)
            a.exp2_()
            # Reverse scan G_t = gy_t C_t + a_{t+1} G_{t+1}; G after the segment is `carry`.
            b = b_buf[:ln]
            b[:-1] = a[1:]
            b[-1].fill_(1.0)
            G = g_buf[:ln]
            torch.mul(gy[..., None], C[st:en, :, None, :], out=G)
            _rscan_(b.view(ln, -1), G.view(ln, -1), carry.reshape(-1))       # G now dL/dh_t
            # x_t = v_t B_t: gradients of v and B.
            g_v = torch.linalg.vecdot(G, B[st:en, :, None, :])                  # [l, N, D]
            torch.linalg.vecdot(G, v[st:en, :, :, None], dim=2, out=g_B[st:en])  # sum_d G * v
            # a_t = exp(dt_t A): dL/d(dt_t A) = G_t * h_{t-1} * a_t.
            gz = b
            torch.mul(G[0], h_start, out=gz[0])
            if ln > 1:
                torch.mul(G[1:], hs[:-1], out=gz[1:])
            gz.mul_(a)
            carry = a[0] * G[0]                                                 # dL/dh_start
            g_dt[st:en] = torch.linalg.vecdot(gz, A).addcmul_(g_v, u[st:en])
            g_A += gz.mul_(dt[st:en, :, :, None]).sum((0, 1))                  # (an einsum: slow bmm)
            g_u[st:en] = g_v * dt[st:en]
        return g_dt, g_u, g_A, g_B, g_C, carry


def selective_scan_chunked(
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
    """Return ``(y [N, D, L] in u's dtype, h_last [N, D, S] fp32)``, exactly as ``selective_scan_ref``.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t;  y_t = <h_t, C_t> + D * u_t;  y *= silu(z).
    """
    dtype_in = u.dtype
    n, d, length = u.shape
    n_state = A.shape[1]
    # fp32 maths (float64 only when the inputs are float64: gradcheck).
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    u32 = u.to(cdt)
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20 like the CUDA kernel
    if h0 is None:
        h0 = torch.zeros(n, d, n_state, device=u.device, dtype=cdt)
    if length == 0:
        return u.new_empty(n, d, 0), h0.to(cdt).clone()
    core = (delta.permute(2, 0, 1).contiguous(), u32.permute(2, 0, 1).contiguous(), A.to(cdt),
            B.to(cdt).permute(2, 0, 1).contiguous(), C.to(cdt).permute(2, 0, 1).contiguous(), h0.to(cdt))
    if torch.is_grad_enabled() and any(t.requires_grad for t in core):
        yc, h = _ScanCore.apply(*core)
    else:
        yc, h, _ = _forward_core(*core, save_starts=False)
    y = yc.permute(1, 2, 0)
    if D is not None:
        y = y + u32 * D.to(cdt)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(dtype_in), h.contiguous()
