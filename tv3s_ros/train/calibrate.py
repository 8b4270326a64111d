"""Undo the class-weight bias of a checkpoint trained with ``--class-weights`` (logit adjustment).

    python -m tv3s_ros.train.calibrate CKPT DATASET OUT [--split val] [--alphas ...] [--alpha A]

A cross-entropy weighted by ``w_c`` teaches the classifier to score class c as if it were
``w_c`` times more frequent: rare classes (poles, people, signs) are over-predicted, recall
beats precision, and their IoU suffers. Subtracting ``alpha * log(w_c)`` from the logits undoes
that (``alpha = 1`` is the full prior correction of Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021); the IoU optimum usually lies between 0 and 1. This tool streams the
validation split once, scores every ``alpha`` of a grid from the same logits, picks the one
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

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from tv3s_ros.tools.cli import EXIT_OK, BadInput, run_tool

__all__ = ["CLASSIFIER_BIAS", "DEFAULT_ALPHAS", "checkpoint_class_weights", "logit_offsets", "sweep_alphas",
           "adjust_checkpoint", "main"]

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
    """Stream ``videos`` through ``engine``'s model (state reset at each video's first frame, the
    engine's preprocessing and precision) and return ``{alpha: confusion matrix}`` of the labels
    from the logits plus :func:`logit_offsets` for each alpha, over the labelled frames."""
    from tv3s_ros.data.datasets import load_image, load_label
    from tv3s_ros.eval.metrics import confusion_matrix
    from tv3s_ros.model.device import autocast, device_context
    from tv3s_ros.preprocess import logits_to_size, to_model_input

    k = engine.num_classes
    if len(class_weights) != k:
        raise ValueError(f"{len(class_weights)} class weights for a model of {k} classes")
    offsets = {a: torch.from_numpy(logit_offsets(class_weights, a)).float().to(engine.device)[:, None, None]
               for a in alphas}
    confusions = {a: np.zeros((k, k), dtype=np.int64) for a in alphas}
    model = engine.model
    for video in videos:
        state = model.new_state(1)
        for frame in video.frames:
            image = load_image(frame.image)
            x = to_model_input(torch.from_numpy(image).to(engine.device), engine.cfg, engine.input_policy)
            with torch.inference_mode(), device_context(engine.device), \
                    autocast(engine.device, engine.compute_dtype):
                logits, state = model.forward_stream(x, state)
            if frame.label is not None:
                gt = load_label(frame.label, layout)
                with torch.inference_mode():
                    logits = logits_to_size(logits.float(), image.shape[:2])[0]
                    for alpha, offset in offsets.items():
                        pred = (logits + offset).argmax(0).to(torch.uint8).cpu().numpy()
                        confusions[alpha] += confusion_matrix(gt, pred, k)
            if progress is not None:
                progress(1)
    return confusions


def adjust_checkpoint(src: os.PathLike, dst: os.PathLike, alpha: float,
                      record: Optional[dict] = None) -> Path:
    """Write ``src`` with :func:`logit_offsets` of its class weights added to the classifier bias.

    ``record``: extra entries for ``meta['logit_adjustment']`` (the data and sweep it was fitted on).
    ``ValueError`` for a checkpoint without class weights, already adjusted, or without the classifier.
    """
    from tv3s_ros.model.checkpoint import _read, split_checkpoint

    src, dst = Path(src), Path(dst).expanduser()
    obj = _read(src, False, "cpu")
    meta, state = split_checkpoint(obj, str(src))
    weights = _weights_or_error(meta, src)
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


def _weights_or_error(meta: dict, src) -> List[float]:
    if "logit_adjustment" in meta:
        raise ValueError(f"{src}: already logit-adjusted (alpha {meta['logit_adjustment'].get('alpha')}); "
                         "calibrate the checkpoint it was made from")
    weights = checkpoint_class_weights(meta)
    if weights is None:
        raise ValueError(f"{src}: trained without class weights (no tv3s_train.class_weights in its meta): "
                         "there is no class-weight bias to undo")
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tv3s_ros.train.calibrate",
        description="Undo the class-weight bias of a checkpoint trained with --class-weights: sweep alpha in "
                    "logits - alpha * log(w_c) on a validation split (streaming) and write the checkpoint "
                    "with the best alpha folded into its classifier bias.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
example (the demo model: fit alpha on the validation videos at the test scale, then export):
  python -m tv3s_ros.train.calibrate runs/demo4/iter_1800.pth world/ runs/demo4/calibrated.pth \\
      --model tv3s_demo --split val --size 384x768
  python -m tv3s_ros.train.export runs/demo4/calibrated.pth model/demo/tv3s_demo.pth --fp16

Fit alpha on validation data, never on the data you report: the sweep is model selection.
exit status: 0 written; 2 bad input (no class weights, already adjusted, missing data); 130 Ctrl-C
""")
    parser.add_argument("checkpoint", type=Path, help="a tv3s-train checkpoint trained with --class-weights")
    parser.add_argument("dataset", type=Path, help="dataset root with a validation split")
    parser.add_argument("out", type=Path, help="the adjusted checkpoint to write")
    parser.add_argument("--model", required=True, help="preset name or YAML path of the checkpoint")
    parser.add_argument("--model-overrides", nargs="+", metavar="KEY=VALUE", help="preset overrides")
    parser.add_argument("--layout", default="auto", help="auto (default), vspw, cityscapes or synthetic")
    parser.add_argument("--split", default="val", help="split to fit on (default val)")
    parser.add_argument("--max-videos", type=int, metavar="N", help="only the first N videos of the split")
    parser.add_argument("--size", default="official",
                        help="model input size: official (the preset's test scale, default), HxW or keep_aspect:N")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                        help="comma-separated grid to sweep (default 0 to 1 in steps of 0.1)")
    parser.add_argument("--alpha", type=float, help="skip the sweep and write this alpha")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--cpu-threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _parse_alphas(text: str) -> List[float]:
    try:
        alphas = sorted({float(a) for a in text.split(",") if a.strip()})
    except ValueError:
        raise BadInput(f"--alphas: not a list of numbers: {text!r}") from None
    if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
        raise BadInput("--alphas: give one or more finite numbers >= 0")
    return alphas


def _run(args) -> int:
    from tv3s_ros.model.checkpoint import _read, split_checkpoint

    try:
        meta, _ = split_checkpoint(_read(args.checkpoint, False, "cpu"), str(args.checkpoint))
        weights = _weights_or_error(meta, args.checkpoint)
    except (OSError, ValueError, RuntimeError) as error:
        raise BadInput(str(error)) from None
    if args.alpha is not None:
        if not math.isfinite(args.alpha) or args.alpha < 0:
            raise BadInput("--alpha must be a finite number >= 0")
        path = adjust_checkpoint(args.checkpoint, args.out, args.alpha, {"fitted_on": "given (--alpha)"})
        print(f"calibrate: wrote {path} (alpha {args.alpha:g}, given)")
        return EXIT_OK
    alphas = sorted(set(_parse_alphas(args.alphas)) | {0.0})   # 0: the unadjusted model, for comparison
    from types import SimpleNamespace

    from tv3s_ros.bag.runner import tqdm_progress
    from tv3s_ros.eval.metrics import iou_per_class, mean_iou, mean_iou_present
    from tv3s_ros.tools.eval import _build_engine, _check_classes, _open

    eval_args = SimpleNamespace(dataset=args.dataset, layout=args.layout, split=args.split,
                                max_videos=args.max_videos, subset=None, also_subset=[], seed=None,
                                model=args.model, weights=str(args.checkpoint), allow_random_weights=False,
                                model_overrides=args.model_overrides, device=args.device, precision="fp32",
                                size=args.size, max_state_frames=0)
    layout, videos, labelled = _open(eval_args)
    engine = _build_engine(eval_args)
    _check_classes(layout, engine)
    total = sum(len(v.frames) for v in videos)
    print(f"calibrate: {len(videos)} video(s) of split {args.split}, {total} frames, {labelled} labelled; "
          f"streaming at {args.size}; alphas {', '.join(f'{a:g}' for a in alphas)}", file=sys.stderr)
    bar = None if args.no_progress else tqdm_progress(total, "calibrate")
    try:
        confusions = sweep_alphas(engine, videos, layout, weights, alphas,
                                  progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    scores = {a: 100 * mean_iou(cm) for a, cm in confusions.items()}
    best = max(alphas, key=lambda a: (round(scores[a], 6), -a))   # ties: the smaller change
    names = list(engine.class_names)
    present = np.flatnonzero(confusions[alphas[0]].sum(1))
    print("| alpha | mIoU | mIoU (GT classes) | " + " | ".join(names[i] for i in present) + " |")
    print("|---" * (3 + len(present)) + "|")
    for a in alphas:
        iou = 100 * iou_per_class(confusions[a])
        mark = " (best)" if a == best else ""
        print(f"| {a:g}{mark} | {scores[a]:.2f} | {100 * mean_iou_present(confusions[a]):.2f} | "
              + " | ".join(f"{iou[i]:.1f}" for i in present) + " |")
    record = {"fitted_on": f"{args.dataset} split {args.split}: {len(videos)} videos, {labelled} labelled "
                           f"frames, streaming, input size {args.size}",
              "sweep_miou": {f"{a:g}": round(scores[a], 4) for a in alphas}}
    path = adjust_checkpoint(args.checkpoint, args.out, best, record)
    print(f"calibrate: alpha {best:g}: mIoU {scores[best]:.2f} % against {scores[0.0]:.2f} % "
          f"unadjusted; wrote {path}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu_threads is not None and args.cpu_threads < 1:
        build_parser().error("--cpu-threads must be at least 1")
    return run_tool("calibrate", lambda: _run(args), args.cpu_threads)


if __name__ == "__main__":
    sys.exit(main())
