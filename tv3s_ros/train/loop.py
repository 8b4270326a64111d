"""The training loop: data, model, optimiser, schedule, logging, validation, checkpoints.

Deterministic per seed on CPU: the model init and the dropout / drop-path draws come from the
torch RNG seeded with ``seed`` (its state is saved in every checkpoint and restored on
resume), and sample ``g`` (the g-th clip of the run) is a pure function of ``(seed, g)``
(:mod:`tv3s_ros.train.clips`), whatever the number of workers. A resumed run therefore
continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from tv3s_ros.data.datasets import detect_layout, open_dataset
from tv3s_ros.model.device import PRECISIONS, autocast, select_device
from tv3s_ros.train.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    read_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from tv3s_ros.train.class_weights import resolve_class_weights, resumed_class_weights, spec_record
from tv3s_ros.train.clips import OFFICIAL_OFFSETS, Augment, ClipDataset, ClipSampler, collate
from tv3s_ros.train.log import TrainLog
from tv3s_ros.train.model_init import build_training_model, model_from_config
from tv3s_ros.train.objective import clip_loss, stream_backward
from tv3s_ros.train.recipe import Recipe, build_optimizer, set_lr

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "official_crop"]

# Official crop sizes (h, w): cityscapes_1024x1024_repeat_clips.py and vspw_repeat2.py.
_OFFICIAL_CROPS = {"cityscapes": (512, 1024), "vspw": (480, 480)}


def official_crop(dataset: str) -> Tuple[int, int]:
    return _OFFICIAL_CROPS.get(dataset, (512, 1024))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything a run needs; defaults are the official recipe where there is one."""

    dataset: Path
    work_dir: Path
    preset: str = "tv3s_b1_cityscapes"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"                     # "scratch" or a checkpoint path
    classes: Optional[List[str]] = None       # new class list (with a checkpoint init)
    resume: Optional[str] = None              # None, "auto" (latest in work_dir) or a path
    layout: str = "auto"
    train_split: Optional[str] = "train"
    val_split: Optional[str] = None
    iters: int = 160_000
    batch: int = 2
    crop: Optional[Tuple[int, int]] = None    # (h, w); None: official for the preset's dataset
    scale: Optional[str] = None               # "official" (preset test scale), "native", or "LONGxSHORT"
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    reverse_prob: Optional[float] = None      # None: 0.5 on VSPW, 0 otherwise (official)
    offsets: Tuple[int, ...] = OFFICIAL_OFFSETS
    recipe: Recipe = field(default_factory=Recipe)
    dropout: float = 0.1
    drop_path: float = 0.1
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"                   # auto: bf16 on CUDA, fp32 on CPU
    stream_frames: int = 0                    # >0: streaming-aware runs of this many frames
    stream_stride: int = 1
    tbptt: int = 0                            # detach the state every N frames (0: never)
    stream_chunk: int = 1                     # frames per head call in streaming-aware mode
    val_every: int = 0
    val_modes: Tuple[str, ...] = ("stream",)
    val_size: str = "official"
    val_max_videos: Optional[int] = None
    log_every: int = 10
    save_every: int = 4000
    keep: int = 0
    progress: bool = True
    class_weights: Any = None                 # None, ("enet", c) or one weight per class (parse_class_weights)


def _precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {name!r}")
    return name


class Trainer:
    """Set up a run (new or resumed) from a :class:`TrainConfig`; :meth:`run` trains."""

    def __init__(self, config: TrainConfig, echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
        self.config = c = config
        self.echo = echo
        self.work_dir = Path(c.work_dir)
        self.device = select_device(c.device)
        self.precision = _precision(c.precision, self.device)
        root = Path(c.dataset)
        self.layout = detect_layout(root) if c.layout == "auto" and root.is_dir() else c.layout
        self.train_videos = open_dataset(root, self.layout, c.train_split)
        self.val_videos = None
        if c.val_every:
            self.val_videos = open_dataset(root, self.layout, c.val_split)
            if c.val_max_videos:
                self.val_videos = self.val_videos[:c.val_max_videos]
        self.start_iter, self.epoch = 0, 0
        checkpoint = self._resume_source()
        if checkpoint is not None:
            obj = read_training_checkpoint(checkpoint)
            meta = obj["meta"]
            self.model = model_from_config(meta["tv3s_config"])
            self.model.load_state_dict(obj["state_dict"], strict=True)
            self.start_iter, self.epoch = int(meta["iter"]), int(meta["epoch"])
            self.init_description = f"resumed from {checkpoint} at iteration {self.start_iter}"
        else:
            torch.manual_seed(c.seed)
            self.model, self.init_description = build_training_model(c.preset, c.init, c.classes, c.model_overrides)
        self.model.backbone.set_drop_path(c.drop_path)
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, c.recipe)
        if checkpoint is not None:
            self.optimizer.load_state_dict(obj["optimizer"])
            restore_rng_state(meta["tv3s_train"]["rng"])
        mcfg = self.model.cfg
        self.crop = tuple(c.crop) if c.crop else official_crop(mcfg.dataset)
        scale = c.scale or ("native" if self.layout == "synthetic" else "official")
        if scale == "official":
            self.scale = tuple(mcfg.test_scale)
        elif scale == "native":
            self.scale = None
        else:
            long_side, short_side = (int(v) for v in scale.lower().split("x"))
            self.scale = (max(long_side, short_side), min(long_side, short_side))
        self.sampler = ClipSampler(self.train_videos, self.layout, c.seed, c.offsets, c.reverse_prob,
                                   c.stream_frames, c.stream_stride)
        self.augment = Augment(self.crop, mcfg.mean, mcfg.std, self.scale, tuple(c.ratio_range), c.cat_max_ratio,
                               c.flip_prob, c.photometric)
        # A resumed run keeps the weights its checkpoint recorded (checkpoints from before
        # class weights existed record none: count them as a new run does).
        run_meta = obj["meta"].get("tv3s_train", {}) if checkpoint is not None else {}
        if "class_weights" in run_meta:
            self.class_weights = resumed_class_weights(c.class_weights, run_meta["class_weights"],
                                                       mcfg.num_classes, run_meta.get("class_weights_spec"))
        else:
            self.class_weights = resolve_class_weights(c.class_weights, self.train_videos, self.layout,
                                                       mcfg.num_classes)
        self._class_weight = (None if self.class_weights is None
                              else torch.tensor(self.class_weights, dtype=torch.float32, device=self.device))
        self.dataset = ClipDataset(self.train_videos, self.layout, self.sampler, self.augment, c.iters * c.batch)
        self.log = TrainLog(self.work_dir, resume_iter=self.start_iter if checkpoint is not None else None)

    # ------------------------------------------------------------------ set-up helpers
    def _resume_source(self) -> Optional[Path]:
        c = self.config
        if not c.resume:
            return None
        if c.resume == "auto":
            found = latest_checkpoint(self.work_dir)
            if found is None:
                self.echo(f"tv3s-train: no checkpoint in {self.work_dir} to resume from; starting a new run")
            return found
        path = Path(c.resume).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        return path

    def _autocast(self):
        return autocast(self.device, PRECISIONS[self.precision])

    def _loader(self, start: int, stop: int):
        c = self.config
        indices = range(start * c.batch, stop * c.batch)
        return torch.utils.data.DataLoader(self.dataset, batch_size=c.batch, sampler=indices, num_workers=c.workers,
                                           collate_fn=collate, worker_init_fn=_worker_init,
                                           pin_memory=self.device.type == "cuda",
                                           # its own generator: creating the iterator would
                                           # otherwise draw from the global torch RNG (dropout),
                                           # once per run segment, and break exact resume
                                           generator=torch.Generator().manual_seed(c.seed))

    def summary(self) -> str:
        from tv3s_ros.model import scan

        c, m = self.config, self.model.cfg
        params = sum(p.numel() for p in self.model.parameters())
        mode = (f"streaming-aware runs of {c.stream_frames} frames (stride {c.stream_stride}, "
                f"tbptt {c.tbptt or 'off'}, chunk {c.stream_chunk})" if c.stream_frames
                else f"clips {list(c.offsets) + [0]}")
        return (f"model {m.name} ({m.backbone}, E={m.embed_dim}, {m.n_mambas} Mamba layers, {m.num_classes} classes, "
                f"{params / 1e6:.2f} M parameters), init: {self.init_description}\n"
                f"data {c.dataset} ({self.layout}, split {c.train_split}: {len(self.train_videos)} videos, "
                f"{len(self.sampler)} samples per epoch); {mode}; crop {self.crop[0]}x{self.crop[1]}, "
                f"scale {self.scale or 'native'} x {c.ratio_range}; class weights {self._weights_text()}\n"
                f"iterations {self.start_iter}..{c.iters}, batch {c.batch}, lr {c.recipe.lr:g} "
                f"(head x{c.recipe.head_lr_mult:g}), device {self.device}, precision {self.precision}, "
                f"scan backend {scan.backend_for(torch.empty(1, device=self.device))}")

    def _weights_text(self) -> str:
        if self.class_weights is None:
            return "none"
        names = self.model.cfg.class_names
        return ", ".join(f"{n} {w:.2f}" for n, w in zip(names, self.class_weights))

    # ------------------------------------------------------------------ training
    def run(self, stop_at: Optional[int] = None) -> Dict[str, Any]:
        """Train from the current iteration up to ``stop_at`` (default: ``iters``)."""
        c = self.config
        stop = min(c.iters, stop_at if stop_at is not None else c.iters)
        bar = None
        if c.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.iters, initial=self.start_iter, desc="tv3s-train", unit="it", file=sys.stderr,
                       dynamic_ncols=True, smoothing=0.1, mininterval=0.5)
        t0 = time.perf_counter()
        window: List[Dict[str, float]] = []
        parts: Dict[str, float] = {}
        step_times: List[float] = []
        last = time.perf_counter()
        saved = None
        it = self.start_iter
        try:
            for it, batch in zip(range(self.start_iter, stop), self._loader(self.start_iter, stop)):
                lr = set_lr(self.optimizer, it, c.iters, c.recipe)
                parts = self.step(batch)
                done = it + 1
                self.epoch = (done * c.batch - 1) // len(self.sampler)
                now = time.perf_counter()
                step_times.append(now - last)
                last = now
                window.append(dict(parts, lr=lr))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if done % c.log_every == 0 or done == stop:
                    mean = {k: sum(w[k] for w in window) / len(window) for k in ("loss", "loss_main", "loss_aux")}
                    self.log.add(iter=done, lr=lr, time_s=now - t0,
                                 step_s=sum(step_times[-len(window):]) / len(window), **mean)
                    window = []
                if c.val_every and (done % c.val_every == 0 or done == c.iters):
                    self.validate(done)
                if done % c.save_every == 0 or done == stop:
                    saved = self.save(done)
                    self.log.plot()
            self.start_iter = stop
        finally:
            if bar is not None:
                bar.close()
        return {"iter": self.start_iter, "checkpoint": saved, "seconds": time.perf_counter() - t0,
                "step_s": (sum(step_times) / len(step_times)) if step_times else float("nan"),
                "last_loss": parts.get("loss")}

    def step(self, batch: dict) -> Dict[str, float]:
        """One optimiser step on a batch; returns the losses."""
        c = self.config
        frames = batch["frames"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        # Labels past the model's classes are ignored (as tv3s-eval): a new class list may
        # keep only the first classes of a dataset's label space.
        labels = labels.masked_fill(labels >= self.model.cfg.num_classes, 255)
        self.optimizer.zero_grad(set_to_none=True)
        if c.stream_frames:
            parts = stream_backward(self.model, frames, labels, c.tbptt, c.stream_chunk, c.dropout, self._autocast,
                                    self._class_weight)
        else:
            with self._autocast():
                loss, parts = clip_loss(self.model, frames, labels, c.dropout, self._class_weight)
            loss.backward()
        if not math.isfinite(parts["loss"]):
            raise TrainingDiverged(f"loss is {parts['loss']} at iteration {self.start_iter}; "
                                   "lower --lr or check the labels")
        self.optimizer.step()
        return parts

    def save(self, iteration: int) -> Path:
        c = self.config
        meta = {"seed": c.seed, "iters": c.iters, "batch": c.batch, "crop": list(self.crop), "layout": self.layout,
                "dataset": str(c.dataset), "init": self.init_description, "stream_frames": c.stream_frames,
                "recipe": c.recipe, "class_weights": self.class_weights,
                "class_weights_spec": spec_record(c.class_weights)}
        path = save_training_checkpoint(checkpoint_path(self.work_dir, iteration), self.model, self.optimizer,
                                        iteration, self.epoch, meta)
        prune_checkpoints(self.work_dir, c.keep)
        return path

    def validate(self, iteration: int) -> Dict[str, float]:
        """tv3s-eval's runner on the validation videos (the node's engine); the model returns
        to training mode afterwards."""
        from tv3s_ros.engine import Engine
        from tv3s_ros.eval.report import write_outputs
        from tv3s_ros.eval.runner import evaluate
        from tv3s_ros.streams import ResetPolicy

        c = self.config
        precision = self.precision if self.device.type == "cuda" else "fp32"
        engine = Engine(self.model, device=self.device, precision=precision,
                        input_size=c.val_size, graphs="off", gpu_jpeg=False,
                        reset_policy=ResetPolicy(max_gap_s=0.0, max_state_frames=0))
        try:
            result = evaluate(self.val_videos, self.layout, engine, list(c.val_modes))
        finally:
            self.model.train()
        first = result.modes[c.val_modes[0]]
        out = {"miou": 100 * first.miou, "mvc8": 100 * first.mvc(8)}
        write_outputs(result, self.work_dir / "val" / f"iter_{iteration}")
        self.log.add(iter=iteration, val_miou=out["miou"],
                     val_mvc8=None if math.isnan(out["mvc8"]) else out["mvc8"])
        self.echo(f"tv3s-train: iteration {iteration}: validation ({c.val_modes[0]}) mIoU {out['miou']:.2f} %")
        return out


def _worker_init(_worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
