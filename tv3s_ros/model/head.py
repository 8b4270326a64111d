"""TV3S decode head: SegFormer all-MLP fusion, shifted-window Mamba blocks, two classifiers.

Module names and registration order reproduce the official ``TV3SHead_shift(_city)`` so that
``state_dict`` keys and their order equal the official checkpoints (``decode_head.*``).

The computation is split so that clip inference and streaming share every line:

* :meth:`TV3SHead.fuse` — per-frame fused features (MLP decoder), ``[N, E, h, w]`` at c1 size.
* :meth:`TV3SHead.temporal` — Mamba blocks over ``T`` frames starting from a given state
  (zero state when none), returning the normalised last frame on the Mamba grid.
  A clip is one call with all ``T`` frames (each window is one sequence of ``T*w*w``
  tokens); streaming is one call per frame with the state carried.
* :meth:`TV3SHead.classify` — ``linear_pred2`` and the resize back to c1 size.
* :meth:`TV3SHead.baseline` — ``linear_pred`` on the fused features (per-frame SegFormer).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba import MambaBlock, RMSNorm, add_rms_norm
from .partition import Partition, grid_size, layer_partition
from .state import NO_MIXER, StateSpec, StreamState

__all__ = ["MLP", "ConvBNReLU", "ShiftedMambaBlocks", "TV3SHead", "Carry"]

# Functional Mamba state: per layer, per piece group, (conv_tail, ssm_state) for B*pieces sequences.
Carry = List[List[Tuple[torch.Tensor, torch.Tensor]]]


class MLP(nn.Module):
    """Per-pixel linear embedding of one backbone level (official ``linear_c*``)."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w] -> [N, E, h, w]``."""
        n, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) -> BatchNorm -> ReLU, with mmcv ConvModule names ``conv`` / ``bn``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ShiftedMambaBlocks(nn.Module):
    """Official ``vs``: ``layers[n]`` (mixer + norm) alternating unshifted / shifted
    partitions, and the final ``norm_f``. Operates on channels-last tokens."""

    def __init__(self, embed_dim: int, depth: int, window: int, shift: int, real_shift: bool = True,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, norm_eps: float = 1e-5):
        super().__init__()
        if real_shift and not 0 < shift < window:
            raise ValueError(f"real shift needs 0 < shift < window (got shift={shift}, window={window})")
        self.window, self.shift, self.real_shift = window, shift, real_shift
        self.layers = nn.ModuleList(
            [MambaBlock(embed_dim, d_state=d_state, d_conv=d_conv, expand=expand, norm_eps=norm_eps)
             for _ in range(depth)])
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)

    @property
    def window2(self) -> int:
        """Window of the odd layers (only differs without real shift)."""
        return self.window if self.real_shift else self.window + self.shift

    def partition(self, layer: int, grid: Tuple[int, int]) -> Partition:
        return layer_partition(grid[0], grid[1], layer, self.window, self.shift, self.real_shift)

    def state_layout(self, grid: Tuple[int, int]) -> List[List[int]]:
        """Sequences per piece group per layer: the shape of a :class:`StreamState`."""
        return [[g.count for g in self.partition(n, grid).groups] for n in range(len(self.layers))]

    def state_spec(self, grid: Tuple[int, int], input_size: Tuple[int, int], device: torch.device,
                   dtype: torch.dtype) -> StateSpec:
        """The :class:`StreamState` these blocks carry for ``grid`` (frames of ``input_size``);
        new buffers go to ``device``, conv tails in ``dtype``. All layers' mixers are alike."""
        mixer = self.layers[0].mixer.state_spec if len(self.layers) else NO_MIXER
        return StateSpec(grid, input_size, self.state_layout(grid), mixer, device, dtype)

    def run(self, tokens: torch.Tensor, grid: Tuple[int, int], carry: Optional[Carry] = None,
            last_only: bool = True) -> Tuple[torch.Tensor, Carry]:
        """Functional core: ``tokens [B, T, H'*W', E]`` from ``carry`` (zero state when None).

        ``carry[layer][group] = (conv_tail [B*pieces, d_inner, d_conv-1], ssm_state [B*pieces,
        d_inner, d_state])``. Returns the final-normalised output (last frame ``[B, H'*W', E]``,
        or every frame ``[B, T, H'*W', E]`` when not ``last_only``) and the outgoing carry.
        Nothing is written in place, so gradients flow through the carry (training).
        """
        b, t = tokens.shape[:2]
        hidden, residual = tokens, None
        new_carry: Carry = []
        for n, layer in enumerate(self.layers):
            normed, residual = layer.add_norm(hidden, residual)
            part = self.partition(n, grid)
            outs, layer_carry = [], []
            for gi, seq in enumerate(part.to_sequences(normed)):
                tail, ssm = carry[n][gi] if carry is not None else (None, None)
                y, tail, ssm = layer.mixer(seq, tail, ssm)
                outs.append(y)
                layer_carry.append((tail, ssm))
            new_carry.append(layer_carry)
            hidden = part.from_sequences(outs, b, t)
        if not last_only:
            if residual is None:
                return self.norm_f(hidden), new_carry
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps)[0], new_carry
        if residual is None:  # no Mamba layers
            return self.norm_f(hidden[:, -1]), new_carry
        # The final norm is per token: only the last frame is needed.
        return add_rms_norm(hidden[:, -1], residual[:, -1], self.norm_f.weight, self.norm_f.eps)[0], new_carry

    def forward(self, tokens: torch.Tensor, grid: Tuple[int, int],
                state: Optional[StreamState] = None) -> torch.Tensor:
        """Run ``tokens [B, T, H'*W', E]`` (frame-major, raster order) through all blocks.

        With ``state`` the mixers start from (and write back) its buffers; otherwise from
        zero. Returns the final-normalised last frame ``[B, H'*W', E]``.
        """
        if state is None:
            return self.run(tokens, grid)[0]
        b = tokens.shape[0]
        part_counts = self.state_layout(grid)
        carry = [[(tail.view(b * count, *tail.shape[2:]), ssm.view(b * count, *ssm.shape[2:]))
                  for tail, ssm, count in zip(state.conv_tails[n], state.ssm_states[n], part_counts[n])]
                 for n in range(len(self.layers))]
        y, new_carry = self.run(tokens, grid, carry)
        # In place: stable buffer addresses for CUDA graphs (inference only).
        for n, layer_carry in enumerate(new_carry):
            for gi, (tail, ssm) in enumerate(layer_carry):
                state.conv_tails[n][gi].copy_(tail.reshape(state.conv_tails[n][gi].shape))
                state.ssm_states[n][gi].copy_(ssm.reshape(state.ssm_states[n][gi].shape))
        return y


class TV3SHead(nn.Module):
    """TV3S decode head with the official parameter names (``decode_head.*``)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256,
                 window: int = 20, shift: int = 10, real_shift: bool = True, n_mambas: int = 8,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, head_channels: int = 128):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        # Registration order = official state_dict order.
        self.conv_seg = nn.Conv2d(head_channels, num_classes, kernel_size=1)  # unused (key compatibility)
        self.linear_c4 = MLP(c4, embed_dim)
        self.linear_c3 = MLP(c3, embed_dim)
        self.linear_c2 = MLP(c2, embed_dim)
        self.linear_c1 = MLP(c1, embed_dim)
        self.vs = ShiftedMambaBlocks(embed_dim, n_mambas, window, shift, real_shift,
                                     d_state=d_state, d_conv=d_conv, expand=expand)
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        self.linear_pred2 = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, in_channels: Sequence[int]) -> "TV3SHead":
        """Build from a :class:`~tv3s_ros.model.config.ModelConfig`."""
        return cls(in_channels, cfg.num_classes, embed_dim=cfg.embed_dim, window=cfg.window,
                   shift=cfg.shift, real_shift=cfg.real_shift, n_mambas=cfg.n_mambas,
                   d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                   head_channels=cfg.head_channels)

    # ------------------------------------------------------------------ per frame
    def fuse(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """SegFormer MLP decoder: ``[c1..c4]`` (each ``[N, C_s, h_s, w_s]``) -> ``[N, E, h, w]``.

        Officially ``linear_fuse(cat([up(linear_c4(c4)), up(linear_c3(c3)), up(linear_c2(c2)),
        linear_c1(c1)]))``. Computed here in an equivalent, cheaper order: the fuse conv (1x1,
        no bias) splits into one [E, E] block per level, and a per-pixel linear map commutes
        with bilinear upsampling (whose weights sum to 1, so biases pass through too). Each
        level's MLP and conv block fold into one linear map applied at the level's own
        resolution, then upsampled and summed, so no 4E-channel map is formed at c1 size (on
        CPU the concatenation and the 1x1 conv over it were a fifth of a B0 stream frame). Equal
        to the official order up to fp32 rounding. With BatchNorm on its running statistics
        (eval mode) its per-channel affine map folds into those linear maps too (one pass over
        the c1-size map less); in training mode it runs as a module on the sum. ReLU follows.
        """
        c1, c2, c3, c4 = feats
        size = c1.shape[2:]
        e = self.embed_dim
        weight = self.linear_fuse.conv.weight.flatten(1)             # [E, 4E], inputs c4, c3, c2, c1
        bn = self.linear_fuse.bn
        fold = not bn.training and bn.running_var is not None
        if fold:
            scale = (bn.running_var + bn.eps).rsqrt()
            scale = scale if bn.weight is None else scale * bn.weight
            shift = -bn.running_mean * scale
            shift = shift if bn.bias is None else shift + bn.bias
        total = None
        for i, (mlp, c) in enumerate(((self.linear_c4, c4), (self.linear_c3, c3), (self.linear_c2, c2),
                                      (self.linear_c1, c1))):
            block = weight[:, i * e:(i + 1) * e]
            w, b = block @ mlp.proj.weight, block @ mlp.proj.bias
            if fold:
                w, b = scale[:, None] * w, scale * b + (shift if c is c1 else 0.0)
            # As a 1x1 conv: the output stays NCHW-contiguous (a token-major view would make
            # the upsampling 3-6x slower on CPU).
            part = F.conv2d(c, w[:, :, None, None], b)
            if c is not c1:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            # In place: no new c1-size map per level (add's backward needs neither operand).
            total = part if total is None else total.add_(part)
        return F.relu_(total) if fold else F.relu(bn(total))

    def baseline(self, fused: torch.Tensor) -> torch.Tensor:
        """Per-frame classifier ``linear_pred`` (no temporal context), at c1 size."""
        return self.linear_pred(fused)

    def grid_size(self, height: int, width: int) -> Tuple[int, int]:
        """Mamba grid for a c1 map of ``height x width`` (official rounding, see partition)."""
        return grid_size(height, width, self.vs.window, self.vs.window2)

    # ------------------------------------------------------------------ temporal
    def to_tokens(self, fused: torch.Tensor, batch: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``fused [B*T, E, h, w]`` (b outer, t inner) -> ``(tokens [B, T, H'*W', E], grid)``."""
        n, e, h, w = fused.shape
        if n % batch:
            raise ValueError(f"{n} feature maps do not split into batch {batch}")
        grid = self.grid_size(h, w)
        x = F.interpolate(fused, size=grid, mode="bilinear", align_corners=False)
        tokens = x.reshape(batch, n // batch, e, grid[0] * grid[1]).transpose(2, 3)   # [B, T, P, E]
        return tokens.contiguous(), grid

    @staticmethod
    def from_tokens(y: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """``[..., H'*W', E] -> [..., E, H', W']``."""
        return y.transpose(-1, -2).reshape(*y.shape[:-2], y.shape[-1], grid[0], grid[1])

    def temporal(self, fused: torch.Tensor, batch: int, state: Optional[StreamState] = None,
                 input_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Mamba blocks over the ``T = N / batch`` frames of ``fused [B*T, E, h, w]`` (b outer, t inner).

        Starts from ``state`` (sized on first use, updated in place, ``frames_seen += T``) or
        from zero when None. Returns the last frame's output on the grid, ``[B, E, H', W']``.
        """
        n, e, h, w = fused.shape
        tokens, grid = self.to_tokens(fused, batch)
        if state is not None:
            if state.batch_size != batch:
                raise ValueError(f"state holds {state.batch_size} streams, got a batch of {batch}")
            state.ensure(self.vs.state_spec(grid, input_size or (h, w), fused.device, fused.dtype))
        y = self.vs(tokens, grid, state)
        if state is not None:
            state.advance(n // batch)
        return self.from_tokens(y, grid)

    def temporal_carry(self, fused: torch.Tensor, batch: int, carry: Optional[Carry] = None
                       ) -> Tuple[torch.Tensor, Carry]:
        """Training variant of :meth:`temporal`: every frame's output ``[B, T, E, H', W']`` and
        the outgoing carry, with gradients through the carry (no in-place state)."""
        tokens, grid = self.to_tokens(fused, batch)
        y, carry = self.vs.run(tokens, grid, carry, last_only=False)
        return self.from_tokens(y, grid), carry

    def classify(self, y: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``linear_pred2`` on the grid output, then bilinear resize to c1 ``size``."""
        return F.interpolate(self.linear_pred2(y), size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, feats: Sequence[torch.Tensor], batch: int, state: Optional[StreamState] = None,
                input_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Backbone features of ``B*T`` frames -> last-frame logits ``[B, K, h, w]`` at c1 size."""
        fused = self.fuse(feats)
        y = self.temporal(fused, batch, state, input_size)
        return self.classify(y, fused.shape[2:])
