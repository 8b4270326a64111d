"""The official TV3S optimisation recipe: AdamW parameter groups and the poly schedule.

From ``local_configs/tv3s/B*/tv3s_realshift_w20_s10.*.py`` (Ashesham/TV3S, mmcv 1.x runner):

* AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.01;
* ``paramwise_cfg.custom_keys``: ``pos_block`` -> decay x0, ``norm`` -> decay x0,
  ``head`` -> lr x10. mmcv applies only the *first* key that occurs in a parameter's name,
  trying longer keys first (ties alphabetically): ``pos_block``, then ``head``, then ``norm``.
  So every ``decode_head.*`` parameter (its norms included) gets lr x10 with full decay, and
  backbone parameters whose name holds ``norm`` get no decay;
* poly schedule, power 1.0, min lr 0, by iteration, with a linear warm-up over 1500
  iterations from ratio 1e-6 (mmcv ``PolyLrUpdaterHook`` with ``warmup='linear'``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

__all__ = ["Recipe", "param_groups", "build_optimizer", "lr_at", "set_lr"]

# mmcv order: longest key first, ties alphabetically.
_CUSTOM_KEYS: Tuple[Tuple[str, Dict[str, float]], ...] = (
    ("pos_block", {"decay_mult": 0.0}),
    ("head", {"lr_mult": 10.0}),
    ("norm", {"decay_mult": 0.0}),
)


@dataclass
class Recipe:
    """Optimiser and schedule settings; defaults are the official ones."""

    lr: float = 6e-5
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    power: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6


def param_groups(model: torch.nn.Module, recipe: Recipe) -> List[dict]:
    """One group per parameter (as mmcv's DefaultOptimizerConstructor), with ``lr`` and
    ``weight_decay`` from the custom keys; ``name`` is kept for inspection."""
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = recipe.lr, recipe.weight_decay
        for key, rule in _CUSTOM_KEYS:
            if key in name:
                mult = recipe.head_lr_mult if key == "head" else rule.get("lr_mult", 1.0)
                lr = recipe.lr * mult
                decay = recipe.weight_decay * rule.get("decay_mult", 1.0)
                break
        groups.append({"params": [param], "lr": lr, "initial_lr": lr, "weight_decay": decay, "name": name})
    return groups


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    # foreach=False: the per-parameter groups would otherwise be fused differently on
    # different machines; the plain loop is deterministic and fine at these sizes.
    return torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=recipe.betas,
                             weight_decay=recipe.weight_decay, foreach=False)


def lr_at(initial_lr: float, iteration: int, max_iters: int, recipe: Recipe) -> float:
    """lr of a group whose initial lr is ``initial_lr`` before step ``iteration`` (0-based),
    as mmcv's poly + linear warm-up: ``regular = (lr0 - min) * (1 - it/max)^power + min``,
    times ``1 - (1 - it/warmup) * (1 - ratio)`` during warm-up."""
    if max_iters <= 0:
        raise ValueError("max_iters must be positive")
    coeff = max(0.0, 1.0 - iteration / max_iters) ** recipe.power
    lr = (initial_lr - recipe.min_lr) * coeff + recipe.min_lr
    if iteration < recipe.warmup_iters:
        lr *= 1.0 - (1.0 - iteration / recipe.warmup_iters) * (1.0 - recipe.warmup_ratio)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, max_iters: int, recipe: Recipe) -> float:
    """Set every group's lr for step ``iteration``; returns the base (backbone) lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(group["initial_lr"], iteration, max_iters, recipe)
    return lr_at(recipe.lr, iteration, max_iters, recipe)
