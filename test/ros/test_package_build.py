"""The package builds as a ROS 2 package: colcon + ament_cmake against the ROS in .venv.

This is what a robotics engineer does in a colcon workspace on a Jazzy machine; here the
wheel-installed ROS stands in for /opt/ros/jazzy.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_CONTENT = ["package.xml", "CMakeLists.txt", "setup.py", "msg", "tv3s_ros", "launch", "config", "model", "scripts"]


def _ignore_user_checkpoints(folder, names):
    ignored = set(shutil.ignore_patterns("__pycache__", "*.pyc", "weights")(folder, names))
    if Path(folder).name != "demo":
        ignored |= {n for n in names if n.endswith(".pth")}
    return ignored


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.fail("colcon is not installed in the venv (run ./setup.sh)")
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "tv3s_ros"
    src.mkdir(parents=True)
    for name in PACKAGE_CONTENT:
        path = ROOT / name
        if path.is_dir():
            # user checkpoints stay out (as in a clean checkout); the shipped demo weights are package content
            shutil.copytree(path, src / name, ignore=_ignore_user_checkpoints)
        else:
            shutil.copy2(path, src / name)
    prefix = Path(sys.prefix)
    env = dict(os.environ)
    env.update(
        VIRTUAL_ENV=str(prefix),
        PATH=f"{prefix / 'bin'}:{env['PATH']}",
        AMENT_PREFIX_PATH=str(prefix),
        CMAKE_PREFIX_PATH=str(prefix),
    )
    cmd = [str(colcon), "build", "--merge-install", "--event-handlers", "console_direct-",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return ws / "install", env


def test_install_tree_holds_share_content(colcon_install):
    install, _ = colcon_install
    share = install / "share" / "tv3s_ros"
    for name in ("launch", "config", "model"):
        assert (share / name).is_dir(), f"share/tv3s_ros/{name} missing"
    assert (share / "msg" / "ClassCoverage.msg").is_file()
    assert (share / "package.xml").is_file()
    assert any((share / "launch").glob("*.launch.py"))
    assert any((share / "model").glob("*.yaml"))
    assert (share / "model" / "demo" / "tv3s_demo.pth").is_file(), "the demo preset's shipped weights"
    for exe in ("tv3s_node", "tv3s_bag", "tv3s_bench", "tv3s_demo", "tv3s_eval", "tv3s_train"):
        path = install / "lib" / "tv3s_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), f"lib/tv3s_ros/{exe} missing (ros2 run)"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "tv3s_ros").is_file()


def test_installed_python_package_imports_from_install_tree(colcon_install, tmp_path):
    """After sourcing the workspace, tv3s_ros (our code and the generated msg) comes from install/."""
    install, env = colcon_install
    script = (
        f"source {install}/setup.bash && cd {tmp_path} && "
        f"{sys.executable} -c 'import tv3s_ros, tv3s_ros.msg, tv3s_ros.model; "
        "from tv3s_ros.msg import ClassCoverage; from rclpy.serialization import serialize_message; "
        "m = ClassCoverage(); m.class_ids = [3]; assert len(serialize_message(m)) > 0; "
        "print(tv3s_ros.model.__file__, tv3s_ros.msg.__file__)'"
    )
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    model_file, msg_file = result.stdout.split()[-2:]
    assert model_file.startswith(str(install)), model_file
    # the fused CPU kernel is built from its installed source on first use
    assert (Path(model_file).parent / "scan_fused.cpp").is_file()
    assert msg_file.startswith(str(install)), msg_file
