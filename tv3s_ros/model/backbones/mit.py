"""MiT (Mix Transformer, SegFormer) backbones mit_b0 .. mit_b5 in plain PyTorch.

Parameter names match the official SegFormer / TV3S ``mix_transformer.py`` so official
checkpoints load unchanged under the ``backbone.`` prefix:
``patch_embed{s}.proj/norm``, ``block{s}.{i}.norm1/attn.{q,kv,sr,norm,proj}/norm2/mlp.{fc1,dwconv.dwconv,fc2}``
and ``norm{s}`` for stages s = 1..4.

LayerNorm eps values follow the official code (they differ between modules): the block norms
and the stage norms use 1e-6 (the ``norm_layer`` of ``mit_b*``), while the patch-embedding norm
and the spatial-reduction norm inside attention are plain ``nn.LayerNorm`` (1e-5).
Dropout is not used (rate 0 in the official configs); drop-path (stochastic depth) is off
unless a trainer sets it (:meth:`MixVisionTransformer.set_drop_path`) and acts in training
mode only, so inference is unaffected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import register

BLOCK_NORM_EPS = 1e-6    # norm1, norm2 of every block and the per-stage norm{s}
PLAIN_NORM_EPS = 1e-5    # patch_embed{s}.norm and attn.norm (nn.LayerNorm default)


@dataclass(frozen=True)
class MiTSpec:
    """Hyper-parameters of one MiT variant."""

    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


_WIDE = (64, 128, 320, 512)
MIT_SPECS = {
    "mit_b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTSpec(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTSpec(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTSpec(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTSpec(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTSpec(_WIDE, (3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping patches, then LayerNorm over channels (tokens row-major)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=PLAIN_NORM_EPS)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced map (sr > 1)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=PLAIN_NORM_EPS)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(reduced)
        # kv channels: [0, C) keys, [C, 2C) values, each split head-major (official layout).
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv on the token map -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class _DWConv(nn.Module):
    """Wrapper only so the parameter is named ``mlp.dwconv.dwconv`` like the official code."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = 0.0   # stochastic depth rate (training only); not a parameter

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        # timm DropPath: drop the whole residual branch per sample, rescale the kept ones.
        if not self.training or self.drop_path <= 0.0:
            return branch
        keep = 1.0 - self.drop_path
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
        return branch * mask / keep

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x), h, w))
        return x + self._drop(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """Four-stage MiT encoder; ``forward(x [N,3,H,W]) -> [c1, c2, c3, c4]`` at strides 4, 8, 16, 32.

    Stage sizes are ceil(H/4), then ceil(./2) per stage (conv padding), as in the official code.
    """

    def __init__(self, embed_dims: Sequence[int], depths: Sequence[int],
                 num_heads: Sequence[int] = (1, 2, 5, 8), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 mlp_ratio: int = 4, in_chans: int = 3):
        super().__init__()
        self.out_channels: List[int] = list(embed_dims)
        self.depths = list(depths)
        # Registration order = official state_dict order: all patch embeddings, then per stage
        # its blocks followed by its norm.
        prev = in_chans
        for s in range(4):
            patch, stride = (7, 4) if s == 0 else (3, 2)
            setattr(self, f"patch_embed{s + 1}", OverlapPatchEmbed(prev, embed_dims[s], patch, stride))
            prev = embed_dims[s]
        for s in range(4):
            setattr(self, f"block{s + 1}", nn.ModuleList(
                MiTBlock(embed_dims[s], num_heads[s], mlp_ratio, sr_ratios[s]) for _ in range(depths[s])))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(embed_dims[s], eps=BLOCK_NORM_EPS))
        self.reset_parameters()

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 to ``rate`` over all blocks (official
        ``drop_path_rate``, 0.1 for mit_b*); only active in training mode."""
        blocks = [b for s in range(1, 5) for b in getattr(self, f"block{s}")]
        for i, block in enumerate(blocks):
            block.drop_path = float(rate) * i / max(len(blocks) - 1, 1)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official-style random init (uses the global torch RNG; no seeding here)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for s in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{s}")(x)
            for blk in getattr(self, f"block{s}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{s}")(x)
            # Contiguous NCHW like the official code (consumers may .view() it).
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w).contiguous()
            outs.append(x)
        return outs


@register("mit", MIT_SPECS)
def build(spec: MiTSpec) -> MixVisionTransformer:
    """A MiT variant with random (official-style) initialisation."""
    return MixVisionTransformer(spec.embed_dims, spec.depths, spec.num_heads, spec.sr_ratios, spec.mlp_ratio)
