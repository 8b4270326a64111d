"""Window partitions of the Mamba token grid: which tokens form one sequence, in which order.

TV3S scans each window (even layers) or each shifted piece (odd layers) of the
``H' x W'`` grid as an independent sequence whose tokens are ordered ``(t, row, col)``:
all tokens of frame 1 in raster order inside the piece, then frame 2, ...  A clip's sequence
for a piece is therefore the concatenation of the per-frame sequences of that piece, which is
what makes frame-by-frame streaming with a carried state exact.

Real shift (official ``real_shift=True``): the official code rolls the map by ``-shift``,
cuts the rolled map into 9 groups and rolls back. In original coordinates this is the grid of
rectangles between the cut points ``{0, s, s+w, s+2w, ..., H'-(w-s), H'}`` (same for columns),
without any wrap-around. The 9 official groups, in their call order:

===== =================== =========================== ============
group rows                cols                        piece size
===== =================== =========================== ============
main  middle bands        middle bands                w x w
a1    top band [0, s)     left band [0, s)            s x s
b3    bottom band         left band                   (w-s) x s
c3    top band            right band [W'-(w-s), W')   s x (w-s)
d     bottom band         right band                  (w-s) x (w-s)
b1    middle bands        left band                   w x s
b2    middle bands        right band                  w x (w-s)
c1    top band            middle bands                s x w
c2    bottom band         middle bands                (w-s) x w
===== =================== =========================== ============

Within a group, pieces are enumerated row-major. Pieces of equal shape are run as one batch
of sequences (an efficiency choice only: every sequence is independent), so a partition here
is a list of *groups of equal-shape pieces*. ``test/model/test_partition.py`` re-derives the
official roll-and-slice layout independently and compares.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["PieceGroup", "Partition", "grid_size", "window_partition", "shifted_partition",
           "layer_partition"]


@dataclass(frozen=True)
class PieceGroup:
    """``count`` pieces of ``height x width`` tokens, stored contiguously from ``offset``
    in the partition's permuted token order (piece-major, then row, then col)."""

    height: int
    width: int
    count: int
    offset: int
    names: Tuple[str, ...]  # official group names merged into this group

    @property
    def size(self) -> int:
        """Tokens per piece and frame."""
        return self.height * self.width


@dataclass(eq=False)
class Partition:
    """A partition of an ``H x W`` grid into independent sequences.

    ``perm[k]`` is the flat grid index (``row * W + col``) of the k-th token in piece order;
    ``inv_perm`` maps back. Use :meth:`to_sequences` / :meth:`from_sequences`.
    """

    height: int
    width: int
    groups: Tuple[PieceGroup, ...]
    perm: torch.Tensor
    inv_perm: torch.Tensor
    _on_device: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def num_pieces(self) -> int:
        return sum(g.count for g in self.groups)

    def indices(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(perm, inv_perm)`` on ``device`` (copied once, then cached)."""
        device = torch.device(device)
        if device not in self._on_device:
            with torch.inference_mode(False):   # cached: see _build
                self._on_device[device] = (self.perm.to(device), self.inv_perm.to(device))
        return self._on_device[device]

    def to_sequences(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        """Gather ``tokens [B, T, H*W, E]`` into one ``[B*count, T*size, E]`` tensor per group.

        Sequence ``b*count + i`` is piece i of batch entry b, tokens ordered (t, row, col).
        """
        b, t, p, e = tokens.shape
        if p != self.height * self.width:
            raise ValueError(f"expected {self.height}x{self.width} tokens, got {p}")
        perm, _ = self.indices(tokens.device)
        ordered = tokens.index_select(2, perm)
        out = []
        for g in self.groups:
            part = ordered[:, :, g.offset:g.offset + g.count * g.size]
            part = part.reshape(b, t, g.count, g.size, e).transpose(1, 2)
            out.append(part.reshape(b * g.count, t * g.size, e))
        return out

    def from_sequences(self, sequences: Sequence[torch.Tensor], batch: int, frames: int) -> torch.Tensor:
        """Inverse of :meth:`to_sequences`: back to ``[B, T, H*W, E]`` in grid order."""
        parts = []
        for g, seq in zip(self.groups, sequences):
            e = seq.shape[-1]
            part = seq.reshape(batch, g.count, frames, g.size, e).transpose(1, 2)
            parts.append(part.reshape(batch, frames, g.count * g.size, e))
        _, inv = self.indices(sequences[0].device)
        return torch.cat(parts, dim=2).index_select(2, inv)


def grid_size(height: int, width: int, window: int, window2: int) -> Tuple[int, int]:
    """Official Mamba grid for a c1 feature map of ``height x width`` (stride 4).

    Half the c1 size (floor), rounded *up* to a multiple of lcm(window, window2); the features
    are then bilinearly resized to it (usually anisotropically).
    """
    mult = math.lcm(window, window2)
    h2, w2 = height // 2, width // 2
    if h2 < 1 or w2 < 1:
        raise ValueError(f"feature map {height}x{width} too small for the TV3S head (need >= 2x2)")
    return -(-h2 // mult) * mult, -(-w2 // mult) * mult


def _bands(length: int, window: int, shift: int) -> Tuple[List[Tuple[int, int]], Tuple[int, int], Tuple[int, int]]:
    """Cut ``[0, length)`` at ``{0, s, s+w, ..., length-(w-s), length}``.

    Returns ``(middle bands, first band [0, s), last band [length-(w-s), length))``.
    """
    middle = [(start, start + window) for start in range(shift, length - window + shift, window)]
    return middle, (0, shift), (length - (window - shift), length)


# Partitions are cached across calls (lru_cache): their index tensors must be normal tensors even
# when first built under torch.inference_mode, or a later autograd pass (training) cannot save them.
@torch.inference_mode(False)
def _build(height: int, width: int, named_regions: List[Tuple[str, List[Tuple[int, int, int, int]]]]) -> Partition:
    """Merge equal-shape pieces (first-appearance order) and build the permutation."""
    by_shape: Dict[Tuple[int, int], List] = {}
    for name, rects in named_regions:
        for r0, r1, c0, c1 in rects:
            entry = by_shape.setdefault((r1 - r0, c1 - c0), [[], []])
            if name not in entry[0]:
                entry[0].append(name)
            entry[1].append((r0, c0))
    flat = torch.arange(height * width).reshape(height, width)
    groups, chunks, offset = [], [], 0
    for (ph, pw), (names, origins) in by_shape.items():
        for r0, c0 in origins:
            chunks.append(flat[r0:r0 + ph, c0:c0 + pw].reshape(-1))
        groups.append(PieceGroup(ph, pw, len(origins), offset, tuple(names)))
        offset += len(origins) * ph * pw
    perm = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
    if perm.numel() != height * width or not torch.equal(perm.sort().values, torch.arange(height * width)):
        raise AssertionError("partition does not cover the grid exactly")  # construction bug
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return Partition(height, width, tuple(groups), perm, inv)


@functools.lru_cache(maxsize=64)
def window_partition(height: int, width: int, window: int) -> Partition:
    """Unshifted ``window x window`` tiling aligned at (0, 0); needs multiples of ``window``."""
    if height % window or width % window:
        raise ValueError(f"grid {height}x{width} is not a multiple of window {window}")
    rects = [(r, r + window, c, c + window) for r in range(0, height, window) for c in range(0, width, window)]
    return _build(height, width, [("window", rects)])


@functools.lru_cache(maxsize=64)
def shifted_partition(height: int, width: int, window: int, shift: int) -> Partition:
    """Real-shift pieces (9 official groups, see module docstring); needs ``0 < shift < window``.

    With a single window row (or column) the middle bands are empty and only the border
    pieces remain (the cut-point formulation). This is our extension: the official code
    cannot run such grids (it raises on its empty ``main`` group), i.e. it needs a grid
    of at least 2x2 windows (c1 map >= 42x42 cells for window 20, input >= ~165 px).
    """
    if not 0 < shift < window:
        raise ValueError(f"real shift needs 0 < shift < window, got shift={shift}, window={window}")
    if height % window or width % window:
        raise ValueError(f"grid {height}x{width} is not a multiple of window {window}")
    rows_mid, top, bottom = _bands(height, window, shift)
    cols_mid, left, right = _bands(width, window, shift)

    def rects(rows, cols):
        return [(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]

    named = [
        ("main", rects(rows_mid, cols_mid)),
        ("a1", rects([top], [left])),
        ("b3", rects([bottom], [left])),
        ("c3", rects([top], [right])),
        ("d", rects([bottom], [right])),
        ("b1", rects(rows_mid, [left])),
        ("b2", rects(rows_mid, [right])),
        ("c1", rects([top], cols_mid)),
        ("c2", rects([bottom], cols_mid)),
    ]
    return _build(height, width, named)


def layer_partition(height: int, width: int, layer: int, window: int, shift: int,
                    real_shift: bool = True) -> Partition:
    """Partition used by Mamba layer ``layer``: unshifted windows on even layers; on odd
    layers real-shift pieces, or plain ``(window+shift)`` windows when ``real_shift`` is off
    (the official "Expand" variant)."""
    if layer % 2 == 0:
        return window_partition(height, width, window)
    if real_shift:
        return shifted_partition(height, width, window, shift)
    return window_partition(height, width, window + shift)
