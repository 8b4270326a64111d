"""Mamba v1 mixer that runs a whole chunk of tokens from a carried state, plus the block norms.

Parameter names, shapes and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``
(v2.2.5, the version TV3S pins), so official checkpoints load unchanged. Unlike the official
module, :meth:`Mamba.forward` takes the incoming state explicitly (causal-conv tail and SSM
state) and returns the outgoing one: running a sequence in chunks with the state carried is
identical to running it at once, which is what exact streaming relies on.

The block norm is the fused "add + RMSNorm" of mamba_ssm (``rms_norm_fn`` with
``prenorm=True, residual_in_fp32=True``), written out in plain PyTorch.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# Backend dispatch: Triton kernels on CUDA, the chunked PyTorch scan elsewhere (scan.py).
from .scan import causal_conv1d, selective_scan
from .state import MixerStateSpec

__all__ = ["Mamba", "RMSNorm", "MambaBlock", "add_rms_norm"]


class Mamba(nn.Module):
    """Mamba v1 selective-state-space mixer, ``[N, L, d_model] -> [N, L, d_model]``.

    N independent sequences of L tokens. The state of one sequence is
    ``conv_tail [d_inner, d_conv-1]`` (the last pre-conv inputs) and
    ``ssm_state [d_inner, d_state]`` (fp32).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: "int | str" = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        # Registration order = official state_dict order (A_log and D come first anyway,
        # being direct parameters).
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

        # Same initialisation as mamba_simple so that random weights give a sane, stable model:
        # dt_proj weight ~ U(+-dt_rank^-0.5), softplus(dt bias) log-uniform in [dt_min, dt_max].
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real: A = -(1..d_state) per channel; A_log and D are kept in fp32.
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))

    @property
    def state_spec(self) -> MixerStateSpec:
        """The state this mixer carries per sequence."""
        return MixerStateSpec(self.d_inner, self.d_conv, self.d_state)

    def new_state(self, batch: int, device=None, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero state for ``batch`` sequences: ``(conv_tail, ssm_state)``."""
        device = self.A_log.device if device is None else device
        spec = self.state_spec
        return (torch.zeros(spec.conv_shape(batch), device=device, dtype=dtype),
                torch.zeros(spec.ssm_shape(batch), device=device, dtype=torch.float32))

    def forward(
        self,
        x: torch.Tensor,
        conv_tail: Optional[torch.Tensor] = None,
        ssm_state: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``x [N, L, d_model]`` starting from the given state (zeros when None).

        Returns ``(y [N, L, d_model], new_conv_tail [N, d_inner, d_conv-1],
        new_ssm_state [N, d_inner, d_state] fp32)``.
        """
        xz = self.in_proj(x).transpose(1, 2)                        # [N, 2*d_inner, L]
        xs, z = xz.chunk(2, dim=1)
        xc, new_tail = causal_conv1d(xs, self.conv1d.weight.squeeze(1), bias=self.conv1d.bias,
                                     tail=conv_tail, activation=True)  # conv + SiLU
        x_dbl = self.x_proj(xc.transpose(1, 2))                     # [N, L, R + 2S]
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)      # bias goes in as delta_bias
        a = -torch.exp(self.A_log.float())
        y, new_state = selective_scan(
            xc, dt, a, b.transpose(1, 2), c.transpose(1, 2), D=self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), h0=ssm_state, delta_softplus=True)
        return self.out_proj(y.transpose(1, 2)), new_tail, new_state


def add_rms_norm(
    hidden: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: torch.Tensor,
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused-add RMSNorm of mamba_ssm (``residual_in_fp32=True``).

    ``residual_out = hidden + residual`` (or ``hidden`` for the first block) in fp32;
    ``out = residual_out / sqrt(mean(residual_out^2) + eps) * weight`` in ``hidden``'s dtype.
    """
    res = hidden.float() if residual is None else hidden.float() + residual.float()
    rstd = torch.rsqrt(res.square().mean(dim=-1, keepdim=True) + eps)
    return (res * rstd * weight.float()).to(hidden.dtype), res


class RMSNorm(nn.Module):
    """RMSNorm with the mamba_ssm parameter layout (``weight`` only, eps 1e-5)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalise ``hidden + residual`` (fp32 math), output in ``hidden``'s dtype."""
        return add_rms_norm(hidden, residual, self.weight, self.eps)[0]


class MambaBlock(nn.Module):
    """One ``vs.layers.n``: ``mixer`` (Mamba) and ``norm`` (RMSNorm), official names.

    The block is "add -> RMSNorm -> mixer": ``residual = hidden + residual`` (fp32),
    ``hidden = mixer(norm(residual))``. The norm is per token, so the caller applies
    :meth:`add_norm` on the whole grid and runs the mixer per window sequence.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm = RMSNorm(d_model, eps=norm_eps)

    def add_norm(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(norm(hidden + residual), hidden + residual in fp32)``; residual None on block 0."""
        return add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps)
