"""Triton kernels for the Mamba v1 selective scan and causal conv1d, starting from a carried state.

Same signatures and semantics as ``scan_ref`` (the oracle); the released mamba_ssm kernels
cannot start a multi-token scan from a given state, which streaming needs.

Design:
- Selective scan: one program per (sequence n, block of channels); it walks the sequence
  token by token with the [channels, d_state] state in registers (fp32), so a chunk of a
  stream continues exactly where the previous chunk stopped. delta_bias + softplus, the D skip
  and the SiLU(z) gate are fused; only y and the final state are written.
- Causal conv1d: embarrassingly parallel over (n, channel block, token block); the K-1 inputs
  before the chunk come from the carried tail, and the program holding the first token block
  also writes the new tail.
- All loads use the tensors' own strides (the per-channel vectors D, delta_bias and bias too:
  a strided or expanded view is read correctly, not as if it were contiguous), so views (a
  transposed [N, L, D] activation, B and C sliced out of the x_proj output) need no copies.
  The channels-fastest (token-major) layout is the fast one: the per-token loads of
  neighbouring channels are then contiguous.

Importing this module needs triton; launching on CPU tensors needs TRITON_INTERPRET=1 set
before triton was imported (tests do this in a subprocess).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

# FP fusion (a*b+c as one FMA) on, explicitly: newer Triton releases turn its default off, which
# would shift results in the last bits. Set before triton is imported; a value set by
# the user wins (0 matches Triton >= 3.10 and the numerics of unfused PyTorch code).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, h0_ptr, y_ptr, h_out_ptr,
    n_channels, seqlen, n_state,
    stride_u_n, stride_u_d, stride_u_l,
    stride_dt_n, stride_dt_d, stride_dt_l,
    stride_A_d, stride_A_s,
    stride_B_n, stride_B_s, stride_B_l,
    stride_C_n, stride_C_s, stride_C_l,
    stride_z_n, stride_z_d, stride_z_l,
    stride_h0_n, stride_h0_d, stride_h0_s,
    stride_y_n, stride_y_d, stride_y_l,
    stride_ho_n, stride_ho_d, stride_ho_s,
    stride_D, stride_db,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # int64 sequence index: N * stride_n exceeds 2**31 for large batches of windows.
    pid_n = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    mask_d = offs_d < n_channels
    mask_s = offs_s < n_state
    mask_ds = mask_d[:, None] & mask_s[None, :]

    # exp(dt * A) is computed as exp2(dt * A * log2(e)): one multiply saved per state element.
    A = tl.load(A_ptr + offs_d[:, None] * stride_A_d + offs_s[None, :] * stride_A_s, mask=mask_ds, other=0.0)
    A_log2 = A.to(tl.float32) * 1.4426950408889634
    if HAS_D:
        D_skip = tl.load(D_ptr + offs_d * stride_D, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        dt_bias = tl.load(delta_bias_ptr + offs_d * stride_db, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_n * stride_h0_n + offs_d[:, None] * stride_h0_d + offs_s[None, :] * stride_h0_s,
                    mask=mask_ds, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_S), dtype=tl.float32)

    u_ptrs = u_ptr + pid_n * stride_u_n + offs_d * stride_u_d
    dt_ptrs = delta_ptr + pid_n * stride_dt_n + offs_d * stride_dt_d
    B_ptrs = B_ptr + pid_n * stride_B_n + offs_s * stride_B_s
    C_ptrs = C_ptr + pid_n * stride_C_n + offs_s * stride_C_s
    y_ptrs = y_ptr + pid_n * stride_y_n + offs_d * stride_y_d
    if HAS_Z:
        z_ptrs = z_ptr + pid_n * stride_z_n + offs_d * stride_z_d

    for _ in range(seqlen):
        u = tl.load(u_ptrs, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptrs, mask=mask_d, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptrs, mask=mask_s, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptrs, mask=mask_s, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt = dt + dt_bias
        if DELTA_SOFTPLUS:
            # PyTorch softplus (threshold 20), inlined (helper calls are slow in the interpreter).
            # log1p(e) via Goldberg's trick log(w) * e / (w - 1), w = 1 + e: keeps full relative
            # precision for tiny e, where a plain log(1 + e) would lose it.
            e = tl.exp(tl.minimum(dt, 20.0))
            w = 1.0 + e
            log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
            dt = tl.where(dt > 20.0, dt, log1p_e)
        # Masked channels/states: A = 0 and B = C = 0 keep h at 0 and add nothing to y.
        h = tl.exp2(dt[:, None] * A_log2) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += D_skip * u
        if HAS_Z:
            zt = tl.load(z_ptrs, mask=mask_d, other=0.0).to(tl.float32)
            y *= zt / (1.0 + tl.exp(-zt))  # silu(z)
            z_ptrs += stride_z_l
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        u_ptrs += stride_u_l
        dt_ptrs += stride_dt_l
        B_ptrs += stride_B_l
        C_ptrs += stride_C_l
        y_ptrs += stride_y_l

    tl.store(h_out_ptr + pid_n * stride_ho_n + offs_d[:, None] * stride_ho_d + offs_s[None, :] * stride_ho_s,
             h, mask=mask_ds)


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, tail_ptr, out_ptr, tail_out_ptr,
    n_channels, seqlen,
    stride_x_n, stride_x_d, stride_x_l,
    stride_w_d, stride_w_k,
    stride_t_n, stride_t_d, stride_t_k,
    stride_o_n, stride_o_d, stride_o_l,
    stride_to_n, stride_to_d, stride_to_k,
    stride_bias,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TAIL: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < n_channels
    mask_l = offs_l < seqlen
    x_base = x_ptr + pid_n * stride_x_n + offs_d[:, None] * stride_x_d
    t_base = tail_ptr + pid_n * stride_t_n + offs_d[:, None] * stride_t_d

    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    # Padded input xp = [tail (K-1), x (L)]; out[t] = sum_k w[k] * xp[t + k]. Tap k=K-1 is the
    # current token; positions before the chunk read the tail (or zeros without one).
    for k in tl.static_range(K):
        w_k = tl.load(w_ptr + offs_d * stride_w_d + k * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
        src = offs_l + (k - (K - 1))
        in_x = (src >= 0)[None, :] & mask_l[None, :] & mask_d[:, None]
        xv = tl.load(x_base + src[None, :] * stride_x_l, mask=in_x, other=0.0).to(tl.float32)
        if HAS_TAIL:
            in_tail = (src < 0)[None, :] & mask_l[None, :] & mask_d[:, None]
            xv += tl.load(t_base + (offs_l + k)[None, :] * stride_t_k, mask=in_tail, other=0.0).to(tl.float32)
        acc += w_k[:, None] * xv
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    out_ptrs = out_ptr + pid_n * stride_o_n + offs_d[:, None] * stride_o_d + offs_l[None, :] * stride_o_l
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_d[:, None] & mask_l[None, :])

    if pid_l == 0:
        # New tail = last K-1 entries of xp, i.e. xp[L + j]; for L < K-1 some still come from the old tail.
        j = tl.arange(0, BLOCK_K)
        mask_j = j < K - 1
        pos = seqlen + j
        from_x = (pos >= K - 1) & mask_j
        m_x = mask_d[:, None] & from_x[None, :]
        vals = tl.load(x_base + (pos - (K - 1))[None, :] * stride_x_l, mask=m_x, other=0.0)
        if HAS_TAIL:
            m_t = mask_d[:, None] & ((pos < K - 1) & mask_j)[None, :]
            vals += tl.load(t_base + pos[None, :] * stride_t_k, mask=m_t, other=0.0).to(vals.dtype)
        tl.store(tail_out_ptr + pid_n * stride_to_n + offs_d[:, None] * stride_to_d + j[None, :] * stride_to_k,
                 vals.to(tail_out_ptr.dtype.element_ty), mask=mask_d[:, None] & mask_j[None, :])


def _is_interpreted(kernel) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(kernel, InterpretedFunction)


# Triton decides at decoration time (TRITON_INTERPRET at import): CPU tensors need this True.
INTERPRETED = _is_interpreted(_selective_scan_fwd_kernel)


def _empty_like_layout(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Empty [N, D, L] tensor in x's memory order: token-major views stay token-major so the
    next kernel (and the out_proj matmul) reads them without a copy."""
    n, d, length = x.shape
    if x.stride(1) == 1 and d > 1 and length > 1:
        return torch.empty(n, length, d, device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty(n, d, length, device=x.device, dtype=dtype)


def _vector_stride(v: torch.Tensor, d: int) -> int:
    """Stride of a per-channel vector [d] (a strided or expanded view is fine, stride 0 too)."""
    if v.shape != (d,):
        raise ValueError(f"expected a [{d}] vector, got {tuple(v.shape)}")
    return v.stride(0)


def _on_device_of(t: torch.Tensor):
    """Make ``t``'s GPU current for the launch: Triton launches on the *current* device and its
    stream, not on the tensors' device, so tensors on cuda:1 with cuda:0 current would be
    read from the wrong context. A no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device_of(t)


def _scan_block_d(n: int, d: int, device: torch.device) -> int:
    """Channels per program. On GPUs, small blocks give enough programs to hide the latency of
    the token-by-token loop when few windows are in flight (e.g. 28 for one 512x1024 frame);
    large ones keep d_state within a thread. The interpreter prefers few, wide programs."""
    max_block = max(2, min(64, triton.next_power_of_2(d)))
    if device.type != "cuda":
        return max_block
    target_programs = 8192  # ~ 132 SMs x 64 single-warp programs (to tune on the GPU)
    block = triton.next_power_of_2(max(1, (n * d) // target_programs))
    return int(min(max_block, max(2, block)))


def scan_block_choices(d: int, device: torch.device) -> Tuple[int, ...]:
    """Every BLOCK_D that :func:`scan_config` can pick for ``d`` channels on ``device`` (the
    start-up self-check and the offline compile test cover exactly these)."""
    max_block = max(2, min(64, triton.next_power_of_2(d)))
    if torch.device(device).type != "cuda":
        return (max_block,)
    return tuple(2 ** i for i in range(1, max_block.bit_length()))


def scan_config(n: int, d: int, s: int, device, block_d: Optional[int] = None,
                num_warps: Optional[int] = None) -> Tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_S, num_warps)`` of a scan launch (explicit values win)."""
    block_s = max(2, triton.next_power_of_2(s))
    block_d = block_d or _scan_block_d(n, d, torch.device(device))
    if num_warps is None:
        num_warps = max(1, min(8, block_d * block_s // 512))
    return block_d, block_s, num_warps


def conv_config(d: int, length: int, k: int, device, block_d: Optional[int] = None,
                block_l: Optional[int] = None) -> Tuple[int, int, int, int]:
    """``(BLOCK_D, BLOCK_L, BLOCK_K, num_warps)`` of a conv launch (explicit values win)."""
    on_gpu = torch.device(device).type == "cuda"
    block_d = block_d or min(64 if on_gpu else 128, triton.next_power_of_2(d))
    block_l = block_l or min(32 if on_gpu else 256, max(2, triton.next_power_of_2(length)))
    return block_d, block_l, max(2, triton.next_power_of_2(k - 1)), 4 if on_gpu else 1


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    delta_softplus: bool = True,
    *,
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``scan_ref.selective_scan_ref``; returns ``(y [N, D, L], h_last [N, D, S] fp32)``.

    ``block_d``/``num_warps`` are tuning knobs (tests use them to cover several tilings).
    """
    n, d, length = u.shape
    s = A.shape[1]
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"delta/z must match u {tuple(u.shape)}")
    if A.shape != (d, s) or B.shape != (n, s, length) or C.shape != (n, s, length):
        raise ValueError(f"expected A [{d},{s}], B/C [{n},{s},{length}]; got {tuple(A.shape)}, "
                         f"{tuple(B.shape)}, {tuple(C.shape)}")
    if h0 is not None and h0.shape != (n, d, s):
        raise ValueError(f"h0 must be [{n},{d},{s}], got {tuple(h0.shape)}")
    y = _empty_like_layout(u, u.dtype)
    h_last = torch.empty(n, d, s, device=u.device, dtype=torch.float32)
    if n == 0 or d == 0:
        return y, h_last
    block_d, block_s, num_warps = scan_config(n, d, s, u.device, block_d, num_warps)
    dummy = u  # stands in for absent optional tensors (never read: constexpr flags)
    z_t = z if z is not None else dummy
    h0_t = h0 if h0 is not None else h_last
    D_t = D if D is not None else A[:, 0]
    db_t = delta_bias if delta_bias is not None else A[:, 0]
    grid = (n, triton.cdiv(d, block_d))
    with _on_device_of(u):
        _selective_scan_fwd_kernel[grid](
            u, delta, A, B, C, D_t, z_t, db_t, h0_t, y, h_last,
            d, length, s,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_t.stride(),
            *h0_t.stride(), *y.stride(), *h_last.stride(), _vector_stride(D_t, d), _vector_stride(db_t, d),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
            DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_S=block_s, num_warps=num_warps,
        )
    return y, h_last


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    tail: Optional[torch.Tensor] = None,
    activation: bool = True,
    *,
    block_d: Optional[int] = None,
    block_l: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``scan_ref.causal_conv1d_ref``; returns ``(out [N, D, L], new_tail [N, D, K-1])``.

    ``weight`` may be [D, K] or the Conv1d layout [D, 1, K]; ``out``/``new_tail`` have x's dtype.
    """
    if weight.dim() == 3:
        weight = weight[:, 0, :]
    n, d, length = x.shape
    k = weight.shape[-1]
    if weight.shape[0] != d or k < 2:
        raise ValueError(f"weight must be [{d}, K>=2], got {tuple(weight.shape)}")
    if tail is not None and tail.shape != (n, d, k - 1):
        raise ValueError(f"tail must be [{n},{d},{k - 1}], got {tuple(tail.shape)}")
    out = _empty_like_layout(x, x.dtype)
    new_tail = torch.empty(n, d, k - 1, device=x.device, dtype=x.dtype)
    if n == 0 or d == 0:
        return out, new_tail
    block_d, block_l, block_k, num_warps = conv_config(d, length, k, x.device, block_d, block_l)
    tail_t = tail if tail is not None else new_tail
    bias_t = bias if bias is not None else weight[:, 0]
    grid = (n, triton.cdiv(d, block_d), max(1, triton.cdiv(length, block_l)))
    with _on_device_of(x):
        _causal_conv1d_fwd_kernel[grid](
            x, weight, bias_t, tail_t, out, new_tail,
            d, length,
            *x.stride(), *weight.stride(), *tail_t.stride(), *out.stride(), *new_tail.stride(),
            _vector_stride(bias_t, d),
            K=k, HAS_BIAS=bias is not None, HAS_TAIL=tail is not None, SILU=bool(activation),
            BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_K=block_k, num_warps=num_warps,
        )
    return out, new_tail
