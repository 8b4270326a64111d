"""The Engine: cameras' frames in, per-frame outputs out (see the package docstring)."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from tv3s_ros.engine.cuda_graphs import CudaGraphStreamer
from tv3s_ros.engine.eager_runner import EagerRunner
from tv3s_ros.engine.frames import FrameErrors, FrameInput, FrameOutput, FrameRejected, Outputs
from tv3s_ros.engine.graphed_runner import GraphedRunner
from tv3s_ros.engine.settings import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, EngineSettings, load_model, resolve_graphs
from tv3s_ros.engine.upload import HostUploader
from tv3s_ros.gpu_decode import ImageDecoder
from tv3s_ros.image_codec import DecodeErrorKind
from tv3s_ros.model import scan
from tv3s_ros.model.device import check_precision, device_context, select_device
from tv3s_ros.model.mamba import Mamba
from tv3s_ros.outputs import OUTPUT_NAMES, check_output_resolution, check_outputs, label_dtype
from tv3s_ros.postprocess import Postprocessor
from tv3s_ros.preprocess import check_geometry, model_input_size, parse_input_size
from tv3s_ros.streams import ResetPolicy, ResetReason, StreamManager, StreamStats

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger("tv3s_ros.engine")


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
        self.compute_dtype = check_precision(self.precision, self.device)
        self.graphs = resolve_graphs(graphs, self.device)
        self.output_resolution = check_output_resolution(output_resolution)
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
        uploader = HostUploader(self.device)
        self._eager = EagerRunner(self.model, self.input_policy, self.output_resolution, self.postprocessor,
                                  uploader, self.compute_dtype)
        self._graphed: Optional[GraphedRunner] = None
        if self.graphs != "off":
            # Looked up on each call, so a test can swap Engine._make_streamer.
            self._graphed = GraphedRunner(lambda *key: self._make_streamer(*key), self.graphs,
                                          self.postprocessor, uploader, self.output_resolution)
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
    def from_settings(cls, settings: EngineSettings) -> "Engine":
        """Build the model, load its weights and validate every setting before any frame."""
        loaded, dev = load_model(settings)
        return cls(loaded.net, device=dev, precision=settings.precision, input_size=settings.input_size,
                   output_resolution=settings.output_resolution, overlay_alpha=settings.overlay_alpha,
                   reset_policy=settings.reset_policy(), class_names=loaded.class_names,
                   palette=loaded.palette, weights=loaded.weights, graphs=settings.graphs,
                   gpu_jpeg=settings.gpu_jpeg, max_pixels=settings.max_pixels, max_aspect=settings.max_aspect)

    @property
    def _pool(self):
        """The CUDA-graph streamers (None while graphs are off)."""
        return self._graphed.pool if self._graphed is not None else None

    @property
    def shipped_weights(self) -> bool:
        """True when the weights are the ones the preset ships (none were given)."""
        return self.weights is not None and self.weights == getattr(self.cfg, "weights", None)

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    # ------------------------------------------------------------------ stream control
    def reset(self, camera: Optional[str] = None, reason: ResetReason = ResetReason.SERVICE) -> List[str]:
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
        dtype = self.compute_dtype
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
            raise FrameRejected(problem, DecodeErrorKind.BAD_SIZE)

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
        outputs_of = [self._outputs_for(f.camera, outputs) for f in frames]
        images = [_check_image(f) for f in frames]
        for f, image in zip(frames, images):      # before any state changes
            try:
                self.check_frame_size(*image.shape[:2])
            except FrameRejected as err:
                raise FrameRejected(f"camera {f.camera!r}: {err}", DecodeErrorKind.BAD_SIZE) from None
        results: List[Optional[FrameOutput]] = [None] * len(frames)
        errors: Dict[int, BaseException] = {}
        # Triton launches and graph capture use the current CUDA device, not the tensors': make
        # the engine's current (cuda:1 while another thread or library left cuda:0 current).
        with torch.inference_mode(), device_context(self.device):
            for indices in _rounds(frames):
                self._process_round(frames, images, outputs_of, indices, results, start, errors)
        if errors:
            raise FrameErrors(results, errors)
        return results  # type: ignore[return-value]

    def _process_round(self, frames, images, outputs_of, indices, results, start, errors) -> None:
        """Frames of distinct cameras: reset policy, then one batch per model input size."""
        observations = {}
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i in indices:
            f, (h, w) = frames[i], images[i].shape[:2]
            obs = self.streams.observe_frame(f.camera, f.stamp_ns, h, w, f.frame_id)
            observations[i] = obs
            state = self._states.get(f.camera)
            if state is None or obs.reason.new_state:
                # A fresh state: buffers get sized for the new input at its first forward.
                self._states[f.camera] = self.model.new_state(1)
            elif obs.reason:
                state.reset()
            groups.setdefault(self.model_input_size(h, w), []).append(i)

        for members in groups.values():
            t0 = time.perf_counter()
            post = self._run_isolated(frames, images, outputs_of, members, errors)
            self._check_finite(frames, post)
            model_time = time.perf_counter() - t0
            done = time.monotonic()
            for i in members:
                if i not in post:
                    continue
                f, obs, res = frames[i], observations[i], post[i][0]
                received = f.received_s if f.received_s is not None else start
                results[i] = FrameOutput(
                    camera=f.camera, stamp_ns=int(f.stamp_ns), frame_id=f.frame_id, result=res,
                    num_classes=self.num_classes, frames_since_reset=obs.frames_since_reset,
                    reset_reason=obs.reason, model_time_s=model_time, latency_s=max(0.0, done - received),
                    skipped_frames=obs.skipped_frames, stage_s=dict(post[i][2]))

    def _run_isolated(self, frames, images, outputs_of, members, errors):
        """:meth:`_run_group`; when the batch fails, its cameras again one by one, so that
        only the frame that fails on its own is lost (recorded in ``errors``)."""
        try:
            return self._run_group(frames, images, outputs_of, members)
        except Exception as err:  # noqa: BLE001 - retried per camera below
            if len(members) == 1:
                self._failed(frames, members[0], err, errors)
                return {}
            log.warning("batch of %d cameras failed (%s: %s); retrying them one by one",
                        len(members), type(err).__name__, str(err)[:200])
        post = {}
        for i in members:
            try:
                post.update(self._run_group(frames, images, outputs_of, [i]))
            except Exception as err:  # noqa: BLE001 - only this camera loses its frame
                self._failed(frames, i, err, errors)
        return post

    def _failed(self, frames, i, err, errors) -> None:
        # The forward may have updated part of the state in place: this camera starts afresh.
        camera = frames[i].camera
        errors[i] = err
        self._states[camera] = self.model.new_state(1)
        self.streams.request_reset(camera, ResetReason.ERROR)

    def _check_finite(self, frames, post) -> None:
        """Reset (at their next frame) the cameras whose state or logits went NaN/Inf.

        The flags were computed on the device with the step; the results are already on the
        host, so reading them costs no extra synchronisation on the hot path."""
        flags = {}
        for i, row in post.items():
            flag = row[1]
            flags.setdefault(id(flag[0]), (flag[0], []))[1].append((i, flag[1]))
        for tensor, rows in flags.values():
            host = tensor.cpu().tolist()
            for i, row in rows:
                if not host[row]:
                    camera = frames[i].camera
                    log.warning("camera %s: non-finite values (NaN/Inf) in its state or output; "
                                "resetting it at its next frame", camera)
                    self.streams.note_non_finite(camera)

    def _run_group(self, frames, images, outputs, members):
        """One forward pass for frames with equal model input size; returns {index: (result, finite
        flag, seconds per stage of the batch)}."""
        cameras = [frames[i].camera for i in members]
        group_images = [images[i] for i in members]
        group_outputs = [outputs[i] for i in members]
        if self._graphed is not None and len({tuple(im.shape[:2]) for im in group_images}) == 1:
            rows = self._graphed.run(cameras, group_images, group_outputs, self._states)
            if rows is not None:
                return {m: (*row, self._graphed.last_stages) for m, row in zip(members, rows)}
            self._graphed, self.graphs = None, "off"      # the capture failed: eager from now on
        rows = self._eager.run(cameras, group_images, group_outputs, self._states)
        return {m: (*row, self._eager.last_stages) for m, row in zip(members, rows)}

    def _make_streamer(self, batch: int, height: int, width: int, outputs) -> CudaGraphStreamer:
        return CudaGraphStreamer(self.model, batch, height, width, self.compute_dtype,
                                 input_size=self.input_policy, output_resolution=self.output_resolution,
                                 postprocessor=self.postprocessor, outputs=outputs,
                                 capture=self.graphs == "on")

    def _outputs_for(self, camera: str, outputs: Outputs) -> Set[str]:
        if outputs is None:
            chosen: Iterable[str] = OUTPUT_NAMES
        elif isinstance(outputs, str):
            chosen = (outputs,)
        elif isinstance(outputs, Mapping):
            chosen = outputs.get(camera, ())
            chosen = (chosen,) if isinstance(chosen, str) else chosen
        else:
            chosen = outputs
        return set(check_outputs(chosen))


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
