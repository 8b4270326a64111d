"""Image -> normalized model input, and model logits -> image size (torch, any device; no ROS).

Resize policies (``parse_input_size``):

* ``"official"``: the dataset's official test pipeline. mmcv ``imrescale`` keeps the
  aspect ratio inside ``cfg.test_scale = (long, short)``:
  ``f = min(long / max(h, w), short / min(h, w))``, new size ``(int(w*f + 0.5), int(h*f + 0.5))``;
  VSPW (``cfg.size_divisor = 32``) then resizes a second time to ``ceil(./32)*32`` on each side.
  Examples: VSPW 854x480 -> 853x479 -> 864x480; 640x480 unchanged; Cityscapes 2048x1024 -> 1024x512.
* ``"HxW"`` / ``[H, W]``: fixed size (e.g. ``"512x1024"``), aspect ratio not kept.
* ``"keep_aspect:N"``: scale so the short side is N, then round each side to the nearest multiple
  of 32 (at least 32); the aspect ratio is kept up to that rounding. The long side is capped at
  ``KEEP_ASPECT_MAX_LONG * N`` (the short side then shrinks below N), so a 1x4000 frame cannot
  ask for a 512x2,048,000 input.

Resizing is bilinear with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR``, used
by mmcv). The official pipeline resizes the *uint8* image, and OpenCV does that in fixed point
(11-bit weights, truncating SIMD arithmetic in the vertical pass), which differs from float
bilinear + rounding by up to 1-2 grey levels on a large share of pixels. The "official" policy
therefore reproduces OpenCV's integer arithmetic in torch (``cv2_resize_linear_u8``); it is
bit-exact with opencv-python 5.0 / 4.x on x86 in our tests (NEON builds use the same
universal intrinsics). Float inputs, and the other policies, use
``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, the float equivalent.

Normalisation: ``(pixel - mean) * (1 / std)`` in float32 with ``cfg.mean`` / ``cfg.std`` (RGB), as
mmcv's ``imnormalize``. Inputs are RGB unless ``bgr=True``.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

ALIGN = 32  # multiple used by keep_aspect (MiT's coarsest stride)
KEEP_ASPECT_MAX_LONG = 4   # keep_aspect:N: the long side is at most this many times N
MIN_MODEL_SIDE = ALIGN     # smaller model inputs leave MiT's last stage (stride 32) without a pixel


@dataclass(frozen=True)
class InputPolicy:
    """How frames are resized before the network.

    ``kind`` is ``"official"``, ``"fixed"`` (``height`` x ``width``) or ``"keep_aspect"`` (``short_side``).
    """

    kind: str = "official"
    height: int = 0
    width: int = 0
    short_side: int = 0

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.height}x{self.width}"
        if self.kind == "keep_aspect":
            return f"keep_aspect:{self.short_side}"
        return "official"


SizeSpec = Union[str, Sequence[int], InputPolicy, None]


def parse_hxw(text: str, minimum: int = 1) -> Tuple[int, int]:
    """``"256x512"`` -> ``(256, 512)``; ValueError (with the reason) unless both are integers >= minimum."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be HxW (e.g. 512x1024), got {text!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"size must be at least {minimum}x{minimum}, got {text!r}")
    return h, w


def parse_input_size(spec: SizeSpec) -> InputPolicy:
    """Parse ``"official"``, ``"HxW"``, ``[H, W]`` or ``"keep_aspect:N"`` into an ``InputPolicy``."""
    if isinstance(spec, InputPolicy):
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "official")):
        return InputPolicy("official")
    if isinstance(spec, str):
        text = spec.strip().lower()
        m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", text)
        if m:
            return _fixed(int(m.group(1)), int(m.group(2)), spec)
        m = re.fullmatch(r"keep_aspect\s*:\s*(\d+)", text)
        if m:
            if int(m.group(1)) < 1:
                raise ValueError(f"keep_aspect short side must be >= 1, got {spec!r}")
            return InputPolicy("keep_aspect", short_side=int(m.group(1)))
        raise ValueError(f"invalid input size {spec!r}; use 'official', 'HxW' (e.g. '512x1024'), "
                         "[H, W] or 'keep_aspect:N'")
    values = list(spec)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"invalid input size {spec!r}; a list must be [H, W] integers")
    return _fixed(int(values[0]), int(values[1]), spec)


def _fixed(h: int, w: int, spec) -> InputPolicy:
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {spec!r}")
    return InputPolicy("fixed", height=h, width=w)


def official_resize_steps(cfg, height: int, width: int) -> List[Tuple[int, int]]:
    """The (h, w) sizes the official test pipeline resizes through (1 or 2 steps)."""
    long_edge, short_edge = max(cfg.test_scale), min(cfg.test_scale)
    f = min(long_edge / max(height, width), short_edge / min(height, width))
    steps = [(int(height * f + 0.5), int(width * f + 0.5))]
    if cfg.size_divisor:
        d = cfg.size_divisor
        h, w = steps[0]
        steps.append((int(math.ceil(h / d)) * d, int(math.ceil(w / d)) * d))
    return steps


def model_input_size(policy: SizeSpec, cfg, height: int, width: int) -> Tuple[int, int]:
    """Network input size (h, w) for a ``height`` x ``width`` frame under ``policy``."""
    policy = parse_input_size(policy)
    if policy.kind == "fixed":
        return policy.height, policy.width
    if policy.kind == "keep_aspect":
        s = policy.short_side / min(height, width)
        # Bound the cost of extreme aspect ratios (and of degenerate frames) by capping the long side.
        s = min(s, KEEP_ASPECT_MAX_LONG * policy.short_side / max(height, width))
        return (max(ALIGN, int(round(height * s / ALIGN)) * ALIGN),
                max(ALIGN, int(round(width * s / ALIGN)) * ALIGN))
    return official_resize_steps(cfg, height, width)[-1]


def check_geometry(policy: SizeSpec, cfg, height: int, width: int, max_pixels: int = 0,
                   max_aspect: float = 0.0) -> Optional[str]:
    """Why a ``height`` x ``width`` frame must not reach the model, or None when it may.

    Checks ``height * width <= max_pixels`` and ``long / short <= max_aspect`` (0 disables
    either) and that the model input under ``policy`` is at least MIN_MODEL_SIDE on each
    side (below that the network fails inside the batched forward).
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        return f"frame {width}x{height} is empty"
    if max_pixels and height * width > max_pixels:
        return f"frame {width}x{height} has {height * width} pixels, more than max_pixels {max_pixels}"
    aspect = max(height, width) / min(height, width)
    if max_aspect and aspect > max_aspect:
        return f"frame {width}x{height} has aspect ratio {aspect:.1f}, more than max_aspect {max_aspect:g}"
    mh, mw = model_input_size(policy, cfg, height, width)
    if min(mh, mw) < MIN_MODEL_SIDE:
        return (f"frame {width}x{height} gives a model input of {mw}x{mh} under input_size "
                f"{parse_input_size(policy)}; each side must be at least {MIN_MODEL_SIDE}")
    return None


def _resize_steps(policy: InputPolicy, cfg, height: int, width: int) -> List[Tuple[int, int]]:
    if policy.kind == "official":
        return official_resize_steps(cfg, height, width)
    return [model_input_size(policy, cfg, height, width)]


def to_model_input(images, cfg, policy: SizeSpec = "official", bgr: bool = False,
                   device: Union[str, torch.device, None] = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images ``[B,H,W,3]`` (or ``[H,W,3]``; torch or numpy) -> normalized ``[B,3,h,w]``.

    Runs on the tensor's device (``device`` moves the uint8 data first, the cheap direction);
    numpy input is wrapped without a copy. Output ``dtype`` defaults to float32.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch tensor or numpy array, got {type(images).__name__}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [B,H,W,3] or [H,W,3], got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)
    if bgr:
        x = x.flip(1)
    policy = parse_input_size(policy)
    exact = policy.kind == "official" and not x.is_floating_point()
    x = x.to(torch.int32) if exact else x.float()
    size = tuple(x.shape[-2:])
    for step in _resize_steps(policy, cfg, *size):
        if step != size:
            if exact:
                x = cv2_resize_linear_u8(x, step)
            else:
                x = F.interpolate(x, size=step, mode="bilinear", align_corners=False, antialias=False)
            size = step
    x = x.float()
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    inv_std = (1.0 / torch.tensor(cfg.std, dtype=torch.float64)).to(x.device, torch.float32).view(1, 3, 1, 1)
    x = (x - mean) * inv_std
    return x.to(dtype).contiguous()


@functools.lru_cache(maxsize=64)
def _cv2_taps(src: int, dst: int, clamp_weights: bool, device: str):
    """OpenCV INTER_LINEAR source indices and 11-bit weights along one axis (cached per size).

    cv2 maps dst pixel d to ``f = float32((d + 0.5) * src/dst - 0.5)``, ``i = floor(f)``, and
    rounds ``(1 - frac) * 2048`` and ``frac * 2048`` separately. Along x it moves out-of-range
    taps onto the edge pixel with weight (2048, 0); along y it keeps the fractional weights and
    only clamps the row indices (both rows are then the edge row), and the SIMD arithmetic
    below makes that difference visible, so both variants are reproduced.
    """
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    frac = (f - i.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        edge = (i < 0) | (i >= src - 1)
        frac[edge] = 0
        i = np.clip(i, 0, src - 1)
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048))
    w1 = np.rint(frac * np.float32(2048))
    as_tensor = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return (as_tensor(np.clip(i, 0, src - 1), torch.long), as_tensor(np.clip(i + 1, 0, src - 1), torch.long),
            as_tensor(w0, torch.int32), as_tensor(w1, torch.int32))


def cv2_resize_taps(src_size: Tuple[int, int], size: Tuple[int, int], device) -> tuple:
    """The taps of :func:`cv2_resize_linear_u8` from ``src_size`` to ``size`` on ``device``.

    A captured CUDA graph reads them by address: its owner must hold them (the cache alone
    may free them while the graph still replays).
    """
    dev = str(torch.device(device))
    return _cv2_taps(src_size[1], size[1], True, dev), _cv2_taps(src_size[0], size[0], False, dev)


def cv2_resize_linear_u8(x: torch.Tensor, size: Tuple[int, int], taps: Optional[tuple] = None) -> torch.Tensor:
    """``cv2.resize(img, (w, h), interpolation=INTER_LINEAR)`` on uint8 data, in torch.

    ``x``: integer tensor ``[..., H, W]`` with values 0..255 (any device); returns int32 ``[..., h, w]``.
    Horizontal pass: exact integer sums with 11-bit weights. Vertical pass: OpenCV's SIMD
    arithmetic ``((((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16) + 2) >> 2``.
    ``taps``: from :func:`cv2_resize_taps` (looked up, cached, when None).
    """
    h, w = size
    if taps is None:
        taps = cv2_resize_taps(tuple(x.shape[-2:]), size, x.device)
    x = x.to(torch.int32)
    (i0, i1, w0, w1), (j0, j1, b0, b1) = taps
    rows = x.index_select(-1, i0) * w0 + x.index_select(-1, i1) * w1
    top = ((rows.index_select(-2, j0) >> 4) * b0.view(-1, 1)) >> 16
    bottom = ((rows.index_select(-2, j1) >> 4) * b1.view(-1, 1)) >> 16
    return ((top + bottom + 2) >> 2).clamp_(0, 255)


def logits_to_size(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize ``[B,K,h,w]`` logits to ``size = (H, W)`` (bilinear, align_corners=False).

    This is the official last step (network input size -> original image size); it is a no-op
    when the sizes already agree.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
