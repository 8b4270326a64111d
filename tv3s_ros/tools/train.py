"""tv3s-train: train or fine-tune TV3S on a labelled video dataset with the official recipe.

4-frame clips [t-9, t-6, t-3, t], AdamW (lr 6e-5, head x10), poly schedule with linear
warm-up, random rescale + crop + flip + photometric distortion, cross-entropy (ignore 255) on
the last frame's temporal logits plus 0.5 x the per-frame logits; or streaming-aware runs
with the state carried and truncated backpropagation. Checkpoints in the official mmcv format.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from tv3s_ros.tools.cli import EXIT_FAILED, EXIT_OK, BadInput, hxw, run_tool

EPILOG = """\
examples:
  # fine-tune an official checkpoint on your own classes (classifiers re-initialised)
  tv3s-train my_videos/ --work-dir runs/mine --model tv3s_b1_cityscapes \\
      --init model/weights/tv3s_b1_city.pth --classes road,car,person,sky,other --iters 20000

  # the small demo model on the synthetic world, from scratch, validated every 500 iterations
  # (stage 1 of the shipped model's recipe; all stages: model/README.md, "Demo model")
  tv3s-train world/ --work-dir runs/demo --model tv3s_demo --init scratch --crop 128x256 \\
      --iters 4000 --batch 2 --lr 3e-4 --val-split val --val-every 500 --val-size 256x512

  # streaming-aware fine-tuning: runs of 16 consecutive frames, state detached every 8
  tv3s-train world/ --work-dir runs/stream --model tv3s_demo --init runs/demo/latest.pth \\
      --stream-train 16 --tbptt 8 --iters 2000

  # rare classes (poles, signs) weigh more in the loss: ENet weights from the training labels
  tv3s-train world/ --work-dir runs/demo3 --model tv3s_demo --init runs/demo/latest.pth \\
      --class-weights enet:1.05 --iters 3000

  # continue an interrupted run (the latest iter_N.pth in the work dir)
  tv3s-train world/ --work-dir runs/demo --model tv3s_demo --crop 128x256 --iters 4000 --lr 3e-4 --resume

streaming-aware training (--stream-train K):
  a sample is a run of K frames spaced --stream-stride (default 1: every frame, as the node
  sees them) from one video; the backbone runs on --tbptt frames at a time, the head frame by
  frame (--stream-chunk frames per call, identical results) from the carried Mamba state, and
  every labelled frame of the run is supervised with the clip loss of a last frame (averaged
  over the run). The state is detached every --tbptt frames (0: never), so memory holds one
  segment and the gradient reaches --tbptt frames back.

outputs (--work-dir):
  iter_N.pth (mmcv format: meta with CLASSES, PALETTE, iter, epoch, preset; state_dict;
  optimizer) every --save-every iterations and at the end, latest.pth -> the newest one,
  log.csv (iter, loss, loss_main, loss_aux, lr, time_s, step_s, val_miou, val_mvc8),
  loss.png, val/iter_N/ (tv3s-eval tables and plots)

exit status:
  0  done;  1  training failed (loss NaN, model error);  2  bad input (dataset, options,
  checkpoint);  130  Ctrl-C (the last checkpoint stays; --resume continues from it)
"""


def _ratio(text: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    from tv3s_ros.train.recipe import Recipe

    r = Recipe()
    parser = argparse.ArgumentParser(prog="tv3s-train", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="dataset root folder (VSPW, Cityscapes or synthetic layout)")
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoints, log.csv, loss.png go here")

    mdl = parser.add_argument_group("model")
    mdl.add_argument("--model", default="tv3s_b1_cityscapes", help="preset name or YAML path")
    mdl.add_argument("--model-overrides", nargs="+", metavar="KEY=VALUE",
                     help="preset overrides, KEY=VALUE pairs or one YAML mapping")
    mdl.add_argument("--init", default="scratch",
                     help="scratch (random init) or a checkpoint (official mmcv .pth or ours)")
    mdl.add_argument("--classes", metavar="NAMES_OR_FILE",
                     help="new class list (comma-separated, or a file: one name per line or a JSON list): "
                          "linear_pred, linear_pred2 and conv_seg are re-initialised")
    mdl.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                     help="continue a run: the latest iter_N.pth in --work-dir, or CKPT")

    data = parser.add_argument_group("data")
    data.add_argument("--layout", default="auto", help="auto (default), vspw, cityscapes or synthetic")
    data.add_argument("--train-split", default="train", help="training split (default train; 'all': every video)")
    data.add_argument("--crop", type=hxw, metavar="HxW",
                      help="crop size (default: official, 512x1024 Cityscapes presets, 480x480 VSPW)")
    data.add_argument("--scale", metavar="official|native|LONGxSHORT",
                      help="rescale base before the random ratio (default: the preset's official scale; "
                           "native on the synthetic world)")
    data.add_argument("--ratio-range", type=_ratio, default=(0.5, 2.0), metavar="LOW,HIGH",
                      help="random rescale ratio range (default 0.5,2.0)")
    data.add_argument("--cat-max-ratio", type=float, default=0.75,
                      help="crop retries while one class covers more than this share (default 0.75)")
    data.add_argument("--no-photometric", action="store_true", help="no photometric distortion")
    data.add_argument("--no-flip", action="store_true", help="no horizontal flip")
    data.add_argument("--reverse-prob", type=float, metavar="P",
                      help="play a clip's video backwards with probability P "
                           "(default: 0.5 on VSPW as official, else 0)")
    data.add_argument("--workers", type=int, default=0, metavar="N", help="data loading processes (default 0)")

    opt = parser.add_argument_group("optimisation (defaults: the official recipe)")
    opt.add_argument("--iters", type=int, default=160_000, help="iterations (default 160000)")
    opt.add_argument("--batch", type=int, default=2, help="clips per iteration (default 2)")
    opt.add_argument("--lr", type=float, default=r.lr, help=f"AdamW lr (default {r.lr:g})")
    opt.add_argument("--head-lr-mult", type=float, default=r.head_lr_mult, help="lr factor of decode_head (default 10)")
    opt.add_argument("--weight-decay", type=float, default=r.weight_decay, help="default 0.01")
    opt.add_argument("--warmup-iters", type=int, default=r.warmup_iters, help="linear warm-up (default 1500)")
    opt.add_argument("--power", type=float, default=r.power, help="poly schedule power (default 1.0)")
    opt.add_argument("--dropout", type=float, default=0.1, help="Dropout2d before the classifiers (default 0.1)")
    opt.add_argument("--drop-path", type=float, default=0.1, help="MiT stochastic depth rate (default 0.1)")
    opt.add_argument("--class-weights", default="none", metavar="none|enet[:C]|W1,W2,...",
                     help="per-class loss weights against class imbalance: none (default, official), "
                          "enet (1/ln(C + class share of the training pixels), C=1.02 unless given; "
                          "a larger C weights more gently) or one weight per class")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    opt.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                     help="auto (default): bf16 autocast on CUDA, fp32 on CPU")
    opt.add_argument("--cpu-threads", type=int, metavar="N", help="torch CPU threads")

    stream = parser.add_argument_group("streaming-aware training")
    stream.add_argument("--stream-train", type=int, default=0, metavar="K",
                        help="train on runs of K frames with the state carried (default 0: official clips)")
    stream.add_argument("--stream-stride", type=int, default=1, metavar="S", help="frame spacing in a run (default 1)")
    stream.add_argument("--tbptt", type=int, default=0, metavar="N", help="detach the state every N frames (0: never)")
    stream.add_argument("--stream-chunk", type=int, default=1, metavar="C",
                        help="frames per head call (default 1, as the node; larger is faster, same result)")

    ops = parser.add_argument_group("validation, logging, checkpoints")
    ops.add_argument("--val-split", help="validation split (default: none)")
    ops.add_argument("--val-every", type=int, default=0, metavar="N",
                     help="validate every N iterations (needs --val-split)")
    ops.add_argument("--val-modes", default="stream", help="tv3s-eval modes (default stream)")
    ops.add_argument("--val-size", default="official", help="validation input size: official, HxW or keep_aspect:N")
    ops.add_argument("--val-max-videos", type=int, metavar="N", help="validate on the first N videos only")
    ops.add_argument("--log-every", type=int, default=10, metavar="N", help="CSV row every N iterations (default 10)")
    ops.add_argument("--save-every", type=int, default=4000, metavar="N",
                     help="checkpoint every N iterations (default 4000)")
    ops.add_argument("--keep", type=int, default=0, metavar="N", help="keep the newest N checkpoints (default 0: all)")
    ops.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check(parser: argparse.ArgumentParser, args) -> None:
    positive = ("iters", "batch", "log_every", "save_every", "cpu_threads", "val_max_videos", "stream_stride",
                "stream_chunk")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("workers", "keep", "tbptt", "stream_train", "val_every", "warmup_iters"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.lr <= 0:
        parser.error("--lr must be positive")
    for name in ("dropout", "drop_path", "cat_max_ratio"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.reverse_prob is not None and not 0 <= args.reverse_prob <= 1:
        parser.error("--reverse-prob must be in [0, 1]")
    if args.val_every and not args.val_split:
        parser.error("--val-every needs --val-split")
    if args.classes and args.init == "scratch":
        parser.error("--classes re-initialises the classifiers of a checkpoint: pass --init CKPT "
                     "(from scratch, set the classes with --model-overrides or a preset YAML)")
    if args.resume and args.init != "scratch":
        parser.error("--resume continues a run: --init is not used with it")
    if args.stream_train == 1:
        parser.error("--stream-train needs at least 2 frames")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    logging.basicConfig(level=logging.INFO, format="tv3s-train: %(message)s", stream=sys.stderr)
    return run_tool("tv3s-train", lambda: _run(args), args.cpu_threads,
                    interrupted="stopped by SIGINT (resume with --resume)")


def _config(args):
    from tv3s_ros.tools.bag import UsageError, parse_overrides
    from tv3s_ros.train import Recipe, TrainConfig
    from tv3s_ros.train.class_weights import parse_class_weights
    from tv3s_ros.train.model_init import read_class_list

    try:
        overrides = parse_overrides(args.model_overrides)
        classes = read_class_list(args.classes) if args.classes else None
        class_weights = parse_class_weights(args.class_weights)
    except (UsageError, ValueError) as error:
        raise BadInput(str(error)) from None
    if args.scale and args.scale not in ("official", "native"):
        try:
            hxw(args.scale)
        except argparse.ArgumentTypeError as error:
            raise BadInput(f"--scale: {error}") from None
    recipe = Recipe(lr=args.lr, weight_decay=args.weight_decay, head_lr_mult=args.head_lr_mult,
                    warmup_iters=args.warmup_iters, power=args.power)
    return TrainConfig(
        dataset=args.dataset, work_dir=args.work_dir, preset=args.model, model_overrides=overrides,
        init=args.init, classes=classes, resume=args.resume, layout=args.layout,
        train_split=None if args.train_split == "all" else args.train_split, val_split=args.val_split,
        iters=args.iters, batch=args.batch, crop=args.crop, scale=args.scale, ratio_range=args.ratio_range,
        cat_max_ratio=args.cat_max_ratio, flip_prob=0.0 if args.no_flip else 0.5,
        photometric=not args.no_photometric, reverse_prob=args.reverse_prob, recipe=recipe,
        dropout=args.dropout, drop_path=args.drop_path, seed=args.seed, workers=args.workers,
        device=args.device, precision=args.precision, stream_frames=args.stream_train,
        stream_stride=args.stream_stride, tbptt=args.tbptt, stream_chunk=args.stream_chunk,
        val_every=args.val_every, val_modes=tuple(m.strip() for m in args.val_modes.split(",") if m.strip()),
        val_size=args.val_size, val_max_videos=args.val_max_videos, log_every=args.log_every,
        save_every=args.save_every, keep=args.keep, progress=not args.no_progress, class_weights=class_weights)


def _run(args) -> int:
    from tv3s_ros.bag.runner import one_line
    from tv3s_ros.data.datasets import DatasetError
    from tv3s_ros.eval.runner import MODES
    from tv3s_ros.tools.bag import _model_error
    from tv3s_ros.train import Trainer, TrainingDiverged

    config = _config(args)
    unknown = [m for m in config.val_modes if m not in MODES]
    if unknown or not config.val_modes:
        raise BadInput(f"--val-modes: unknown {', '.join(unknown) or '(empty)'} (choose from {', '.join(MODES)})")
    try:
        trainer = Trainer(config)
    except DatasetError as error:
        raise BadInput(str(error)) from None
    except Exception as error:  # noqa: BLE001 - unusable preset, checkpoint or option: one line
        raise BadInput(f"cannot set up training: {_model_error(error)}") from None
    print(f"tv3s-train: {trainer.summary()}".replace("\n", "\ntv3s-train: "), file=sys.stderr)
    if trainer.start_iter >= config.iters:
        print(f"tv3s-train: already at iteration {trainer.start_iter} of {config.iters}; nothing to do",
              file=sys.stderr)
        return EXIT_OK
    try:
        result = trainer.run()
    except DatasetError as error:
        raise BadInput(str(error)) from None
    except TrainingDiverged as error:
        print(f"tv3s-train: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - a model or data failure mid-run: one line, no traceback
        print(f"tv3s-train: error: training failed: {one_line(error, limit=2000)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"tv3s-train: done: iteration {result['iter']}, {result['seconds']:.1f} s "
          f"({result['step_s']:.3f} s per step), checkpoint {result['checkpoint']}, "
          f"log {trainer.log.csv_path}, curve {trainer.log.png_path}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
