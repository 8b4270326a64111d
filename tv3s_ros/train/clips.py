"""Training clips: which frames make a sample, and the official augmentation of a clip.

Sampling (the official datasets, ``utils/datasets/custom.py`` of Ashesham/TV3S):

* ``vspw`` / ``synthetic`` (official ``VSPWDataset2``): an epoch visits every video once in
  random order; a video is played backwards with probability ``reverse_prob`` (official 0.5 on
  VSPW), then the last frame ``t`` is drawn uniformly among the labelled positions with
  ``t >= 9`` and the clip is ``[t-9, t-6, t-3, t]``. Videos shorter than 10 frames (the
  official code fails on them) clamp the early offsets to the first frame.
* ``cityscapes`` (official ``CityscapesDataset_clips``): an epoch visits every annotated frame;
  the clip is ``[t-9, t-6, t-3, t]``, or ``[t+9, t+6, t+3, t]`` when ``t-9`` is not in the
  snippet (the official fallback to later frames), else clamped.

Streaming-aware runs (``run_frames > 0``): ``run_frames`` frames spaced ``run_stride`` ending
at a labelled frame (``cityscapes``) or starting anywhere in a long enough video (the others).

Augmentation (official train pipeline, one geometry per clip): random rescale with ratio in
``ratio_range`` of ``scale`` (long, short; keep aspect; ``None``: the image's own size),
random crop with ``cat_max_ratio`` (10 tries on the last frame's label), horizontal flip,
photometric distortion drawn *per frame* (as ``PhotoMetricDistortion_clips``), normalisation,
padding to the crop size (image 0 after normalisation, label 255).

Every random draw of sample ``g`` comes from ``numpy.random.default_rng([seed, g])`` (and the
epoch order from ``[seed, epoch, 1]``): a sample does not depend on workers, batch or resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from tv3s_ros.data.datasets import IGNORE, DatasetError, Video, load_image, load_label

__all__ = ["OFFICIAL_OFFSETS", "ClipSampler", "Augment", "ClipDataset", "collate"]

OFFICIAL_OFFSETS = (-9, -6, -3)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class ClipSampler:
    """Maps a global sample index ``g`` to ``(video index, frame positions oldest first)``."""

    def __init__(self, videos: Sequence[Video], layout: str, seed: int = 0,
                 offsets: Sequence[int] = OFFICIAL_OFFSETS, reverse_prob: Optional[float] = None,
                 run_frames: int = 0, run_stride: int = 1):
        self.videos, self.layout, self.seed = list(videos), layout, int(seed)
        self.offsets = tuple(sorted(int(o) for o in offsets))
        if any(o >= 0 for o in self.offsets):
            raise ValueError(f"clip offsets must be negative, got {offsets}")
        self.reverse_prob = (0.5 if layout == "vspw" else 0.0) if reverse_prob is None else float(reverse_prob)
        self.run_frames, self.run_stride = int(run_frames), int(run_stride)
        self.per_frame = layout == "cityscapes"
        span = (self.run_frames - 1) * self.run_stride if self.run_frames else 0
        self.anchors: List[Tuple[int, int]] = []    # (video, position) or (video, -1) per video
        for vi, video in enumerate(self.videos):
            labelled = [p for p, f in enumerate(video.frames) if f.label is not None]
            if not labelled:
                continue
            if self.per_frame:
                self.anchors += [(vi, p) for p in labelled if not self.run_frames or p >= span]
            elif len(video.frames) > span:
                self.anchors.append((vi, -1))
        if not self.anchors:
            need = f"runs of {self.run_frames} frames at stride {self.run_stride}" if self.run_frames else "clips"
            raise DatasetError(f"no video holds labelled {need} (videos: {len(self.videos)})")

    @property
    def frames_per_sample(self) -> int:
        return self.run_frames or len(self.offsets) + 1

    def __len__(self) -> int:
        """Samples per epoch."""
        return len(self.anchors)

    def draw(self, g: int, rng: np.random.Generator) -> Tuple[int, List[int]]:
        """Video index and positions (oldest first) of sample ``g``; draws from ``rng``."""
        epoch, slot = divmod(int(g), len(self.anchors))
        vi, anchor = self.anchors[int(_rng(self.seed, epoch, 1).permutation(len(self.anchors))[slot])]
        video = self.videos[vi]
        n = len(video.frames)
        reverse = self.reverse_prob > 0 and rng.random() < self.reverse_prob
        order = list(range(n))[::-1] if reverse else list(range(n))
        if self.run_frames:
            span = (self.run_frames - 1) * self.run_stride
            if self.per_frame:
                t = anchor
            else:
                t = span + int(rng.integers(0, n - span))
            return vi, [order[t - span + k * self.run_stride] for k in range(self.run_frames)]
        if self.per_frame:
            t = anchor
            if t + self.offsets[0] >= 0:
                pos = [t + o for o in self.offsets]
            elif t - self.offsets[0] < n:
                pos = [t - o for o in self.offsets]    # official: later frames when earlier ones are missing
            else:
                pos = [max(t + o, 0) for o in self.offsets]
            return vi, pos + [t]
        labelled = [p for p in range(n) if video.frames[order[p]].label is not None]
        late = [p for p in labelled if p + self.offsets[0] >= 0]
        choices = late or labelled
        t = choices[int(rng.integers(0, len(choices)))]
        return vi, [order[max(t + o, 0)] for o in self.offsets] + [order[t]]


@dataclass
class Augment:
    """Official train-time augmentation of one clip (see the module docstring)."""

    crop: Tuple[int, int]                      # (h, w)
    mean: Sequence[float]
    std: Sequence[float]
    scale: Optional[Tuple[int, int]] = None    # (long, short); None: the image's own size
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    brightness_delta: int = 32
    contrast_range: Tuple[float, float] = (0.5, 1.5)
    saturation_range: Tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __call__(self, images: List[np.ndarray], labels: List[np.ndarray], rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """RGB uint8 ``[H, W, 3]`` images and uint8 labels -> float32 ``[T, 3, ch, cw]`` and
        uint8 ``[T, ch, cw]``."""
        h, w = images[-1].shape[:2]
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        base = self.scale if self.scale is not None else (max(h, w), min(h, w))
        long_edge, short_edge = int(base[0] * ratio), int(base[1] * ratio)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))      # mmcv.imrescale
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        images = [cv2.resize(im, size, interpolation=cv2.INTER_LINEAR) for im in images]
        labels = [cv2.resize(lb, size, interpolation=cv2.INTER_NEAREST) for lb in labels]

        box = self._crop_box(labels[-1], rng)
        y0, y1, x0, x1 = box
        images = [im[y0:y1, x0:x1] for im in images]
        labels = [lb[y0:y1, x0:x1] for lb in labels]
        if rng.random() < self.flip_prob:
            images = [im[:, ::-1] for im in images]
            labels = [lb[:, ::-1] for lb in labels]
        if self.photometric:
            images = [self._photometric(np.ascontiguousarray(im), rng) for im in images]

        ch, cw = self.crop
        out = np.zeros((len(images), 3, ch, cw), np.float32)            # pad value 0 after normalising
        out_labels = np.full((len(labels), ch, cw), IGNORE, np.uint8)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        for i, (im, lb) in enumerate(zip(images, labels)):
            ih, iw = im.shape[:2]
            out[i, :, :ih, :iw] = ((im.astype(np.float32) - mean) / std).transpose(2, 0, 1)
            out_labels[i, :ih, :iw] = lb
        return out, out_labels

    def _crop_box(self, label: np.ndarray, rng: np.random.Generator) -> Tuple[int, int, int, int]:
        h, w = label.shape
        ch, cw = self.crop

        def draw():
            y = int(rng.integers(0, max(h - ch, 0) + 1))
            x = int(rng.integers(0, max(w - cw, 0) + 1))
            return y, y + ch, x, x + cw

        box = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(10):     # official: up to 10 redraws until no class dominates
                values, counts = np.unique(label[box[0]:box[1], box[2]:box[3]], return_counts=True)
                counts = counts[values != IGNORE]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = draw()
        return box

    def _convert(self, img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Order and probabilities of mmseg's PhotoMetricDistortion (each step with p = 0.5).
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.integers(2) == 1
        if contrast_first and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=rng.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(rng.integers(-self.hue_delta, self.hue_delta))) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        return img


class ClipDataset(torch.utils.data.Dataset):
    """Sample ``g`` -> ``{"frames": [T, 3, h, w] float32, "labels": [T, h, w] int64}``.

    Indexable by any non-negative integer (epochs repeat with a new order), so a sampler of
    ``range(start, stop)`` resumes exactly.
    """

    def __init__(self, videos: Sequence[Video], layout: str, sampler: ClipSampler, augment: Augment,
                 length: int):
        self.videos, self.layout, self.sampler, self.augment = list(videos), layout, sampler, augment
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, g: int) -> dict:
        rng = _rng(self.sampler.seed, g)
        vi, positions = self.sampler.draw(g, rng)
        video = self.videos[vi]
        images, labels = [], []
        for p in positions:
            frame = video.frames[p]
            image = load_image(frame.image)
            if frame.label is not None:
                label = load_label(frame.label, self.layout)
                if label.shape != image.shape[:2]:
                    raise DatasetError(f"video {video.name}: label {frame.label} is {label.shape[1]}x"
                                       f"{label.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}")
            else:
                label = np.full(image.shape[:2], IGNORE, np.uint8)
            images.append(image)
            labels.append(label)
        frames, labels_out = self.augment(images, labels, rng)
        return {"frames": torch.from_numpy(frames), "labels": torch.from_numpy(labels_out.astype(np.int64)),
                "index": g}


def collate(samples: List[dict]) -> dict:
    return {"frames": torch.stack([s["frames"] for s in samples]),
            "labels": torch.stack([s["labels"] for s in samples]),
            "index": [s["index"] for s in samples]}
