"""A scan kernel that fails on its first launch shows in the node's /diagnostics, not only in its log.

The real ``tv3s_node`` runs with ``auto`` picking the Triton kernels as it does on CUDA (the one
line a ``sitecustomize`` changes in the child), on this machine without a GPU driver: Triton's
real launch fails, the start-up self-check sends every variant to the fallback backend, and the
node status reports it while the node keeps serving.
"""
from __future__ import annotations

import os
import signal
import textwrap

import pytest
from ros_helpers.graph import NodeProcess, Probe
from ros_helpers.tiny_model import write_tiny_model

pytestmark = pytest.mark.ros

NS = "/t_gpu_fallback"

SITECUSTOMIZE = textwrap.dedent('''
    # Test only: make ``auto`` choose Triton for every call, as it does for CUDA tensors.
    from tv3s_ros.model import scan
    scan.backend_for = lambda *tensors: "triton"
''')


def test_kernel_fallback_is_reported_in_diagnostics(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from tv3s_ros.model import scan

    if not scan.triton_available():
        pytest.skip("triton is not installed")
    preset, weights = write_tiny_model(tmp_path / "model")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           scan.ENV_VAR: "auto"}
    env.pop("TRITON_INTERPRET", None)
    probe = Probe("tv3s_gpu_fallback_probe")
    probe.subscribe(DiagnosticArray, "/diagnostics")
    node = NodeProcess(tmp_path / "node.log",
                       {"model": str(preset), "weights": str(weights), "device": "cpu",
                        "camera_topics": [f"{NS}/cam/image_raw"], "diagnostics_period_s": 0.2},
                       namespace=NS, env=env)
    try:
        node.wait_for_log("ready:")

        def model_status():
            for msg in reversed(probe.received("/diagnostics")):
                for status in msg.status:
                    if status.name == f"{NS.lstrip('/')}/tv3s_node: model":
                        return status
            return None

        status = probe.wait_for(model_status, 30.0, "the node's model status on /diagnostics")
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN, status
        assert status.message.startswith("scan kernel fallback"), status.message
        for kernel in scan.KERNELS:
            assert values[f"scan_backend.{kernel}"] == scan.fallback_backend(kernel)
            assert "active drivers" in values[f"scan_fallback.{kernel}"]
    finally:
        code = node.stop(signal.SIGINT)
        probe.close()
    log = node.log()
    assert code == 0 and "Traceback" not in log, log
    assert log.count("kernel failed on its first launch") == len(scan.KERNELS), log
