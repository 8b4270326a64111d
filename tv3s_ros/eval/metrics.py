"""Segmentation metrics: confusion matrix, per-class IoU, mIoU and video consistency (mVC).

Conventions (all values are fractions 0..1 here; the reports show percent):

* Confusion matrix ``cm[gt, pred]`` over all evaluated pixels; ground truth outside
  ``0..K-1`` (255 = ignore) is not counted.
* ``IoU_c = cm[c,c] / (gt_c + pred_c - cm[c,c])``; NaN when class c is absent from both the
  ground truth and the predictions.
* ``mIoU``: mean over classes with a defined IoU (mmseg's ``nanmean``: a class predicted but
  never in the ground truth counts with IoU 0).
* ``mIoU_present``: mean over classes present in the ground truth only (the official
  ``tools/VC_perclip.py`` Evaluator).
* ``mVC_n`` as official ``tools/VC_perclip.py``: for each video with more than 16 labelled
  frames and each start ``i < len - n`` (sic: the last possible window is not used), take
  frames ``i .. i+n-1``; pixels whose ground truth is the same in all n frames (ignore = 255
  included, as there) form the common set; the window's score is the share of the common set
  where the prediction is also the same in all n frames. mVC_n is the mean over all windows
  of all videos (NaN windows, with an empty common set, left out). On a subset of frames
  (``selected``), only the windows holding at least one selected frame are scored.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "confusion_matrix", "iou_per_class", "iou_from_counts", "nanmean", "mean_iou", "mean_iou_present",
    "window_consistency", "video_consistency", "VideoConsistency", "VC_CLIPS", "VC_MIN_FRAMES",
]

VC_CLIPS = (8, 16)
VC_MIN_FRAMES = 16   # official: a video with <= 16 frames is skipped for both VC8 and VC16


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` int64 counts, rows ground truth, columns prediction."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    index = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class (float64), NaN where the class is in neither ground truth nor prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    return iou_from_counts(np.diag(cm), cm.sum(1), cm.sum(0))


def iou_from_counts(tp: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU per class from true positives and ground-truth / predicted pixel counts."""
    tp, gt, pred = (np.asarray(a, dtype=np.float64) for a in (tp, gt, pred))
    union = gt + pred - tp
    return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def nanmean(values) -> float:
    """Mean of the finite values, NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes in the ground truth or the predictions (NaN if none)."""
    return nanmean(iou_per_class(cm))


def mean_iou_present(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (NaN if none)."""
    present = np.asarray(cm).sum(1) > 0
    if not present.any():
        return float("nan")
    return float(np.nan_to_num(iou_per_class(cm)[present]).mean())


def window_consistency(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> float:
    """VC score of one window of frames (NaN when no pixel keeps its ground truth)."""
    gt_common = np.ones(gts[0].shape, dtype=bool)
    pred_common = np.ones(gts[0].shape, dtype=bool)
    for j in range(1, len(gts)):
        gt_common &= gts[0] == gts[j]
        pred_common &= preds[0] == preds[j]
    total = int(gt_common.sum())
    return float((gt_common & pred_common).sum()) / total if total else float("nan")


def video_consistency(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], clip: int,
                      selected: Optional[Sequence[bool]] = None) -> List[float]:
    """Window scores of one video as official ``get_common`` (no length rule applied here).

    ``selected``: per frame; only windows holding at least one selected frame are scored.
    """
    scores = []
    for i in range(len(gts) - clip):
        if selected is not None and not any(selected[i:i + clip]):
            continue
        scores.append(window_consistency(gts[i:i + clip], preds[i:i + clip]))
    return scores


class VideoConsistency:
    """Running mVC for several window lengths, fed frame by frame, one video at a time.

    Keeps only the last ``max(clips) + 1`` frames of the current video: window ``i`` is scored
    once frame ``i + clip`` has arrived (the official range ``i < len - clip``). A video's
    scores count only if it has more than ``min_frames`` frames (official rule).
    """

    def __init__(self, clips: Iterable[int] = VC_CLIPS, min_frames: int = VC_MIN_FRAMES):
        self.clips = tuple(clips)
        self.min_frames = min_frames
        self.scores: Dict[int, List[float]] = {c: [] for c in self.clips}
        self._video: Dict[int, List[float]] = {c: [] for c in self.clips}
        self._buffer: Deque[Tuple[np.ndarray, np.ndarray, bool]] = deque(maxlen=max(self.clips) + 1)
        self._frames = 0

    def add(self, gt: np.ndarray, pred: np.ndarray, selected: bool = True) -> None:
        self._buffer.append((gt, pred, bool(selected)))
        self._frames += 1
        n = len(self._buffer)
        for clip in self.clips:
            if n >= clip + 1:
                window = list(self._buffer)[n - clip - 1:n - 1]
                if any(s for _, _, s in window):
                    self._video[clip].append(window_consistency([w[0] for w in window], [w[1] for w in window]))

    def end_video(self) -> None:
        if self._frames > self.min_frames:
            for clip in self.clips:
                self.scores[clip].extend(self._video[clip])
        self._video = {c: [] for c in self.clips}
        self._buffer.clear()
        self._frames = 0

    def value(self, clip: int) -> float:
        """mVC for ``clip`` over the videos ended so far (NaN when no window was scored)."""
        return nanmean(self.scores[clip])

    def windows(self, clip: int) -> int:
        return len(self.scores[clip])
