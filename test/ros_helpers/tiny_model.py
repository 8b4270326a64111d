"""A tiny random TV3S model written as a real preset YAML + mmcv checkpoint, for node tests.

The node then loads it through the production path (``model:=<yaml> weights:=<pth>``), and
the tests rebuild the very same network offline to compare results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import yaml
from tiny import TINY_PRESET, tiny_overrides

# The tests' tiny model (test/tiny.py, MiT-B0): ~50 ms per 64x96 frame on one busy CPU core.
# 7 classes keep label ids easy to check; the official resize targets 96x64.
TINY_YAML = {
    "base": TINY_PRESET,
    "name": "tv3s_tiny_test",
    **tiny_overrides(num_classes=7, test_scale=[96, 64]),
}
NUM_CLASSES = TINY_YAML["num_classes"]


def write_tiny_model(directory: Path, seed: int = 0) -> Tuple[Path, Path]:
    """Write ``tiny.yaml`` and ``tiny.pth`` (weights drawn with ``seed``) into ``directory``."""
    import torch

    from tv3s_ros.model import build_model, save_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    preset = directory / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_YAML))
    torch.manual_seed(seed)
    model = build_model(preset)
    weights = save_checkpoint(model, directory / "tiny.pth")
    return preset, weights


def load_tiny_model(preset: Path, weights: Path):
    """The network the node builds from the same files (eval mode, CPU)."""
    from tv3s_ros.model import build_model, load_checkpoint

    model = build_model(preset)
    load_checkpoint(model, weights)
    return model.eval()
