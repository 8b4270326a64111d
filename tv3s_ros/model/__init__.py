"""TV3S model core (torch only, no ROS): presets, network construction and checkpoints.

```python
from tv3s_ros.model import build_model, load_checkpoint
model = build_model("tv3s_b1_cityscapes")            # random init, eval mode
meta = load_checkpoint(model, "model/weights/tv3s_b1_city.pth")
```
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Union

from .checkpoint import CheckpointMeta, CheckpointMismatchError, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .presets import config_from_dict, list_presets, load_config

__all__ = [
    "build_model", "load_checkpoint", "save_checkpoint", "load_config", "list_presets",
    "ModelConfig", "CheckpointMeta", "CheckpointMismatchError",
]


def build_model(name_or_path: Union[str, os.PathLike, ModelConfig], **overrides: Any):
    """Build a randomly initialised TV3S network in eval mode.

    ``name_or_path``: a preset name (see ``list_presets()``), a YAML path, or a ``ModelConfig``
    (then no overrides are allowed). ``overrides`` are ``ModelConfig`` fields, validated.
    Initialisation draws from the global torch RNG; seed it yourself for reproducible weights.
    """
    from .tv3s import TV3S  # imported here so presets/checkpoints work without the network code

    if isinstance(name_or_path, ModelConfig):
        if overrides:
            raise TypeError("overrides are not accepted together with a ModelConfig; use dataclasses.replace")
        cfg = config_from_dict(dataclasses.asdict(name_or_path))  # re-validate hand-made configs
    else:
        cfg = load_config(name_or_path, **overrides)
    return TV3S(cfg).eval()
