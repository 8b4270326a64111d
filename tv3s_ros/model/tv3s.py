"""TV3S network: a registered backbone (MiT in the published presets) + TV3S head, with clip,
streaming and per-frame baseline inference.

Exact streaming: ``forward_stream`` on frames 1..t (state carried) returns the logits that
``forward_clip(frames[:, :t])`` returns for frame t. Both run the same head code; the clip
scans each window's whole ``(t, row, col)`` token sequence at once from a zero state, the
stream scans the same sequence one frame-chunk at a time from the carried state.

Inference only: every method runs under ``torch.no_grad`` and refuses training mode
(BatchNorm batch statistics would couple the batch entries / cameras).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import build_backbone
from .config import ModelConfig
from .head import TV3SHead
from .state import StreamState

__all__ = ["TV3S"]


class TV3S(nn.Module):
    """TV3S segmentor with official state-dict keys ``backbone.*`` and ``decode_head.*``.

    Frames are float, already normalised (official mean/std, RGB), ``[..., 3, H, W]``.
    Logits are returned at the input size (official: ``linear_pred2`` on the Mamba grid,
    bilinear to c1 size, bilinear to the input size). The model is built in eval mode.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        self.decode_head = TV3SHead.from_config(cfg, self.backbone.out_channels)
        self.eval()

    def _check_eval(self) -> None:
        if self.training:
            raise RuntimeError("TV3S is inference-only: call model.eval() first")

    def _logits(self, logits_c1: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits_c1, size=size, mode="bilinear", align_corners=False)

    def features(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """Backbone ``[N, 3, H, W] -> [c1, c2, c3, c4]`` (strides 4..32)."""
        return self.backbone(frames)

    @torch.no_grad()
    def forward_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """Clip inference: ``frames [B, T, 3, H, W]`` -> last-frame logits ``[B, K, H, W]``.

        The temporal head runs over all T frames from a zero state (the official clip path
        for T = 4, the same computation for any T >= 1, without the short-clip fallbacks).
        """
        self._check_eval()
        if frames.dim() != 5:
            raise ValueError(f"expected frames [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t, _, h, w = frames.shape
        if t < 1:
            raise ValueError("a clip needs at least one frame")
        return self._clip_logits(self.features(frames.reshape(b * t, *frames.shape[2:])), b, (h, w))

    @torch.no_grad()
    def forward_clip_features(self, feats: Sequence[torch.Tensor], batch: int,
                              size: Tuple[int, int]) -> torch.Tensor:
        """:meth:`forward_clip` from backbone features already computed.

        ``feats``: :meth:`features` of the clip's ``batch * T`` frames (frame-major per clip:
        clip 0's T frames, then clip 1's ...); ``size``: the input ``(H, W)``. The backbone sees
        every frame alone, so features computed once per frame and concatenated give the same
        logits as :meth:`forward_clip` (tv3s-eval caches them across overlapping clips).
        """
        self._check_eval()
        return self._clip_logits(feats, batch, size)

    def _clip_logits(self, feats: Sequence[torch.Tensor], batch: int, size: Tuple[int, int]) -> torch.Tensor:
        # Undecorated: the benchmark's training step unwraps forward_clip's no_grad and must
        # keep the graph through this call.
        return self._logits(self.decode_head(feats, batch), size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_clip`."""
        return self.forward_clip(frames)

    def new_state(self, batch_size: int = 1) -> StreamState:
        """An empty stream state for ``batch_size`` independent streams (sized at the first frame)."""
        return StreamState(batch_size)

    @torch.no_grad()
    def forward_stream(self, frame: torch.Tensor, state: StreamState) -> Tuple[torch.Tensor, StreamState]:
        """Streaming inference: ``frame [B, 3, H, W]`` with ``state`` -> ``(logits [B, K, H, W], state)``.

        ``state`` is updated in place and returned. All entries of a batch must have the same
        input size; reset entries (``state.reset(mask)``) start a new clip.
        """
        self._check_eval()
        if frame.dim() != 4:
            raise ValueError(f"expected frame [B, 3, H, W], got {tuple(frame.shape)}")
        b, _, h, w = frame.shape
        logits = self.decode_head(self.features(frame), b, state=state, input_size=(h, w))
        return self._logits(logits, (h, w)), state

    @torch.no_grad()
    def forward_baseline(self, frame: torch.Tensor) -> torch.Tensor:
        """Per-frame SegFormer (no temporal context): ``linear_pred`` on the fused features,
        resized to the input size. ``frame [B, 3, H, W] -> [B, K, H, W]``."""
        self._check_eval()
        head = self.decode_head
        return self._logits(head.baseline(head.fuse(self.features(frame))), frame.shape[-2:])
