"""Export a tv3s-train checkpoint as a small shippable weights file.

    python -m tv3s_ros.train.export CKPT OUT [--fp16] [--trained-with TEXT] [--force]

Keeps the mmcv layout ``{'meta', 'state_dict'}`` (``load_checkpoint`` and the official
loader read it) and drops what only resuming needs: the optimizer state and the RNG states.
``--fp16`` stores floating tensors as float16 (half the size); ``load_state_dict`` copies
them into the fp32 model, so the file still loads strictly. The meta keeps ``CLASSES``,
``PALETTE``, ``preset``, ``iter``, ``tv3s_config`` and the training settings, and gains
``trained_with`` (how the weights were made) and ``exported_from``.
The file is written atomically. Files above 8 MiB are refused unless ``--force`` (the
limit for weights committed to the repository).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from tv3s_ros.model.checkpoint import read_checkpoint, split_checkpoint

__all__ = ["MAX_BYTES", "export_checkpoint", "main"]

MAX_BYTES = 8 * 1024 * 1024
# Only needed to continue training exactly; a shipped file has no use for them.
_RESUME_ONLY = ("rng",)


def _describe_training(meta: Dict[str, Any]) -> str:
    """A fallback ``trained_with`` from the checkpoint's own record of its run."""
    train = meta.get("tv3s_train") or {}
    keys = ("dataset", "layout", "init", "iters", "batch", "crop", "seed", "stream_frames")
    parts = [f"{k}={train[k]}" for k in keys if k in train]
    return f"tv3s-train (preset {meta.get('preset')}; {', '.join(parts) or 'no run record'})"


def export_checkpoint(src: os.PathLike, dst: os.PathLike, fp16: bool = False,
                      trained_with: Optional[str] = None, max_bytes: Optional[int] = MAX_BYTES) -> Path:
    """Write the stripped copy of ``src`` to ``dst``; return ``dst``.

    ``ValueError`` (and no file at ``dst``) when the result exceeds ``max_bytes`` (None: no limit).
    """
    meta, state = split_checkpoint(read_checkpoint(src), str(src))
    out_state = OrderedDict()
    for key, value in state.items():
        value = value.detach().cpu()
        # Integer buffers (num_batches_tracked) keep their dtype: only floats shrink.
        out_state[key] = value.half() if fp16 and value.is_floating_point() else value.clone()
    out_meta = dict(meta)
    if isinstance(out_meta.get("tv3s_train"), dict):
        out_meta["tv3s_train"] = {k: v for k, v in out_meta["tv3s_train"].items() if k not in _RESUME_ONLY}
    out_meta["trained_with"] = trained_with or meta.get("trained_with") or _describe_training(meta)
    out_meta["exported_from"] = f"{Path(src).name} (iter {meta.get('iter', '?')}){', fp16' if fp16 else ''}"
    dst = Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        torch.save({"meta": out_meta, "state_dict": out_state}, tmp)
        size = tmp.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"the exported file would be {size / 2**20:.2f} MiB, above the "
                             f"{max_bytes / 2**20:.0f} MiB limit{'' if fp16 else ' (try --fp16)'}; "
                             "--force writes it anyway")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tv3s_ros.train.export", description=__doc__.split("\n\n")[0],
        epilog="example: python -m tv3s_ros.train.export runs/demo/latest.pth model/demo/tv3s_demo.pth "
               "--fp16 --trained-with \"tv3s-train world/ --model tv3s_demo ...\"")
    parser.add_argument("checkpoint", type=Path, help="tv3s-train (or any mmcv) checkpoint")
    parser.add_argument("out", type=Path, help="the file to write")
    parser.add_argument("--fp16", action="store_true", help="store floating tensors as float16")
    parser.add_argument("--trained-with", metavar="TEXT",
                        help="how the weights were made, e.g. the tv3s-train command (default: from the "
                             "checkpoint's run record)")
    parser.add_argument("--force", action="store_true", help=f"allow files above {MAX_BYTES // 2**20} MiB")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.out, fp16=args.fp16, trained_with=args.trained_with,
                                 max_bytes=None if args.force else MAX_BYTES)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"export: wrote {path} ({size / 2**20:.2f} MiB, {size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
