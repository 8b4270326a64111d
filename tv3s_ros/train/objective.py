"""Training forward passes and the official loss, for clips and for streaming-aware runs.

The official head in training (``TV3SHead_shift(_city).forward``) returns the per-frame
SegFormer logits (``linear_pred`` on the fused features, after Dropout2d 0.1) of every clip
frame plus the temporal logits of the last frame (``linear_pred2`` on the Mamba output, after
Dropout2d 0.1), each bilinearly resized to the label size. The loss
(``BaseDecodeHead_clips_flow(_city).losses``, mmseg 0.11 cross-entropy) is::

    loss = CE(temporal logits of the last frame, its label)
         + 0.5 * CE(per-frame logits, labels)

with the per-frame term over all clip frames for the VSPW head (``city_head: false``) and over
the last frame only for the Cityscapes head. CE ignores 255 and, as mmseg 0.11, averages over
*all* pixels (ignored ones count as 0). Optional per-class weights multiply each pixel's loss
by its class's weight (mmseg's ``class_weight``), still averaged over all pixels.

Streaming-aware runs apply the same per-frame loss at every frame of a longer run, each frame
being "the last frame" of its history, and average over the frames: the head runs frame by
frame (``chunk`` frames per call) from the carried Mamba state, exactly the node's
computation, and the state is detached every ``tbptt`` frames (truncated backpropagation;
``backward`` runs per segment, so memory holds one segment).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "AUX_WEIGHT", "cross_entropy", "clip_logits", "clip_loss", "stream_backward"]

IGNORE_INDEX = 255
AUX_WEIGHT = 0.5


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """mmseg 0.11 CE: logits ``[N, K, h, w]`` resized to the labels ``[N, H, W]``, mean over
    all pixels; ``weight [K]`` scales each pixel's loss by its class's weight."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE_INDEX,
                           reduction="none").mean()


def _features(model, frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, H, W]`` -> fused ``[B*T, E, h, w]``."""
    b, t = frames.shape[:2]
    return model.decode_head.fuse(model.features(frames.reshape(b * t, *frames.shape[2:])))


def clip_logits(model, frames: torch.Tensor, dropout: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Training forward of a clip: ``(temporal logits of the last frame [B, K, h, w],
    per-frame logits [B, T, K, h, w])`` at c1 size (the official head's training output)."""
    head = model.decode_head
    b, t = frames.shape[:2]
    fused = _features(model, frames)
    aux = head.linear_pred(F.dropout2d(fused, dropout, head.training))
    y = head.temporal(fused, b)                                   # last frame, [B, E, H', W']
    main = head.classify(F.dropout2d(y, dropout, head.training), fused.shape[2:])
    return main, aux.reshape(b, t, *aux.shape[1:])


def clip_loss(model, frames: torch.Tensor, labels: torch.Tensor, dropout: float = 0.1,
              class_weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Official clip loss; ``labels [B, T, H, W]`` (int64, 255 ignored)."""
    main, aux = clip_logits(model, frames, dropout)
    loss_main = cross_entropy(main, labels[:, -1], class_weight)
    if model.cfg.city_head:
        loss_aux = cross_entropy(aux[:, -1], labels[:, -1], class_weight)
    else:
        loss_aux = cross_entropy(aux.flatten(0, 1), labels.flatten(0, 1), class_weight)
    loss = loss_main + AUX_WEIGHT * loss_aux
    return loss, {"loss": loss.item(), "loss_main": loss_main.item(), "loss_aux": loss_aux.item()}


def stream_backward(model, frames: torch.Tensor, labels: torch.Tensor, tbptt: int = 0, chunk: int = 1,
                    dropout: float = 0.1, autocast=None, class_weight: Optional[torch.Tensor] = None
                    ) -> Dict[str, float]:
    """Streaming-aware loss of runs ``frames [B, L, 3, H, W]`` / ``labels [B, L, H, W]``,
    with ``backward()`` called per segment of ``tbptt`` frames (0: the whole run).

    Returns the run's mean losses (the gradients are those of that mean).
    """
    head = model.decode_head
    b, length = frames.shape[:2]
    tbptt = length if tbptt <= 0 else tbptt
    chunk = max(1, min(chunk, tbptt))
    autocast = autocast or contextlib.nullcontext
    carry = None
    totals = {"loss": 0.0, "loss_main": 0.0, "loss_aux": 0.0}
    for start in range(0, length, tbptt):
        stop = min(start + tbptt, length)
        with autocast():
            fused = _features(model, frames[:, start:stop])        # backbone batch: one segment
            fused = fused.reshape(b, stop - start, *fused.shape[1:])
            seg_main = seg_aux = 0.0
            for c0 in range(0, stop - start, chunk):
                part = fused[:, c0:c0 + chunk]
                n = part.shape[1]
                flat = part.flatten(0, 1)
                y, carry = head.temporal_carry(flat, b, carry)     # [B, n, E, H', W'], state carried
                main = head.classify(F.dropout2d(y.flatten(0, 1), dropout, head.training), flat.shape[2:])
                aux = head.linear_pred(F.dropout2d(flat, dropout, head.training))
                target = labels[:, start + c0:start + c0 + n].flatten(0, 1)
                # Per frame as in the clip loss, summed here and divided by the run length below.
                seg_main = seg_main + cross_entropy(main, target, class_weight) * n
                seg_aux = seg_aux + cross_entropy(aux, target, class_weight) * n
            seg_loss = (seg_main + AUX_WEIGHT * seg_aux) / length
        seg_loss.backward()
        totals["loss"] += seg_loss.item()
        totals["loss_main"] += seg_main.item() / length
        totals["loss_aux"] += seg_aux.item() / length
        # Truncated backpropagation: the next segment starts from the state's value only.
        carry = [[(tail.detach(), ssm.detach()) for tail, ssm in layer] for layer in carry]
    return totals
