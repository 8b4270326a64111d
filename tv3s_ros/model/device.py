"""Device and precision rules, written once for the engine, training, evaluation and the tools.

- :func:`select_device`: ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` with clear errors.
- :data:`PRECISIONS` and :func:`check_precision`: the precision names and what each device supports.
- :func:`autocast`: the autocast context for a compute dtype (none for fp32).
- :func:`device_context`: make a CUDA device current for a block (Triton launches and graph
  capture use the current device, not the tensors').
"""
from __future__ import annotations

import contextlib
from typing import Union

import torch

__all__ = ["PRECISIONS", "select_device", "check_precision", "autocast", "device_context"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def select_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available "
                               "(torch built without CUDA, or no GPU visible); use device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``fp32``/``fp16``/``bf16`` on ``device`` (clear error if unsupported)."""
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cpu" and key == "fp16":
        raise ValueError("precision fp16 is not supported on CPU; use fp32 or bf16 there")
    if device.type == "cuda" and key == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                         "use fp16 or fp32")
    return PRECISIONS[key]


def autocast(device: Union[str, torch.device], dtype: torch.dtype, cache: bool = True):
    """Autocast to ``dtype`` on ``device``'s type; a no-op context for fp32 (weights stay fp32).

    ``cache=False`` for CUDA-graph capture, as torch's graph notes require: cached weight casts
    are freed when the context exits, but a graph would keep reading them. (Eager autocast
    casts the weights every step anyway: the cache only lives within one context.)
    """
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=cache)


def device_context(device: Union[str, torch.device]):
    """``device`` made the current CUDA device for the block (a no-op off CUDA): Triton launches
    on the current device and its stream, and ``torch.cuda.graph`` captures on the current device."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
