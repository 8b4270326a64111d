"""Backend choice for the selective scan and the causal conv1d (same signatures as ``scan_ref``).

- ``auto`` (default): the Triton kernels for CUDA tensors when triton imports; on CPU the fused
  C++ kernels (``scan_fused``: built on first use, forward and backward) where a C++ compiler is
  available, else the chunked PyTorch scan (``scan_chunked``: no Python loop over tokens,
  autograd); the chunked scan also serves CUDA inputs that need autograd (the Triton kernels
  are forward only) and CUDA without triton.
- A kernel variant picked by ``auto`` that fails on its first launch (say, a Triton compile
  error on a GPU the kernels were never run on) is reported once and replaced by its fallback
  (:func:`fallback_backend`: the chunked scan; the conv's is the reference). Variants are
  tracked per Triton specialisation, and :func:`self_check` proves the ones an engine will use
  at start-up (see there).
- ``TV3S_SCAN_BACKEND=ref|chunked|fused|triton|auto`` forces a choice (``ref``: the per-token
  reference, the oracle; ``fused``: CPU tensors only, an error when the kernel cannot be built);
  it is read at every call so tests and tools can switch it. The causal conv1d has a fused
  variant (``scan_fused.causal_conv1d_fused``, conv and SiLU in one token-major pass) but no
  chunked one: ``chunked`` runs ``causal_conv1d_ref`` (one conv op).
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
from typing import Dict, Optional, Tuple

import torch

from . import scan_fused
from .scan_chunked import selective_scan_chunked
from .scan_ref import causal_conv1d_ref, selective_scan_ref

BACKENDS = ("auto", "ref", "chunked", "fused", "triton")
ENV_VAR = "TV3S_SCAN_BACKEND"

log = logging.getLogger(__name__)
# Triton compiles one binary per specialisation (dtypes, block sizes, 16-byte alignment, which
# strides/sizes are 1 or multiples of 16): a variant that works says nothing about another, so
# the bookkeeping is per specialisation (see _specialisation). A proven variant that fails later
# is a real error and raises; an unproven one that fails is served by the fallback.
_proven: set = set()
_broken: Dict[tuple, str] = {}          # specialisation -> "ErrorType: message"
_in_use: Dict[str, str] = {}            # kernel -> backend that served its last call

# Where a Triton kernel goes when it cannot be used (and what ``chunked`` runs): the one place to
# point at another backend. The conv has no chunked variant: one conv op is fast enough.
FALLBACK_BACKEND = "chunked"
_FALLBACKS = {"selective_scan": "chunked", "causal_conv1d": "ref"}
KERNELS = tuple(_FALLBACKS)


def fallback_backend(kernel: str) -> str:
    """The backend that serves ``kernel`` when its Triton variant fails (and under ``chunked``)."""
    return _FALLBACKS[kernel]


def _pytorch_impl(kernel: str, backend: str):
    """The non-Triton function of ``kernel`` for ``ref`` / ``chunked`` / ``fused``, looked up at call time."""
    if kernel == "selective_scan":
        return {"chunked": selective_scan_chunked, "fused": scan_fused.selective_scan_fused}.get(
            backend, selective_scan_ref)
    return scan_fused.causal_conv1d_fused if backend == "fused" else causal_conv1d_ref


@functools.lru_cache(maxsize=None)
def _triton_module():
    """The kernel module, or None when triton is missing or broken (cached)."""
    try:
        from . import scan_triton
    except Exception:  # noqa: BLE001 - ImportError, or a triton build that fails to initialise
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
    except Exception:  # noqa: BLE001 - mamba_ssm fails to import in many ways without CUDA
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
    """'triton', 'fused', 'chunked' or 'ref' for a call on these tensors (see module docstring)."""
    choice = requested_backend()
    if choice in ("ref", "chunked"):
        return choice
    if choice == "fused":
        if x.device.type != "cpu":
            raise RuntimeError(f"{ENV_VAR}=fused runs on CPU tensors, got {x.device.type}")
        reason = scan_fused.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"{ENV_VAR}=fused but the kernel is unavailable: {reason}")
        return "fused"
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
    if x.device.type == "cpu" and scan_fused.available():
        return "fused"
    return "chunked"


def _int_class(value: int):
    """How Triton specialises an integer argument: 1, a multiple of 16, or anything else."""
    value = int(value)
    return 1 if value == 1 else 16 if value % 16 == 0 else 0


def _signature(value):
    if isinstance(value, torch.Tensor):
        device = value.device
        aligned = device.type == "meta" or value.data_ptr() % 16 == 0
        strides = tuple(1 if v == 1 else 16 if v % 16 == 0 else 0 for v in value.stride())
        return value.dtype, device, aligned, strides
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _int_class(value)
    return value


def _specialisation(kernel: str, config: tuple, *values) -> tuple:
    """The key of one compiled variant: launch config, then dtype / device / alignment / stride
    classes of every tensor, the presence of each optional one, and the size classes."""
    return (kernel, tuple(config)) + tuple(_signature(v) for v in values)


def scan_specialisation(u, delta, A, B, C, D=None, z=None, delta_bias=None, h0=None, delta_softplus=True,
                        block_d=None, num_warps=None) -> tuple:
    n, d, length = u.shape
    config = _triton_module().scan_config(n, d, A.shape[1], u.device, block_d, num_warps)
    return _specialisation("selective_scan", config, u, delta, A, B, C, D, z, delta_bias, h0,
                           bool(delta_softplus), d, length, A.shape[1])


def conv_specialisation(x, weight, bias=None, tail=None, activation=True, block_d=None, block_l=None) -> tuple:
    if weight.dim() == 3:
        weight = weight[:, 0, :]
    n, d, length = x.shape
    config = _triton_module().conv_config(d, length, weight.shape[-1], x.device, block_d, block_l)
    return _specialisation("causal_conv1d", config, x, weight, bias, tail, bool(activation), d, length)


def _synchronize(x: torch.Tensor) -> None:
    """Wait for ``x``'s device, so that asynchronous faults (out-of-bounds or misaligned
    accesses) surface at this launch rather than frames later; never while a graph is captured."""
    if x.device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        torch.cuda.synchronize(x.device)


def _mark_broken(kernel: str, key: tuple, err: BaseException) -> None:
    first = not any(other[0] == kernel for other in _broken)
    _broken[key] = f"{type(err).__name__}: {str(err).strip()[:300]}"
    _in_use.setdefault(kernel, fallback_backend(kernel))
    # One warning per kernel (later variants usually fail for the same reason); all are counted
    # in backend_status().
    report = log.warning if first else log.debug
    report("Triton %s kernel failed on its first launch of variant %s (%s: %s); using the %s backend "
           "for it from now on (slower). Set %s=triton to see the error, =chunked to silence this.",
           kernel, key[1], type(err).__name__, err, fallback_backend(kernel), ENV_VAR)


def _fallback(kernel: str, x: torch.Tensor, args, choice: str = "chunked"):
    """Serve ``kernel`` without Triton: ``ref`` / ``fused`` as chosen, else the kernel's fallback."""
    name = choice if choice in ("ref", "fused") else fallback_backend(kernel)
    _in_use[kernel] = name
    with _fp32_math(x.device):
        return _pytorch_impl(kernel, name)(*args)


def _run(kernel: str, triton_call, key_call, args, x: torch.Tensor, *others):
    """Run ``triton_call()`` where the backend choice says so, else the fallback on ``args``.

    Chosen automatically, a kernel variant that fails on its first launch (a compile error,
    which Triton raises as ``CompilationError``, not a ``RuntimeError``; a launch error; an
    asynchronous fault caught by the synchronise after it) is reported once and replaced by
    the fallback, so a camera keeps being served, slower. A failure of a variant that has
    worked once, or of a forced backend, is a real error and is raised.
    """
    choice = backend_for(x, *others)
    if choice == "triton":
        if requested_backend() == "triton":
            _in_use[kernel] = "triton"
            return triton_call()
        key = key_call()
        if key in _proven:
            _in_use[kernel] = "triton"
            return triton_call()
        if key not in _broken:
            try:
                out = triton_call()
                _synchronize(x)
            except Exception as err:  # noqa: BLE001 - any first-launch failure: fall back, say so once
                _mark_broken(kernel, key, err)
            else:
                _proven.add(key)
                _in_use[kernel] = "triton"
                return out
    return _fallback(kernel, x, args, choice)


def backend_status() -> Dict[str, str]:
    """What serves each kernel, for diagnostics and benchmarks: ``scan_backend.<kernel>`` is
    the backend of its last call (``-`` before the first), ``scan_fallback.<kernel>`` the
    first failure of a Triton variant that fell back (only when one did)."""
    status = {f"scan_backend.{k}": _in_use.get(k, "-") for k in KERNELS}
    for key, reason in _broken.items():
        status.setdefault(f"scan_fallback.{key[0]}",
                          f"{sum(1 for other in _broken if other[0] == key[0])} variant(s) on "
                          f"{fallback_backend(key[0])}, first: {reason}")
    return status


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
                lambda: scan_specialisation(*args), args, u, delta, A, B, C, D, z, delta_bias, h0)


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
                lambda: conv_specialisation(*args), args, x, weight, bias, tail)


def _mixer_like_inputs(n: int, length: int, d: int, s: int, k: int, dt_rank: int, dtype, device, seed: int):
    """Tiny inputs laid out as the Mamba mixer passes them (token-major views of its projections),
    so their Triton specialisation is the model's."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    xz = rnd(n, length, 2 * d).to(device, dtype)
    x_dbl = rnd(n, length, dt_rank + 2 * s).to(device, dtype)
    u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
    scan = dict(u=u, delta=(rnd(n, length, d) * 0.5 - 1.0).to(device, dtype).transpose(1, 2),
                A=-torch.exp(rnd(d, s) * 0.5).to(device), B=x_dbl[..., dt_rank:dt_rank + s].transpose(1, 2),
                C=x_dbl[..., dt_rank + s:].transpose(1, 2), D=rnd(d).to(device), z=z,
                delta_bias=(rnd(d) * 0.5).to(device), h0=rnd(n, d, s).to(device), delta_softplus=True)
    conv = (u, rnd(d, k).to(device), rnd(d).to(device), rnd(n, d, k - 1).to(device, dtype), True)
    return scan, conv


def self_check(device, dtype: torch.dtype, *, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
               lengths=(1, 5, 16, 32, 400)) -> Dict[str, str]:
    """Prove, at start-up, every kernel variant a model will use on ``device`` in ``dtype``.

    Each variant (every block size the wrappers can pick, the token lengths of the piece
    groups: 1, odd, multiples of 16) runs on tiny mixer-like inputs, is synchronised (an
    asynchronous fault shows here, not frames later) and compared with the reference.
    Failures go to the fallback now, before any graph is captured; successes are proven and
    never re-checked. A variant missed here is still checked at its first launch. Returns
    :func:`backend_status`. A no-op where ``auto`` would not pick Triton (CPU, forced backend).

    A fault that kills the CUDA context (an illegal address) cannot be recovered in-process:
    it then fails here, at start-up, with the variant named, instead of mid-stream.
    """
    device = torch.device(device)
    probe = torch.empty(0, device=device)
    if requested_backend() != "auto" or backend_for(probe) != "triton":
        return backend_status()
    module = _triton_module()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    cases = [("selective_scan", 4, length, None) for length in lengths if length in (1, 5)]
    cases += [("selective_scan", 2, 16, block) for block in module.scan_block_choices(d_inner, device)]
    cases += [("causal_conv1d", 2, length, None) for length in lengths]
    for i, (kernel, n, length, block_d) in enumerate(cases):
        scan_kw, conv_args = _mixer_like_inputs(n, length, d_inner, d_state, d_conv, dt_rank, dtype, device, i)
        with torch.inference_mode():
            if kernel == "selective_scan":
                key = scan_specialisation(**scan_kw, block_d=block_d)
                call = lambda: module.selective_scan_triton(**scan_kw, block_d=block_d)  # noqa: E731
                expected = lambda: _pytorch_impl(kernel, "ref")(**scan_kw)  # noqa: E731
            else:
                key = conv_specialisation(*conv_args)
                call = lambda: module.causal_conv1d_triton(*conv_args)  # noqa: E731
                expected = lambda: _pytorch_impl(kernel, "ref")(*conv_args)  # noqa: E731
            if key in _proven or key in _broken:
                continue
            try:
                got = call()
                _synchronize(probe)
                with _fp32_math(device):
                    want = expected()
                for a, b in zip(got, want):
                    err = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
                    if not err <= tol:  # also catches NaN
                        raise RuntimeError(f"self-check mismatch vs the reference: relative error {err:.2e}")
            except Exception as err:  # noqa: BLE001 - any failure: the fallback serves this variant
                _mark_broken(kernel, key, err)
            else:
                _proven.add(key)
                _in_use[kernel] = "triton"
    return backend_status()
