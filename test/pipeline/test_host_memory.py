"""host_memory: with the malloc tuning a repeated frame-like workload stops page-faulting;
the opt-outs leave malloc alone. Each case runs in a fresh interpreter (mallopt is per process
and cannot be undone)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                                reason="the tuning is for glibc malloc")

# Three 40 MB tensors alive at once, freed together. Untuned glibc serves blocks above 32 MB
# (the most its adaptive threshold reaches) with mmap and unmaps them on free, so every round
# faults all their pages in again; smaller blocks fault too, but not reliably (the adaptive
# thresholds depend on the order of earlier frees), which would make the check flaky.
WORKLOAD = r"""
import json, resource, sys
import torch
from tv3s_ros.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else None
torch.set_num_threads(1)
a = torch.ones(10 * 2**20)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = [a + i for i in range(3)]
    del live
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
kept = rss_mb()
from tv3s_ros.host_memory import release_freed_memory
release_freed_memory()
print(json.dumps({"applied": applied, "faults": faults, "kept_mb": kept, "released_mb": rss_mb()}))
"""


def _run(mode: str, **env) -> dict:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "TV3S_MALLOC_TUNING"}
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, timeout=120,
                          env=environ)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tuned_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    plain = _run("plain")
    tuned = _run("tune")
    assert tuned["applied"] is True
    pages_per_round = 3 * 40 * 2**20 // 4096                 # 30,720 pages of 4 KiB
    # The untuned process faults (nearly) every page in again each round: the test can fail.
    assert sum(plain["faults"][-4:]) > 4 * pages_per_round // 2, plain
    # Tuned: after the first rounds the heap holds the blocks; at most stray growth remains.
    assert sum(tuned["faults"][-4:]) < pages_per_round // 2, tuned
    # ... and keeps them until asked: release_freed_memory (lifecycle cleanup) hands them back.
    assert tuned["kept_mb"] - tuned["released_mb"] > 100, tuned
    assert plain["kept_mb"] - plain["released_mb"] < 20, plain


@pytest.mark.parametrize("env", [{"TV3S_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_opt_outs_leave_malloc_alone(env):
    result = _run("tune", **env)
    assert result["applied"] is False
