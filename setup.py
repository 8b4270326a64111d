"""pip/setuptools metadata for development installs (``./setup.sh`` uses ``pip install -e``).

On a ROS 2 install the package is built by colcon through CMakeLists.txt (ament_cmake,
needed for message generation); this file is not used there.
"""
from setuptools import find_packages, setup

setup(
    name="tv3s_ros",
    version="0.1.0",
    description="Streaming TV3S video semantic segmentation for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tv3s_ros", "tv3s_ros.*"]),
    # The fused CPU kernel's source: built on first use on the target machine.
    package_data={"tv3s_ros.model": ["scan_fused.cpp"]},
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "rosbags>=0.11",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "pillow>=9",    # palette label PNGs (class indices); also a matplotlib dependency
        "torch>=2.6",   # weights_only loading is safe from 2.6 on (CVE-2025-32434)
    ],
    extras_require={
        # Fused CUDA kernels used as an oracle and fast path on GPUs (needs CUDA to import).
        # triton: the release the torch build expects (torch 2.13 CUDA wheels: 3.7.1), as in requirements/dev.txt.
        "gpu": ["triton==3.7.1", "mamba-ssm>=2.2.5"],
        # tv3s-bag --ray (docs/fleet.md); the same pin as requirements/fleet.txt.
        "fleet": ["ray==2.40.0"],
    },
    entry_points={
        "console_scripts": [
            "tv3s_node = tv3s_ros.ros.node:main",
            "tv3s-bag = tv3s_ros.tools.bag:main",
            "tv3s-bench = tv3s_ros.tools.bench:main",
            "tv3s-demo = tv3s_ros.tools.demo:main",
            "tv3s-eval = tv3s_ros.tools.eval:main",
            "tv3s-train = tv3s_ros.tools.train:main",
        ],
    },
)
