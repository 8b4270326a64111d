"""tv3s-eval: evaluate a TV3S preset and checkpoint on a labelled video dataset.

Runs the model per frame, on the official 4-frame clips and streaming with carried state
(the node's engine and reset policy), side by side on the same frames, and reports mIoU,
per-class IoU, mVC8 and mVC16 per mode, with a confusion matrix and a plot of mIoU against
frames since the state's reset.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tv3s_ros.tools.cli import EXIT_FAILED, EXIT_OK, BadInput, run_tool

EPILOG = """\
examples:
  # the synthetic world's validation split, all three modes, outputs in eval_out/
  tv3s-eval world/ --model tv3s_b0_cityscapes --weights model/weights/b0_city.pth --split val --out eval_out/

  # VSPW validation (VSPW_480p holds data/ and val.txt), streaming only, 2 interleaved states
  tv3s-eval VSPW_480p/ --model tv3s_b1_vspw --weights w.pth --split val --modes stream --stride 2

  # only the frames flagged "hard" in each video's meta.json (states still run over all frames;
  # mVC then scores the windows that hold at least one flagged frame)
  tv3s-eval world/ --model tv3s_b0_cityscapes --weights w.pth --subset hard --out eval_hard/

  # all frames and, from the same run, the hard ones on their own (eval_out/subset-hard/)
  tv3s-eval world/ --model tv3s_b0_cityscapes --weights w.pth --also-subset hard --out eval_out/

layouts (--layout, default auto):
  vspw        ROOT/[data/]<video>/origin/*.jpg, <video>/mask/*.png, split lists ROOT/<split>.txt;
              mask id 0 ("others") is ignored and id i is class i-1 (official reduce_zero_label)
  cityscapes  ROOT/leftImg8bit_sequence/<split>/<city>/*_leftImg8bit.png with gtFine labels
              (_labelTrainIds.png, or _labelIds.png mapped to train ids) on annotated frames
  synthetic   the VSPW layout with Cityscapes train ids, ROOT/world.json {"layout": "synthetic"}

modes (--modes, default frame,clip,stream):
  frame   each frame alone (TV3S with T=1)
  clip    the official clip [t-9, t-6, t-3, t] (near the start of a video: the official clips)
  stream  state carried from frame to frame, reset as in tv3s_node (first frame, size change,
          --max-state-frames); --stride K keeps K interleaved states per video, so frame t is
          segmented with frames t, t-K, t-2K, ... since its state's reset
  frame and clip share each frame's backbone features (computed once per frame); stream runs
  the node's engine path on its own

metrics (percent):
  mIoU over the classes in the ground truth or the predictions (mmseg), "mIoU (GT classes)" over
  the classes in the ground truth; mVC8/mVC16 as the official tools/VC_perclip.py (videos with
  more than 16 labelled frames); n/a when not computable (one labelled frame per video).

outputs (--out DIR): results.md, results.csv, results.json, confusion.png, drift.png;
  with --also-subset FLAG the same files for the flagged frames in DIR/subset-FLAG/

exit status:
  0  done;  1  the model failed on a frame;  2  bad input (missing or empty dataset, unknown
  layout or split, label/image size mismatch, unusable model or checkpoint);  130  Ctrl-C
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tv3s-eval", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="dataset root folder")
    data = parser.add_argument_group("data")
    data.add_argument("--layout", default="auto", help="auto (default), vspw, cityscapes or synthetic")
    data.add_argument("--split", help="split to evaluate (train, val, ...; default: every video)")
    data.add_argument("--max-videos", type=int, metavar="N", help="evaluate only the first N videos")
    data.add_argument("--subset", metavar="FLAG",
                      help="score only frames whose meta.json entry has FLAG true (e.g. hard)")
    data.add_argument("--also-subset", metavar="FLAG", action="append", default=[],
                      help="also score the frames flagged FLAG on their own, in a second table from "
                           "the same run (repeatable)")

    mdl = parser.add_argument_group("model")
    mdl.add_argument("--model", required=True, help="preset name or YAML path")
    mdl.add_argument("--weights", help="checkpoint (mmcv .pth); default: the weights the preset ships "
                                       "(tv3s_demo), else required unless --allow-random-weights")
    mdl.add_argument("--allow-random-weights", action="store_true",
                     help="run without weights (pipeline checks only: the numbers are meaningless)")
    mdl.add_argument("--model-overrides", nargs="+", metavar="KEY=VALUE",
                     help="preset overrides, KEY=VALUE pairs or one YAML mapping (small test models)")
    mdl.add_argument("--seed", type=int, metavar="N", help="seed torch before building the model")
    mdl.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    mdl.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    mdl.add_argument("--size", default="official",
                     help="model input size: official (the preset's test scale, default), HxW or keep_aspect:N")
    mdl.add_argument("--cpu-threads", type=int, metavar="N", help="torch CPU threads")

    run = parser.add_argument_group("evaluation")
    run.add_argument("--modes", default="frame,clip,stream", help="comma-separated from frame, clip, stream")
    run.add_argument("--stride", type=int, default=1, metavar="K",
                     help="streaming: K interleaved states per video, each advancing K frames (default 1)")
    run.add_argument("--max-state-frames", type=int, default=0, metavar="N",
                     help="streaming: reset a state after N frames in it (default 0: never), as the node")
    run.add_argument("--out", type=Path, metavar="DIR", help="write tables and plots here")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _parse_modes(text: str) -> List[str]:
    from tv3s_ros.eval.runner import MODES

    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise BadInput(f"--modes: unknown {', '.join(unknown) or '(empty)'} (choose from {', '.join(MODES)})")
    return modes


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("stride", "max_videos", "cpu_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_state_frames < 0:
        parser.error("--max-state-frames must be >= 0")
    from tv3s_ros.tools.bag import preset_ships_weights

    if args.weights is None and not args.allow_random_weights and not preset_ships_weights(args):
        parser.error(f"no --weights given and preset {args.model} ships none: pass a TV3S checkpoint, "
                     "or --allow-random-weights for pipeline checks (meaningless numbers)")
    logging.basicConfig(level=logging.INFO, format="tv3s-eval: %(message)s", stream=sys.stderr)
    return run_tool("tv3s-eval", lambda: _run(args), args.cpu_threads, interrupted="stopped by SIGINT")


def open_split(dataset: Path, layout: str = "auto", split: str = "val", max_videos: Optional[int] = None,
               flags: Sequence[Tuple[str, str]] = ()) -> Tuple[str, list, int]:
    """``(layout, videos, labelled frame count)`` of one split, checked up front (shared with
    ``tools/calibrate.py``). ``flags``: ``(option, meta.json flag)`` pairs that must occur in
    the videos. Bad data raises :class:`BadInput` (one line, exit 2)."""
    from tv3s_ros.data.datasets import DatasetError, check_sizes, detect_layout, frame_flags, open_dataset

    try:
        layout = detect_layout(dataset) if layout == "auto" and dataset.is_dir() else layout
        videos = open_dataset(dataset, layout, split)
        videos = videos[:max_videos] if max_videos else videos
        labelled = check_sizes(videos)
        if not labelled:
            raise DatasetError(f"{dataset}: no labelled frames (layout {layout})")
        for option, flag in flags:
            if flag and not any(frame_flags(v, flag) for v in videos):
                raise DatasetError(f"{option} {flag}: no frame of the selected videos has this flag "
                                   "in its meta.json")
    except DatasetError as error:
        raise BadInput(str(error)) from None
    return layout, videos, labelled


def build_engine(model: str, weights: Optional[str], *, allow_random_weights: bool = False,
                 model_overrides: Optional[List[str]] = None, device: str = "auto", precision: str = "fp32",
                 size: str = "official", max_state_frames: int = 0, seed: Optional[int] = None):
    """The evaluation engine (no time-gap resets); a bad setting or checkpoint raises
    :class:`BadInput` with one line (shared with ``tools/calibrate.py``)."""
    import torch

    from tv3s_ros.engine import Engine, EngineSettings
    from tv3s_ros.tools.bag import UsageError, _model_error, parse_overrides

    if seed is not None:
        torch.manual_seed(seed)
    try:
        overrides = parse_overrides(model_overrides)
        return Engine.from_settings(EngineSettings(
            model, weights=weights, allow_random_weights=allow_random_weights,
            device=device, precision=precision, input_size=size, max_gap_s=0.0,
            max_state_frames=max_state_frames, model_overrides=overrides))
    except UsageError as error:
        raise BadInput(str(error)) from None
    except Exception as error:  # noqa: BLE001 - unsafe or mismatched checkpoint, bad setting: one line
        raise BadInput(f"cannot set up the model: {_model_error(error)}") from None


def _run(args) -> int:
    modes = _parse_modes(args.modes)
    layout, videos, labelled = open_split(
        args.dataset, args.layout, args.split, args.max_videos,
        [("--subset", args.subset)] + [("--also-subset", f) for f in args.also_subset])
    engine = build_engine(args.model, args.weights, allow_random_weights=args.allow_random_weights,
                          model_overrides=args.model_overrides, device=args.device, precision=args.precision,
                          size=args.size, max_state_frames=args.max_state_frames, seed=args.seed)
    check_classes("tv3s-eval", layout, engine)

    from tv3s_ros.bag.runner import one_line, tqdm_progress
    from tv3s_ros.data.datasets import DatasetError
    from tv3s_ros.eval.report import markdown_table, write_outputs
    from tv3s_ros.eval.runner import evaluate

    print(f"tv3s-eval: weights {engine.weights or 'RANDOM (meaningless numbers)'}"
          f"{' (shipped with the preset)' if engine.shipped_weights and not args.weights else ''}",
          file=sys.stderr)
    total = sum(len(v.frames) for v in videos)
    print(f"tv3s-eval: {len(videos)} video(s), {total} frames, {labelled} labelled; layout {layout}; "
          f"modes {', '.join(modes)}; stride {args.stride}", file=sys.stderr)
    bar = None if args.no_progress else tqdm_progress(total, "tv3s-eval")
    try:
        result = evaluate(videos, layout, engine, modes, stride=args.stride, subset=args.subset,
                          also_subsets=args.also_subset,
                          progress=bar.update if bar is not None else None)
    except DatasetError as error:
        raise BadInput(str(error)) from None
    except Exception as error:  # noqa: BLE001 - the model failed on a frame: one line, no traceback
        print(f"tv3s-eval: error: evaluation failed: {one_line(error, limit=2000)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if bar is not None:
            bar.close()
    run_settings = dict(model=args.model, weights=engine.weights, dataset=str(args.dataset),
                        split=args.split, size=args.size, precision=args.precision)
    reports = [(None, result)] + list(result.subsets.items())
    for flag, report in reports:
        report.settings.update(run_settings)
        if flag is not None:
            print(f"\nframes flagged {flag}:\n")
        print(markdown_table(report), end="")
        if args.out is not None:
            paths = write_outputs(report, args.out if flag is None else args.out / f"subset-{flag}")
            print(f"tv3s-eval: wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return EXIT_OK


def check_classes(tool: str, layout: str, engine) -> None:
    """Warn when the model's class count does not fit the dataset's label space."""
    expected = {"vspw": 124, "cityscapes": 19, "synthetic": 19}.get(layout)
    if expected is not None and engine.num_classes != expected:
        print(f"{tool}: warning: the {layout} labels have {expected} classes but the model has "
              f"{engine.num_classes}; labels past the model's classes are ignored", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
