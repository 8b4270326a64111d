"""Model configuration: one dataclass shared by presets, the network and the tools."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

# Official TV3S input normalization (RGB order, applied to 0..255 pixel values).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class ModelConfig:
    """Everything needed to build a TV3S network and feed it.

    Field names are the override keywords of ``build_model(name, **overrides)``.
    """

    name: str = "tv3s_b1_cityscapes"
    backbone: str = "mit_b1"          # a variant of tv3s_ros/model/backbones (mit_b0 .. mit_b5)
    dataset: str = "cityscapes"       # cityscapes | vspw | custom
    num_classes: int = 19
    embed_dim: int = 256              # decoder width E
    window: int = 20                  # Mamba window (square), in grid cells
    shift: int = 10                   # shift of the odd (shifted) layers
    real_shift: bool = True           # border pieces instead of a cyclic roll
    n_mambas: int = 8                 # number of Mamba blocks in the head
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    head_channels: int = 128          # only sizes the (unused) conv_seg of the base head
    # Official Cityscapes head (TV3SHead_shift_city) or VSPW head (TV3SHead_shift). The network
    # is the same for both; the flag selects the training loss (tv3s_ros.train.objective): its
    # per-frame auxiliary term covers the last clip frame only (True) or every clip frame (False).
    city_head: bool = True
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    # Official test-time resize: (long, short) scale with keep-ratio, and optional size divisor.
    test_scale: Tuple[int, int] = (1024, 512)
    size_divisor: Optional[int] = None
    class_names: List[str] = field(default_factory=list)
    palette: List[List[int]] = field(default_factory=list)
    # Weights shipped with the preset (a YAML gives it relative to its own folder; load_config
    # makes it absolute). Used when no weights are passed explicitly; None: nothing shipped.
    weights: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)
