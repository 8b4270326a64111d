"""Everything needed to build an :class:`~tv3s_ros.engine.Engine` from names and numbers, in one
object that the node fills from its ROS parameters and the tools from their flags.

:func:`load_model` validates the cheap settings first (a bad device or precision should not
cost a model build), then builds the network and loads its weights.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

import torch

from tv3s_ros.model.device import check_precision, select_device
from tv3s_ros.outputs import check_output_resolution
from tv3s_ros.streams import ResetPolicy

__all__ = ["EngineSettings", "LoadedModel", "load_model", "resolve_graphs", "GRAPH_MODES",
           "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_ASPECT"]

log = logging.getLogger(__name__)

GRAPH_MODES = ("auto", "on", "off", "no_capture")
DEFAULT_MAX_PIXELS = 40_000_000   # above 8K UHD (33.2 MP); an 8000x8000 png bomb (64 MP) is refused
DEFAULT_MAX_ASPECT = 16.0         # wider than any real camera or stitched panorama strip


@dataclass(frozen=True)
class EngineSettings:
    """How to build an engine.

    Attributes:
        model: preset name or YAML path (or a ``ModelConfig`` / built model).
        weights: checkpoint path. Without one, the weights the preset ships (its ``weights``
            field, e.g. ``tv3s_demo``); a preset that ships none refuses to start unless
            ``allow_random_weights`` (then a loud warning: output is meaningless).
        model_overrides: ``ModelConfig`` fields passed to ``build_model`` (tests, custom models).
        allow_pickle: let ``load_checkpoint`` unpickle legacy files (trusted files only).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; precision: ``fp32``, ``fp16``, ``bf16``.
        input_size: ``official``, ``native`` or ``HxW`` (see :mod:`tv3s_ros.preprocess`).
        output_resolution: output images at the ``input`` frame size or the ``model`` input size.
        overlay_alpha: weight of the palette colour in the overlay, 0..1.
        max_gap_s, max_state_frames: the reset policy (:class:`~tv3s_ros.streams.ResetPolicy`).
        graphs: ``auto`` (CUDA graphs on CUDA, eager on CPU), ``on``, ``off`` or ``no_capture``.
        gpu_jpeg: ``auto`` (decode jpeg on the GPU when torchvision can), true (required) or false.
        max_pixels, max_aspect: frames above either are refused (``bad_size``); 0 disables.
    """

    model: Any = "tv3s_b1_cityscapes"
    weights: Optional[str] = None
    allow_random_weights: bool = False
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    device: Union[str, torch.device] = "auto"
    precision: str = "fp32"
    input_size: Any = "official"
    output_resolution: str = "input"
    overlay_alpha: float = 0.5
    max_gap_s: float = 1.0
    max_state_frames: int = 0
    graphs: Union[str, bool] = "auto"
    gpu_jpeg: Union[str, bool] = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT

    def replace(self, **changes) -> "EngineSettings":
        return dataclasses.replace(self, **changes)

    def reset_policy(self) -> ResetPolicy:
        return ResetPolicy(max_gap_s=self.max_gap_s, max_state_frames=self.max_state_frames)

    def check(self) -> torch.device:
        """The cheap checks (device, precision, graphs, GPU jpeg, resolution, reset policy); the device."""
        from tv3s_ros.gpu_decode import resolve_gpu_jpeg

        dev = select_device(self.device)
        check_precision(self.precision, dev)
        resolve_graphs(self.graphs, dev)
        resolve_gpu_jpeg(self.gpu_jpeg, dev)
        check_output_resolution(self.output_resolution)
        self.reset_policy()
        return dev


@dataclass
class LoadedModel:
    """The network with its weights, and what the checkpoint says about its classes."""

    net: torch.nn.Module
    weights: Optional[str]                 # None: random weights
    class_names: Optional[list] = None
    palette: Optional[list] = None


def load_model(settings: EngineSettings) -> Tuple[LoadedModel, torch.device]:
    """Check ``settings``, build the network and load its weights (see :class:`EngineSettings`)."""
    from tv3s_ros.model import build_model, load_checkpoint

    dev = settings.check()
    weights = os.fspath(settings.weights) if settings.weights else None
    origin = "given"
    if weights is None:  # an explicit checkpoint wins; else the one the preset ships, if any
        weights = _shipped_weights(settings.model, settings.model_overrides)
        origin = "shipped with the preset"
    if weights is None and not settings.allow_random_weights:
        raise ValueError("no weights given: set weights to a TV3S checkpoint (see model/README.md), "
                         "or allow_random_weights=true for tests only")
    if weights is not None and not os.path.isfile(os.path.expanduser(weights)):
        raise FileNotFoundError(f"weights file not found: {weights}")

    if isinstance(settings.model, torch.nn.Module):
        if settings.model_overrides:
            raise ValueError("model_overrides cannot be applied to an already built model")
        net = settings.model
    else:
        net = build_model(settings.model, **dict(settings.model_overrides or {}))
    loaded = LoadedModel(net, weights)
    if weights is not None:
        meta = load_checkpoint(net, os.path.expanduser(weights), allow_pickle=settings.allow_pickle)
        loaded.class_names, loaded.palette = meta.class_names or None, meta.palette or None
        log.info("weights: %s (%s)", weights, origin)
    else:
        log.warning("!" * 72)
        log.warning("RUNNING WITH RANDOM WEIGHTS (allow_random_weights): the segmentation output is "
                    "MEANINGLESS. Set weights to a TV3S checkpoint for real use.")
        log.warning("!" * 72)
    return loaded, dev


def resolve_graphs(graphs: Union[str, bool, None], device: torch.device) -> str:
    """``on`` / ``off`` / ``no_capture`` for a ``graphs`` setting on ``device``.

    ``auto`` (or None): on for CUDA, off for CPU. ``no_capture`` runs the graph path (static
    buffers, cameras in rows) without capturing: for debugging a capture problem, and for
    testing that path on CPU.
    """
    if graphs is None or isinstance(graphs, bool):
        key = "auto" if graphs is None else ("on" if graphs else "off")
    else:
        key = str(graphs).strip().lower()
        key = {"true": "on", "false": "off", "1": "on", "0": "off"}.get(key, key)
    if key not in GRAPH_MODES:
        raise ValueError(f"graphs must be one of {', '.join(GRAPH_MODES)} (or true/false), got {graphs!r}")
    if key == "auto":
        return "on" if device.type == "cuda" else "off"
    if key == "on" and device.type != "cuda":
        raise ValueError("graphs=on needs a CUDA device (CUDA graphs); use auto or off on CPU")
    return key


def _shipped_weights(model: Any, overrides: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The checkpoint shipped with ``model`` (a preset, YAML, ``ModelConfig`` or built model)."""
    from tv3s_ros.model.config import ModelConfig
    from tv3s_ros.model.presets import shipped_weights

    if isinstance(model, torch.nn.Module):
        model = getattr(model, "cfg", None)
        if model is None:
            return None
    if isinstance(model, ModelConfig):
        return shipped_weights(model)
    return shipped_weights(model, dict(overrides or {}))
