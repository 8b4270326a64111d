"""Backbone registry: the image encoders the TV3S head can sit on.

A backbone *family* is one module in this package. It registers a builder together with its
table of *variants* (variant name -> hyper-parameters)::

    # tv3s_ros/model/backbones/swin.py
    from . import register

    SWIN_SPECS = {"swin_t": SwinSpec(...), "swin_s": SwinSpec(...)}

    @register("swin", SWIN_SPECS)
    def build(spec: SwinSpec) -> nn.Module:
        return SwinTransformer(...)

Every module of this package is imported with the package, so adding a family is that one
file plus the preset YAMLs that name its variants (``backbone: swin_t``): presets accept the
names of :func:`backbone_names`, and the network is built with :func:`build_backbone`.

What a built backbone provides: ``forward(x [N, 3, H, W]) -> [c1, c2, c3, c4]``, NCHW maps at
strides 4, 8, 16 and 32; ``out_channels``, the channel counts of those four maps; parameter
names of the official checkpoints (they load under the ``backbone.`` prefix); and random
initialisation from the global torch RNG.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Tuple

from torch import nn

__all__ = ["BackboneFamily", "register", "families", "backbone_names", "lookup", "build_backbone"]

Builder = Callable[[Any], nn.Module]


@dataclass(frozen=True)
class BackboneFamily:
    """One registered family: its name, its variants (name -> spec) and its builder (spec -> module)."""

    name: str
    specs: Mapping[str, Any]
    build: Builder


_FAMILIES: Dict[str, BackboneFamily] = {}


def register(family: str, specs: Mapping[str, Any]) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(spec) -> nn.Module`` for the variants in ``specs``.

    Variant names are what presets write in ``backbone:``; they must be unique over all families.
    """
    def decorate(build: Builder) -> Builder:
        if family in _FAMILIES:
            raise ValueError(f"backbone family {family!r} is registered twice")
        taken = sorted(set(specs) & set(backbone_names()))
        if taken:
            raise ValueError(f"backbone family {family!r} reuses variant name(s) {', '.join(taken)}")
        _FAMILIES[family] = BackboneFamily(family, MappingProxyType(specs), build)
        return build
    return decorate


def families() -> Mapping[str, BackboneFamily]:
    """The registered families by name (read-only)."""
    return MappingProxyType(_FAMILIES)


def backbone_names() -> List[str]:
    """All variant names (the valid ``backbone`` values), family by family in table order."""
    return [name for fam in _FAMILIES.values() for name in fam.specs]


def lookup(name: str) -> Tuple[BackboneFamily, Any]:
    """``(family, spec)`` of a variant; ``ValueError`` listing the valid names if unknown."""
    for fam in _FAMILIES.values():
        if name in fam.specs:
            return fam, fam.specs[name]
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(backbone_names())}")


def build_backbone(name: str) -> nn.Module:
    """Build a variant (e.g. ``mit_b1``) with random initialisation."""
    fam, spec = lookup(name)
    return fam.build(spec)


def _import_families() -> None:
    """Import every module of this package (sorted by file name) so that each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_families()
