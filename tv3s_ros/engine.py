"""The streaming segmentation engine shared by the node, the bag tool and the benchmarks.

One :class:`Engine` owns the TV3S model, the device and precision, one recurrent
:class:`~tv3s_ros.model.state.StreamState` per camera and the reset policy
(:class:`~tv3s_ros.streams.StreamManager`). :meth:`Engine.process` takes decoded frames of
any number of cameras and returns, per frame, the requested uint8 images and the class
coverage as numpy arrays:

    frames -> reset policy per camera -> group by model input size -> stack the group's
    states -> upload uint8 (pinned, async on CUDA) -> preprocess -> forward_stream ->
    logits to the input (or model) resolution -> postprocess -> numpy

With CUDA graphs (``graphs``: on by default on CUDA) a group of cameras with one raw frame
size runs as one replay of a :class:`~tv3s_ros.model.graphs.GraphedStreamer`: the frames are
copied into its static input, every camera's state lives in a row of its static state (no
copy while the batch stays the same), and only the requested uint8 images and the coverage
tables come back, after one synchronisation. Groups mixing raw sizes run eagerly.

ROS-free: callers convert messages with :mod:`tv3s_ros.image_codec` (or :meth:`Engine.decode_msg`,
which decodes jpeg on the GPU when it can) and publish the results themselves.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from tv3s_ros.gpu_decode import ImageDecoder, resolve_gpu_jpeg
from tv3s_ros.image_codec import ImageDecodeError
from tv3s_ros.model import scan
from tv3s_ros.model.graphs import GraphCaptureError, GraphedStreamer, StreamerPool, device_context
from tv3s_ros.model.mamba import Mamba
from tv3s_ros.postprocess import OUTPUT_KINDS, Postprocessor, label_dtype
from tv3s_ros.preprocess import (check_geometry, logits_to_size, model_input_size, parse_input_size,
                                 to_model_input)
from tv3s_ros.streams import ResetPolicy, StreamManager, StreamStats

__all__ = ["FrameInput", "FrameOutput", "Engine", "OUTPUT_KINDS", "PRECISIONS", "OUTPUT_RESOLUTIONS",
           "GRAPH_MODES", "FrameRejected", "FrameErrors", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_ASPECT"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUTPUT_RESOLUTIONS = ("input", "model")
GRAPH_MODES = ("auto", "on", "off", "no_capture")
_PINNED_CACHE_SIZE = 8  # upload buffers kept per (batch, height, width)
_MAX_GRAPHS = 4         # captured (batch, height, width) combinations kept; each has a memory pool
DEFAULT_MAX_PIXELS = 40_000_000   # above 8K UHD (33.2 MP); an 8000x8000 png bomb (64 MP) is refused
DEFAULT_MAX_ASPECT = 16.0         # wider than any real camera or stitched panorama strip


class FrameRejected(ImageDecodeError):
    """A decoded frame whose geometry the model must not see (``reason`` ``bad_size``)."""


class FrameErrors(RuntimeError):
    """Some frames of a :meth:`Engine.process` call failed inside the model; the others did not.

    ``results`` holds one entry per input frame (None for a failed one), ``errors`` maps the
    index of each failed frame to its exception. The failed cameras start afresh at their
    next frame (reset reason ``error``).
    """

    def __init__(self, results, errors):
        self.results, self.errors = results, errors
        detail = "; ".join(f"frame {i}: {type(e).__name__}: {str(e)[:200]}" for i, e in sorted(errors.items()))
        super().__init__(f"{len(errors)} of {len(results)} frame(s) failed: {detail}")

Outputs = Union[None, str, Iterable[str], Mapping[str, Iterable[str]]]


@dataclass
class FrameInput:
    """One decoded camera frame.

    Attributes:
        camera: stream name; each camera has its own recurrent state.
        image: ``[H, W, 3]`` uint8 RGB (numpy, any strides; or a torch tensor).
        stamp_ns: header stamp in nanoseconds (drives the time-based resets).
        frame_id: header frame_id.
        received_s: ``time.monotonic()`` when the message arrived; latency is measured from
            it (None: from the start of :meth:`Engine.process`).
    """

    camera: str
    image: Any
    stamp_ns: int
    frame_id: str = ""
    received_s: Optional[float] = None


@dataclass
class FrameOutput:
    """Results for one frame; outputs that were not requested are None.

    ``labels`` ``[h, w]`` uint8 (uint16 past 255 classes), ``color``/``overlay`` ``[h, w, 3]``
    uint8 RGB, ``confidence`` ``[h, w]`` uint8; coverage: ``class_ids`` (uint16, ascending),
    ``pixel_count`` (uint32), ``fraction`` (float32, sums to 1), ``mean_confidence``
    (float32, 0..1). ``width``/``height`` are the label image's size. ``model_time_s`` is the
    engine time of the batch this frame ran in, ``latency_s`` receipt to result.
    """

    camera: str
    stamp_ns: int
    frame_id: str
    labels: Optional[np.ndarray]
    color: Optional[np.ndarray]
    overlay: Optional[np.ndarray]
    confidence: Optional[np.ndarray]
    class_ids: Optional[np.ndarray]
    pixel_count: Optional[np.ndarray]
    fraction: Optional[np.ndarray]
    mean_confidence: Optional[np.ndarray]
    width: int
    height: int
    num_classes: int
    frames_since_reset: int
    reset_reason: str
    model_time_s: float
    latency_s: float
    skipped_frames: int = 0   # frames noted with Engine.note_skipped since this camera's previous result


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


def select_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available "
                               "(torch built without CUDA, or no GPU visible); use device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``fp32``/``fp16``/``bf16`` on ``device`` (clear error if unsupported)."""
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cpu" and key == "fp16":
        raise ValueError("precision fp16 is not supported on CPU; use fp32 or bf16 there")
    if device.type == "cuda" and key == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                         "use fp16 or fp32")
    return PRECISIONS[key]


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


class EngineStats(dict):
    """:meth:`Engine.stats`: per-camera :class:`StreamStats` by name (a plain mapping, as ever),
    plus ``backends``, the engine-wide key/values of what serves the scan kernels (see
    :func:`tv3s_ros.model.scan.backend_status`): a kernel fallback is visible here, not only in the log."""

    def __init__(self, streams: Mapping[str, StreamStats], backends: Mapping[str, str]):
        super().__init__(streams)
        self.backends = dict(backends)


class Engine:
    """Streaming TV3S inference for any number of cameras, one state per camera.

    Build it with :meth:`from_settings` (preset, weights, ...) or directly from a model in
    eval mode with its weights already loaded. :meth:`process` is not meant to be called
    from two threads at once; :meth:`reset` and :meth:`note_skipped` may be called from any
    thread.
    """

    def __init__(self, model: torch.nn.Module, *, device: Union[str, torch.device] = "auto",
                 precision: str = "fp32", input_size: Any = "official", output_resolution: str = "input",
                 overlay_alpha: float = 0.5, reset_policy: Optional[ResetPolicy] = None,
                 class_names: Optional[Sequence[str]] = None, palette=None,
                 weights: Optional[str] = None, graphs: Union[str, bool] = "auto",
                 gpu_jpeg: Union[str, bool] = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect: float = DEFAULT_MAX_ASPECT, check_geometry: bool = True):
        self.device = select_device(device)
        self.precision = str(precision).strip().lower()
        self._autocast_dtype = check_precision(self.precision, self.device)
        self.graphs = resolve_graphs(graphs, self.device)
        if output_resolution not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output_resolution must be one of {OUTPUT_RESOLUTIONS}, got {output_resolution!r}")
        self.output_resolution = output_resolution
        self.input_policy = parse_input_size(input_size)
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        self.num_classes = int(self.cfg.num_classes)
        self.class_names = list(class_names if class_names else self.cfg.class_names) or \
            [f"class_{i}" for i in range(self.num_classes)]
        self.postprocessor = Postprocessor(self.num_classes, palette if palette is not None else self.cfg.palette,
                                           overlay_alpha, self.device)
        self.palette = self.postprocessor.palette
        self.label_dtype = label_dtype(self.num_classes)
        self.streams = StreamManager(reset_policy or ResetPolicy())
        self.weights = weights
        self.preset = getattr(self.cfg, "name", "")
        self._states: Dict[str, Any] = {}
        self._pinned: "OrderedDict[Tuple[int, int, int], Tuple[torch.Tensor, Any]]" = OrderedDict()
        self._pool = StreamerPool(self._make_streamer, _MAX_GRAPHS) if self.graphs != "off" else None
        # Frame limits (0 disables one): checked by decode_msg (compressed sizes before
        # decoding) and again in process(). check_geometry=False lets any frame reach the
        # model (tests of the per-camera retry).
        self.max_pixels = int(max_pixels or 0)
        self.max_aspect = float(max_aspect or 0.0)
        self.check_geometry = bool(check_geometry)
        self.decoder = ImageDecoder(self.device, gpu_jpeg, max_pixels=self.max_pixels or None,
                                    check=self.check_frame_size)
        self._check_kernels()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, model: Any = "tv3s_b1_cityscapes", weights: Optional[str] = None,
                      allow_random_weights: bool = False, device: str = "auto", precision: str = "fp32",
                      input_size: Any = "official", output_resolution: str = "input",
                      overlay_alpha: float = 0.5, max_gap_s: float = 1.0, max_state_frames: int = 0,
                      *, model_overrides: Optional[Mapping[str, Any]] = None,
                      allow_pickle: bool = False, graphs: Union[str, bool] = "auto",
                      gpu_jpeg: Union[str, bool] = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                      max_aspect: float = DEFAULT_MAX_ASPECT) -> "Engine":
        """Build the model, load its weights and validate every setting before any frame.

        Args:
            model: preset name or YAML path (or a ``ModelConfig`` / built model).
            weights: checkpoint path. Without one, the weights the preset ships (its
                ``weights`` field, e.g. ``tv3s_demo``); a preset that ships none refuses to start
                unless ``allow_random_weights`` (then a loud warning: output is meaningless).
            model_overrides: ``ModelConfig`` fields passed to ``build_model`` (tests, custom models).
            allow_pickle: let ``load_checkpoint`` unpickle legacy files (trusted files only).
            graphs: ``auto`` (CUDA graphs on CUDA, eager on CPU), ``on``, ``off`` or ``no_capture``.
            gpu_jpeg: ``auto`` (decode jpeg on the GPU when torchvision can), true (required) or false.
            max_pixels, max_aspect: frames above either are refused (``bad_size``); 0 disables.
        """
        from tv3s_ros.model import build_model, load_checkpoint

        # Cheap checks first: a bad setting should not cost a model build.
        dev = select_device(device)
        check_precision(precision, dev)
        resolve_graphs(graphs, dev)
        resolve_gpu_jpeg(gpu_jpeg, dev)
        policy = ResetPolicy(max_gap_s=max_gap_s, max_state_frames=max_state_frames)
        weights = os.fspath(weights) if weights else None
        origin = "given"
        if weights is None:  # an explicit checkpoint wins; else the one the preset ships, if any
            weights = _shipped_weights(model, model_overrides)
            origin = "shipped with the preset"
        if weights is None and not allow_random_weights:
            raise ValueError("no weights given: set weights to a TV3S checkpoint (see model/README.md), "
                             "or allow_random_weights=true for tests only")
        if weights is not None and not os.path.isfile(os.path.expanduser(weights)):
            raise FileNotFoundError(f"weights file not found: {weights}")

        if isinstance(model, torch.nn.Module):
            if model_overrides:
                raise ValueError("model_overrides cannot be applied to an already built model")
            net = model
        else:
            net = build_model(model, **dict(model_overrides or {}))
        class_names = palette = None
        if weights is not None:
            meta = load_checkpoint(net, os.path.expanduser(weights), allow_pickle=allow_pickle)
            class_names, palette = meta.class_names or None, meta.palette or None
            log.info("weights: %s (%s)", weights, origin)
        else:
            log.warning("!" * 72)
            log.warning("RUNNING WITH RANDOM WEIGHTS (allow_random_weights): the segmentation output is "
                        "MEANINGLESS. Set weights to a TV3S checkpoint for real use.")
            log.warning("!" * 72)
        return cls(net, device=dev, precision=precision, input_size=input_size,
                   output_resolution=output_resolution, overlay_alpha=overlay_alpha, reset_policy=policy,
                   class_names=class_names, palette=palette, weights=weights, graphs=graphs,
                   gpu_jpeg=gpu_jpeg, max_pixels=max_pixels, max_aspect=max_aspect)

    @property
    def shipped_weights(self) -> bool:
        """True when the weights are the ones the preset ships (none were given)."""
        return self.weights is not None and self.weights == getattr(self.cfg, "weights", None)

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    # ------------------------------------------------------------------ stream control
    def reset(self, camera: Optional[str] = None, reason: str = "service") -> List[str]:
        """Reset ``camera`` (None: all) at its next frame; returns the cameras affected."""
        return self.streams.request_reset(camera, reason)

    def note_skipped(self, camera: str, stamp_ns: int) -> None:
        """Count a frame dropped unprocessed (live mode); it never resets the state by itself."""
        self.streams.note_skipped(camera, stamp_ns)

    def forget(self, camera: str) -> None:
        """Drop a camera's state and counters (its next frame starts afresh)."""
        self._states.pop(camera, None)
        if self._pool is not None:
            self._pool.forget(camera)
        self.streams.forget(camera)

    def stats(self) -> EngineStats:
        """Per-camera counters (processed, skipped, resets by reason, frames_since_reset), and in
        ``.backends`` which backend serves each scan kernel (and any fallback, with its reason)."""
        return EngineStats(self.streams.all_stats(), scan.backend_status())

    def _check_kernels(self) -> None:
        """Start-up self-check of every scan kernel variant this engine will launch (a no-op
        unless Triton serves them): a broken variant falls back now, before any capture."""
        mixer = next((m for m in self.model.modules() if isinstance(m, Mamba)), None)
        if mixer is None:
            return
        dtype = self._autocast_dtype or torch.float32
        with device_context(self.device):
            scan.self_check(self.device, dtype, d_inner=mixer.d_inner, d_state=mixer.d_state,
                            d_conv=mixer.d_conv, dt_rank=mixer.dt_rank)

    def state(self, camera: str):
        """The camera's current ``StreamState`` (None before its first frame).

        With graphs this is a live view of the camera's row in a static state: clone it to keep
        a snapshot.
        """
        return self._states.get(camera)

    def decode_msg(self, msg, allow_16bit: bool = False):
        """Decode an Image / CompressedImage message for :meth:`process`: jpeg on the engine's
        GPU when enabled (a uint8 ``[H, W, 3]`` CUDA tensor), else numpy via ``image_codec``.

        Raises ``ImageDecodeError`` (``FrameRejected`` for a frame the model must not see:
        ``max_pixels``, read from compressed headers before decoding, ``max_aspect``, too small
        a model input). 16-bit encodings only with ``allow_16bit`` (else most likely depth)."""
        return self.decoder.decode_msg(msg, allow_16bit=allow_16bit)

    def check_frame_size(self, height: int, width: int) -> None:
        """Raise :class:`FrameRejected` (reason ``bad_size``) for a frame the model must not see."""
        if not self.check_geometry:
            return
        problem = check_geometry(self.input_policy, self.cfg, height, width, self.max_pixels, self.max_aspect)
        if problem:
            raise FrameRejected(problem, reason="bad_size")

    def model_input_size(self, height: int, width: int) -> Tuple[int, int]:
        """Network input size for a ``height`` x ``width`` frame under the input policy."""
        return model_input_size(self.input_policy, self.cfg, height, width)

    # ------------------------------------------------------------------ processing
    def process(self, frames: Sequence[FrameInput], outputs: Outputs = None) -> List[FrameOutput]:
        """Run the model on ``frames`` and return one :class:`FrameOutput` per frame, in order.

        Cameras whose frames share a model input size run as one batch with their states
        stacked. Several frames of one camera are processed one after another, in order.

        Args:
            outputs: which of ``labels``, ``color``, ``overlay``, ``confidence``, ``coverage``
                to return: one collection for every frame, or a mapping camera -> collection
                (cameras missing from it get none: the state still advances). None: all.
        """
        start = time.monotonic()
        frames = list(frames)
        wanted = [self._outputs_for(f.camera, outputs) for f in frames]
        images = [_check_image(f) for f in frames]
        for f, image in zip(frames, images):      # before any state changes
            try:
                self.check_frame_size(*image.shape[:2])
            except FrameRejected as err:
                raise FrameRejected(f"camera {f.camera!r}: {err}", reason="bad_size") from None
        results: List[Optional[FrameOutput]] = [None] * len(frames)
        errors: Dict[int, BaseException] = {}
        # Triton launches and graph capture use the current CUDA device, not the tensors': make
        # the engine's current (cuda:1 while another thread or library left cuda:0 current).
        with torch.inference_mode(), device_context(self.device):
            for indices in _rounds(frames):
                self._process_round(frames, images, wanted, indices, results, start, errors)
        if errors:
            raise FrameErrors(results, errors)
        return results  # type: ignore[return-value]

    def _process_round(self, frames, images, wanted, indices, results, start, errors) -> None:
        """Frames of distinct cameras: reset policy, then one batch per model input size."""
        observations = {}
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i in indices:
            f, (h, w) = frames[i], images[i].shape[:2]
            obs = self.streams.observe_frame(f.camera, f.stamp_ns, h, w, f.frame_id)
            observations[i] = obs
            state = self._states.get(f.camera)
            if state is None or obs.reason in ("first_frame", "size_changed"):
                # A fresh state: buffers get sized for the new input at its first forward.
                self._states[f.camera] = self.model.new_state(1)
            elif obs.reason:
                state.reset()
            groups.setdefault(self.model_input_size(h, w), []).append(i)

        for members in groups.values():
            t0 = time.perf_counter()
            post = self._run_isolated(frames, images, wanted, members, errors)
            self._check_finite(frames, post)
            model_time = time.perf_counter() - t0
            done = time.monotonic()
            for i in members:
                if i not in post:
                    continue
                f, obs, res = frames[i], observations[i], post[i][0]
                received = f.received_s if f.received_s is not None else start
                results[i] = FrameOutput(
                    camera=f.camera, stamp_ns=int(f.stamp_ns), frame_id=f.frame_id,
                    labels=res.labels, color=res.color, overlay=res.overlay, confidence=res.confidence,
                    class_ids=res.class_ids, pixel_count=res.pixel_count, fraction=res.fraction,
                    mean_confidence=res.mean_confidence, width=res.width, height=res.height,
                    num_classes=self.num_classes, frames_since_reset=obs.frames_since_reset,
                    reset_reason=obs.reason, model_time_s=model_time, latency_s=max(0.0, done - received),
                    skipped_frames=obs.skipped_frames)

    def _run_isolated(self, frames, images, wanted, members, errors):
        """:meth:`_run_group`; when the batch fails, its cameras again one by one, so that
        only the frame that fails on its own is lost (recorded in ``errors``)."""
        try:
            return self._run_group(frames, images, wanted, members)
        except Exception as err:  # noqa: BLE001 - retried per camera below
            if len(members) == 1:
                self._failed(frames, members[0], err, errors)
                return {}
            log.warning("batch of %d cameras failed (%s: %s); retrying them one by one",
                        len(members), type(err).__name__, str(err)[:200])
        post = {}
        for i in members:
            try:
                post.update(self._run_group(frames, images, wanted, [i]))
            except Exception as err:  # noqa: BLE001 - only this camera loses its frame
                self._failed(frames, i, err, errors)
        return post

    def _failed(self, frames, i, err, errors) -> None:
        # The forward may have updated part of the state in place: this camera starts afresh.
        camera = frames[i].camera
        errors[i] = err
        self._states[camera] = self.model.new_state(1)
        self.streams.request_reset(camera, "error")

    def _check_finite(self, frames, post) -> None:
        """Reset (at their next frame) the cameras whose state or logits went NaN/Inf.

        The flags were computed on the device with the step; the results are already on the
        host, so reading them costs no extra synchronisation on the hot path."""
        flags = {}
        for i, (_, flag) in post.items():
            flags.setdefault(id(flag[0]), (flag[0], []))[1].append((i, flag[1]))
        for tensor, rows in flags.values():
            host = tensor.cpu().tolist()
            for i, row in rows:
                if not host[row]:
                    camera = frames[i].camera
                    log.warning("camera %s: non-finite values (NaN/Inf) in its state or output; "
                                "resetting it at its next frame", camera)
                    self.streams.note_non_finite(camera)

    def _run_group(self, frames, images, wanted, members):
        """One forward pass for frames with equal model input size; returns {index: result}."""
        if self._pool is not None and len({tuple(images[i].shape[:2]) for i in members}) == 1:
            h, w = images[members[0]].shape[:2]
            products = set().union(*(wanted[i] for i in members))
            acquired = self._acquire([frames[i].camera for i in members], h, w, products)
            if acquired is not None:
                return self._run_group_graphed(images, wanted, members, products, *acquired)
        return self._run_group_eager(frames, images, wanted, members)

    def _acquire(self, cameras, height, width, products):
        """``(streamer, rows)`` for the group, or None when capturing failed (eager from then on)."""
        try:
            return self._pool.acquire(cameras, self._states, height, width, products)
        except GraphCaptureError as err:
            # Only a failed capture turns graphs off; a frame that fails the eager warm-up
            # step is that frame's problem (the caller retries camera by camera).
            if self.graphs != "on":
                raise
            # A capture that fails (an op that cannot be captured, out of memory) must not stop
            # the node: run eagerly from now on, with the states taken out of the rows.
            log.warning("CUDA graph capture failed (%s); continuing without graphs", err)
            self._pool.clear(self._states)
            self._pool, self.graphs = None, "off"
            return None

    def _run_group_graphed(self, images, wanted, members, products, streamer, rows):
        """Frames of one raw size: one step of the group's GraphedStreamer."""
        h, w = images[members[0]].shape[:2]
        row_images: List[Any] = [None] * len(members)
        row_wanted: List[Set[str]] = [set() for _ in members]
        for pos, i in enumerate(members):
            row_images[rows[pos]] = images[i]
            row_wanted[rows[pos]] = wanted[i]
        self._upload_into(streamer.input, row_images)
        outs = streamer.step()
        size = (h, w) if self.output_resolution == "input" else streamer.model_input_size
        results = self.postprocessor.to_results(outs, row_wanted, *size)
        if self.device.type == "cuda" and not products:
            torch.cuda.current_stream(self.device).synchronize()   # model time covers the GPU work
        # The finite flag is graph-owned: the next step overwrites it, so keep a copy.
        finite = streamer.finite.clone()
        return {i: (results[rows[pos]], (finite, rows[pos])) for pos, i in enumerate(members)}

    def _make_streamer(self, batch: int, height: int, width: int, products) -> GraphedStreamer:
        return GraphedStreamer(self.model, batch, height, width, self._autocast_dtype,
                               input_size=self.input_policy, output_resolution=self.output_resolution,
                               postprocessor=self.postprocessor, products=products,
                               capture=self.graphs == "on")

    def _run_group_eager(self, frames, images, wanted, members):
        """Stack the states, preprocess per raw size, forward, split the states again."""
        cameras = [frames[i].camera for i in members]
        # Frames of one raw size are uploaded and preprocessed together.
        by_size: Dict[Tuple[int, int], List[int]] = {}
        for pos, i in enumerate(members):
            by_size.setdefault(tuple(images[i].shape[:2]), []).append(pos)
        uploads, inputs = {}, []
        for size, positions in by_size.items():
            uploads[size] = self._upload([images[members[p]] for p in positions])
            inputs.append(to_model_input(uploads[size], self.cfg, self.input_policy))
        order = [p for positions in by_size.values() for p in positions]   # batch row -> member position
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)

        if len(members) == 1:
            state = self._states[cameras[0]]
        else:
            state = type(self._states[cameras[0]]).stack([self._states[cameras[p]] for p in order])
        with self._autocast():
            logits, state = self.model.forward_stream(x, state)
        # One device-side NaN/Inf flag per batch row, read with the results (see _check_finite).
        finite = state.finite_rows() & torch.isfinite(logits).reshape(logits.shape[0], -1).all(1)
        if len(members) > 1:
            for row, p in enumerate(order):
                self._states[cameras[p]] = state.select([row])
        else:
            self._states[cameras[0]] = state

        post = {}
        row = 0
        for size, positions in by_size.items():
            part = logits[row:row + len(positions)]
            row += len(positions)
            if self.output_resolution == "input":
                part = logits_to_size(part, size)
            outs = self.postprocessor(part, uploads[size], [wanted[members[p]] for p in positions])
            for k, (p, res) in enumerate(zip(positions, outs)):
                post[members[p]] = (res, (finite, row - len(positions) + k))
        if self.device.type == "cuda" and not any(wanted[i] for i in members):
            torch.cuda.current_stream(self.device).synchronize()   # model time covers the GPU work
        return post

    def _autocast(self):
        if self._autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def _upload(self, images: List[Any]) -> torch.Tensor:
        """Stack uint8 ``[H, W, 3]`` images into one ``[B, H, W, 3]`` tensor on the device."""
        if all(isinstance(im, torch.Tensor) for im in images):
            return torch.stack([im.to(self.device) for im in images])
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack([np.asarray(im) for im in images]))
        h, w = images[0].shape[:2]
        buf, event = self._pinned_buffer((len(images), h, w))
        if event is not None:
            event.synchronize()      # the previous copy out of this buffer must be finished
        host = buf.numpy()
        for j, im in enumerate(images):
            host[j] = im.cpu().numpy() if isinstance(im, torch.Tensor) else im
        out = buf.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._pinned[(len(images), h, w)] = (buf, done)
        return out

    def _upload_into(self, dst: torch.Tensor, images: List[Any]) -> None:
        """Copy uint8 ``[H, W, 3]`` images into the rows of the static ``dst [B, H, W, 3]``.

        Host images go through one reused pinned buffer and one async copy; device tensors
        (GPU-decoded jpeg) are copied on the device.
        """
        on_host = [j for j, im in enumerate(images)
                   if not (isinstance(im, torch.Tensor) and im.device.type == "cuda")]
        for j, im in enumerate(images):
            if j not in on_host:
                dst[j].copy_(im, non_blocking=True)
        if not on_host:
            return
        if self.device.type != "cuda":
            for j in on_host:
                dst[j].copy_(_host_tensor(images[j]))
            return
        b, h, w = dst.shape[:3]
        buf, event = self._pinned_buffer((b, h, w))
        if event is not None:
            event.synchronize()      # the previous copy out of this buffer must be finished
        host = buf.numpy()
        for j in on_host:
            im = images[j]
            host[j] = im.numpy() if isinstance(im, torch.Tensor) else im
        if len(on_host) == b:
            dst.copy_(buf, non_blocking=True)
        else:
            for j in on_host:
                dst[j].copy_(buf[j], non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._pinned[(b, h, w)] = (buf, done)

    def _pinned_buffer(self, shape: Tuple[int, int, int]):
        entry = self._pinned.pop(shape, None)
        if entry is None:
            entry = (torch.empty(shape + (3,), dtype=torch.uint8, pin_memory=True), None)
        self._pinned[shape] = entry
        while len(self._pinned) > _PINNED_CACHE_SIZE:
            _, (_, old_event) = self._pinned.popitem(last=False)
            if old_event is not None:
                old_event.synchronize()
        return entry

    def _outputs_for(self, camera: str, outputs: Outputs) -> Set[str]:
        if outputs is None:
            chosen: Iterable[str] = OUTPUT_KINDS
        elif isinstance(outputs, str):
            chosen = (outputs,)
        elif isinstance(outputs, Mapping):
            chosen = outputs.get(camera, ())
            chosen = (chosen,) if isinstance(chosen, str) else chosen
        else:
            chosen = outputs
        chosen = set(chosen)
        unknown = chosen - set(OUTPUT_KINDS)
        if unknown:
            raise ValueError(f"unknown output(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}")
        return chosen


def _check_image(frame: FrameInput):
    image = frame.image
    if isinstance(image, torch.Tensor):
        ok = image.dtype == torch.uint8
    else:
        image = np.asarray(image)
        ok = image.dtype == np.uint8
    if not ok or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"camera {frame.camera!r}: image must be [H, W, 3] uint8 RGB, "
                         f"got {tuple(image.shape)} {image.dtype}")
    return image


def _host_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def _rounds(frames: Sequence[FrameInput]) -> List[List[int]]:
    """Split frame indices into rounds holding each camera at most once, keeping camera order."""
    rounds: List[List[int]] = []
    seen: Dict[str, int] = {}
    for i, f in enumerate(frames):
        k = seen.get(f.camera, 0)
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
        seen[f.camera] = k + 1
    return rounds
