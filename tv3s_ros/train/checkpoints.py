"""Training checkpoints in the official mmcv layout, written atomically, found for resuming.

A file is ``{'meta': {...}, 'state_dict': {...}, 'optimizer': {...}}`` as mmcv's
``save_checkpoint`` writes it: ``meta`` holds ``CLASSES``, ``PALETTE``, ``iter``, ``epoch``,
``preset``, ``tv3s_config`` and ``tv3s_train`` (the run's settings, the RNG states and the
numbers needed to continue); ``state_dict`` plain tensors with the official names
(``backbone.*``, ``decode_head.*``). Only tensors and plain containers are stored, so
``torch.load(weights_only=True)`` (ours and mmcv's loader alike) reads it, and
``tv3s_ros.model.load_checkpoint`` loads it strictly.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from tv3s_ros.model.checkpoint import read_checkpoint

__all__ = ["CHECKPOINT_RE", "checkpoint_path", "list_checkpoints", "latest_checkpoint", "save_training_checkpoint",
           "read_training_checkpoint", "rng_state", "restore_rng_state", "prune_checkpoints"]

CHECKPOINT_RE = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_path(work_dir: Path, iteration: int) -> Path:
    return Path(work_dir) / f"iter_{iteration}.pth"


def list_checkpoints(work_dir: Path) -> List[Path]:
    """``iter_N.pth`` files in ``work_dir``, oldest iteration first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(work_dir: Path) -> Optional[Path]:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def rng_state() -> Dict[str, Any]:
    """Torch RNG states (dropout, drop-path) as tensors (``weights_only``-loadable)."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _plain(value: Any) -> Any:
    """Dataclasses, Paths and tuples -> plain containers the weights_only unpickler accepts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_training_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             iteration: int, epoch: int, train_meta: Dict[str, Any]) -> Path:
    """Write ``path`` atomically (temporary file in the same folder, then rename) and point
    ``latest.pth`` at it (a symlink, as mmcv; replaced atomically too)."""
    cfg = model.cfg
    meta = {
        "CLASSES": tuple(cfg.class_names),
        "PALETTE": [list(map(int, c)) for c in cfg.palette],
        "iter": int(iteration),
        "epoch": int(epoch),
        "preset": cfg.name,
        "time": time.asctime(),
        "tv3s_config": _plain(dataclasses.asdict(cfg)),
        "tv3s_train": dict(_plain({k: v for k, v in train_meta.items() if k != "rng"}), rng=rng_state()),
    }
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"meta": meta, "state_dict": state, "optimizer": optimizer.state_dict()}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    link = path.with_name("latest.pth")
    tmp_link = path.with_name(f".latest.{os.getpid()}.tmp")
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(path.name, tmp_link)
    os.replace(tmp_link, link)
    return path


def read_training_checkpoint(path: Path) -> Dict[str, Any]:
    """The whole file, read with ``weights_only=True``; ``ValueError`` if it is not ours."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or "optimizer" not in obj \
            or "tv3s_train" not in (obj.get("meta") or {}):
        raise ValueError(f"{path} is not a tv3s-train checkpoint (no optimizer state or tv3s_train meta); "
                         "start from it with --init instead of --resume")
    return obj


def prune_checkpoints(work_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` ``iter_N.pth`` files (0: keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(work_dir)[:-keep]:
        old.unlink()
