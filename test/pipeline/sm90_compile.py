"""Compile every Triton kernel variant the TV3S presets launch for sm_90 (H100/H200), without a GPU.

Run as a script (``test_gpu_path`` starts it in a child: the stand-in driver below replaces
Triton's active driver for the whole process). Triton's own compiler pipeline runs to a cubin
through ``JITFunction.warmup``, which compiles without launching; the "driver" only reports the
target. ``ptxas -v`` (Triton's bundled one, the flags Triton uses) then gives registers and
spills. Prints one JSON object: ``{"skip": reason}`` when Triton's nvidia backend is missing,
else ``{"variants": [{name, registers, spill_bytes, global_scratch, shared, ...}, ...]}``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)        # real compiles, not the interpreter
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="tv3s-sm90-")   # compile for real, every run
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

SM90 = 90


def _nvidia_backend():
    """(GPUTarget, ptxas path) or a reason why this machine cannot compile for NVIDIA GPUs."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(SM90).path
    except Exception as err:  # noqa: BLE001 - any missing piece means: cannot compile here
        return f"Triton's nvidia backend is not available ({type(err).__name__}: {err})"
    return GPUTarget("cuda", SM90, 32), ptxas


def _install_stand_in_driver(target) -> None:
    """A CUDA "driver" that only reports an sm_90 target: enough for warmup (compile, no launch)."""
    from triton.backends.driver import DriverBase
    from triton.runtime import driver

    class Sm90StandIn(DriverBase):
        def __init__(self):
            pass

        @classmethod
        def is_active(cls):
            return True

        def get_current_target(self):
            return target

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise NotImplementedError("compile only")

        def map_python_to_cpp_type(self, ty):
            raise NotImplementedError("compile only")

        def get_device_interface(self):
            raise NotImplementedError("compile only")

        def get_empty_cache_for_benchmark(self):
            raise NotImplementedError("compile only")

        def clear_cache(self, cache):
            raise NotImplementedError("compile only")

    driver.set_active(Sm90StandIn())


def _ptxas_usage(ptxas: str, kernel) -> dict:
    """Registers and spills of the compiled kernel, from ``ptxas -v`` with Triton's flags."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    fmad = [] if kernel.metadata.enable_fp_fusion else ["--fmad=false"]
    try:
        log = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", *fmad, "--gpu-name=sm_90a", f.name,
                              "-o", os.devnull], capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return {"registers": int(regs.group(1)) if regs else -1,
            "spill_bytes": int(stores.group(1)) + int(loads.group(1)) if stores and loads else -1,
            "stack_bytes": int(stack.group(1)) if stack else -1}


def model_variants():
    """(name, kind, dtype, token_major, block) of every variant the presets launch on a GPU.

    All presets share the mixer shape (d_inner 512, d_state 16, d_conv 4, dt_rank 16) and
    their shortest piece has 100 tokens; the scan's BLOCK_D depends on how many windows are
    in flight, so every block the wrapper can pick is compiled. Token-major is the model's
    layout; channel-major is the other layout the wrappers accept.
    """
    from tv3s_ros.model import scan_triton as st
    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for token_major in (True, False):
            layout = "tm" if token_major else "cm"
            for block in st.scan_block_choices(512, torch.device("cuda")):
                out.append((f"scan_{str(dtype)[6:]}_{layout}_bd{block}", "scan", dtype, token_major, block))
            out.append((f"conv_{str(dtype)[6:]}_{layout}", "conv", dtype, token_major, None))
    return out


def compile_variant(kind, dtype, token_major, block, n=28, length=400, d=512, s=16, k=4, rank=16):
    """Compile one variant with exactly the arguments the wrapper passes (CPU tensors stand in
    for device ones: only dtype, strides and alignment matter to the compiler)."""
    import triton

    from tv3s_ros.model import scan_triton as st

    if token_major:
        xz = torch.empty(n, length, 2 * d, dtype=dtype)
        u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
        delta = torch.empty(n, length, d, dtype=dtype).transpose(1, 2)
        x_dbl = torch.empty(n, length, rank + 2 * s, dtype=dtype)
        B, C = x_dbl[..., rank:rank + s].transpose(1, 2), x_dbl[..., rank + s:].transpose(1, 2)
    else:
        u, z, delta = (torch.empty(n, d, length, dtype=dtype) for _ in range(3))
        B, C = torch.empty(n, s, length, dtype=dtype), torch.empty(n, s, length, dtype=dtype)
    device = torch.device("cuda")   # the launch configuration a GPU run would pick
    if kind == "scan":
        A, D, bias, h0 = torch.empty(d, s), torch.empty(d), torch.empty(d), torch.empty(n, d, s)
        y, h_last = st._empty_like_layout(u, dtype), torch.empty(n, d, s)
        block_d, block_s, num_warps = st.scan_config(n, d, s, device, block)
        return st._selective_scan_fwd_kernel.warmup(
            u, delta, A, B, C, D, z, bias, h0, y, h_last, d, length, s,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z.stride(),
            *h0.stride(), *y.stride(), *h_last.stride(), D.stride(0), bias.stride(0),
            HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, HAS_H0=True, DELTA_SOFTPLUS=True,
            BLOCK_D=block_d, BLOCK_S=block_s, num_warps=num_warps, grid=(n, triton.cdiv(d, block_d)))
    w, bias, tail = torch.empty(d, k), torch.empty(d), torch.empty(n, d, k - 1, dtype=dtype)
    out, new_tail = st._empty_like_layout(u, dtype), torch.empty(n, d, k - 1, dtype=dtype)
    block_d, block_l, block_k, num_warps = st.conv_config(d, length, k, device)
    return st._causal_conv1d_fwd_kernel.warmup(
        u, w, bias, tail, out, new_tail, d, length,
        *u.stride(), *w.stride(), *tail.stride(), *out.stride(), *new_tail.stride(), bias.stride(0),
        K=k, HAS_BIAS=True, HAS_TAIL=True, SILU=True, BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_K=block_k,
        num_warps=num_warps, grid=(n, triton.cdiv(d, block_d), triton.cdiv(length, block_l)))


def main() -> dict:
    found = _nvidia_backend()
    if isinstance(found, str):
        return {"skip": found}
    target, ptxas = found
    _install_stand_in_driver(target)
    results = []
    for name, kind, dtype, token_major, block in model_variants():
        start = time.perf_counter()
        try:
            kernel = compile_variant(kind, dtype, token_major, block)
        except Exception as err:  # noqa: BLE001 - reported per variant
            results.append({"name": name, "error": f"{type(err).__name__}: {str(err)[:2000]}"})
            continue
        meta = kernel.metadata
        results.append({"name": name, "num_warps": meta.num_warps, "shared": meta.shared,
                        "global_scratch": meta.global_scratch_size, "profile_scratch": meta.profile_scratch_size,
                        "fp_fusion": meta.enable_fp_fusion, "seconds": round(time.perf_counter() - start, 2),
                        **_ptxas_usage(ptxas, kernel)})
    return {"variants": results, "ptxas": ptxas}


if __name__ == "__main__":
    print(json.dumps(main()))
