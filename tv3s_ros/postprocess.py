"""Logits -> what the node publishes: labels, confidence, palette colours, overlay, coverage.

Everything runs in torch on the logits' device (the GPU in production) and only the requested
uint8/uint16 images and the small per-class tables come back to the host, in one transfer
batch and one synchronisation. No ROS here.

``Postprocessor`` has two halves: :meth:`~Postprocessor.device_outputs` (tensor-only, no host
synchronisation: a CUDA graph captures it with the model) and :meth:`~Postprocessor.to_results`
(the transfer and the per-frame numpy results); calling it runs both.

Definitions:

- labels: ``argmax`` over classes (first maximum on ties, as ``torch.argmax``); ``uint8``
  while ``num_classes <= 255`` (mono8), else ``uint16`` (mono16).
- confidence: maximum softmax probability, ``round(p * 255)`` as ``uint8``.
- color: ``palette[label]`` (rgb8); overlay: ``round((1 - alpha) * image + alpha * color)``
  with the image resized (bilinear) to the label size when they differ.
- coverage: classes present in ascending id order, their pixel counts, fractions of all
  pixels (summing to 1) and the mean (unquantised) confidence of their pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from tv3s_ros.model.palette import make_palette
from tv3s_ros.outputs import IMAGE_OUTPUTS, check_outputs, label_dtype

__all__ = [
    "PostprocessResult",
    "Postprocessor",
    "labels_and_confidence",
    "colorize",
    "blend",
    "quantize_confidence",
    "class_histogram",
]

def _device_label_dtype(num_classes: int) -> torch.dtype:
    # Narrowest signed/unsigned type torch supports everywhere; numpy reinterprets it below.
    if num_classes <= 255:
        return torch.uint8
    return torch.int16 if num_classes <= 32767 else torch.int32


def labels_and_confidence(logits: torch.Tensor, with_confidence: bool = True):
    """``[B, K, H, W]`` logits -> (labels int64 ``[B, H, W]``, max softmax float32 or None)."""
    logits = logits.float()
    labels = logits.argmax(dim=1)
    if not with_confidence:
        return labels, None
    # max softmax = 1 / sum(exp(l - max)): no full softmax tensor kept around.
    top = logits.amax(dim=1, keepdim=True)
    confidence = torch.exp(logits - top).sum(dim=1).reciprocal_()
    return labels, confidence


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """labels ``[..., H, W]`` -> ``[..., H, W, 3]`` uint8 via a ``[K, 3]`` uint8 palette."""
    return palette[labels.long()]


def blend(images: torch.Tensor, color: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """Alpha-blend uint8 ``[B, H, W, 3]`` images with palette colours of the label size.

    ``alpha`` may be a float or a 0-d float32 tensor on the images' device.
    """
    if images.shape[1:3] != color.shape[1:3]:
        # Label image at model resolution: bring the camera image to it.
        resized = F.interpolate(images.permute(0, 3, 1, 2).float(), size=tuple(color.shape[1:3]),
                                mode="bilinear", align_corners=False)
        base = resized.permute(0, 2, 3, 1)
    else:
        base = images.float()
    mixed = base * (1.0 - alpha) + color.float() * alpha
    return mixed.add_(0.5).clamp_(0, 255).to(torch.uint8)


def quantize_confidence(confidence: torch.Tensor) -> torch.Tensor:
    """Probabilities 0..1 -> uint8 0..255 (rounded)."""
    return (confidence * 255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)


def class_histogram(labels: torch.Tensor, num_classes: int, confidence: Optional[torch.Tensor] = None):
    """Per-frame pixel counts ``[B, K]`` int64 and summed confidence ``[B, K]`` float64 (or None).

    One scatter-add for the whole batch (frame b's classes live at ``b*K .. b*K+K-1``); unlike
    ``bincount`` it needs no device synchronisation.
    """
    b = labels.shape[0]
    index = (labels.long() + torch.arange(b, device=labels.device).view(b, 1, 1) * num_classes).reshape(-1)
    counts = torch.zeros(b * num_classes, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(0, index, torch.ones(1, dtype=torch.int64, device=labels.device).expand_as(index))
    conf_sum = None
    if confidence is not None:
        conf_sum = torch.zeros(b * num_classes, dtype=torch.float64, device=labels.device)
        conf_sum.scatter_add_(0, index, confidence.reshape(-1).double())
        conf_sum = conf_sum.view(b, num_classes)
    return counts.view(b, num_classes), conf_sum


@dataclass
class PostprocessResult:
    """One frame's results as numpy arrays; outputs that were not requested are None."""

    labels: Optional[np.ndarray] = None          # [H, W] uint8 / uint16
    color: Optional[np.ndarray] = None           # [H, W, 3] uint8
    overlay: Optional[np.ndarray] = None         # [H, W, 3] uint8
    confidence: Optional[np.ndarray] = None      # [H, W] uint8
    class_ids: Optional[np.ndarray] = None       # [N] uint16, ascending
    pixel_count: Optional[np.ndarray] = None     # [N] uint32
    fraction: Optional[np.ndarray] = None        # [N] float32, sums to 1
    mean_confidence: Optional[np.ndarray] = None  # [N] float32, 0..1
    height: int = 0
    width: int = 0


class Postprocessor:
    """Turns a batch of logits into per-frame results, computing only what is requested.

    Args:
        num_classes: K (1 .. 65535).
        palette: RGB triplets (None / short: completed by :func:`~tv3s_ros.model.palette.default_palette`).
        overlay_alpha: weight of the palette colour in the overlay, 0..1.
        device: where the palette lives (the model's device).
    """

    def __init__(self, num_classes: int, palette=None, overlay_alpha: float = 0.5,
                 device="cpu"):
        self.num_classes = int(num_classes)
        self.palette = make_palette(palette, self.num_classes)
        self.device = torch.device(device)
        self._palette_t = torch.from_numpy(self.palette).to(self.device)
        # A device scalar, changed in place: a captured CUDA graph reads the current value
        # (a Python float would be frozen into the graph's kernel arguments).
        self._alpha_t = torch.zeros((), dtype=torch.float32, device=self.device)
        self.overlay_alpha = overlay_alpha
        self.label_dtype = label_dtype(self.num_classes)

    @property
    def overlay_alpha(self) -> float:
        """Weight of the palette colour in the overlay, 0..1 (may change between frames)."""
        return self._alpha

    @overlay_alpha.setter
    def overlay_alpha(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"overlay_alpha must be in 0..1, got {value}")
        self._alpha = value
        with torch.inference_mode():
            self._alpha_t.fill_(value)

    def __call__(self, logits: torch.Tensor, images: Optional[torch.Tensor],
                 outputs: Sequence[AbstractSet[str]]) -> List[PostprocessResult]:
        """Results for ``logits [B, K, H, W]``: :meth:`device_outputs` then :meth:`to_results`.

        Args:
            images: uint8 ``[B, H0, W0, 3]`` RGB on the same device (only read for overlay).
            outputs: per frame, the subset of :data:`~tv3s_ros.outputs.OUTPUT_NAMES` wanted for it.
        """
        b, _, h, w = logits.shape
        if len(outputs) != b:
            raise ValueError(f"{len(outputs)} output sets for a batch of {b}")
        union = set().union(*outputs) if b else set()
        return self.to_results(self.device_outputs(logits, images, union), outputs, h, w)

    def device_outputs(self, logits: torch.Tensor, images: Optional[torch.Tensor],
                       outputs: AbstractSet[str]) -> Dict[str, torch.Tensor]:
        """The tensor-only part: batch tensors on the logits' device, for every frame.

        No host synchronisation and no host-to-device copy, so a CUDA graph can capture it.
        Keys: ``labels`` (uint8 / int16 / int32 ``[B, H, W]``), ``color`` / ``overlay`` (uint8
        ``[B, H, W, 3]``), ``confidence`` (uint8 ``[B, H, W]``), ``counts`` (int64 ``[B, K]``) and
        ``conf_sum`` (float64 ``[B, K]``) for ``coverage``; only those the ``outputs`` need.
        """
        k = logits.shape[1]
        if k != self.num_classes:
            raise ValueError(f"logits have {k} classes, postprocessor expects {self.num_classes}")
        outputs = check_outputs(outputs)
        if not outputs:
            return {}
        if "overlay" in outputs and images is None:
            raise ValueError("overlay requested without input images")
        labels, confidence = labels_and_confidence(
            logits, with_confidence=bool(outputs & {"confidence", "coverage"}))
        out: Dict[str, torch.Tensor] = {}
        if "labels" in outputs:
            out["labels"] = labels.to(_device_label_dtype(self.num_classes))
        if outputs & {"color", "overlay"}:
            color = colorize(labels, self._palette_t)
            if "color" in outputs:
                out["color"] = color
            if "overlay" in outputs:
                out["overlay"] = blend(images, color, self._alpha_t)
        if "confidence" in outputs:
            out["confidence"] = quantize_confidence(confidence)
        if "coverage" in outputs:
            out["counts"], out["conf_sum"] = class_histogram(labels, self.num_classes, confidence)
        return out

    def to_results(self, device_out: Mapping[str, torch.Tensor], outputs: Sequence[AbstractSet[str]],
                   height: int, width: int) -> List[PostprocessResult]:
        """Bring what each frame wants to the host (one synchronisation) as numpy results.

        ``device_out`` is :meth:`device_outputs`' dict (row i = frame i); it must hold every
        output some frame wants. Images only some frames want are copied row by row, so a
        camera nobody subscribes to costs no transfer. Host memory comes from torch's pinned
        caching allocator (reused per size, and safe to hand out: a block is only reused
        after its arrays are dropped).
        """
        results = [PostprocessResult(height=int(height), width=int(width)) for _ in outputs]
        wanted_rows: Dict[str, List[int]] = {}
        for i, want in enumerate(outputs):
            for output in check_outputs(want):
                for name in (("counts", "conf_sum") if output == "coverage" else (output,)):
                    wanted_rows.setdefault(name, []).append(i)
        missing = set(wanted_rows) - set(device_out)
        if missing:
            raise ValueError(f"device outputs lack {sorted(missing)}")
        needed: Dict[Tuple[str, int], torch.Tensor] = {}
        for name, rows in wanted_rows.items():
            tensor = device_out[name]
            if len(rows) == len(outputs) or name in ("counts", "conf_sum"):   # small or all: one copy
                needed[(name, -1)] = tensor
            else:
                needed.update({(name, i): tensor[i] for i in rows})
        host = _to_host(needed)

        def row(name: str, i: int) -> np.ndarray:
            whole = host.get((name, -1))
            return whole[i] if whole is not None else host[(name, i)]

        for i, (res, want) in enumerate(zip(results, outputs)):
            if "labels" in want:
                res.labels = _as_label_array(row("labels", i), self.label_dtype)
            for name in IMAGE_OUTPUTS:
                if name != "labels" and name in want:
                    setattr(res, name, row(name, i))
            if "coverage" in want:
                self._fill_coverage(res, row("counts", i), row("conf_sum", i))
        return results

    @staticmethod
    def _fill_coverage(res: PostprocessResult, counts: np.ndarray, conf_sum: np.ndarray) -> None:
        present = np.flatnonzero(counts)
        n = counts[present]
        res.class_ids = present.astype(np.uint16)
        res.pixel_count = n.astype(np.uint32)
        res.fraction = (n / counts.sum()).astype(np.float32)
        res.mean_confidence = (conf_sum[present] / n).astype(np.float32)


def _to_host(tensors: dict) -> dict:
    """All tensors to numpy with one synchronisation (async copies into pinned memory on CUDA:
    ``non_blocking`` device-to-host copies allocate from the pinned caching host allocator)."""
    if not tensors:
        return {}
    first = next(iter(tensors.values()))
    if first.device.type != "cuda":
        return {k: v.cpu().numpy() for k, v in tensors.items()}
    moved = {k: v.to("cpu", non_blocking=True) for k, v in tensors.items()}
    torch.cuda.current_stream(first.device).synchronize()
    return {k: v.numpy() for k, v in moved.items()}


def _as_label_array(labels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if labels.dtype == dtype:
        return labels
    if labels.dtype == np.int16 and dtype == np.uint16:
        return labels.view(np.uint16)   # ids < 32768: same bits, no copy
    return labels.astype(dtype)
