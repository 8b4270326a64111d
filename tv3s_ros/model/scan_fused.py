"""Fused CPU selective scan: a small C++ kernel (``scan_fused.cpp``), built on first use.

Same signature and semantics as :func:`scan_ref.selective_scan_ref`; forward and backward
(autograd), fp32 (float64 for gradient checks), CPU tensors of any strides. It is the CPU
default where a C++ compiler is available; without one, :func:`available` is False and the
plain-PyTorch chunked scan (``scan_chunked``) serves instead.

Why: every scan touches each (token, channel, state) element (210 million per B0 256x512
frame). The chunked PyTorch scan makes one pass over memory per operation; the kernel keeps
each element in registers for one exp and two multiply-adds, vectorised over 8 channels, and
threads over (sequence, channel group) on torch's own OpenMP pool (see ``parallel_for`` in the
source; threads of its own when the compiler has no OpenMP). The per-token work around the
scan (delta_bias and softplus, the D skip, the z gate) is fused in as well, forward and
backward, as in mamba_ssm's CUDA kernel: in PyTorch those ops alone cost about a fifth of a
B0 stream frame.
See benchmarks/README.md for the figures.

Build: ``$CXX`` (default ``c++``) with ``-O3 -fopenmp`` (+ ``-mavx2 -mfma`` where the CPU has
them; without ``-fopenmp`` if the compiler refuses it), no torch headers (about 2 s), called
through ctypes (which releases the GIL). The library is cached under ``$TV3S_CACHE_DIR``
(default ``~/.cache/tv3s_ros``), keyed by the source, the flags and the compiler, and written
atomically, so concurrent processes are safe.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("scan_fused.cpp")
CACHE_ENV = "TV3S_CACHE_DIR"
_TYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


class FusedScanUnavailable(RuntimeError):
    """The kernel could not be built or loaded (no compiler, compile error, unwritable cache)."""


class _CacheUnwritable(FusedScanUnavailable):
    """The cache directory cannot take the library (a build without OpenMP would not help)."""


class _View(ctypes.Structure):
    """A strided [n, l, c] view: pointer and element strides (``View`` in scan_fused.cpp)."""
    _fields_ = [("p", ctypes.c_void_p), ("sn", ctypes.c_int64), ("sl", ctypes.c_int64), ("sc", ctypes.c_int64)]


_VIEWS = ("delta", "u", "B", "C", "z", "y", "gy")
_POINTERS = ("A", "D", "delta_bias", "h0", "h_last", "gh", "g_delta", "g_u", "g_z", "g_h0", "g_A", "g_D",
             "g_bias", "g_B", "g_C")


class _ScanArgs(ctypes.Structure):
    """Mirrors ``ScanArgs`` in scan_fused.cpp (field order and types must match)."""
    _fields_ = ([(name, _View) for name in _VIEWS] + [(name, ctypes.c_void_p) for name in _POINTERS]
                + [(name, ctypes.c_int64) for name in ("n", "l", "d", "s", "parts")]
                + [("softplus", ctypes.c_int32), ("threads", ctypes.c_int32)])


class _ConvArgs(ctypes.Structure):
    """Mirrors ``ConvArgs`` in scan_fused.cpp."""
    _fields_ = ([("x", _View)] + [(name, ctypes.c_void_p) for name in ("weight", "bias", "tail", "out", "new_tail")]
                + [(name, ctypes.c_int64) for name in ("n", "l", "d", "k")]
                + [("silu", ctypes.c_int32), ("threads", ctypes.c_int32)])


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compile_command(compiler: str, out: Path, openmp: bool = True) -> list:
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-fno-trapping-math",
             "-Wno-psabi"]
    if openmp:   # the tasks run on torch's OpenMP pool (scan_fused.cpp, parallel_for)
        flags.append("-fopenmp")
    if {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return [compiler, *flags, str(SOURCE), "-o", str(out)]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tv3s_ros")


def _build(compiler: str, version: str, openmp: bool) -> Path:
    """The cached library for this source, flags and compiler (built once, written atomically)."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(_compile_command(compiler, Path("x"), openmp)).encode())
    key.update(version.encode())
    target = cache_dir() / f"scan_fused-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".scan_fused-", suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise _CacheUnwritable(f"cannot write the kernel cache {target.parent}: {err}") from err
    log.info("building the fused CPU scan kernel (once): %s", target)
    try:
        done = subprocess.run(_compile_command(compiler, Path(tmp), openmp), capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise FusedScanUnavailable(f"compiling {SOURCE.name} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)   # atomic: another process sees the old state or the whole file
    except (OSError, subprocess.SubprocessError) as err:
        raise FusedScanUnavailable(f"compiling {SOURCE.name} failed: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise FusedScanUnavailable(f"no C++ compiler ({compiler!r} not found; set CXX or install g++)")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise FusedScanUnavailable(f"{compiler} --version failed: {err}") from err
    # With OpenMP first; a compiler without it (clang lacking libomp) still gets a kernel that
    # runs its tasks on threads of its own.
    try:
        target = _build(compiler, version, openmp=True)
        lib = ctypes.CDLL(str(target))
    except _CacheUnwritable:
        raise
    except (FusedScanUnavailable, OSError) as err:
        log.info("fused CPU scan without OpenMP (%s)", str(err).splitlines()[0][:200])
        target = _build(compiler, version, openmp=False)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as err2:
            raise FusedScanUnavailable(f"loading {target} failed: {err2}") from err2
    lib.tv3s_openmp.restype = ctypes.c_int
    for suffix in ("f32", "f64"):
        for name, struct in (("scan_fwd", _ScanArgs), ("scan_bwd", _ScanArgs), ("conv_fwd", _ConvArgs)):
            fn = getattr(lib, f"tv3s_{name}_{suffix}")
            fn.argtypes = [ctypes.POINTER(struct)]
            fn.restype = None
    return lib


def uses_openmp() -> bool:
    """True when the kernel runs its tasks on the OpenMP pool (False: its own threads)."""
    return bool(_library().tv3s_openmp())


def available() -> bool:
    """True when the kernel builds and loads here (cached; the reason is logged once if not)."""
    try:
        _library()
    except FusedScanUnavailable as err:
        _warn_unavailable(str(err))
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_unavailable(reason: str) -> None:
    log.warning("fused CPU scan unavailable (%s); using the chunked PyTorch scan (slower)", reason)


def unavailable_reason() -> Optional[str]:
    try:
        _library()
    except FusedScanUnavailable as err:
        return str(err)
    return None


def _view(x: Optional[torch.Tensor]) -> _View:
    """An [N, C, L] tensor (channels or states by tokens) as the kernel's [n, l, c] view."""
    if x is None:
        return _View(None, 0, 0, 0)
    sn, sc, sl = x.stride()
    return _View(x.data_ptr(), sn, sl, sc)


def _ptr(x: Optional[torch.Tensor]):
    return None if x is None else x.data_ptr()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _call(direction: str, dtype: torch.dtype, views: dict, pointers: dict, n, length, d, s, parts,
          softplus: bool) -> None:
    args = _ScanArgs(**{k: _view(views.get(k)) for k in _VIEWS}, **{k: _ptr(pointers.get(k)) for k in _POINTERS},
                     n=n, l=length, d=d, s=s, parts=parts, softplus=int(softplus), threads=_threads())
    getattr(_library(), f"tv3s_scan_{direction}_{_TYPES[dtype][0]}")(ctypes.byref(args))


class _FusedScan(torch.autograd.Function):
    """The whole selective scan (softplus, skip and gate included) in the kernel, both ways.

    Inputs are in the compute dtype; optional ones may be None. Outputs: y [N, D, L] (a view
    of a token-major buffer, what the mixer's out_proj reads next) and h_last [N, D, S].
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        n, d, length = u.shape
        s = A.shape[1]
        y = torch.empty(n, length, d, dtype=u.dtype).transpose(1, 2)
        h_last = torch.empty(n, d, s, dtype=u.dtype)
        _call("fwd", u.dtype, dict(delta=delta, u=u, B=B, C=C, z=z, y=y),
              dict(A=A, D=D, delta_bias=delta_bias, h0=h0, h_last=h_last), n, length, d, s, 1, softplus)
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)
        return y, h_last

    @staticmethod
    def backward(ctx, g_y, g_h):
        u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
        n, d, length = u.shape
        s = A.shape[1]
        dtype = u.dtype
        threads = _threads()
        # Channel ranges per sequence, each with its own B/C gradient slice (no shared writes):
        # one range when there are enough sequences to keep every thread busy.
        groups = -(-d // 8)
        parts = 1 if n >= 2 * threads else max(1, min(groups, -(-2 * threads // max(n, 1))))
        g_y = torch.zeros(n, d, length, dtype=dtype) if g_y is None else g_y.to(dtype)
        g_h = None if g_h is None else g_h.to(dtype).contiguous()
        token_major = lambda: torch.empty(n, length, d, dtype=dtype)  # noqa: E731
        out = dict(g_delta=token_major(), g_u=token_major(), g_z=None if z is None else token_major(),
                   g_h0=torch.empty(n, d, s, dtype=dtype), g_A=torch.empty(n, d, s, dtype=dtype),
                   g_D=torch.empty(n, d, dtype=dtype), g_bias=torch.empty(n, d, dtype=dtype),
                   g_B=torch.zeros(parts, n, length, s, dtype=dtype),
                   g_C=torch.zeros(parts, n, length, s, dtype=dtype))
        _call("bwd", dtype, dict(delta=delta, u=u, B=B, C=C, z=z, gy=g_y),
              dict(A=A, D=D, delta_bias=delta_bias, h0=h0, gh=g_h, **out), n, length, d, s, parts, ctx.softplus)
        tokens = lambda x: None if x is None else x.transpose(1, 2)  # noqa: E731
        return (tokens(out["g_u"]), tokens(out["g_delta"]), out["g_A"].sum(0),
                out["g_B"].sum(0).transpose(1, 2), out["g_C"].sum(0).transpose(1, 2),
                None if D is None else out["g_D"].sum(0), tokens(out["g_z"]),
                None if delta_bias is None else out["g_bias"].sum(0), out["g_h0"], None)


def selective_scan_fused(
    u: torch.Tensor,                 # [N, D, L] input after conv + SiLU
    delta: torch.Tensor,             # [N, D, L] dt before bias/softplus
    A: torch.Tensor,                 # [D, S] (= -exp(A_log)), fp32
    B: torch.Tensor,                 # [N, S, L]
    C: torch.Tensor,                 # [N, S, L]
    D: Optional[torch.Tensor] = None,        # [D] skip
    z: Optional[torch.Tensor] = None,        # [N, D, L] gate
    delta_bias: Optional[torch.Tensor] = None,  # [D]
    h0: Optional[torch.Tensor] = None,       # [N, D, S] fp32 incoming SSM state
    delta_softplus: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(y [N, D, L] in u's dtype, h_last [N, D, S] fp32)``, exactly as ``selective_scan_ref``.

    Raises :class:`FusedScanUnavailable` when the kernel cannot be built, ``ValueError`` for
    non-CPU tensors or a state size above 64.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, h0)
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        raise ValueError(f"the fused scan runs on CPU tensors, got {u.device}")
    if A.shape[1] > 64:
        raise ValueError(f"the fused scan supports state sizes up to 64, got {A.shape[1]}")
    dtype_in = u.dtype
    n, d, length = u.shape
    # fp32 maths (float64 only when the inputs are float64: gradcheck). Conversions are no-ops
    # for the model's fp32 tensors; strided views go in as they are.
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    conv = lambda t: None if t is None else t.to(cdt)  # noqa: E731
    flat = lambda t: None if t is None else t.to(cdt).contiguous()  # noqa: E731
    h0 = torch.zeros(n, d, A.shape[1], dtype=cdt) if h0 is None else flat(h0)
    if length == 0:
        return u.new_empty(n, d, 0), h0.clone()
    y, h = _FusedScan.apply(conv(u), conv(delta), flat(A), conv(B), conv(C), flat(D), conv(z), flat(delta_bias),
                            h0, bool(delta_softplus))
    return y.to(dtype_in), h


class _FusedConv(torch.autograd.Function):
    """Forward in the kernel (token-major output); the backward differentiates the reference
    (recomputed), which is cheap next to the scan's."""

    @staticmethod
    def forward(ctx, x, weight, bias, tail, activation):
        n, d, length = x.shape
        k = weight.shape[-1]
        out = torch.empty(n, length, d, dtype=x.dtype)
        new_tail = torch.empty(n, d, k - 1, dtype=x.dtype)
        args = _ConvArgs(x=_view(x), weight=_ptr(weight), bias=_ptr(bias), tail=_ptr(tail), out=_ptr(out),
                         new_tail=_ptr(new_tail), n=n, l=length, d=d, k=k, silu=int(activation),
                         threads=_threads())
        getattr(_library(), f"tv3s_conv_fwd_{_TYPES[x.dtype][0]}")(ctypes.byref(args))
        ctx.activation = activation
        ctx.save_for_backward(x, weight, bias, tail)
        return out.transpose(1, 2), new_tail

    @staticmethod
    def backward(ctx, g_out, g_tail):
        from .scan_ref import causal_conv1d_ref
        x, weight, bias, tail = ctx.saved_tensors
        inputs = [t if t is None else t.detach().requires_grad_() for t in (x, weight, bias, tail)]
        with torch.enable_grad():
            out, new_tail = causal_conv1d_ref(*inputs, activation=ctx.activation)
            pairs = [(o, g) for o, g in ((out, g_out), (new_tail, g_tail)) if g is not None]
            wanted = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                             allow_unused=True))
        return tuple(None if t is None else next(grads) for t in inputs) + (None,)


def causal_conv1d_fused(
    x: torch.Tensor,                 # [N, D, L]
    weight: torch.Tensor,            # [D, K] depthwise kernel
    bias: Optional[torch.Tensor] = None,     # [D]
    tail: Optional[torch.Tensor] = None,     # [N, D, K-1] last K-1 inputs before this chunk
    activation: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv (+ SiLU) with carried tail, as ``causal_conv1d_ref``: ``(out [N, D, L],
    new_tail [N, D, K-1])``. ``out`` is a view of a token-major buffer (what x_proj reads next)."""
    tensors = (x, weight, bias, tail)
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        raise ValueError(f"the fused conv runs on CPU tensors, got {x.device}")
    if weight.dim() == 3:
        weight = weight[:, 0, :]
    if not 1 <= weight.shape[-1] <= 16:
        raise ValueError(f"the fused conv supports kernel sizes 1 to 16, got {weight.shape[-1]}")
    dtype_in = x.dtype
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = lambda t: None if t is None else t.to(cdt).contiguous()  # noqa: E731
    out, new_tail = _FusedConv.apply(x.to(cdt), flat(weight), flat(bias), flat(tail), bool(activation))
    return out.to(dtype_in), new_tail.to(dtype_in)
