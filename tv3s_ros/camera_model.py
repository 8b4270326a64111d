"""Pinhole camera intrinsics carried over to the label image (no ROS, no torch).

``tv3s_node`` republishes each camera's ``sensor_msgs/CameraInfo`` for its label image
(``~/<camera>/camera_info``); this module holds the arithmetic, on :class:`CameraModel`, a plain
copy of CameraInfo's fields. ``tv3s_ros/ros/camera_info.py`` converts the messages.

How the label image maps onto the camera image
----------------------------------------------
``output_resolution: input``: the label image *is* the camera image's pixel grid (the logits
are resized back to the frame size), so the intrinsics are those of the camera image.

``output_resolution: model``: the label image is the network input's grid, and every
``input_size`` policy (``tv3s_ros/preprocess.py``) makes that by resizing the *whole* frame,
bilinearly with half-pixel centres; nothing is cropped or padded:

* ``official``: one or two resizes (VSPW: to the aspect-kept size, then to multiples of 32).
  Two half-pixel resizes compose to one from the frame size to the final size.
* ``HxW``: straight to H x W (the aspect ratio changes: ``sx != sy``).
* ``keep_aspect:N``: to the short side N, each side rounded to a multiple of 32 (``sx`` and
  ``sy`` differ slightly).

So along each axis a camera-image pixel coordinate ``u`` (pixel centres at integers) lands at
``u' = (u + 0.5) * s - 0.5`` with ``s = n_out / n_in`` (:func:`resize_map`); a crop starting at
``x0`` would be ``u' = u - x0`` (:func:`crop_map`; no policy crops today, but the function takes
one). Such an affine map ``u' = a u + c`` changes a projection matrix's first row (second for
``v``) into ``a * row0 + c * row2``: ``fx, skew, Tx`` scale by ``a`` and ``cx' = a cx + c``. D and R
are unchanged (distortion acts on normalised coordinates, R on rays).

CameraInfo's own ``binning_x/y`` and ``roi`` describe how the camera image relates to the
calibrated full-resolution sensor; they are folded into K and P first (roi: a crop; binning b:
a resize by 1/b with half-pixel centres -- image_geometry uses ``cx / b``, ignoring the
``(b - 1) / 2b`` pixel shift of a bin's centre), and the result has ``binning 0`` and an empty
roi: K and P describe the label image exactly as it is. A camera image of another size than
CameraInfo announces (a resized stream) is taken as a resize of the announced one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

__all__ = ["AxisMap", "CameraModel", "resize_map", "crop_map", "transform", "image_model", "label_model",
           "project"]


@dataclass(frozen=True)
class AxisMap:
    """``u_out = scale * u_in + offset`` along one image axis (pixel centres at integers)."""

    scale: float = 1.0
    offset: float = 0.0

    def then(self, other: "AxisMap") -> "AxisMap":
        """This map followed by ``other``."""
        return AxisMap(other.scale * self.scale, other.scale * self.offset + other.offset)

    def __call__(self, u: float) -> float:
        return self.scale * u + self.offset


def resize_map(n_in: int, n_out: int) -> AxisMap:
    """A half-pixel-centre resize from ``n_in`` to ``n_out`` pixels: ``u' = (u + 0.5) s - 0.5``."""
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    s = n_out / n_in
    return AxisMap(s, 0.5 * s - 0.5)


def crop_map(start: float) -> AxisMap:
    """A crop whose first pixel is ``start`` of the source: ``u' = u - start``."""
    return AxisMap(1.0, -float(start))


@dataclass(frozen=True)
class CameraModel:
    """The fields of ``sensor_msgs/CameraInfo`` but the header (row-major K 3x3, R 3x3, P 3x4).

    ``roi`` is ``(x_offset, y_offset, width, height, do_rectify)``; all zero: the full image.
    ``binning_x/y`` 0 or 1: no binning.
    """

    width: int
    height: int
    k: Tuple[float, ...]
    p: Tuple[float, ...]
    d: Tuple[float, ...] = ()
    r: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    distortion_model: str = ""
    binning_x: int = 0
    binning_y: int = 0
    roi: Tuple[int, int, int, int, bool] = field(default=(0, 0, 0, 0, False))

    def __post_init__(self):
        object.__setattr__(self, "k", tuple(float(v) for v in self.k))
        object.__setattr__(self, "p", tuple(float(v) for v in self.p))
        object.__setattr__(self, "d", tuple(float(v) for v in self.d))
        object.__setattr__(self, "r", tuple(float(v) for v in self.r))
        if len(self.k) != 9 or len(self.p) != 12 or len(self.r) != 9:
            raise ValueError(f"K, R need 9 and P 12 values, got {len(self.k)}, {len(self.r)}, {len(self.p)}")

    @property
    def calibrated(self) -> bool:
        """K holds a focal length (an uncalibrated camera publishes zeros)."""
        return self.k[0] != 0.0 and self.k[4] != 0.0


def transform(model: CameraModel, mx: AxisMap, my: AxisMap, width: int, height: int) -> CameraModel:
    """``model`` for the image that ``u' = mx(u), v' = my(v)`` makes, ``width`` x ``height``
    pixels (binning and roi are kept as they are; see :func:`image_model`)."""
    def rows(m: Sequence[float], n: int) -> List[float]:
        r0, r1, r2 = list(m[:n]), list(m[n:2 * n]), list(m[2 * n:3 * n])
        r0 = [mx.scale * a + mx.offset * c for a, c in zip(r0, r2)]
        r1 = [my.scale * b + my.offset * c for b, c in zip(r1, r2)]
        return r0 + r1 + r2

    return replace(model, width=int(width), height=int(height), k=tuple(rows(model.k, 3)),
                   p=tuple(rows(model.p, 4)))


def image_model(info: CameraModel, image_width: int, image_height: int) -> Tuple[CameraModel, Optional[str]]:
    """``info`` as the intrinsics of the camera image itself (binning and roi folded into K
    and P), and a note when the image size disagrees with what ``info`` announces (else None).

    The image is taken to be: the sensor's roi, binned, then (when the sizes still disagree)
    resized to ``image_width`` x ``image_height``. A ``width``/``height`` of 0 in ``info`` (not
    filled in) means "the image's size".
    """
    bx, by = max(1, int(info.binning_x)), max(1, int(info.binning_y))
    x0, y0, rw, rh, _ = info.roi
    full_w, full_h = int(info.width) or image_width * bx, int(info.height) or image_height * by
    if rw and rh:
        mx, my, w, h = crop_map(x0), crop_map(y0), int(rw), int(rh)
    else:
        mx, my, w, h = AxisMap(), AxisMap(), full_w, full_h
    if bx > 1:
        mx, w = mx.then(resize_map(bx, 1)), w // bx
    if by > 1:
        my, h = my.then(resize_map(by, 1)), h // by
    note = None
    if (w, h) != (image_width, image_height):
        note = (f"camera_info describes a {w}x{h} image (width {info.width}, height {info.height}, "
                f"binning {info.binning_x}x{info.binning_y}, roi {rw}x{rh}+{x0}+{y0}) but the image is "
                f"{image_width}x{image_height}: taken as a resize of it")
        mx, my = mx.then(resize_map(w, image_width)), my.then(resize_map(h, image_height))
    out = transform(info, mx, my, image_width, image_height)
    return replace(out, binning_x=0, binning_y=0, roi=(0, 0, 0, 0, False)), note


def label_model(info: CameraModel, image_size: Tuple[int, int], label_size: Tuple[int, int],
                crop: Optional[Tuple[int, int, int, int]] = None) -> Tuple[CameraModel, Optional[str]]:
    """The camera model of a label image made from the camera image, and the note of
    :func:`image_model`.

    Args:
        info: the camera's CameraInfo fields.
        image_size: ``(height, width)`` of the camera image.
        label_size: ``(height, width)`` of the label image.
        crop: ``(x, y, width, height)`` of the camera image that was resized into the label
            image; None: the whole image (every input_size policy).
    """
    ih, iw = int(image_size[0]), int(image_size[1])
    lh, lw = int(label_size[0]), int(label_size[1])
    model, note = image_model(info, iw, ih)
    x, y, cw, ch = crop if crop is not None else (0, 0, iw, ih)
    mx = crop_map(x).then(resize_map(cw, lw))
    my = crop_map(y).then(resize_map(ch, lh))
    return transform(model, mx, my, lw, lh), note


def project(matrix: Sequence[float], points_xyz: Sequence[Sequence[float]]) -> List[Tuple[float, float]]:
    """Pixel coordinates of camera-frame points under a 3x3 (K) or 3x4 (P) row-major matrix."""
    n = 3 if len(matrix) == 9 else 4
    out = []
    for point in points_xyz:
        vec = list(point)[:3] + ([1.0] if n == 4 else [])
        u, v, w = (sum(matrix[r * n + c] * vec[c] for c in range(n)) for r in range(3))
        out.append((u / w, v / w))
    return out
