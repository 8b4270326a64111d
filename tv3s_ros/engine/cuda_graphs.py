"""One streaming step as one CUDA graph: uint8 frames in, labels / confidence / colours / coverage out.

:class:`CudaGraphStreamer` owns everything a step touches at fixed addresses, for one
``(batch, input height, input width, precision)``:

- ``input``: a uint8 ``[B, H, W, 3]`` buffer on the model's device (callers copy frames in),
- ``state``: a :class:`StreamState` of batch B, allocated before capture and updated in place,
- the outputs of the last step (tensors owned by the graph, overwritten by the next step).

The captured step is ``preprocess (integer/float resize, normalise) -> forward_stream ->
logits to the output size -> Postprocessor.device_outputs`` (argmax, confidence, palette,
overlay, per-class counts), so a steady-state frame costs one ``graph.replay()`` and no
host synchronisation. Stream resets zero rows of the state in place (no reallocation); a
new input size or batch gets a new state and a new capture (:meth:`set_size`); new
outputs re-capture with the state kept (:meth:`set_outputs`).

Capture needs CUDA. With ``capture=False`` (the default on CPU) the same step runs eagerly
on the same static buffers, so every piece of bookkeeping can be tested without a GPU.

Why not ``torch.compile(mode="reduce-overhead")``: it would have to trace the in-place state
updates and the Triton scan too, and it compiles again for every new shape (slow first
frames per camera size); capturing the eager code as it is is simpler and predictable.
"""
from __future__ import annotations

import contextlib
from typing import AbstractSet, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from tv3s_ros.model.device import PRECISIONS, autocast, check_precision, device_context
from tv3s_ros.model.state import StreamState
from tv3s_ros.outputs import check_output_resolution, check_outputs
from tv3s_ros.postprocess import Postprocessor
from tv3s_ros.preprocess import (
    InputPolicy,
    cv2_resize_linear_u8,
    cv2_resize_taps,
    logits_to_size,
    model_input_size,
    official_resize_steps,
    parse_input_size,
)

__all__ = ["CudaGraphStreamer", "GraphCaptureError", "StreamerPool", "StaticPreprocess", "state_row_view",
           "load_state_row", "resolve_capture"]



class GraphCaptureError(RuntimeError):
    """Capturing the step as a CUDA graph failed (the eager step itself worked)."""


def _device_index(device: torch.device) -> Tuple[str, int]:
    """``cuda`` and ``cuda:0`` are the same device (when 0 is current); compare them as such."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return device.type, torch.cuda.current_device()
    return device.type, device.index or 0


def resolve_capture(capture: Union[str, bool, None], device: torch.device) -> bool:
    """``auto``/None: capture on CUDA only; True on a CPU device is an error."""
    if capture is None or (isinstance(capture, str) and capture.strip().lower() == "auto"):
        return device.type == "cuda"
    if not isinstance(capture, bool):
        raise ValueError(f"capture must be 'auto', True or False, got {capture!r}")
    if capture and device.type != "cuda":
        raise ValueError(f"CUDA graph capture needs a CUDA device, the model is on {device}")
    return capture


class StaticPreprocess:
    """:func:`tv3s_ros.preprocess.to_model_input` for one input size, without per-call
    host-to-device copies (mean / 1/std live on the device), hence capturable.

    ``images [B, H, W, 3]`` uint8 -> float32 ``[B, 3, h, w]``, bit-identical to ``to_model_input``.
    """

    def __init__(self, cfg, policy: Union[str, InputPolicy], height: int, width: int, device):
        self.policy = parse_input_size(policy)
        self.size = (int(height), int(width))
        if self.policy.kind == "official":
            self.steps = official_resize_steps(cfg, *self.size)
        else:
            self.steps = [model_input_size(self.policy, cfg, *self.size)]
        self.output_size = tuple(self.steps[-1])
        device = torch.device(device)
        # Same arithmetic as to_model_input: mean in fp32, 1/std computed in fp64 then fp32.
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self.inv_std = (1.0 / torch.tensor(cfg.std, dtype=torch.float64)).to(torch.float32).view(1, 3, 1, 1).to(device)
        # The integer resize taps, held here: a captured graph reads them by address, and the
        # cache they come from frees them after 64 other sizes (the replay would read reused memory).
        self.taps = []
        size = self.size
        for step in self.steps:
            if tuple(step) != size:
                self.taps.append(cv2_resize_taps(size, tuple(step), device) if self.policy.kind == "official" else None)
                size = tuple(step)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.size + (3,):
            raise ValueError(f"expected images [B, {self.size[0]}, {self.size[1]}, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        exact = self.policy.kind == "official" and not x.is_floating_point()
        x = x.to(torch.int32) if exact else x.float()
        size, taps = self.size, iter(self.taps)
        for step in self.steps:
            if tuple(step) != size:
                step_taps = next(taps)
                if exact:
                    x = cv2_resize_linear_u8(x, step, step_taps)
                else:
                    x = F.interpolate(x, size=tuple(step), mode="bilinear", align_corners=False, antialias=False)
                size = tuple(step)
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous()


def state_row_view(state: StreamState, row: int) -> StreamState:
    """A batch-1 :class:`StreamState` whose buffers (and ``frames_seen``) are views of row
    ``row`` of ``state``: updates through either are seen by both (the engine keeps each
    camera's state as such a view into the graph's static state, so steady state needs no copy).
    """
    if not 0 <= row < state.batch_size:
        raise IndexError(f"row {row} outside batch {state.batch_size}")
    view = StreamState(1)
    view.frames_seen = state.frames_seen[row:row + 1]
    view.grid, view.input_size = state.grid, state.input_size
    view.conv_tails = [[t[row:row + 1] for t in layer] for layer in state.conv_tails]
    view.ssm_states = [[t[row:row + 1] for t in layer] for layer in state.ssm_states]
    return view


def _fits(src: StreamState, dst: StreamState) -> bool:
    if not src.is_allocated:
        return False
    if src.grid != dst.grid or src.input_size != dst.input_size or src.layout() != dst.layout():
        return False
    pairs = zip((t for layer in src.conv_tails + src.ssm_states for t in layer),
                (t for layer in dst.conv_tails + dst.ssm_states for t in layer))
    return all(a.dtype == b.dtype and a.shape[1:] == b.shape[1:] for a, b in pairs)


@torch.inference_mode()
def load_state_row(dst: StreamState, row: int, src: Optional[StreamState]) -> None:
    """Copy the batch-1 state ``src`` into row ``row`` of the allocated ``dst``, in place.

    ``src`` None, unallocated or without history loads a zero row (a fresh stream).
    """
    if not dst.is_allocated:
        raise ValueError("the destination state is not allocated")
    if src is not None and src.batch_size != 1:
        raise ValueError(f"expected a batch-1 state, got batch {src.batch_size}")
    if src is None or int(src.frames_seen[0]) == 0:     # no history: a zero row
        mask = torch.zeros(dst.batch_size, dtype=torch.bool)
        mask[row] = True
        dst.reset(mask)
        return
    if not _fits(src, dst):
        raise ValueError(f"state for grid {src.grid} / input {src.input_size} cannot join a batch of "
                         f"{dst.grid} / {dst.input_size}; reset the stream first")
    for kind in ("conv_tails", "ssm_states"):
        for d_layer, s_layer in zip(getattr(dst, kind), getattr(src, kind)):
            for d, s in zip(d_layer, s_layer):
                d[row].copy_(s[0], non_blocking=True)
    dst.frames_seen[row] = src.frames_seen[0]


def _partitions(model: torch.nn.Module, grid) -> Tuple:
    """The partition objects the model's Mamba layers use for ``grid`` (cached, shared)."""
    vss = getattr(getattr(model, "decode_head", None), "vs", None)
    if vss is None or grid is None:
        return ()
    return tuple(vss.partition(n, tuple(grid)) for n in range(len(vss.layers)))


class CudaGraphStreamer:
    """The whole streaming step of ``model`` for a fixed batch and input size, captured once.

    Args:
        model: a :class:`~tv3s_ros.model.tv3s.TV3S` in eval mode, on its device.
        batch, height, width: frames per step and their raw size (before preprocessing).
        dtype: compute precision (autocast; weights stay fp32, the SSM state and the
            residual stream are fp32 whatever the precision). fp16 needs CUDA.
        input_size: model input policy (see :func:`tv3s_ros.preprocess.parse_input_size`).
        output_resolution: ``input`` (logits resized to the raw frame size) or ``model``.
        postprocessor: turns logits into outputs (default: the model's palette, alpha 0.5).
        outputs: subset of :data:`~tv3s_ros.outputs.OUTPUT_NAMES` computed every step.
        keep_logits: also return the resized logits (``step()["logits"]``; tests, benchmarks).
        capture: ``auto`` (CUDA only), True, or False (eager step on the static buffers).
        warmup: eager steps before a capture (Triton compilation, cuBLAS handles, caches).

    The state is allocated by one eager step on a fresh state, then zeroed, before the first
    capture: the first frame already runs as a graph. :meth:`step` returns a dict of tensors
    that the next step overwrites (copy what you keep).
    """

    def __init__(self, model: torch.nn.Module, batch: int, height: int, width: int,
                 dtype: torch.dtype = torch.float32, *, input_size="official", output_resolution: str = "input",
                 postprocessor: Optional[Postprocessor] = None, outputs: Iterable[str] = (),
                 keep_logits: bool = False, capture: Union[str, bool, None] = "auto", warmup: int = 2):
        if getattr(model, "training", False):
            raise RuntimeError("TV3S is inference-only: call model.eval() first")
        self.model = model
        self.device = next(model.parameters()).device
        precision = {dt: name for name, dt in PRECISIONS.items()}.get(dtype)
        if precision is None:
            raise ValueError(f"dtype must be one of {tuple(PRECISIONS.values())}, got {dtype}")
        check_precision(precision, self.device)
        check_output_resolution(output_resolution)
        self.dtype = dtype
        self.capture = resolve_capture(capture, self.device)
        self.policy = parse_input_size(input_size)
        self.output_resolution = output_resolution
        cfg = model.cfg
        self.postprocessor = postprocessor or Postprocessor(int(cfg.num_classes), cfg.palette, 0.5, self.device)
        if _device_index(self.postprocessor.device) != _device_index(self.device):
            raise ValueError(f"postprocessor is on {self.postprocessor.device}, the model on {self.device}")
        self.outputs = check_outputs(outputs)
        self.keep_logits = bool(keep_logits)
        self.warmup = max(1, int(warmup))
        self.captures = 0          # graph (re)builds; counted in eager mode too
        self.batch = self.height = self.width = 0
        self.input: Optional[torch.Tensor] = None
        self.state: Optional[StreamState] = None
        self._pre: Optional[StaticPreprocess] = None
        self._graph = None
        self._step_out: Dict[str, torch.Tensor] = {}
        self._partitions: Tuple = ()
        self._finite: Optional[torch.Tensor] = None
        self.set_size(batch, height, width)

    # ------------------------------------------------------------------ configuration
    @property
    def graphed(self) -> bool:
        """True when steps replay a captured CUDA graph."""
        return self._graph is not None

    @property
    def key(self) -> Tuple[int, int, int]:
        return self.batch, self.height, self.width

    @property
    def model_input_size(self) -> Tuple[int, int]:
        return self._pre.output_size

    @property
    def finite(self) -> Optional[torch.Tensor]:
        """Bool ``[B]`` (device) of the last step: False where a row's state or logits hold NaN/Inf."""
        return self._finite

    @property
    def last_step(self) -> Dict[str, torch.Tensor]:
        """The last step's output tensors (graph-owned in capture mode)."""
        return self._step_out

    def set_size(self, batch: int, height: int, width: int) -> bool:
        """Switch to ``batch`` frames of ``height x width``: new input buffer, a new zero state
        (the Mamba grid changes with the size) and a new capture. False when unchanged."""
        batch, height, width = int(batch), int(height), int(width)
        if batch < 1 or height < 1 or width < 1:
            raise ValueError(f"batch and size must be positive, got {batch} x {height}x{width}")
        if (batch, height, width) == self.key:
            return False
        self._release()
        self.batch, self.height, self.width = batch, height, width
        self._pre = StaticPreprocess(self.model.cfg, self.policy, height, width, self.device)
        self.input = torch.zeros(batch, height, width, 3, dtype=torch.uint8, device=self.device)
        self.state = None
        self._build()
        return True

    def set_outputs(self, outputs: Iterable[str]) -> bool:
        """Compute ``outputs`` from now on (re-capture, state kept). False when unchanged."""
        outputs = check_outputs(outputs)
        if outputs == self.outputs:
            return False
        self._release()
        self.outputs = outputs
        self._build()
        return True

    # ------------------------------------------------------------------ streaming
    def load_input(self, images) -> None:
        """Copy uint8 ``[B, H, W, 3]`` images (torch on any device, or numpy) into ``input``."""
        src = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(src, torch.Tensor) or src.dtype != torch.uint8 or tuple(src.shape) != tuple(self.input.shape):
            raise ValueError(f"expected uint8 images {tuple(self.input.shape)}, got "
                             f"{getattr(src, 'dtype', type(src).__name__)} {tuple(getattr(src, 'shape', ()))}")
        with torch.inference_mode():
            self.input.copy_(src, non_blocking=src.device.type == "cuda" or src.is_pinned())

    def step(self, images=None) -> Dict[str, torch.Tensor]:
        """Run one frame for every row (after copying ``images`` into ``input`` if given).

        Returns the tensors dict (``labels``, ``confidence``, ``color``, ``overlay``, ``counts``,
        ``conf_sum`` for the outputs, ``logits`` with ``keep_logits``), valid until the next step.
        Every row's ``frames_seen`` advances by one.
        """
        if images is not None:
            self.load_input(images)
        with torch.inference_mode(), device_context(self.device):
            if self._graph is not None:
                self._graph.replay()
                self.state.advance(1)   # the Python bookkeeping inside forward_stream is not replayed
            else:
                self._step_out = self._body(self.state)
        return self._step_out

    def reset(self, rows: Union[None, int, Sequence[int], torch.Tensor] = None) -> None:
        """Zero the state rows ``rows`` (None: all) in place: those streams start afresh."""
        mask = torch.zeros(self.batch, dtype=torch.bool)
        if rows is None:
            mask[:] = True
        elif isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            mask = rows.to("cpu").reshape(-1).clone()
        else:
            mask[torch.as_tensor(rows, dtype=torch.long).reshape(-1)] = True
        with torch.inference_mode():
            self.state.reset(mask)

    def row_state(self, row: int) -> StreamState:
        """Batch-1 view of one row of the static state (see :func:`state_row_view`)."""
        return state_row_view(self.state, row)

    # ------------------------------------------------------------------ internals
    def _body(self, state: StreamState) -> Dict[str, torch.Tensor]:
        """The step itself (eager, or being captured): reads ``input``, updates ``state``."""
        x = self._pre(self.input)
        with autocast(self.device, self.dtype, cache=False):
            logits, _ = self.model.forward_stream(x, state)
        # Per-row NaN/Inf flag of the carried state and the logits, computed inside the step
        # (captured with it): the caller reads it with the results, no extra synchronisation.
        self._finite = state.finite_rows() & torch.isfinite(logits).reshape(logits.shape[0], -1).all(1)
        out: Dict[str, torch.Tensor] = {}
        if not (self.outputs or self.keep_logits):
            return out
        if self.output_resolution == "input":
            logits = logits_to_size(logits, (self.height, self.width))
        if self.outputs:
            out.update(self.postprocessor.device_outputs(logits, self.input, self.outputs))
        if self.keep_logits:
            out["logits"] = logits
        return out

    def _side_stream(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext(), None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(stream), stream

    @torch.inference_mode()
    def _build(self) -> None:
        """Allocate the state if needed, warm up, capture (or stay eager)."""
        with device_context(self.device):   # warm-up and capture on the model's GPU
            self._build_on_device()

    def _build_on_device(self) -> None:
        runs = self.warmup
        context, stream = self._side_stream()
        with context:
            if self.state is None:
                # Sizing the state takes one forward (buffer shapes and dtypes are whatever the
                # head allocates for this input and precision); it doubles as the first warm-up.
                state = self.model.new_state(self.batch)
                self._body(state)
                state.reset()
                self.state = state
                runs -= 1
            if self.capture and runs > 0:
                scratch = self.state.clone()   # warm-up must not touch the live state
                for _ in range(runs):
                    self._body(scratch)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        # The window partitions (and their permutations on the device, which the graph reads by
        # address) live in lru_caches that drop them after 64 other grids: hold the very objects
        # the step uses for as long as the step exists.
        self._partitions = _partitions(self.model, self.state.grid)
        if self.capture:
            self._capture()
        self.captures += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        seen = self.state.frames_seen.clone()
        try:
            # thread_local: callback threads of the node (decoding, publishing) may keep using
            # CUDA while this thread captures.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                step_out = self._body(self.state)
        except Exception as err:   # noqa: BLE001 - OOM, Triton's CompilationError (not a RuntimeError), ...
            # The same step just ran eagerly in the warm-up, so this is the capture itself.
            raise GraphCaptureError(f"CUDA graph capture failed: {err}") from err
        finally:
            # Capture ran forward_stream's Python bookkeeping (frames_seen += 1) but no kernel.
            self.state.frames_seen.copy_(seen)
        self._graph, self._step_out = graph, step_out

    def _release(self) -> None:
        self._graph = None
        self._step_out = {}


class StreamerPool:
    """Streamers per ``(batch, height, width)`` and which named stream lives in which row.

    Each stream's state is kept, in the caller's ``states`` dict, as a row view of a
    streamer's static state (:func:`state_row_view`). A batch with the same streams as last
    time therefore runs with no state copy at all; a stream joining a different batch is
    copied into a free row once, and a stream pushed out of its row gets a standalone copy.
    A stream is "at home" only while ``states[name]`` is its row view, so a caller that
    replaces a state (fresh stream, eager batch) simply takes the stream out of its row.

    Args:
        make: ``make(batch, height, width, outputs) -> CudaGraphStreamer``.
        max_streamers: graphs kept (each holds its own memory pool); the least recently used
            one is dropped beyond that.
    """

    def __init__(self, make, max_streamers: int = 4):
        if max_streamers < 1:
            raise ValueError(f"max_streamers must be >= 1, got {max_streamers}")
        self._make = make
        self.max_streamers = int(max_streamers)
        # key -> (streamer, occupants: per row (name, view) or None)
        self._entries: "Dict[Tuple[int, int, int], Tuple[CudaGraphStreamer, list]]" = {}
        self.copies_in = 0     # states copied into a row (tests and stats)

    @property
    def streamers(self) -> Dict[Tuple[int, int, int], CudaGraphStreamer]:
        return {key: entry[0] for key, entry in self._entries.items()}

    def acquire(self, names: Sequence[str], states: Dict[str, StreamState], height: int, width: int,
                outputs: AbstractSet[str] = frozenset()) -> Tuple[CudaGraphStreamer, list]:
        """The streamer for ``len(names)`` frames of ``height x width`` with every stream's state
        in a row; returns ``(streamer, rows)`` (``rows[i]`` holds ``names[i]``).

        ``states[name]`` may be missing (fresh stream), standalone, or a row view anywhere;
        afterwards it is the view of its row here. ``outputs`` are added to the streamer's
        (re-capture only when they grow, so alternating requests cost one capture).
        """
        if len(set(names)) != len(names):
            raise ValueError(f"a batch holds each stream once, got {list(names)}")
        key = (len(names), int(height), int(width))
        entry = self._entries.pop(key, None)
        if entry is None:
            self._evict(states, keep=self.max_streamers - 1)
            entry = (self._make(*key, frozenset(outputs)), [None] * key[0])
        self._entries[key] = entry        # most recently used last
        streamer, occupants = entry
        if not set(outputs) <= streamer.outputs:
            streamer.set_outputs(streamer.outputs | set(outputs))

        rows: Dict[str, int] = {}
        for row, occupant in enumerate(occupants):
            if occupant is not None and occupant[0] in names and states.get(occupant[0]) is occupant[1]:
                rows[occupant[0]] = row
        free = [row for row in range(key[0]) if row not in rows.values()]
        for name in names:
            if name in rows:
                continue
            row = free.pop(0)
            self._detach(occupants[row], states)
            load_state_row(streamer.state, row, states.get(name))
            self.copies_in += 1
            view = state_row_view(streamer.state, row)
            occupants[row] = (name, view)
            states[name] = view
            rows[name] = row
        return streamer, [rows[name] for name in names]

    def forget(self, name: str) -> None:
        """Free ``name``'s row (its state is dropped by the caller)."""
        for _, occupants in self._entries.values():
            for row, occupant in enumerate(occupants):
                if occupant is not None and occupant[0] == name:
                    occupants[row] = None

    def clear(self, states: Dict[str, StreamState]) -> None:
        """Drop every streamer; streams living in rows get standalone copies in ``states``."""
        self._evict(states, keep=0)

    @staticmethod
    def _detach(occupant, states: Dict[str, StreamState]) -> None:
        if occupant is not None and states.get(occupant[0]) is occupant[1]:
            with torch.inference_mode():
                states[occupant[0]] = occupant[1].clone()

    def _evict(self, states: Dict[str, StreamState], keep: int) -> None:
        while len(self._entries) > keep:
            key = next(iter(self._entries))
            _, occupants = self._entries.pop(key)
            for occupant in occupants:
                self._detach(occupant, states)
