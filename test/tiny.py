"""The tiny TV3S test model, defined once for every test.

A preset (``tv3s_b0_cityscapes`` unless a test names another) with a narrow head: decoder width
32, two Mamba layers, window 4 and shift 2, a few ms per small frame on one CPU core. A test
that needs other values passes them as keyword changes, so each difference shows where the
model is built::

    build_model(TINY_PRESET, **tiny_overrides())                       # the ModelConfig overrides
    build_model("tv3s_b1_cityscapes", **tiny_overrides(backbone="mit_b0", num_classes=5))
    ["--model", TINY_PRESET, "--model-overrides", tiny_cli()]         # the same for a CLI flag

ros_helpers/tiny_model.py writes it as a preset YAML for the node tests. Importable from every
test folder (``pythonpath = test`` in pytest.ini).
"""
from __future__ import annotations

from typing import Any, Dict

TINY_PRESET = "tv3s_b0_cityscapes"   # MiT-B0 backbone, 19 Cityscapes classes
TINY: Dict[str, Any] = {"embed_dim": 32, "window": 4, "shift": 2, "n_mambas": 2}


def tiny_overrides(**changes: Any) -> Dict[str, Any]:
    """The tiny model's ``ModelConfig`` overrides (a new dict), with ``changes`` applied."""
    return {**TINY, **changes}


def tiny_cli(**changes: Any) -> str:
    """``tiny_overrides(**changes)`` as a YAML flow mapping, for ``--model-overrides``."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in tiny_overrides(**changes).items()) + "}"
