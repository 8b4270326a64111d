"""Run a TV3S engine over labelled videos in several inference modes and accumulate metrics.

Modes, side by side on the same frames:

``frame``   TV3S on each frame alone (``forward_clip`` with T = 1, zero state).
``clip``    the official 4-frame clip: positions ``[t-9, t-6, t-3, t]`` of the frame in its
            video, with the official rule near the video start (:func:`clip_positions`).
            Positions 0..2 run alone (T = 1); the official head would apply its short-clip
            fallback there (docs/official_equivalence.md), ours runs the temporal head.
``stream``  the node's streaming path: the same :class:`~tv3s_ros.engine.Engine` (reset
            policy, ``max_state_frames``, preprocessing, precision) with the state carried.
            ``stride`` k keeps k interleaved states per video ("cameras" ``<video>#0..k-1``):
            frame t goes to state ``t mod k``, so each state advances k frames per step and
            frame t sees frames t, t-k, t-2k, ... since that state's reset.

The frame and clip modes compute each frame's backbone features once and share them (the
backbone sees every frame alone, so this is exact; one backbone pass per frame instead of five).
Positions are places in the video's frame list (the official clips use list positions too).
The state runs over every frame; metrics are taken on labelled frames (and, with
``subset``, only those whose ``meta.json`` flag is set). ``also_subsets`` scores flagged
frames a second time, into their own results, in the same pass (all frames and the hard
ones for the price of one run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tv3s_ros.data.datasets import DatasetError, Video, frame_flags, load_image, load_label
from tv3s_ros.eval.metrics import (
    VC_CLIPS,
    VideoConsistency,
    confusion_matrix,
    iou_from_counts,
    iou_per_class,
    mean_iou,
    mean_iou_present,
    nanmean,
)

__all__ = ["MODES", "OFFICIAL_OFFSETS", "clip_positions", "ModeResult", "EvalResult", "evaluate",
           "stream_camera", "stream_logits"]

MODES = ("frame", "clip", "stream")
OFFICIAL_OFFSETS = (-9, -6, -3)
# The official test set (dilation [-9, -6, -3]) picks these clips for positions 3..8, where
# t-9 does not exist yet; positions 0..2 run alone (T = 1).
_OFFICIAL_EARLY = {3: (0, 1, 2, 3), 4: (0, 2, 3, 4), 5: (0, 2, 4, 5), 6: (0, 2, 4, 6),
                   7: (0, 3, 5, 7), 8: (0, 3, 6, 8)}
_STAMP_STEP_NS = 50_000_000   # nominal 20 fps; only the order matters (no gap resets in eval)


def clip_positions(position: int, offsets: Sequence[int] = OFFICIAL_OFFSETS) -> List[int]:
    """Positions of the frames of the clip that ends at ``position`` (oldest first)."""
    if tuple(offsets) == OFFICIAL_OFFSETS and position in _OFFICIAL_EARLY:
        return list(_OFFICIAL_EARLY[position])
    return [position + o for o in offsets if position + o >= 0] + [position]


def stream_camera(video: str, position: int, stride: int) -> str:
    """The engine camera (one state) that frame ``position`` of ``video`` goes to."""
    return f"{video}#{position % stride}"


@dataclass
class ModeResult:
    """Accumulated metrics of one mode."""

    mode: str
    num_classes: int
    confusion: np.ndarray = None  # type: ignore[assignment]
    frames: int = 0
    consistency: VideoConsistency = field(default_factory=VideoConsistency)
    # frames since reset -> [tp, gt, pred] pixel counts per class, and the frame count
    drift: Dict[int, np.ndarray] = field(default_factory=dict)
    drift_frames: Dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray, since_reset: int) -> None:
        cm = confusion_matrix(gt, pred, self.num_classes)
        self.confusion += cm
        self.frames += 1
        counts = self.drift.setdefault(since_reset, np.zeros((3, self.num_classes), dtype=np.int64))
        counts += np.stack([np.diag(cm), cm.sum(1), cm.sum(0)])
        self.drift_frames[since_reset] = self.drift_frames.get(since_reset, 0) + 1

    @property
    def miou(self) -> float:
        return mean_iou(self.confusion)

    @property
    def miou_present(self) -> float:
        return mean_iou_present(self.confusion)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.confusion)

    def mvc(self, clip: int) -> float:
        return self.consistency.value(clip)

    def drift_curve(self):
        """``(frames since reset, mIoU, frames)`` arrays, sorted."""
        keys = sorted(self.drift)
        miou = [nanmean(iou_from_counts(*self.drift[k])) for k in keys]
        return np.array(keys), np.array(miou), np.array([self.drift_frames[k] for k in keys])


@dataclass
class EvalResult:
    modes: Dict[str, ModeResult]
    class_names: List[str]
    videos: int
    settings: Dict[str, object]
    # flag -> the same modes scored on the frames with that meta.json flag (``also_subsets``)
    subsets: Dict[str, "EvalResult"] = field(default_factory=dict)


class _VideoFrames:
    """Images, model inputs and backbone features of one video, computed on demand; keeps a
    short window (the frames an official clip reaches back to)."""

    def __init__(self, video: Video, engine, keep: int):
        self.video, self.engine, self.keep = video, engine, keep
        self._images: Dict[int, np.ndarray] = {}
        self._inputs: Dict[int, torch.Tensor] = {}
        self._features: Dict[int, List[torch.Tensor]] = {}

    def image(self, pos: int) -> np.ndarray:
        if pos not in self._images:
            self._images[pos] = load_image(self.video.frames[pos].image)
        return self._images[pos]

    def model_input(self, pos: int) -> torch.Tensor:
        if pos not in self._inputs:
            from tv3s_ros.preprocess import to_model_input

            x = torch.from_numpy(self.image(pos)).to(self.engine.device)
            self._inputs[pos] = to_model_input(x, self.engine.cfg, self.engine.input_policy)[0]
        return self._inputs[pos]

    def features(self, pos: int) -> List[torch.Tensor]:
        """Backbone features of frame ``pos`` (``[1, C, h, w]`` per level), computed once: the
        frame and clip modes share them, and each frame is in up to 4 clips."""
        if pos not in self._features:
            from tv3s_ros.model.device import autocast, device_context

            with torch.inference_mode(), device_context(self.engine.device), \
                    autocast(self.engine.device, self.engine.compute_dtype):
                self._features[pos] = self.engine.model.features(self.model_input(pos)[None])
        return self._features[pos]

    def forget_before(self, pos: int) -> None:
        for cache in (self._images, self._inputs, self._features):
            for old in [p for p in cache if p < pos - self.keep]:
                del cache[old]


def _ground_truth(video: Video, pos: int, layout: str, size) -> np.ndarray:
    """The label of frame ``pos``, checked against its image size ``(h, w)``."""
    frame = video.frames[pos]
    gt = load_label(frame.label, layout)
    if gt.shape != tuple(size):
        raise DatasetError(f"video {video.name}: label {frame.label} is {gt.shape[1]}x{gt.shape[0]} "
                           f"but its image is {size[1]}x{size[0]}")
    return gt


def _clip_labels(engine, frames: _VideoFrames, positions: List[int], size) -> np.ndarray:
    """Labels of the clip of ``positions`` (oldest first), as ``forward_clip`` of their inputs."""
    from tv3s_ros.model.device import autocast, device_context
    from tv3s_ros.preprocess import logits_to_size

    per_frame = [frames.features(p) for p in positions]
    feats = [torch.cat(level) for level in zip(*per_frame)]
    input_size = tuple(frames.model_input(positions[-1]).shape[-2:])
    with torch.inference_mode(), device_context(engine.device), \
            autocast(engine.device, engine.compute_dtype):
        logits = engine.model.forward_clip_features(feats, 1, input_size)
    return logits_to_size(logits.float(), size).argmax(1)[0].to(torch.uint8).cpu().numpy()


def evaluate(videos: Sequence[Video], layout: str, engine, modes: Sequence[str] = MODES, stride: int = 1,
             subset: Optional[str] = None, clip_offsets: Sequence[int] = OFFICIAL_OFFSETS,
             progress: Optional[Callable[[int], None]] = None,
             also_subsets: Sequence[str] = ()) -> EvalResult:
    """Evaluate ``engine`` (a :class:`~tv3s_ros.engine.Engine`) on ``videos`` in ``modes``.

    ``subset``: a per-frame flag of meta.json; only flagged frames are scored (the stream
    still runs over every frame). ``also_subsets``: flags whose frames are also scored on
    their own, into ``EvalResult.subsets[flag]``, from the same predictions.
    ``progress(n)`` is called after every n frames.
    Raises ``DatasetError`` for unreadable files or a label whose size differs from its image.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    from tv3s_ros.engine import FrameInput

    num_classes = engine.num_classes

    def mode_results() -> Dict[str, ModeResult]:
        return {m: ModeResult(m, num_classes, consistency=VideoConsistency(VC_CLIPS)) for m in modes}

    # each scoring: (frame flag or None for every frame, its per-mode results)
    scorings = [(subset, mode_results())] + [(flag, mode_results()) for flag in dict.fromkeys(also_subsets)]
    keep = max([-o for o in clip_offsets] + [0]) + 1
    for video in videos:
        flags = [frame_flags(video, flag) if flag else None for flag, _ in scorings]
        frames = _VideoFrames(video, engine, keep)
        cameras = set()
        for pos, frame in enumerate(video.frames):
            scored = frame.label is not None
            preds: Dict[str, np.ndarray] = {}
            since_reset = pos
            if "stream" in modes:
                camera = stream_camera(video.name, pos, stride)
                cameras.add(camera)
                out = engine.process([FrameInput(camera=camera, image=frames.image(pos),
                                                 stamp_ns=pos * _STAMP_STEP_NS, frame_id=video.name)],
                                     outputs=("labels",) if scored else ())[0]
                preds["stream"] = out.labels
                since_reset = out.frames_since_reset
            if scored:
                size = frames.image(pos).shape[:2]
                gt = _ground_truth(video, pos, layout, size)
                if "frame" in modes:
                    preds["frame"] = _clip_labels(engine, frames, [pos], size)
                if "clip" in modes:
                    preds["clip"] = _clip_labels(engine, frames, clip_positions(pos, clip_offsets), size)
                for (_, results), flagged in zip(scorings, flags):
                    selected = flagged is None or frame.index in flagged
                    for mode in modes:
                        results[mode].consistency.add(gt, preds[mode], selected)
                        if selected:
                            results[mode].add(gt, preds[mode], since_reset)
            frames.forget_before(pos)
            if progress is not None:
                progress(1)
        for _, results in scorings:
            for mode in modes:
                results[mode].consistency.end_video()
        for camera in cameras:
            engine.forget(camera)   # free the states of finished videos

    def result(flag: Optional[str], results: Dict[str, ModeResult]) -> EvalResult:
        settings = {"modes": list(modes), "stride": stride, "subset": flag, "clip_offsets": list(clip_offsets),
                    "max_state_frames": engine.streams.policy.max_state_frames, "layout": layout}
        return EvalResult(results, list(engine.class_names), len(videos), settings)

    main = result(*scorings[0])
    main.subsets = {flag: result(flag, results) for flag, results in scorings[1:]}
    return main


def stream_logits(videos: Sequence[Video], layout: str, engine,
                  progress: Optional[Callable[[int], None]] = None
                  ) -> Iterator[Tuple[np.ndarray, torch.Tensor]]:
    """``(ground truth [h, w], logits [K, h, w] fp32)`` of every labelled frame, streaming.

    The model of ``engine`` runs each video from a fresh state (one reset at its first frame,
    no ``max_state_frames``) with the engine's preprocessing, device and precision: the logits
    behind :func:`evaluate`'s ``stream`` labels (whose argmax they are), for callers that
    need more than the argmax (the logit adjustment of :mod:`tv3s_ros.train.calibrate`).
    Logits are resized to the label size on the engine's device. ``progress(n)`` after every
    n frames. Raises ``DatasetError`` as :func:`evaluate` does.
    """
    from tv3s_ros.model.device import autocast, device_context
    from tv3s_ros.preprocess import logits_to_size

    model = engine.model
    for video in videos:
        frames = _VideoFrames(video, engine, keep=0)
        state = model.new_state(1)
        for pos, frame in enumerate(video.frames):
            with torch.inference_mode(), device_context(engine.device), \
                    autocast(engine.device, engine.compute_dtype):
                logits, state = model.forward_stream(frames.model_input(pos)[None], state)
            if frame.label is not None:
                size = frames.image(pos).shape[:2]
                gt = _ground_truth(video, pos, layout, size)
                with torch.inference_mode():
                    resized = logits_to_size(logits.float(), size)[0]
                yield gt, resized
            frames.forget_before(pos)
            if progress is not None:
                progress(1)
