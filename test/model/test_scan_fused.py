"""The fused C++ CPU scan (``scan_fused``) against the oracle ``scan_ref`` and the recurrence written
out in float64: values, layouts, carried state, extremes, threads, gradients, and what happens when
the kernel cannot be built."""
from __future__ import annotations

import logging

import pytest
import torch
from test_scan_chunked import NAMES, TOL, inputs, recurrence, rel

from tv3s_ros.model import scan, scan_fused
from tv3s_ros.model.scan_fused import selective_scan_fused
from tv3s_ros.model.scan_ref import selective_scan_ref


@pytest.fixture(autouse=True)
def _kernel_builds():
    reason = scan_fused.unavailable_reason()
    assert reason is None, f"the fused kernel must build on the test machine: {reason}"


def mixer_layout(kw):
    """The strides the Mamba mixer passes: u channel-major (conv output), dt/B/C/z token-major views."""
    def token_major(x):
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    n, d, length = kw["u"].shape
    s = kw["A"].shape[1]
    x_dbl = torch.cat([token_major(kw["B"]).transpose(1, 2), token_major(kw["C"]).transpose(1, 2),
                       torch.zeros(n, length, 3)], -1)      # [N, L, 2S + 3]: B and C are slices
    return {**kw, "delta": token_major(kw["delta"]), "z": token_major(kw["z"]),
            "B": x_dbl[..., :s].transpose(1, 2), "C": x_dbl[..., s:2 * s].transpose(1, 2)}


@pytest.mark.parametrize("n,d,s,length", [
    (3, 8, 4, 1), (3, 13, 4, 2), (3, 8, 16, 3), (2, 16, 16, 17), (4, 12, 16, 63), (2, 9, 16, 257),
    (1, 32, 16, 400), (2, 16, 16, 1599), (2, 17, 16, 1600), (1, 3, 64, 11),
])
def test_forward_matches_reference_and_recurrence(n, d, s, length):
    """Odd channel counts (partial lane groups), 1 to 1600 tokens, state sizes 4 to 64."""
    kw = inputs(n, d, s, length, seed=length + d)
    with torch.no_grad():
        y, h = selective_scan_fused(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    y_rec, h_rec = recurrence(**kw)
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and h.is_contiguous()
    assert y.shape == (n, d, length) and h.shape == (n, d, s)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    assert rel(y, y_rec) < TOL and rel(h, h_rec) < TOL


def test_the_mixers_strides_and_thousands_of_sequences():
    kw = inputs(3000, 12, 16, 21, seed=3)
    with torch.no_grad():
        y, h = selective_scan_fused(**mixer_layout(kw))
        y_ref, h_ref = selective_scan_ref(**kw)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL


@pytest.mark.parametrize("case", ["strong", "none", "mixed"])
@pytest.mark.parametrize("length", [7, 400])
def test_extreme_decays(case, length):
    """As for the chunked scan: exp underflow (dt*A to -1e6), almost no decay, both mixed."""
    if case == "strong":
        kw = inputs(2, 8, 16, length, seed=5, dt_shift=20.0, dt_scale=10.0, a_shift=6.0, a_scale=2.0)
    elif case == "none":
        kw = inputs(2, 8, 16, length, seed=6, dt_shift=0.0, dt_scale=1.0, a_shift=-16.0)
    else:
        kw = inputs(2, 8, 16, length, seed=7, dt_shift=0.0, dt_scale=8.0, a_scale=6.0)
    with torch.no_grad():
        y, h = selective_scan_fused(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    y_rec, h_rec = recurrence(**kw)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    assert rel(y, y_rec) < TOL and rel(h, h_rec) < TOL


def test_non_finite_inputs_propagate_like_the_reference():
    """A NaN or inf must reach the state (the engine resets a camera on a non-finite state)."""
    kw = inputs(2, 8, 4, 9, seed=9)
    kw["u"][0, 3, 4] = float("nan")
    kw["delta"][1, 5, 2] = float("inf")
    with torch.no_grad():
        y, h = selective_scan_fused(**kw)
        y_ref, h_ref = selective_scan_ref(**kw)
    assert torch.equal(torch.isfinite(h), torch.isfinite(h_ref)) and not torch.isfinite(h).all()
    assert torch.equal(torch.isfinite(y), torch.isfinite(y_ref))


def test_carried_state_equals_the_whole_sequence():
    kw = inputs(3, 16, 16, 1600, seed=11)
    with torch.no_grad():
        y_all, h_all = selective_scan_fused(**kw)
        h, ys, start = kw["h0"], [], 0
        for piece in (1, 399, 400, 3, 797):
            sl = slice(start, start + piece)
            part = {k: (v[:, :, sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
            y, h = selective_scan_fused(**{**part, "h0": h})
            ys.append(y)
            start += piece
    assert rel(torch.cat(ys, 2), y_all) < TOL and rel(h, h_all) < TOL


def test_results_do_not_depend_on_the_thread_count():
    """Work is split by (sequence, channel group), never inside a sum: bitwise equal for 1 and 4
    threads, forward and backward (the B and C gradients are summed per channel range)."""
    results = _thread_results(inputs(2, 40, 16, 50, seed=12))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_optional_arguments_and_dtypes():
    kw = inputs(2, 8, 4, 30, seed=13)
    for drop in ("D", "z", "delta_bias", "h0"):
        part = {**kw, drop: None}
        with torch.no_grad():
            y, h = selective_scan_fused(**part)
            y_ref, h_ref = selective_scan_ref(**part)
        assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL, drop
    with torch.no_grad():
        pos = {**kw, "delta": kw["delta"].abs() * 0.1}
        y, h = selective_scan_fused(**pos, delta_softplus=False)
        y_ref, h_ref = selective_scan_ref(**pos, delta_softplus=False)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    with torch.no_grad():
        y, h = selective_scan_fused(**half)
        y_ref, h_ref = selective_scan_ref(**half)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert rel(y.float(), y_ref.float()) < 1e-2 and rel(h, h_ref) < TOL


def test_empty_sequence_and_bad_arguments():
    kw = inputs(2, 4, 3, 0)
    y, h = selective_scan_fused(**kw)
    assert y.shape == (2, 4, 0) and torch.equal(h, kw["h0"]) and h is not kw["h0"]
    with pytest.raises(ValueError, match="state sizes up to 64"):
        selective_scan_fused(**inputs(1, 2, 65, 3))
    with pytest.raises(ValueError, match="CPU tensors"):
        selective_scan_fused(**{k: v.to("meta") for k, v in inputs(1, 2, 3, 3).items()})


@pytest.mark.parametrize("length", [1, 7, 23])
def test_gradcheck_float64(length):
    kw = {k: v.double().requires_grad_() for k, v in inputs(2, 11, 3, length, seed=17 + length).items()}
    f = lambda *args: selective_scan_fused(**dict(zip(NAMES, args)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(kw[k] for k in NAMES))


def test_gradcheck_strong_and_weak_decay_and_state_only():
    kw = inputs(2, 3, 4, 9, seed=19, dt_shift=0.0, dt_scale=4.0, a_scale=3.0)
    kw = {k: v.double().requires_grad_() for k, v in kw.items()}
    f = lambda *args: selective_scan_fused(**dict(zip(NAMES, args)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(kw[k] for k in NAMES))
    g = lambda *args: selective_scan_fused(**dict(zip(NAMES, args)))[1]  # noqa: E731  (y unused)
    assert torch.autograd.gradcheck(g, tuple(kw[k] for k in NAMES))


@pytest.mark.parametrize("n,d,s,length", [(2, 64, 16, 400), (1, 32, 16, 1600), (16, 24, 16, 40)])
def test_gradients_match_the_reference_on_realistic_shapes(n, d, s, length):
    """A 20x20-token window (400), a 4-frame clip of it (1600), and many short sequences."""
    kw = mixer_layout(inputs(n, d, s, length, seed=23))
    g = torch.Generator().manual_seed(29)
    w_y = torch.randn(n, d, length, generator=g)
    w_h = torch.randn(n, d, s, generator=g)
    grads = []
    for fn in (selective_scan_fused, selective_scan_ref):
        leaf = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
        y, h = fn(**leaf)
        ((y * w_y).sum() + (h * w_h).sum()).backward()
        grads.append({k: v.grad for k, v in leaf.items()})
    ours, ref = grads
    for k in NAMES:
        assert rel(ours[k], ref[k]) < 1e-4, (k, rel(ours[k], ref[k]))


def test_without_a_compiler_auto_falls_back_and_fused_says_why(monkeypatch, tmp_path, caplog):
    """No C++ compiler: ``auto`` serves the chunked scan and warns once; forcing ``fused`` is an
    error that names the reason. The kernel cache is keyed by the compiler, so a fresh one is
    looked up (and cannot be built) here."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(scan_fused.CACHE_ENV, str(tmp_path / "cache"))
    scan_fused._library.cache_clear()
    scan_fused._warn_unavailable.cache_clear()
    try:
        kw = inputs(2, 8, 4, 9, seed=41)
        monkeypatch.setenv(scan.ENV_VAR, "auto")
        with caplog.at_level(logging.WARNING), torch.no_grad():
            y, _ = scan.selective_scan(**kw)
            scan.selective_scan(**kw)
        assert scan.backend_status()["scan_backend.selective_scan"] == "chunked"
        warnings = [r for r in caplog.records if "fused CPU scan unavailable" in r.getMessage()]
        assert len(warnings) == 1 and "no-such-compiler" in warnings[0].getMessage()
        assert rel(y, selective_scan_ref(**kw)[0]) < TOL
        monkeypatch.setenv(scan.ENV_VAR, "fused")
        with pytest.raises(RuntimeError, match="kernel is unavailable.*no-such-compiler"):
            scan.selective_scan(**kw)
        assert not list((tmp_path / "cache").glob("*.so"))
    finally:
        scan_fused._library.cache_clear()
        scan_fused._warn_unavailable.cache_clear()


def _thread_results(kw):
    """Forward and backward at 1 and 4 threads."""
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 4):
            torch.set_num_threads(threads)
            leaf = {k: v.clone().requires_grad_() for k, v in kw.items()}
            y, h = selective_scan_fused(**leaf)
            (y.sum() + h.sum()).backward()
            results.append([y.detach(), h.detach()] + [leaf[k].grad for k in ("u", "delta", "A", "h0")])
    finally:
        torch.set_num_threads(before)
    return results


def test_a_compiler_without_openmp_gets_a_kernel_on_its_own_threads(monkeypatch, tmp_path, caplog):
    """The kernel runs its tasks on torch's OpenMP pool (here: g++ with libgomp); a compiler
    that rejects -fopenmp still gets a working kernel, on threads of its own, with bitwise
    the same results."""
    assert scan_fused.uses_openmp()
    kw = inputs(2, 40, 16, 50, seed=13)
    with_openmp = _thread_results(kw)
    wrapper = tmp_path / "cxx-without-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "no openmp" >&2; exit 1; }; done\n'
                       'exec c++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv(scan_fused.CACHE_ENV, str(tmp_path / "cache"))
    scan_fused._library.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=scan_fused.__name__):
            assert scan_fused.available() and not scan_fused.uses_openmp()
        assert any("without OpenMP" in r.getMessage() for r in caplog.records)
        own_threads = _thread_results(kw)
    finally:
        scan_fused._library.cache_clear()
    for a, b in zip(with_openmp, own_threads):      # at 1 thread, then at 4
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_an_unwritable_cache_is_reported_as_such(monkeypatch, tmp_path, caplog):
    """A cache path that cannot hold the library: unavailable with that reason, and no retry
    without OpenMP (which would fail the same way and blame OpenMP in the log)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(scan_fused.CACHE_ENV, str(blocker / "cache"))
    scan_fused._library.cache_clear()
    scan_fused._warn_unavailable.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=scan_fused.__name__):
            assert not scan_fused.available()
        assert "cannot write the kernel cache" in scan_fused.unavailable_reason()
        assert not any("without OpenMP" in r.getMessage() for r in caplog.records)
    finally:
        scan_fused._library.cache_clear()
        scan_fused._warn_unavailable.cache_clear()


def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    """A fresh cache directory gets one library (atomically renamed into place); loading again
    reuses it instead of compiling."""
    monkeypatch.setenv(scan_fused.CACHE_ENV, str(tmp_path))
    scan_fused._library.cache_clear()
    try:
        assert scan_fused.available()
        built = list(tmp_path.glob("scan_fused-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob(".scan_fused-*"))
        stamp = built[0].stat().st_mtime_ns
        scan_fused._library.cache_clear()
        assert scan_fused.available() and built[0].stat().st_mtime_ns == stamp
    finally:
        scan_fused._library.cache_clear()


# ----------------------------------------------------------------------------- causal conv1d

def conv_inputs(n, d, length, k=4, seed=0, token_major=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 2 * d, generator=g)[..., :d].transpose(1, 2) if token_major else \
        torch.randn(n, d, length, generator=g)
    return x, torch.randn(d, k, generator=g), torch.randn(d, generator=g), torch.randn(n, d, k - 1, generator=g)


@pytest.mark.parametrize("n,d,length,k", [(2, 8, 1, 4), (3, 13, 2, 4), (2, 16, 3, 4), (1, 512, 400, 4),
                                          (4, 9, 37, 2), (2, 5, 7, 1), (2, 24, 1600, 4),
                                          (2, 150, 9, 3), (1, 20, 30, 16)])
@pytest.mark.parametrize("token_major", [True, False])
def test_conv_matches_the_reference(n, d, length, k, token_major):
    """Lengths shorter than the tail (the new tail mixes old tail and input), kernel sizes 1 to
    16, partial lane groups, a partial block of lane groups (150 channels: 19 groups, blocks of
    16), the mixer's token-major view and a channel-major tensor."""
    from tv3s_ros.model.scan_ref import causal_conv1d_ref
    x, w, b, tail = conv_inputs(n, d, length, k, seed=length + d, token_major=token_major)
    for args in ((x, w, b, tail, True), (x, w, None, None, True), (x, w, b, tail, False)):
        out, new_tail = scan_fused.causal_conv1d_fused(*args)
        ref_out, ref_tail = causal_conv1d_ref(*args)
        assert out.shape == ref_out.shape and rel(out, ref_out) < TOL
        assert torch.equal(new_tail, ref_tail)            # copied inputs, not computed


def test_conv_carried_tail_and_dtypes():
    from tv3s_ros.model.scan_ref import causal_conv1d_ref
    x, w, b, tail = conv_inputs(2, 16, 50, seed=3)
    whole, _ = scan_fused.causal_conv1d_fused(x, w, b, tail)
    pieces, t = [], tail
    for sl in (slice(0, 1), slice(1, 3), slice(3, 50)):
        out, t = scan_fused.causal_conv1d_fused(x[:, :, sl], w, b, t)
        pieces.append(out)
    assert rel(torch.cat(pieces, 2), whole) < TOL
    out, new_tail = scan_fused.causal_conv1d_fused(x.bfloat16(), w, b, tail.bfloat16())
    ref_out, ref_tail = causal_conv1d_ref(x.bfloat16(), w, b, tail.bfloat16())
    assert out.dtype == torch.bfloat16 and rel(out.float(), ref_out.float()) < 1e-2
    assert torch.equal(new_tail, ref_tail)
    with pytest.raises(ValueError, match="kernel sizes 1 to 16"):
        scan_fused.causal_conv1d_fused(x, torch.randn(16, 17))


def test_conv_gradcheck_float64():
    x, w, b, tail = (t.double().requires_grad_() for t in conv_inputs(2, 11, 6, seed=5))
    f = lambda *a: scan_fused.causal_conv1d_fused(*a)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b, tail))
