"""Streaming state of the TV3S head: everything that crosses frames, and nothing else.

For every Mamba layer and every group of equal-shape pieces of that layer's partition the
state holds, per sequence (piece), the causal-conv tail (last ``d_conv-1`` pre-conv inputs)
and the SSM state (fp32). Buffers are laid out ``[B, pieces, d_inner, ...]`` with the batch
(camera) dimension first, so selecting or stacking cameras is one ``index_select``/``cat``
per buffer, and the view ``[B*pieces, ...]`` that the mixer consumes is free.

The size depends only on the grid, never on the number of frames seen. A zero state is
exactly "no history" (the causal conv pads with zeros, the scan starts from h = 0), so a
reset simply zeroes the chosen batch entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["MixerStateSpec", "StateSpec", "StreamState"]

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class MixerStateSpec:
    """What one Mamba mixer carries per sequence (``Mamba.state_spec``): the causal-conv tail
    ``[d_inner, d_conv-1]`` (activation dtype) and the SSM state ``[d_inner, d_state]`` (fp32)."""

    d_inner: int
    d_conv: int
    d_state: int

    def conv_shape(self, *lead: int) -> Shape:
        """Shape of the conv tails of ``lead`` sequences (e.g. ``conv_shape(B, pieces)``)."""
        return (*lead, self.d_inner, self.d_conv - 1)

    def ssm_shape(self, *lead: int) -> Shape:
        """Shape of the SSM states of ``lead`` sequences."""
        return (*lead, self.d_inner, self.d_state)


# A head without Mamba layers carries nothing (its layout is empty); these sizes are never used.
NO_MIXER = MixerStateSpec(d_inner=0, d_conv=1, d_state=0)


@dataclass(frozen=True)
class StateSpec:
    """The state a head needs for one input size (``ShiftedMambaBlocks.state_spec``).

    ``layout[layer][group]`` is the number of sequences (pieces) of that piece group, and every
    layer's mixer carries ``mixer`` per sequence. ``device`` and ``dtype`` (the conv tails'; the
    SSM states are always fp32) are where new buffers go; they do not decide whether existing
    buffers fit.
    """

    grid: Tuple[int, int]
    input_size: Tuple[int, int]
    layout: Tuple[Tuple[int, ...], ...]
    mixer: MixerStateSpec
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "layout", tuple(tuple(layer) for layer in self.layout))
        object.__setattr__(self, "device", torch.device(self.device))

    def conv_shapes(self, batch: int) -> List[List[Shape]]:
        """``[layer][group]`` shapes of the conv tails for ``batch`` streams."""
        return [[self.mixer.conv_shape(batch, n) for n in layer] for layer in self.layout]

    def ssm_shapes(self, batch: int) -> List[List[Shape]]:
        """``[layer][group]`` shapes of the SSM states for ``batch`` streams."""
        return [[self.mixer.ssm_shape(batch, n) for n in layer] for layer in self.layout]


class StreamState:
    """Per-stream carried Mamba state for a batch of independent streams (cameras).

    Created empty (``TV3S.new_state(batch_size)``) and sized lazily at the first frame, as the
    head's :class:`StateSpec` for that frame size describes (:meth:`ensure`).
    ``forward_stream`` updates the buffers in place (stable addresses, CUDA-graph friendly)
    and returns the same object.

    Attributes:
        conv_tails: ``conv_tails[layer][group]`` ``[B, pieces, d_inner, d_conv-1]``
            (activation dtype).
        ssm_states: ``ssm_states[layer][group]`` ``[B, pieces, d_inner, d_state]`` fp32.
        grid: Mamba grid ``(H', W')`` the buffers were sized for, or None.
        input_size: model input ``(H, W)`` of the frames folded in, or None.
        frames_seen: int64 CPU tensor ``[B]``: frames folded into each entry since its reset.
    """

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.frames_seen = torch.zeros(batch_size, dtype=torch.long)
        self.grid: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None
        self.conv_tails: List[List[torch.Tensor]] = []
        self.ssm_states: List[List[torch.Tensor]] = []

    # ------------------------------------------------------------------ inspection
    @property
    def batch_size(self) -> int:
        return int(self.frames_seen.shape[0])

    @property
    def is_allocated(self) -> bool:
        return self.grid is not None

    @property
    def device(self) -> Optional[torch.device]:
        for layer in self.ssm_states:
            for t in layer:
                return t.device
        return None

    def layout(self) -> List[List[int]]:
        """Pieces per group per layer (empty when not allocated)."""
        return [[t.shape[1] for t in layer] for layer in self.ssm_states]

    def nbytes(self) -> int:
        """Bytes held by the state buffers (constant over frames)."""
        return sum(t.numel() * t.element_size() for layer in self.conv_tails + self.ssm_states for t in layer)

    def __repr__(self) -> str:
        return (f"StreamState(batch_size={self.batch_size}, grid={self.grid}, input_size={self.input_size}, "
                f"frames_seen={self.frames_seen.tolist()}, bytes={self.nbytes()})")

    # ------------------------------------------------------------------ sizing
    def ensure(self, spec: StateSpec) -> None:
        """Allocate zero buffers as ``spec`` describes, or check that the existing ones fit it.

        A different size is accepted only when no entry holds history (all ``frames_seen``
        zero): the streams must be reset before the input size changes.
        """
        grid, input_size = spec.grid, spec.input_size
        conv_shapes, ssm_shapes = spec.conv_shapes(self.batch_size), spec.ssm_shapes(self.batch_size)
        if self.is_allocated:
            same_size = grid == self.grid and input_size == self.input_size
            same_shapes = (conv_shapes == [[tuple(t.shape) for t in layer] for layer in self.conv_tails]
                           and ssm_shapes == [[tuple(t.shape) for t in layer] for layer in self.ssm_states])
            if same_size and same_shapes:
                dev = self.device
                if dev is not None and spec.device != dev:
                    raise ValueError(f"state is on {dev} but the frame is on {spec.device}: call state.to(device)")
                return
            if bool((self.frames_seen > 0).any()):
                if not same_size:
                    raise ValueError(
                        f"frame size {input_size} (grid {grid}) differs from the streams' {self.input_size} "
                        f"(grid {self.grid}); reset the streams before changing the input size")
                raise ValueError("state buffers do not fit this model (different layers, widths or "
                                 "window layout); use model.new_state()")
        self.conv_tails = [[torch.zeros(shape, device=spec.device, dtype=spec.dtype) for shape in layer]
                           for layer in conv_shapes]
        self.ssm_states = [[torch.zeros(shape, device=spec.device, dtype=torch.float32) for shape in layer]
                           for layer in ssm_shapes]
        self.grid, self.input_size = grid, input_size

    # ------------------------------------------------------------------ stream control
    def reset(self, mask: Optional[torch.Tensor] = None) -> None:
        """Forget the history of the entries where ``mask [B]`` (bool) is True (all when None)."""
        if mask is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool)
        mask = torch.as_tensor(mask, dtype=torch.bool).to("cpu").reshape(-1)
        if mask.numel() != self.batch_size:
            raise ValueError(f"reset mask has {mask.numel()} entries, batch size is {self.batch_size}")
        if not bool(mask.any()):
            return
        self.frames_seen[mask] = 0
        if self.is_allocated:
            idx = mask.nonzero().reshape(-1).to(self.device)
            for layer in self.conv_tails + self.ssm_states:
                for t in layer:
                    t.index_fill_(0, idx, 0)

    def finite_rows(self) -> Optional[torch.Tensor]:
        """Bool ``[B]`` on the state's device: True where every buffer of that entry is finite.

        Device-side only (no synchronisation; CUDA-graph capturable). None when unallocated.
        """
        flags = None
        for layer in self.conv_tails + self.ssm_states:
            for t in layer:
                ok = torch.isfinite(t).reshape(t.shape[0], -1).all(1)
                flags = ok if flags is None else flags & ok
        return flags

    def advance(self, frames: int) -> None:
        """Record that ``frames`` more frames were folded into every entry."""
        self.frames_seen += frames

    # ------------------------------------------------------------------ moving / batching
    def _map(self, fn, frames_seen: torch.Tensor) -> "StreamState":
        out = StreamState(int(frames_seen.shape[0]))
        out.frames_seen = frames_seen
        out.grid, out.input_size = self.grid, self.input_size
        out.conv_tails = [[fn(t) for t in layer] for layer in self.conv_tails]
        out.ssm_states = [[fn(t) for t in layer] for layer in self.ssm_states]
        return out

    def to(self, device) -> "StreamState":
        """Move the buffers to ``device`` in place and return ``self`` (like ``nn.Module.to``;
        the buffers are updated in place by streaming, so no second object shares them)."""
        for bufs in (self.conv_tails, self.ssm_states):
            for layer in bufs:
                layer[:] = [t.to(device) for t in layer]
        return self

    def clone(self) -> "StreamState":
        return self._map(lambda t: t.clone(), self.frames_seen.clone())

    def select(self, indices) -> "StreamState":
        """A new state holding the entries ``indices`` (copies), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        dev = self.device
        idx_dev = idx.to(dev) if dev is not None else idx
        return self._map(lambda t: t.index_select(0, idx_dev), self.frames_seen.index_select(0, idx))

    @staticmethod
    def stack(states: Sequence["StreamState"]) -> "StreamState":
        """Concatenate states along the batch dimension (entries keep their order).

        Unallocated states (no frame yet) join as zero entries; allocated ones must share grid,
        input size and layout (buffers go to the first allocated state's device).
        """
        if not states:
            raise ValueError("nothing to stack")
        frames = torch.cat([s.frames_seen for s in states])
        ref = next((s for s in states if s.is_allocated), None)
        if ref is None:
            out = StreamState(int(frames.shape[0]))
            out.frames_seen = frames
            return out
        for s in states:
            if s.is_allocated and (s.grid != ref.grid or s.input_size != ref.input_size
                                   or s.layout() != ref.layout()):
                raise ValueError(f"cannot stack states of different sizes: {s.grid}/{s.input_size} "
                                 f"vs {ref.grid}/{ref.input_size}")

        def pick(s: "StreamState", kind: str, li: int, gi: int) -> torch.Tensor:
            t = getattr(ref, kind)[li][gi]
            if s.is_allocated:
                return getattr(s, kind)[li][gi].to(t.device)
            return t.new_zeros((s.batch_size,) + tuple(t.shape[1:]))

        out = StreamState(int(frames.shape[0]))
        out.frames_seen = frames
        out.grid, out.input_size = ref.grid, ref.input_size
        for kind in ("conv_tails", "ssm_states"):
            setattr(out, kind, [[torch.cat([pick(s, kind, li, gi) for s in states])
                                 for gi in range(len(layer))] for li, layer in enumerate(getattr(ref, kind))])
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Flat dict of tensors (copies), suitable for ``torch.save`` / ``weights_only`` loading."""
        sd = {"frames_seen": self.frames_seen.clone()}
        if self.is_allocated:
            sd["grid"] = torch.tensor(self.grid, dtype=torch.long)
            sd["input_size"] = torch.tensor(self.input_size, dtype=torch.long)
            for kind, bufs in (("conv", self.conv_tails), ("ssm", self.ssm_states)):
                for li, layer in enumerate(bufs):
                    for gi, t in enumerate(layer):
                        sd[f"{kind}.{li}.{gi}"] = t.detach().clone()
        return sd

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (batch size included); tensors are copied."""
        self.frames_seen = sd["frames_seen"].to("cpu", torch.long).clone()
        if "grid" not in sd:
            self.grid = self.input_size = None
            self.conv_tails, self.ssm_states = [], []
            return
        self.grid = tuple(int(v) for v in sd["grid"])
        self.input_size = tuple(int(v) for v in sd["input_size"])
        for kind, attr in (("conv", "conv_tails"), ("ssm", "ssm_states")):
            bufs: List[List[torch.Tensor]] = []
            li = 0
            while f"{kind}.{li}.0" in sd:
                layer, gi = [], 0
                while f"{kind}.{li}.{gi}" in sd:
                    t = sd[f"{kind}.{li}.{gi}"].clone().contiguous()
                    if t.shape[0] != self.batch_size:
                        raise ValueError(f"{kind}.{li}.{gi} has batch {t.shape[0]}, expected {self.batch_size}")
                    layer.append(t)
                    gi += 1
                bufs.append(layer)
                li += 1
            setattr(self, attr, bufs)
