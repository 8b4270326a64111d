"""Backend choice for the selective scan and the causal conv1d (same signatures as ``scan_ref``).

- ``auto`` (default): the Triton kernels for CUDA tensors when triton imports, the chunked
  PyTorch scan (``scan_chunked``: no Python loop over tokens, autograd) otherwise (CPU, no
  triton, or inputs that need autograd: the kernels are forward only).
- A kernel picked by ``auto`` that fails on its first launch (say, a Triton compile error on
  a GPU the kernels were never run on) is reported once and replaced by the chunked scan.
- ``TV3S_SCAN_BACKEND=ref|chunked|triton|auto`` forces a choice (``ref``: the per-token
  reference, the oracle); it is read at every call so tests and tools can switch it. The
  causal conv1d has no chunked variant: ``chunked`` runs ``causal_conv1d_ref`` (one conv op).
  ``triton`` on CPU tensors only works under ``TRITON_INTERPRET=1`` (set before triton is
  first imported), which is how the kernel tests run without a GPU.

Nothing here imports triton or mamba_ssm at module import time: both are optional, and
mamba_ssm even fails to import on machines without CUDA.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from typing import Optional, Tuple

import torch

from .scan_chunked import selective_scan_chunked
from .scan_ref import causal_conv1d_ref, selective_scan_ref

BACKENDS = ("auto", "ref", "chunked", "triton")
ENV_VAR = "TV3S_SCAN_BACKEND"

log = logging.getLogger(__name__)
# Kernels whose first automatic launch raised (e.g. a Triton compile error on an untested GPU):
# the chunked PyTorch scan serves them from then on, after one warning. A forced backend never
# falls back.
_broken_kernels: set = set()
_proven_kernels: set = set()


@functools.lru_cache(maxsize=None)
def _triton_module():
    """The kernel module, or None when triton is missing or broken (cached)."""
    try:
        from . import scan_triton
    except Exception:  # ImportError, or a triton build that fails to initialise
        return None
    return scan_triton


def triton_available() -> bool:
    return _triton_module() is not None


def interpreter_enabled() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    module = _triton_module()
    return module is not None and module.INTERPRETED


@functools.lru_cache(maxsize=None)
def mamba_ssm_available() -> bool:
    """True when ``mamba_ssm`` is installed and imports (it needs CUDA); never raises."""
    if importlib.util.find_spec("mamba_ssm") is None or not torch.cuda.is_available():
        return False
    try:
        import mamba_ssm  # noqa: F401  (imported on demand only: it fails without CUDA)
    except Exception:
        return False
    return True


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _fp32_math(device: torch.device):
    """Autocast off: under autocast the reference's einsums would run in bf16/fp16, while the
    scan must compute (like the kernels) in fp32 with only its inputs/outputs in half."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def backend_for(x: torch.Tensor, *others: Optional[torch.Tensor]) -> str:
    """'triton', 'chunked' or 'ref' for a call on these tensors (see module docstring)."""
    choice = requested_backend()
    if choice in ("ref", "chunked"):
        return choice
    if choice == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but triton does not import")
        if x.device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(f"{ENV_VAR}=triton on {x.device.type} tensors needs TRITON_INTERPRET=1 "
                               "set before triton is first imported")
        return "triton"
    # The interpreter is for tests only: far too slow to be picked automatically.
    if (x.device.type == "cuda" and triton_available() and not interpreter_enabled()
            and not _needs_grad(x, *others)):
        return "triton"
    return "chunked"


def _run(kernel: str, triton_call, ref_call, x: torch.Tensor, *others, chunked_call=None):
    """Run ``triton_call()``, ``chunked_call()`` or ``ref_call()`` as the backend choice says
    (``chunked_call`` None: the reference serves ``chunked`` too).

    Chosen automatically, a kernel that fails on its first launch (a compile or launch error:
    the kernels are young and GPUs vary) is reported once and replaced by the chunked PyTorch
    scan, so a camera keeps being served, slower; a failure after the kernel has worked once is
    a real error and is raised.
    """
    choice = backend_for(x, *others)
    if choice == "triton" and kernel not in _broken_kernels:
        if kernel in _proven_kernels or requested_backend() == "triton":
            return triton_call()
        try:
            out = triton_call()
        except Exception as err:  # noqa: BLE001 - any first-launch failure: fall back, say so once
            _broken_kernels.add(kernel)
            log.warning("Triton %s kernel failed on its first launch (%s: %s); using the chunked PyTorch "
                        "scan from now on (slower). Set %s=triton to see the error, =chunked to silence this.",
                        kernel, type(err).__name__, err, ENV_VAR)
        else:
            _proven_kernels.add(kernel)
            return out
    with _fp32_math(x.device):
        if choice != "ref" and chunked_call is not None:
            return chunked_call()
        return ref_call()


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    delta_softplus: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Selective scan from state ``h0``: ``(y [N, D, L], h_last [N, D, S] fp32)``; see ``scan_ref``."""
    args = (u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus)
    return _run("selective_scan", lambda: _triton_module().selective_scan_triton(*args),
                lambda: selective_scan_ref(*args), u, delta, A, B, C, D, z, delta_bias, h0,
                chunked_call=lambda: selective_scan_chunked(*args))


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    tail: Optional[torch.Tensor] = None,
    activation: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv with carried tail: ``(out [N, D, L], new_tail [N, D, K-1])``; see ``scan_ref``."""
    args = (x, weight, bias, tail, activation)
    return _run("causal_conv1d", lambda: _triton_module().causal_conv1d_triton(*args),
                lambda: causal_conv1d_ref(*args), x, weight, bias, tail)
