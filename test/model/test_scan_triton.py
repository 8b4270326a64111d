"""Triton selective scan and causal conv1d against the PyTorch reference (the oracle).

Where the kernels run:
- On a CUDA machine the shared cases run on the GPU directly, plus `gpu`-marked larger shapes
  and a comparison of our Mamba mixer with mamba_ssm's.
- Everywhere, `test_kernels_in_triton_interpreter` re-runs this file in a child pytest with
  TRITON_INTERPRET=1 (it must be set before triton is first imported, and must not leak into
  other test modules, hence the subprocess); inside the child the shared cases run on CPU.
  The interpreter is slow (~3 ms per token step per program), so CPU shapes are small.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tv3s_ros.model.scan_chunked import selective_scan_chunked
from tv3s_ros.model.scan_ref import causal_conv1d_ref, selective_scan_ref

CHILD_ENV = "TV3S_SCAN_TRITON_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"
REPO = Path(__file__).resolve().parents[2]

FP32_TOL = 1e-5
HALF_TOL = 1e-2


# Tests that only make sense in the parent pytest process (dispatch logic, starting the child).
PARENT_ONLY = {"test_kernels_in_triton_interpreter", "test_dispatch_cpu_without_interpreter",
               "test_auto_backend_falls_back_once_when_a_kernel_fails",
               "test_forced_or_proven_kernel_failures_are_raised", "test_fallback_is_per_specialisation",
               "test_compilation_error_falls_back", "test_kernels_launch_on_the_tensors_device"}


def runs_in_this_process(item) -> bool:
    """Collection filter (see conftest): kernel cases (the ``device`` fixture) run in the
    interpreter child and on CUDA; parent-only tests never run in the child."""
    if item.originalname in PARENT_ONLY:
        return not IN_CHILD
    if "device" in item.fixturenames:
        return IN_CHILD or torch.cuda.is_available()
    return True


@pytest.fixture
def device() -> str:
    return "cpu" if IN_CHILD else "cuda"


def test_kernels_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_ENV: "1"})
    env.pop("TV3S_SCAN_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(Path(__file__).resolve())]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter run failed:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 30, f"too few kernel cases ran in the child:\n{tail}"


# ----------------------------------------------------------------------------- helpers

def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e| (elementwise relative error explodes on near-zero outputs)."""
    scale = expected.float().abs().max().clamp_min(1e-12)
    return ((actual.float() - expected.float()).abs().max() / scale).item()


def make_scan_inputs(n, d, s, length, *, dtype=torch.float32, device="cpu", with_z=True, with_D=True,
                     with_bias=True, with_h0=True, token_major=False, seed=0):
    """Random scan inputs. token_major builds u/z/delta/B/C as the Mamba mixer does: transposed
    slices of [N, L, channels] projections (non-contiguous views the kernel must read in place)."""
    g = torch.Generator().manual_seed(seed)
    rank = 3

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift)

    if token_major:
        xz = rnd(n, length, 2 * d)
        u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
        delta = rnd(n, length, d, scale=0.5, shift=-1.0).transpose(1, 2)
        x_dbl = rnd(n, length, rank + 2 * s)
        B, C = x_dbl[..., rank:rank + s].transpose(1, 2), x_dbl[..., rank + s:].transpose(1, 2)
    else:
        u, z = rnd(n, d, length), rnd(n, d, length)
        delta = rnd(n, d, length, scale=0.5, shift=-1.0)
        B, C = rnd(n, s, length), rnd(n, s, length)
    A = -torch.exp(rnd(d, s, scale=0.5))  # like -exp(A_log)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(
        u=cast(u), delta=cast(delta), A=A.to(device), B=cast(B), C=cast(C),
        D=rnd(d).to(device) if with_D else None,
        z=cast(z) if with_z else None,
        delta_bias=rnd(d, scale=0.5).to(device) if with_bias else None,
        h0=rnd(n, d, s).to(device) if with_h0 else None,
    )


def triton_scan(**kw):
    from tv3s_ros.model.scan_triton import selective_scan_triton
    return selective_scan_triton(**kw)


def triton_conv(*args, **kw):
    from tv3s_ros.model.scan_triton import causal_conv1d_triton
    return causal_conv1d_triton(*args, **kw)


def check_scan(kw, tol, **tuning):
    y, h = triton_scan(**kw, **tuning)
    y_ref, h_ref = selective_scan_ref(**kw)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert h.dtype == torch.float32 and h.shape == h_ref.shape
    assert rel_err(y, y_ref) < tol, f"y rel err {rel_err(y, y_ref):.2e}"
    assert rel_err(h, h_ref) < tol, f"h rel err {rel_err(h, h_ref):.2e}"
    return y, h


# ----------------------------------------------------------------------------- selective scan

@pytest.mark.parametrize("n,d,s,length", [
    (1, 4, 4, 1),       # single token
    (2, 33, 16, 7),     # channels not a multiple of the block, odd length
    (3, 16, 16, 13),
    (1, 24, 5, 9),      # d_state not a power of two
    (2, 8, 16, 32),
])
def test_scan_fp32_shapes(device, n, d, s, length):
    check_scan(make_scan_inputs(n, d, s, length, device=device), FP32_TOL)


@pytest.mark.parametrize("with_z,with_D,with_bias,with_h0,softplus", [
    (False, False, False, False, True),
    (True, False, True, False, True),
    (False, True, False, True, True),
    (True, True, True, True, False),
])
def test_scan_optional_inputs(device, with_z, with_D, with_bias, with_h0, softplus):
    kw = make_scan_inputs(2, 12, 16, 6, device=device, with_z=with_z, with_D=with_D,
                          with_bias=with_bias, with_h0=with_h0)
    if not softplus:
        kw["delta"] = kw["delta"].abs()  # raw positive dt
    check_scan(dict(kw, delta_softplus=softplus), FP32_TOL)


@pytest.mark.parametrize("block_d", [2, 8])
def test_scan_token_major_views(device, block_d):
    kw = make_scan_inputs(2, 20, 16, 11, device=device, token_major=True)
    assert not kw["u"].is_contiguous() and not kw["B"].is_contiguous()
    y, _ = check_scan(kw, FP32_TOL, block_d=block_d)
    assert y.stride(1) == 1, "token-major input should give token-major output"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_activations(device, dtype):
    kw = make_scan_inputs(2, 16, 16, 9, dtype=dtype, device=device)
    y, _ = check_scan(kw, HALF_TOL)
    assert y.dtype == dtype


def test_scan_softplus_extremes(device):
    # dt beyond the threshold 20, and very negative dt where softplus ~ e^x needs log1p precision:
    # without D, z and h0 the output is proportional to dt, so any dt error shows in y.
    kw = make_scan_inputs(1, 8, 4, 7, device=device, with_z=False, with_D=False, with_bias=False, with_h0=False)
    kw["delta"] = torch.tensor([-30.0, -15.0, -12.0, 0.0, 19.5, 20.5, 40.0], device=device).expand(1, 8, 7).clone()
    check_scan(kw, FP32_TOL)
    # each step alone (state restarted) so the large-dt steps cannot mask the tiny ones
    for t in range(7):
        check_scan({k: (v[..., t:t + 1] if k in ("u", "delta", "B", "C") else v) for k, v in kw.items()}, FP32_TOL)


def test_scan_many_sequences(device):
    # Thousands of windows: exercises the sequence index (grid axis 0) at scale.
    n = 2048 if device == "cpu" else 4096
    check_scan(make_scan_inputs(n, 4, 16, 1 if device == "cpu" else 50, device=device, with_z=False), FP32_TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, HALF_TOL)])
def test_scan_carried_state_equals_whole_sequence(device, dtype, tol):
    kw = make_scan_inputs(2, 16, 16, 13, dtype=dtype, device=device)
    y_whole, h_whole = triton_scan(**kw)
    ys, h = [], kw["h0"]
    start = 0
    for size in (1, 4, 2, 6):  # odd chunks, one single token
        part = {k: kw[k][..., start:start + size] for k in ("u", "delta", "B", "C", "z")}
        y, h = triton_scan(**dict(kw, **part, h0=h))
        ys.append(y)
        start += size
    assert start == 13
    y_chunks = torch.cat(ys, dim=2)
    assert rel_err(y_chunks, y_whole) < tol
    assert rel_err(h, h_whole) < min(tol, 1e-6)  # the state is fp32 in both runs
    # The state must matter: restarting the last chunk from zero gives a visibly different result.
    part = {k: kw[k][..., 7:] for k in ("u", "delta", "B", "C", "z")}
    y_fresh, _ = triton_scan(**dict(kw, **part, h0=None))
    assert rel_err(y_fresh, y_whole[..., 7:]) > 1e-2


def test_scan_empty_sequence(device):
    kw = make_scan_inputs(2, 8, 4, 0, device=device)
    y, h = triton_scan(**kw)
    assert y.shape == (2, 8, 0)
    assert torch.equal(h, kw["h0"])


def _strided(v: torch.Tensor) -> torch.Tensor:
    """The same values as a stride-2 view (every other element of a twice-as-long buffer)."""
    buf = torch.zeros(*v.shape[:-1], 2 * v.shape[-1], dtype=v.dtype, device=v.device)
    buf[..., ::2] = v
    return buf[..., ::2]


@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_scan_reads_per_channel_vectors_with_their_strides(device, view):
    # D, delta_bias (vectors) and h0 as views: a kernel reading them as contiguous is off by ~3.
    kw = make_scan_inputs(2, 8, 4, 5, device=device)
    if view == "strided":
        kw.update(D=_strided(kw["D"]), delta_bias=_strided(kw["delta_bias"]),
                  h0=kw["h0"].transpose(1, 2).contiguous().transpose(1, 2))
        assert kw["D"].stride() == (2,) and kw["h0"].stride(1) == 1
    else:
        kw.update(D=kw["D"][:1].expand(8), delta_bias=kw["delta_bias"][:1].expand(8),
                  h0=kw["h0"][:1].expand(2, 8, 4))
        assert kw["D"].stride() == (0,) and kw["h0"].stride(0) == 0
    check_scan(kw, FP32_TOL)


# ----------------------------------------------------------------------------- causal conv1d

def make_conv_inputs(n, d, length, k=4, *, dtype=torch.float32, device="cpu", token_major=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, d, generator=g).transpose(1, 2) if token_major else torch.randn(n, d, length, generator=g)
    return (x.to(device=device, dtype=dtype), torch.randn(d, k, generator=g).to(device),
            torch.randn(d, generator=g).to(device), torch.randn(n, d, k - 1, generator=g).to(device=device, dtype=dtype))


@pytest.mark.parametrize("n,d,length,k", [(2, 8, 1, 4), (1, 20, 2, 4), (3, 33, 7, 4), (2, 16, 37, 4), (1, 8, 5, 3)])
@pytest.mark.parametrize("use_bias,use_tail,activation", [(True, True, True), (False, False, False)])
def test_conv_matches_reference(device, n, d, length, k, use_bias, use_tail, activation):
    x, w, b, tail = make_conv_inputs(n, d, length, k, device=device)
    args = (x, w, b if use_bias else None, tail if use_tail else None, activation)
    out, new_tail = triton_conv(*args, block_l=16)
    out_ref, tail_ref = causal_conv1d_ref(*args)
    assert rel_err(out, out_ref) < FP32_TOL
    assert torch.equal(new_tail, tail_ref)  # pure copies of inputs


def test_conv_token_major_and_conv1d_weight_layout(device):
    x, w, b, tail = make_conv_inputs(2, 24, 9, device=device, token_major=True)
    out, new_tail = triton_conv(x, w[:, None, :], b, tail, True)  # nn.Conv1d weight [D, 1, K]
    out_ref, tail_ref = causal_conv1d_ref(x, w, b, tail, True)
    assert rel_err(out, out_ref) < FP32_TOL and torch.equal(new_tail, tail_ref)
    assert out.stride(1) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv_half(device, dtype):
    x, w, b, tail = make_conv_inputs(2, 16, 11, device=device, dtype=dtype)
    out, new_tail = triton_conv(x, w, b, tail, True)
    out_ref, tail_ref = causal_conv1d_ref(x, w, b, tail, True)
    assert out.dtype == dtype and new_tail.dtype == dtype
    assert rel_err(out, out_ref) < HALF_TOL and torch.equal(new_tail, tail_ref)


@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_conv_reads_bias_and_tail_with_their_strides(device, view):
    x, w, b, tail = make_conv_inputs(2, 8, 5, device=device)
    if view == "strided":
        b, tail = _strided(b), tail.transpose(1, 2).contiguous().transpose(1, 2)
        assert b.stride() == (2,) and tail.stride(1) == 1
    else:
        b, tail = b[:1].expand(8), tail[:1].expand(2, 8, 3)
        assert b.stride() == (0,) and tail.stride(0) == 0
    out, new_tail = triton_conv(x, w, b, tail, True)
    out_ref, tail_ref = causal_conv1d_ref(x, w, b, tail, True)
    assert rel_err(out, out_ref) < FP32_TOL and torch.equal(new_tail, tail_ref)


def test_conv_carried_tail_equals_whole_sequence(device):
    x, w, b, _ = make_conv_inputs(2, 16, 10, device=device)
    out_whole, tail_whole = triton_conv(x, w, b, None, True)
    outs, tail, start = [], None, 0
    for size in (1, 2, 5, 2):  # chunks shorter than the tail too
        out, tail = triton_conv(x[..., start:start + size], w, b, tail, True, block_l=2)
        outs.append(out)
        start += size
    assert rel_err(torch.cat(outs, dim=2), out_whole) < 1e-6
    assert torch.equal(tail, tail_whole)


# ----------------------------------------------------------------------------- backend dispatch

def test_dispatch_forced_backends(device, monkeypatch):
    from tv3s_ros.model import scan
    kw = make_scan_inputs(1, 8, 4, 3, device=device)
    calls = []
    real = scan._triton_module().selective_scan_triton
    monkeypatch.setattr(scan._triton_module(), "selective_scan_triton",
                        lambda *a, **k: calls.append("triton") or real(*a, **k))
    monkeypatch.setenv(scan.ENV_VAR, "triton")
    y_t, _ = scan.selective_scan(**kw)
    assert calls == ["triton"]
    monkeypatch.setenv(scan.ENV_VAR, "ref")
    y_r, _ = scan.selective_scan(**kw)
    assert calls == ["triton"] and rel_err(y_t, y_r) < FP32_TOL
    monkeypatch.setenv(scan.ENV_VAR, "auto")
    scan.selective_scan(**kw)
    assert calls == (["triton", "triton"] if device == "cuda" else ["triton"])  # interpreter never auto
    monkeypatch.setenv(scan.ENV_VAR, "bogus")
    with pytest.raises(ValueError):
        scan.selective_scan(**kw)


def test_dispatch_cpu_without_interpreter(monkeypatch):
    from tv3s_ros.model import scan
    x = torch.randn(1, 4, 3)
    monkeypatch.setenv(scan.ENV_VAR, "auto")
    from tv3s_ros.model import scan_fused  # the fused C++ scan is the CPU default,
    assert scan.backend_for(x) == ("fused" if scan_fused.available() else "chunked")   # else chunked
    monkeypatch.setenv(scan.ENV_VAR, "ref")
    assert scan.backend_for(x) == "ref"
    if scan.triton_available():
        monkeypatch.setenv(scan.ENV_VAR, "triton")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            scan.backend_for(x)
    assert scan.mamba_ssm_available() in (True, False)


class _FailingKernels:
    """Stands in for scan_triton: every launch raises, as a compile error would (the launch
    configurations, which key the proven variants, are the real ones)."""

    def __init__(self, error=None):
        from tv3s_ros.model import scan_triton
        self.calls = 0
        self.error = error or RuntimeError("PTX compile failed (simulated)")
        self.scan_config, self.conv_config = scan_triton.scan_config, scan_triton.conv_config

    def selective_scan_triton(self, *args):
        self.calls += 1
        raise self.error

    causal_conv1d_triton = selective_scan_triton


@pytest.fixture
def auto_picks_failing_triton(monkeypatch):
    """``auto`` choosing Triton (as on CUDA) with kernels that fail; fresh fallback bookkeeping."""
    from tv3s_ros.model import scan
    fake = _FailingKernels()
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    monkeypatch.setattr(scan, "_triton_module", lambda: fake)
    monkeypatch.setattr(scan, "backend_for", lambda *a: "triton")
    monkeypatch.setattr(scan, "_broken", {})
    monkeypatch.setattr(scan, "_proven", set())
    monkeypatch.setattr(scan, "_in_use", {})
    return scan, fake


def test_auto_backend_falls_back_once_when_a_kernel_fails(auto_picks_failing_triton, caplog):
    scan, fake = auto_picks_failing_triton
    kw = make_scan_inputs(2, 8, 4, 9)
    expected = selective_scan_chunked(**kw)         # the fallback target
    with caplog.at_level("WARNING", logger=scan.__name__):
        first = scan.selective_scan(**kw)
        second = scan.selective_scan(**kw)
    assert all(torch.equal(a, b) for a, b in zip(first + second, expected + expected))
    assert all(rel_err(a, b) < FP32_TOL for a, b in zip(first, selective_scan_ref(**kw)))
    assert fake.calls == 1                          # not retried on every call
    warnings = [r for r in caplog.records if "selective_scan kernel failed" in r.getMessage()]
    assert len(warnings) == 1 and "PTX compile failed" in warnings[0].getMessage()
    x, w, b, tail = make_conv_inputs(2, 8, 5)
    assert all(torch.equal(a, e) for a, e in zip(scan.causal_conv1d(x, w, b, tail), causal_conv1d_ref(x, w, b, tail)))
    assert fake.calls == 2                          # each kernel gets its own first try


def test_forced_or_proven_kernel_failures_are_raised(auto_picks_failing_triton, monkeypatch):
    scan, fake = auto_picks_failing_triton
    kw = make_scan_inputs(1, 4, 4, 3)
    monkeypatch.setenv(scan.ENV_VAR, "triton")      # asked for explicitly: the error is the answer
    with pytest.raises(RuntimeError, match="PTX"):
        scan.selective_scan(**kw)
    monkeypatch.delenv(scan.ENV_VAR)
    scan._proven.add(scan.scan_specialisation(**kw))  # this variant worked before: now a real failure
    with pytest.raises(RuntimeError, match="PTX"):
        scan.selective_scan(**kw)


def test_fallback_is_per_specialisation(auto_picks_failing_triton):
    # A proven fp32 variant says nothing about the bf16 one: its failure falls back, not raises.
    scan, fake = auto_picks_failing_triton
    kw = make_scan_inputs(1, 4, 4, 3)
    scan._proven.add(scan.scan_specialisation(**kw))
    half = dict(kw, u=kw["u"].bfloat16(), delta=kw["delta"].bfloat16())
    assert scan.scan_specialisation(**half) != scan.scan_specialisation(**kw)
    y, _ = scan.selective_scan(**half)
    assert torch.equal(y, selective_scan_chunked(**half)[0]) and fake.calls == 1
    # so does a misaligned or strided view of the same dtype
    strided = dict(kw, B=torch.randn(1, 4, 6)[..., ::2])
    assert scan.scan_specialisation(**strided) != scan.scan_specialisation(**kw)


def test_compilation_error_falls_back(monkeypatch):
    # Triton's CompilationError is not a RuntimeError: it must still be caught on a first launch.
    import ast

    from triton.compiler.errors import CompilationError

    from tv3s_ros.model import scan
    fake = _FailingKernels(CompilationError("src", ast.parse("x"), "bad block size (simulated)"))
    assert not isinstance(fake.error, RuntimeError)
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    for name, value in (("_triton_module", lambda: fake), ("backend_for", lambda *a: "triton"),
                        ("_broken", {}), ("_proven", set()), ("_in_use", {})):
        monkeypatch.setattr(scan, name, value)
    x, w, b, tail = make_conv_inputs(2, 8, 5)
    out = scan.causal_conv1d(x, w, b, tail)
    assert all(torch.equal(a, e) for a, e in zip(out, causal_conv1d_ref(x, w, b, tail)))
    status = scan.backend_status()
    assert status["scan_backend.causal_conv1d"] == scan.fallback_backend("causal_conv1d")
    assert "CompilationError" in status["scan_fallback.causal_conv1d"]


class _CurrentDevice:
    """torch.cuda's current-device switch (what ``torch.cuda.device`` enters and leaves),
    simulated for a CPU-only build; starts on cuda:0 as a fresh process does."""

    def __init__(self, monkeypatch):
        self.index = 0
        monkeypatch.setattr(torch.cuda, "_exchange_device", self.exchange)
        monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", self.exchange)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.index)

    def exchange(self, index: int) -> int:
        previous = self.index
        if index >= 0:
            self.index = index
        return previous


class _LaunchRecorder:
    """Stands in for a Triton kernel: Triton launches on ``torch.cuda.current_device()`` and
    that device's stream, so that is what a launch must see."""

    def __init__(self):
        self.devices = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.devices.append(torch.cuda.current_device())


def test_kernels_launch_on_the_tensors_device(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tv3s_ros.model import scan_triton
    current = _CurrentDevice(monkeypatch)
    scan_rec, conv_rec = _LaunchRecorder(), _LaunchRecorder()
    monkeypatch.setattr(scan_triton, "_selective_scan_fwd_kernel", scan_rec)
    monkeypatch.setattr(scan_triton, "_causal_conv1d_fwd_kernel", conv_rec)
    with FakeTensorMode():   # tensors that say cuda:1, on a machine without one
        kw = {k: v.to("cuda:1") if v is not None else None for k, v in make_scan_inputs(2, 8, 4, 5).items()}
        x, w, b, tail = (t.to("cuda:1") for t in make_conv_inputs(2, 8, 5))
        scan_triton.selective_scan_triton(**kw)
        scan_triton.causal_conv1d_triton(x, w, b, tail)
    assert scan_rec.devices == [1] and conv_rec.devices == [1]
    assert current.index == 0   # and the caller's device is restored


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("n,d,length,dtype,tol", [
    (28, 512, 400, torch.float32, FP32_TOL),     # one 512x1024 frame, unshifted windows
    (28, 512, 1600, torch.bfloat16, HALF_TOL),   # 4-frame clip
    (4096, 64, 33, torch.float32, FP32_TOL),
    (3000, 512, 1, torch.float16, HALF_TOL),
])
def test_scan_large_gpu(n, d, length, dtype, tol):
    kw = make_scan_inputs(n, d, 16, length, dtype=dtype, device="cuda", token_major=True)
    check_scan(kw, tol)
    x, w, b, tail = make_conv_inputs(n, d, length, device="cuda", dtype=dtype, token_major=True)
    out, new_tail = triton_conv(x, w, b, tail, True)
    out_ref, tail_ref = causal_conv1d_ref(x, w, b, tail, True)
    assert rel_err(out, out_ref) < tol and torch.equal(new_tail, tail_ref)


@pytest.mark.gpu
def test_mixer_matches_mamba_ssm_on_zero_state_chunk():
    """Our mixer (Triton backend) vs mamba_ssm.Mamba: a zero-state chunk, its final states, and
    then a few tokens through mamba_ssm's own token-by-token step() vs our chunk with carried state."""
    from tv3s_ros.model.scan import mamba_ssm_available
    if not mamba_ssm_available():
        pytest.skip("mamba_ssm is not installed (pip install '.[gpu]' on a CUDA machine)")
    from mamba_ssm import Mamba as OfficialMamba
    from mamba_ssm.utils.generation import InferenceParams

    from tv3s_ros.model import mamba as mamba_mod

    torch.manual_seed(0)
    d_model, n, length, extra = 64, 6, 37, 3
    ours = mamba_mod.Mamba(d_model, d_state=16, d_conv=4, expand=2).cuda().eval()
    ref = OfficialMamba(d_model, d_state=16, d_conv=4, expand=2, layer_idx=0).cuda().eval()
    ref.load_state_dict(ours.state_dict())  # official parameter names: must load as is
    x = torch.randn(n, length + extra, d_model, device="cuda")
    with torch.no_grad():
        params = InferenceParams(max_seqlen=length + extra, max_batch_size=n)
        y_ref = ref(x[:, :length], inference_params=params)
        conv_state, ssm_state = params.key_value_memory_dict[0]
        y, tail, state = ours(x[:, :length])
        assert rel_err(y, y_ref) < 1e-4
        assert rel_err(state, ssm_state) < 1e-4
        assert torch.allclose(tail.float(), conv_state[..., 1:].float())  # official keeps d_conv columns
        params.seqlen_offset = length
        steps = []
        for t in range(length, length + extra):
            steps.append(ref(x[:, t:t + 1], inference_params=params))
            params.seqlen_offset += 1
        y_more, _, _ = ours(x[:, length:], conv_tail=tail, ssm_state=state)
        assert rel_err(y_more, torch.cat(steps, dim=1)) < 1e-4


# ----------------------------------------------------------------------------- mixed precision

def test_reference_path_computes_in_fp32_under_autocast(monkeypatch):
    """With autocast on (the model's bf16 path), the dispatched reference must not let autocast
    push its internal einsums to bf16: the scan is fp32 inside, whatever the activations."""
    from tv3s_ros.model import scan
    monkeypatch.setenv(scan.ENV_VAR, "ref")
    kw = make_scan_inputs(2, 16, 16, 40, dtype=torch.bfloat16)
    y_plain, h_plain = scan.selective_scan(**kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_amp, h_amp = scan.selective_scan(**kw)
    assert torch.equal(y_amp, y_plain) and torch.equal(h_amp, h_plain)
    assert h_amp.dtype == torch.float32 and y_amp.dtype == torch.bfloat16
