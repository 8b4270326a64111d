"""setup.sh: a second run is a quick no-op, and missing system tools are named clearly."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_rerun_is_a_quick_noop():
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "setup.sh")], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 30, f"second run took {elapsed:.1f} s"
    for step in ("torch", "ROS 2 Jazzy wheels", "messages", "tv3s_ros (editable)"):
        assert f"{step}" in result.stdout and "up to date" in result.stdout, result.stdout
    assert "installing" not in result.stdout, result.stdout


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH holding links to every system executable except the named ones."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory) or ".venv" in directory:
            continue
        for name in os.listdir(directory):
            target = os.path.join(directory, name)
            if name in missing or (bin_dir / name).exists() or not os.access(target, os.X_OK):
                continue
            (bin_dir / name).symlink_to(target)
    return str(bin_dir)


@pytest.mark.parametrize("tool, hint", [("cmake", "apt install cmake"), ("c++", "build-essential")])
def test_missing_system_tool_is_named(tmp_path, tool, hint):
    missing = {"cmake"} if tool == "cmake" else {"c++", "g++", "x86_64-linux-gnu-g++", "x86_64-linux-gnu-g++-12", "g++-12"}
    path = _path_without(tmp_path, *missing)
    assert shutil.which(tool, path=path) is None
    result = subprocess.run(["bash", str(ROOT / "setup.sh")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": path})
    assert result.returncode != 0
    assert hint in result.stderr, result.stderr
