"""The GPU path checked without a GPU: what would only fail (or silently misbehave) on a GPU.

- Keep-alive: a captured CUDA graph reads every tensor by address. Anything it reads that
  lives outside its memory pool must be held by the streamer that owns the graph, not only by
  a cache (``lru_cache`` drops entries, and a replay would then read reused memory).
- Capture safety: the whole graphed step, run on the ``meta`` device, must not synchronise
  with the host, read data-dependent values or mix in CPU tensors (each of which raises
  there, as it would during capture on a GPU).
- The start-up self-check and the per-variant fallback, seen from ``Engine.stats()``.
- Offline sm_90 compile of every kernel variant the model uses (see ``_offline_compile``).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from tiny import tiny_overrides
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tv3s_ros import preprocess
from tv3s_ros.engine.cuda_graphs import CudaGraphStreamer
from tv3s_ros.model import build_model, partition
from tv3s_ros.outputs import OUTPUT_NAMES
from tv3s_ros.postprocess import Postprocessor

TINY = tiny_overrides(backbone="mit_b0", num_classes=5)
PRESET = "tv3s_b1_cityscapes"


class _ExternalReads(TorchDispatchMode):
    """Records the tensors an op reads that no earlier op of the run produced: what a graph
    captured from this run would read from outside its pool (weights, buffers, constants)."""

    def __init__(self):
        super().__init__()
        self.produced, self.external = {}, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs, _ = tree_flatten((args, kwargs or {}))
        for t in inputs:
            if isinstance(t, torch.Tensor) and id(t) not in self.produced:
                self.external[id(t)] = t
        out = func(*args, **(kwargs or {}))
        outputs, _ = tree_flatten(out)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                self.produced[id(t)] = t   # held, so that ids are not reused during the run
        return out


@pytest.fixture(scope="module")
def tiny_official():
    """A tiny model with the official policy at a small test scale: the step resizes with the
    integer (cv2) taps, and its shifted layers use real-shift partitions."""
    torch.manual_seed(0)
    model = build_model(PRESET, **TINY).eval()
    model.cfg = dataclasses.replace(model.cfg, test_scale=(100, 70), size_divisor=32)
    return model


def test_captured_step_holds_what_it_reads(tiny_official):
    streamer = CudaGraphStreamer(tiny_official, 2, 120, 160, input_size="official", outputs=set(OUTPUT_NAMES),
                               capture=False)
    reads = _ExternalReads()
    with torch.inference_mode(), reads:
        streamer._body(streamer.state)
    external = list(reads.external.values())
    reads.produced.clear()
    reads.external.clear()
    # the resize taps and the partition permutations are among them (the test must see them)
    assert any(t.dtype == torch.int32 and t.dim() == 1 for t in external), "no resize weights recorded"
    assert any(t.dtype == torch.long and t.numel() == streamer.state.grid[0] * streamer.state.grid[1]
               for t in external), "no partition permutation recorded"
    refs = [weakref.ref(t) for t in external]
    del external
    preprocess._cv2_taps.cache_clear()
    partition.window_partition.cache_clear()
    partition.shifted_partition.cache_clear()
    gc.collect()
    dead = sum(r() is None for r in refs)
    assert dead == 0, f"{dead} of {len(refs)} tensors read by the step were only kept alive by caches"
    assert streamer is not None


# ----------------------------------------------------------------------------- capture safety

_DATA_DEPENDENT = {"aten::nonzero", "aten::masked_select", "aten::unique", "aten::_unique2", "aten::unique_dim",
                   "aten::unique_consecutive", "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero",
                   "aten::equal", "aten::repeat_interleave", "aten::bincount", "aten::histc"}


class _NoDataDependentOps(TorchDispatchMode):
    """Ops whose output shape or host result depends on tensor values: allowed in eager code,
    never inside a captured step (they synchronise, or bake one frame's values into the graph)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in _DATA_DEPENDENT:
            raise AssertionError(f"data-dependent op {func._schema.name} inside the captured step")
        return func(*args, **(kwargs or {}))


def test_graphed_step_is_capture_safe_on_meta():
    # The full B1 preset with a 1080p camera, on the meta device: shapes only, no data, so any
    # .item(), bool(), nonzero or host copy raises, and so does a CPU tensor mixed into device maths.
    with torch.device("meta"):   # no weights drawn: building the full model stays cheap
        model = build_model(PRESET).eval()
    post = Postprocessor(int(model.cfg.num_classes), model.cfg.palette, 0.5, "meta")
    streamer = CudaGraphStreamer(model, 2, 1080, 1920, torch.float32, input_size="official",
                               outputs=set(OUTPUT_NAMES), keep_logits=True, postprocessor=post, capture=False)
    with torch.inference_mode(), _NoDataDependentOps():
        out = streamer._body(streamer.state)
    assert all(v.device.type == "meta" for v in out.values())
    assert out["labels"].shape == (2, 1080, 1920)


# ----------------------------------------------------------------------------- kernel fallback

@pytest.fixture
def auto_picks_triton_without_a_gpu(monkeypatch):
    """``auto`` choosing the Triton kernels as it does on CUDA, on a machine where their real
    first launch fails (no GPU driver: Triton raises), with fresh fallback bookkeeping."""
    from tv3s_ros.model import scan
    if not scan.triton_available() or scan.interpreter_enabled():
        pytest.skip("needs triton importable without TRITON_INTERPRET")
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    monkeypatch.setattr(scan, "backend_for", lambda *a: "triton")
    for name, value in (("_broken", {}), ("_proven", set()), ("_in_use", {})):
        monkeypatch.setattr(scan, name, value)
    return scan


def test_first_launch_failure_shows_in_engine_stats(auto_picks_triton_without_a_gpu, tiny_official):
    import numpy as np

    from tv3s_ros.engine import Engine, FrameInput
    scan = auto_picks_triton_without_a_gpu
    engine = Engine(copy.deepcopy(tiny_official), device="cpu", graphs="off", gpu_jpeg=False)
    backends = engine.stats().backends      # the start-up self-check found it, before any frame
    for kernel in scan.KERNELS:
        assert backends[f"scan_backend.{kernel}"] == scan.fallback_backend(kernel)
        assert "active drivers" in backends[f"scan_fallback.{kernel}"]
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = engine.process([FrameInput("cam", frame, 0)], {"labels"})[0]   # and it still serves
    assert out.labels.shape == (48, 64)
    stats = engine.stats()
    assert stats["cam"].processed == 1 and stats.backends.keys() == backends.keys()
    assert all(stats.backends[f"scan_backend.{k}"] == scan.fallback_backend(k) for k in scan.KERNELS)


# ----------------------------------------------------------------------------- offline sm_90 compile

MAX_REGISTERS = 255   # per thread on sm_90; beyond it ptxas spills to local memory


@pytest.fixture(scope="module")
def sm90_compile():
    """Every kernel variant the presets launch, compiled for sm_90 in a child (test/pipeline/sm90_compile.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("TRITON_DEFAULT_FP_FUSION", None)   # the kernels module must set it itself
    proc = subprocess.run([sys.executable, str(here / "sm90_compile.py")], cwd=here.parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])   # the one allowed skip: no nvidia backend in this triton
    result["stderr"] = proc.stderr
    return result


def test_every_kernel_variant_compiles_for_sm90(sm90_compile):
    variants = sm90_compile["variants"]
    table = "\n".join(str(v) for v in variants)
    failed = [v["name"] for v in variants if "error" in v]
    assert not failed, f"variants that do not compile for sm_90: {failed}\n{table}"
    assert {v["name"].split("_")[0] for v in variants} == {"scan", "conv"}
    assert len(variants) == 3 * 2 * (6 + 1)   # dtypes x layouts x (scan blocks + conv)
    for v in variants:
        assert v["spill_bytes"] == 0 and v["stack_bytes"] == 0, f"{v['name']} spills:\n{table}"
        assert 0 < v["registers"] <= MAX_REGISTERS, f"{v['name']} registers:\n{table}"
        assert v["global_scratch"] == 0 and v["profile_scratch"] == 0, f"{v['name']} needs global scratch:\n{table}"
        assert v["shared"] <= 96 * 1024, f"{v['name']} shared memory:\n{table}"


def test_fp_fusion_is_set_explicitly(sm90_compile):
    # Triton 3.10 flips the default of TRITON_DEFAULT_FP_FUSION: results must not shift with it.
    assert all(v["fp_fusion"] for v in sm90_compile["variants"])
    assert "TRITON_DEFAULT_FP_FUSION is unset" not in sm90_compile["stderr"]


def test_triton_is_pinned_to_the_installed_release():
    # The dev requirements and the `gpu` extra pin one triton release (the one the torch build
    # expects); the offline compile and interpreter results above are for that release.
    import importlib.metadata
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    pins = re.findall(r"triton==([\w.]+)", (root / "requirements" / "dev.txt").read_text())
    pins += re.findall(r"triton==([\w.]+)", (root / "setup.py").read_text())
    assert len(pins) >= 2 and len(set(pins)) == 1, pins
    assert importlib.metadata.version("triton") == pins[0]
