"""``python -m tv3s_ros.tools.calibrate``: fit the logit adjustment of a class-weighted
checkpoint on a validation split and write the adjusted checkpoint (the method:
:mod:`tv3s_ros.train.calibrate`)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from tv3s_ros.tools.cli import EXIT_OK, BadInput, run_tool
from tv3s_ros.train.calibrate import DEFAULT_ALPHAS, adjust_checkpoint, refuse_unless_weighted, sweep_alphas

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tv3s_ros.tools.calibrate",
        description="Undo the class-weight bias of a checkpoint trained with --class-weights: sweep alpha in "
                    "logits - alpha * log(w_c) on a validation split (streaming) and write the checkpoint "
                    "with the best alpha folded into its classifier bias.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
example (the demo model: fit alpha on the validation videos at the test scale, then export):
  python -m tv3s_ros.tools.calibrate runs/demo4/iter_1800.pth world/ runs/demo4/calibrated.pth \\
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
    from tv3s_ros.model.checkpoint import read_checkpoint, split_checkpoint

    try:
        meta, _ = split_checkpoint(read_checkpoint(args.checkpoint), str(args.checkpoint))
        weights = refuse_unless_weighted(meta, args.checkpoint)
    except (OSError, ValueError, RuntimeError) as error:
        raise BadInput(str(error)) from None
    if args.alpha is not None:
        if not math.isfinite(args.alpha) or args.alpha < 0:
            raise BadInput("--alpha must be a finite number >= 0")
        path = adjust_checkpoint(args.checkpoint, args.out, args.alpha, {"fitted_on": "given (--alpha)"})
        print(f"calibrate: wrote {path} (alpha {args.alpha:g}, given)")
        return EXIT_OK
    alphas = sorted(set(_parse_alphas(args.alphas)) | {0.0})   # 0: the unadjusted model, for comparison
    from tv3s_ros.bag.runner import tqdm_progress
    from tv3s_ros.data.datasets import DatasetError
    from tv3s_ros.eval.metrics import iou_per_class, mean_iou, mean_iou_present
    from tv3s_ros.tools.eval import build_engine, check_classes, open_split

    layout, videos, labelled = open_split(args.dataset, args.layout, args.split, args.max_videos)
    engine = build_engine(args.model, str(args.checkpoint), model_overrides=args.model_overrides,
                          device=args.device, size=args.size)
    check_classes("calibrate", layout, engine)
    total = sum(len(v.frames) for v in videos)
    print(f"calibrate: {len(videos)} video(s) of split {args.split}, {total} frames, {labelled} labelled; "
          f"streaming at {args.size}; alphas {', '.join(f'{a:g}' for a in alphas)}", file=sys.stderr)
    bar = None if args.no_progress else tqdm_progress(total, "calibrate")
    try:
        confusions = sweep_alphas(engine, videos, layout, weights, alphas,
                                  progress=bar.update if bar is not None else None)
    except DatasetError as error:   # an unreadable frame or label part-way through
        raise BadInput(str(error)) from None
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
