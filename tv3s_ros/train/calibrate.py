"""Undo the class-weight bias of a checkpoint trained with ``--class-weights`` (logit adjustment).

    python -m tv3s_ros.tools.calibrate CKPT DATASET OUT [--split val] [--alphas ...] [--alpha A]

A cross-entropy weighted by ``w_c`` teaches the classifier to score class c as if it were
``w_c`` times more frequent: rare classes (poles, people, signs) are over-predicted, recall
beats precision, and their IoU suffers. Subtracting ``alpha * log(w_c)`` from the logits undoes
that (``alpha = 1`` is the full prior correction of Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021); the IoU optimum usually lies between 0 and 1. The command streams the
validation split once (``tools/calibrate.py``), scores every ``alpha`` of a grid from the same logits, picks the one
with the best mIoU and writes a copy of the checkpoint whose classifier bias
(``decode_head.linear_pred2.bias``) carries the offsets. A per-class constant added to the
logits passes unchanged through the bilinear resizes, and the classifier is the last layer
(nothing of it is carried in the Mamba state), so every consumer (node, tv3s-bag, tv3s-eval)
gets the adjusted labels with no code of its own. The per-frame SegFormer classifier
(``linear_pred``, used by the benchmark baseline only) is left as trained.

The checkpoint's meta gains ``logit_adjustment`` (alpha, offsets, the class weights, the data
and the sweep); a checkpoint that already has one is refused (adjust the original instead).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["CLASSIFIER_BIAS", "DEFAULT_ALPHAS", "checkpoint_class_weights", "logit_offsets", "sweep_alphas",
           "adjust_checkpoint", "refuse_unless_weighted"]

CLASSIFIER_BIAS = "decode_head.linear_pred2.bias"
DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def checkpoint_class_weights(meta: dict) -> Optional[List[float]]:
    """The class weights a tv3s-train checkpoint was trained with (None: unweighted)."""
    weights = (meta.get("tv3s_train") or {}).get("class_weights")
    return None if weights is None else [float(w) for w in weights]


def logit_offsets(class_weights: Sequence[float], alpha: float) -> np.ndarray:
    """``-alpha * log(w_c)``, shifted to mean zero (argmax ignores a common constant)."""
    w = np.asarray(class_weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("class weights must be positive and finite")
    offsets = -float(alpha) * np.log(w)
    return offsets - offsets.mean()


def sweep_alphas(engine, videos, layout: str, class_weights: Sequence[float],
                 alphas: Sequence[float] = DEFAULT_ALPHAS,
                 progress: Optional[Callable[[int], None]] = None) -> Dict[float, np.ndarray]:
    """Stream ``videos`` through ``engine``'s model (:func:`tv3s_ros.eval.runner.stream_logits`:
    a fresh state per video, the engine's preprocessing and precision) and return
    ``{alpha: confusion matrix}`` of the labels from the logits plus :func:`logit_offsets` for
    each alpha, over the labelled frames. Raises ``DatasetError`` for unreadable data."""
    from tv3s_ros.eval.metrics import confusion_matrix
    from tv3s_ros.eval.runner import stream_logits

    k = engine.num_classes
    if len(class_weights) != k:
        raise ValueError(f"{len(class_weights)} class weights for a model of {k} classes")
    offsets = {a: torch.from_numpy(logit_offsets(class_weights, a)).float().to(engine.device)[:, None, None]
               for a in alphas}
    confusions = {a: np.zeros((k, k), dtype=np.int64) for a in alphas}
    for gt, logits in stream_logits(videos, layout, engine, progress):
        with torch.inference_mode():
            for alpha, offset in offsets.items():
                pred = (logits + offset).argmax(0).to(torch.uint8).cpu().numpy()
                confusions[alpha] += confusion_matrix(gt, pred, k)
    return confusions


def adjust_checkpoint(src: os.PathLike, dst: os.PathLike, alpha: float,
                      record: Optional[dict] = None) -> Path:
    """Write ``src`` with :func:`logit_offsets` of its class weights added to the classifier bias.

    ``record``: extra entries for ``meta['logit_adjustment']`` (the data and sweep it was fitted on).
    ``ValueError`` for a checkpoint without class weights, already adjusted, or without the classifier.
    """
    from tv3s_ros.model.checkpoint import read_checkpoint, split_checkpoint

    src, dst = Path(src), Path(dst).expanduser()
    obj = read_checkpoint(src)
    meta, state = split_checkpoint(obj, str(src))
    weights = refuse_unless_weighted(meta, src)
    if CLASSIFIER_BIAS not in state:
        raise ValueError(f"{src}: no {CLASSIFIER_BIAS} (not a TV3S checkpoint?)")
    bias = state[CLASSIFIER_BIAS]
    if bias.numel() != len(weights):
        raise ValueError(f"{src}: {len(weights)} class weights but a classifier of {bias.numel()} classes")
    offsets = logit_offsets(weights, alpha)
    state = dict(state)
    state[CLASSIFIER_BIAS] = (bias.double() + torch.from_numpy(offsets)).to(bias.dtype)
    meta = dict(meta)
    meta["logit_adjustment"] = {"alpha": float(alpha), "offsets": [round(float(o), 6) for o in offsets],
                                "class_weights": weights, "parameter": CLASSIFIER_BIAS, **(record or {})}
    out = dict(obj) if isinstance(obj, dict) and "state_dict" in obj else {}
    out.update(meta=meta, state_dict=state)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        torch.save(out, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def refuse_unless_weighted(meta: dict, src) -> List[float]:
    """The class weights of a checkpoint that can be adjusted; ``ValueError`` otherwise."""
    if "logit_adjustment" in meta:
        raise ValueError(f"{src}: already logit-adjusted (alpha {meta['logit_adjustment'].get('alpha')}); "
                         "calibrate the checkpoint it was made from")
    weights = checkpoint_class_weights(meta)
    if weights is None:
        raise ValueError(f"{src}: trained without class weights (no tv3s_train.class_weights in its meta): "
                         "there is no class-weight bias to undo")
    return weights
