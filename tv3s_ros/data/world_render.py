"""Drawing for the synthetic driving world: camera projection, ground, sky and objects.

Geometry lives in road coordinates ``(s, d, h)``: ``s`` metres along the road centreline,
``d`` metres to the right of it, ``h`` metres above the ground. The camera sits at
``(s_ego, d_ego, cam_height)`` looking along the road, yawed by ``psi``; the road's curvature
bends the centreline sideways ahead of it (see ``Road``). Every shape is drawn into the
image and the label map by the same ``cv2.fillPoly``/``cv2.circle`` call with the same
integer vertices and ``LINE_8`` (no anti-aliasing), so labels are pixel-exact; the image is
smoothed later (motion blur, noise) without touching the labels.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

# Cityscapes train ids (tv3s_ros.model.presets.CITYSCAPES_CLASSES order).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS = 11, 12, 13, 14, 15
IGNORE = 255

SHIFT = 2  # fillPoly sub-pixel bits: smooth motion of small far objects, still no anti-aliasing
_SCALE = 1 << SHIFT


class Road:
    """Curvature k(s) = sum a_i sin(w_i s + p_i); its integrals are analytic, so any frame
    can be rendered on its own (random access, no state carried between frames)."""

    def __init__(self, amps: Sequence[float], omegas: Sequence[float], phases: Sequence[float]):
        self.a = np.asarray(amps, np.float64)
        self.w = np.asarray(omegas, np.float64)
        self.p = np.asarray(phases, np.float64)

    def heading(self, s):
        """Road direction at ``s`` (radians, integral of the curvature)."""
        s = np.asarray(s, np.float64)[..., None]
        return np.sum(-self.a / self.w * np.cos(self.w * s + self.p), -1)

    def _heading2(self, s):
        s = np.asarray(s, np.float64)[..., None]
        return np.sum(-self.a / self.w ** 2 * np.sin(self.w * s + self.p), -1)

    def curvature(self, s):
        s = np.asarray(s, np.float64)[..., None]
        return np.sum(self.a * np.sin(self.w * s + self.p), -1)

    def offset(self, s_ego: float, z):
        """Sideways position of the centreline ``z`` metres ahead of ``s_ego``, relative to the
        road's tangent at ``s_ego`` (small-angle approximation)."""
        z = np.asarray(z, np.float64)
        return self._heading2(s_ego + z) - self._heading2(s_ego) - z * self.heading(s_ego)


class Canvas:
    """One frame being drawn: image (RGB uint8), label (uint8) and the camera pose."""

    def __init__(self, height: int, width: int, hfov_deg: float, cam_height: float,
                 horizon: float, near: float, haze, fog_m: float):
        self.h, self.w = height, width
        self.f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        self.cx = width / 2
        self.horizon = horizon * height
        self.cam_h = cam_height
        self.near = near
        self.haze = np.asarray(haze, np.float32)
        self.haze_t = tuple(float(v) for v in haze)
        self._queue: list = []
        self.fog_m = fog_m
        self.image = np.zeros((height, width, 3), np.uint8)
        self.label = np.full((height, width), IGNORE, np.uint8)

    def set_pose(self, road: Road, s_ego: float, d_ego: float, psi: float, pitch_px: float) -> None:
        self.road, self.s_ego, self.d_ego, self.psi = road, s_ego, d_ego, psi
        self.cy = self.horizon + pitch_px

    # -- projection -------------------------------------------------------------------------
    def to_camera(self, s, d, h):
        z = s - self.s_ego
        x = self.road.offset(self.s_ego, z) + d - self.d_ego - self.psi * z
        return x, h - self.cam_h, z

    def fog(self, colour, z: float):
        """Colour seen through ``z`` metres of haze (plain floats: called a thousand times a frame)."""
        a = 1.0 - math.exp(-max(z, 0.0) / self.fog_m)
        hz = self.haze_t
        return (int(colour[0] + (hz[0] - colour[0]) * a), int(colour[1] + (hz[1] - colour[1]) * a),
                int(colour[2] + (hz[2] - colour[2]) * a))

    # -- deferred drawing: objects queue shapes in painter's order; ``flush`` projects every
    # vertex of the frame in one numpy pass, then fills in that order.
    def fill(self, polys, colour, cls: int) -> None:
        """Queue road-space polygons (N, K, 3); image and label get the same vertices."""
        polys = np.asarray(polys, np.float64)
        if polys.ndim == 2:
            polys = polys[None]
        if polys.size:
            self._queue.append((polys, colour, int(cls), 0.0, 1.0))

    def disc(self, s: float, d: float, h: float, radius: float, colour, cls: int,
             squash: float = 1.0) -> None:
        """Queue a filled circle (ellipse when squash != 1) facing the camera."""
        if s - self.s_ego >= self.near:
            self._queue.append((np.array([[[s, d, h]]], np.float64), colour, int(cls), radius, squash))

    def flush(self) -> None:
        queue, self._queue = self._queue, []
        if not queue:
            return
        sizes = [q[0].shape[0] * q[0].shape[1] for q in queue]
        verts = np.concatenate([q[0].reshape(-1, 3) for q in queue])
        x, y, z = self.to_camera(verts[:, 0], verts[:, 1], verts[:, 2])
        front = z >= self.near
        zs = np.where(front, z, 1.0)
        pix = np.empty((len(verts), 2))
        pix[:, 0] = self.cx + self.f * x / zs
        pix[:, 1] = self.cy - self.f * y / zs
        pix *= _SCALE
        np.clip(pix, -1e7, 1e7, out=pix)
        ipix = np.rint(pix).astype(np.int32)
        bounds = np.cumsum([0] + sizes)
        starts = bounds[:-1]
        all_front = np.minimum.reduceat(front, starts) if len(starts) else []
        lo = np.minimum.reduceat(ipix, starts, axis=0)
        hi = np.maximum.reduceat(ipix, starts, axis=0)
        W, H = self.w * _SCALE, self.h * _SCALE
        image, label = self.image, self.label
        for i, (polys, colour, cls, radius, squash) in enumerate(queue):
            a, b = bounds[i], bounds[i + 1]
            if radius > 0:  # a disc: one centre vertex
                if not front[a]:
                    continue
                r = self.f * radius / z[a] * _SCALE
                u, v = ipix[a]
                if r < 0.3 * _SCALE or u + r < 0 or u - r > W or v + r < 0 or v - r > H:
                    continue
                axes = (max(int(round(r)), 1), max(int(round(r * squash)), 1))
                centre = (int(u), int(v))
                cv2.ellipse(image, centre, axes, 0, 0, 360, colour, -1, cv2.LINE_8, SHIFT)
                cv2.ellipse(label, centre, axes, 0, 0, 360, cls, -1, cv2.LINE_8, SHIFT)
                continue
            if all_front[i]:
                if hi[i, 0] < 0 or lo[i, 0] >= W or hi[i, 1] < 0 or lo[i, 1] >= H:
                    continue
                pts = ipix[a:b].reshape(polys.shape[0], polys.shape[1], 2)
            else:  # some vertex behind the near plane: clip those polygons one by one
                pts = []
                for k, poly in enumerate(polys):
                    if front[a + k * polys.shape[1]: a + (k + 1) * polys.shape[1]].all():
                        pts.append(ipix[a + k * polys.shape[1]: a + (k + 1) * polys.shape[1]])
                        continue
                    clipped = self._clip(poly)
                    if len(clipped):
                        pts.append(self._to_pixels(clipped))
                if not pts:
                    continue
            cv2.fillPoly(image, pts, colour, cv2.LINE_8, SHIFT)
            cv2.fillPoly(label, pts, cls, cv2.LINE_8, SHIFT)

    def _clip(self, poly: np.ndarray) -> np.ndarray:
        """Sutherland-Hodgman against the near plane (z is linear in s, so clip in road space)."""
        out = []
        lim = self.s_ego + self.near
        n = len(poly)
        for i in range(n):
            a, b = poly[i], poly[(i + 1) % n]
            ina, inb = a[0] >= lim, b[0] >= lim
            if ina:
                out.append(a)
            if ina != inb:
                t = (lim - a[0]) / (b[0] - a[0])
                out.append(a + t * (b - a))
        return np.array(out) if len(out) >= 3 else np.zeros((0, 3))

    def _to_pixels(self, poly: np.ndarray) -> np.ndarray:
        x, y, z = self.to_camera(poly[:, 0], poly[:, 1], poly[:, 2])
        pts = np.stack([self.cx + self.f * x / z, self.cy - self.f * y / z], -1) * _SCALE
        return np.rint(np.clip(pts, -1e7, 1e7)).astype(np.int32)

    def depth_of(self, s: float) -> float:
        return s - self.s_ego


# -- shape helpers (road space) ----------------------------------------------------------------
def quad_s(s: float, d0: float, d1: float, h0: float, h1: float) -> np.ndarray:
    """Rectangle in the plane s = const (faces the camera)."""
    return np.array([[s, d0, h0], [s, d1, h0], [s, d1, h1], [s, d0, h1]], np.float64)


def quad_d(d: float, s0: float, s1: float, h0: float, h1: float) -> np.ndarray:
    """Rectangle in the plane d = const (a façade or a car's side)."""
    return np.array([[s0, d, h0], [s1, d, h0], [s1, d, h1], [s0, d, h1]], np.float64)


def quad_h(h: float, s0: float, s1: float, d0: float, d1: float) -> np.ndarray:
    """Rectangle in the plane h = const (a roof)."""
    return np.array([[s0, d0, h], [s1, d0, h], [s1, d1, h], [s0, d1, h]], np.float64)


def shade(colour, k: float):
    return tuple(int(min(max(c * k, 0), 255)) for c in colour)


# -- ground and sky ---------------------------------------------------------------------------
class Backdrop:
    """Per-pixel ground (road, markings, curbs, sidewalks, grass) and sky with clouds.

    Textures are looked up in road coordinates (ground) or in world azimuth (clouds), so they
    stay attached to the world while the camera moves and turns.
    """

    def __init__(self, rng: np.random.Generator, style: dict):
        self.style = style
        self.noise = rng.standard_normal((256, 256)).astype(np.float32)
        coarse = rng.standard_normal((16, 16)).astype(np.float32)
        self.patches = cv2.resize(coarse, (256, 256), interpolation=cv2.INTER_CUBIC)
        clouds = rng.standard_normal((8, 48)).astype(np.float32)
        clouds = cv2.resize(clouds, (768, 128), interpolation=cv2.INTER_CUBIC)
        fine = cv2.resize(rng.standard_normal((32, 192)).astype(np.float32), (768, 128),
                          interpolation=cv2.INTER_CUBIC)
        c = clouds + 0.35 * fine - style["cloud_cover"]
        self.clouds = np.clip(c * 1.4, 0, 1).astype(np.float32)
        ridge = cv2.resize(rng.random((1, 96)).astype(np.float32), (1536, 1),
                           interpolation=cv2.INTER_CUBIC)[0]
        bumps = rng.random(1536).astype(np.float32)
        self.treeline = 0.6 * ridge + 0.4 * np.convolve(bumps, np.ones(5) / 5, "same")

    def draw(self, cv: Canvas, heading: float) -> None:
        st = self.style
        h, w = cv.h, cv.w
        horizon = int(math.floor(cv.cy)) + 1  # first ground row
        horizon = min(max(horizon, 1), h)
        u = np.arange(w, dtype=np.float32) + 0.5
        # Sky: vertical gradient plus clouds fixed in world azimuth.
        rows = np.arange(horizon, dtype=np.float32) + 0.5
        elev = (cv.cy - rows) / cv.f  # tangent of the elevation
        t = np.clip(elev / 0.6, 0, 1)[:, None, None]
        sky = st["sky_top"] * t + st["sky_low"] * (1 - t)
        az = np.arctan((u - cv.cx) / cv.f) + heading
        col = ((az / (2 * math.pi)) * 1536).astype(np.int64) % 768
        row = np.clip((elev * 300).astype(np.int64), 0, 127)
        cl = self.clouds[row[:, None], col[None, :]][..., None]
        sky = sky * (1 - cl) + st["cloud"] * cl * (0.85 + 0.15 * t)
        cv.image[:horizon] = np.clip(sky, 0, 255).astype(np.uint8)
        cv.label[:horizon] = SKY
        # Ground: every pixel below the horizon hits the plane h = 0 at depth z.
        rows = np.arange(horizon, h, dtype=np.float64) + 0.5
        if len(rows):
            z = cv.f * cv.cam_h / (rows - cv.cy)
            x = (u[None, :] - cv.cx) * z[:, None] / cv.f
            d = x + cv.d_ego + cv.psi * z[:, None] - cv.road.offset(cv.s_ego, z)[:, None]
            s = cv.s_ego + z[:, None] + 0 * d
            self._ground(cv, horizon, s.astype(np.float32), d.astype(np.float32), z)
        # Distant tree line above the horizon, fixed in azimuth.
        col = ((az / (2 * math.pi)) * 3072).astype(np.int64) % 1536
        top = cv.cy - (0.004 + 0.03 * self.treeline[col] * st["treeline"]) * cv.f
        ys = np.arange(horizon, dtype=np.float32)[:, None]
        mask = (ys >= top[None, :]) & (ys < horizon)
        if mask.any():
            tone = st["treeline_colour"] * (0.85 + 0.15 * self.noise[(ys.astype(int) * 7) % 256,
                                                                     np.arange(w) % 256])[..., None]
            far = np.clip(tone * 0.55 + np.asarray(st["haze"]) * 0.45, 0, 255).astype(np.uint8)
            cv.image[:horizon][mask] = far[mask]
            cv.label[:horizon][mask] = VEGETATION

    def _ground(self, cv: Canvas, top: int, s, d, z) -> None:
        st = self.style
        rw = st["road_half"]
        ad = np.abs(d)
        label = np.full(s.shape, TERRAIN, np.uint8)
        curb = rw + 0.25
        walk = curb + st["sidewalk"]
        label[ad < walk] = SIDEWALK
        label[ad < rw] = ROAD
        iu = (s * 6).astype(np.int64) & 255
        iv = (d * 6).astype(np.int64) & 255
        grain = self.noise[iu, iv]
        patch = self.patches[(s * 0.4).astype(np.int64) & 255, (d * 0.4).astype(np.int64) & 255]
        lut = np.array([st["asphalt"], st["paving"], st["grass"]], np.float32)
        idx = np.where(label == ROAD, 0, np.where(label == SIDEWALK, 1, 2))
        img = lut[idx]
        amp = np.where(label == ROAD, 3.0, np.where(label == SIDEWALK, 4.0, 12.0)).astype(np.float32)
        img += (grain * amp + patch * amp * 1.4)[..., None]
        # Grass: yellow-brown tint where the coarse noise says so.
        dirt = (label == TERRAIN) & (patch > 0.5)
        img[dirt] = img[dirt] * 0.6 + np.float32(st["dirt"]) * 0.4
        # Paving joints every 1.2 m, and a lighter curb stone.
        walk_px = label == SIDEWALK
        joints = walk_px & (((s % 1.2) < 0.07) | (((ad - curb) % 1.2) < 0.07))
        img[joints] *= 0.8
        img[walk_px & (ad < curb)] = np.float32(st["curb"]) + grain[walk_px & (ad < curb)][:, None] * 6
        # Lane markings (labelled road): dashed lane lines, solid edges, a centre line.
        lw = st["lane_width"]
        half = 0.075
        dashed = (np.abs(ad - lw) < half) & ((s % 9.0) < 3.0)
        if st["lanes_per_side"] > 2:
            dashed |= (np.abs(ad - 2 * lw) < half) & ((s % 9.0) < 3.0)
        edge = np.abs(ad - (rw - 0.25)) < half
        centre = np.abs(d) < (half * 2 if st["double_centre"] else half)
        if st["double_centre"]:
            centre &= np.abs(d) > half * 0.6
        paint = (dashed | edge) & (label == ROAD)
        img[paint] = np.float32(st["paint"]) + grain[paint][:, None] * 5
        img[centre] = np.float32(st["centre_paint"]) + grain[centre][:, None] * 5
        # Haze by depth.
        a = (1 - np.exp(-z / cv.fog_m)).astype(np.float32)[:, None, None]
        img = img * (1 - a) + cv.haze * a
        cv.image[top:] = np.clip(img, 0, 255).astype(np.uint8)
        cv.label[top:] = label


# -- capture effects --------------------------------------------------------------------------
def motion_blur(image: np.ndarray, length_px: float, vertical_px: float) -> np.ndarray:
    """Horizontal (yaw) and vertical (bump) smear of ``length_px`` / ``vertical_px`` pixels."""
    k = int(round(length_px))
    kv = int(round(vertical_px))
    if k < 2 and kv < 2:
        return image
    return cv2.blur(image, (max(k, 1), max(kv, 1)))


# -- objects ----------------------------------------------------------------------------------
# Each object has ``span`` (s range it may occupy at time t, for culling), ``key`` (painter's
# order: larger is drawn first) and ``draw``. Things in the building line get a depth bias so
# everything on the sidewalk or road in front of them is drawn later.
LINE_BIAS = 8.0


def _dist(cv: Canvas, s: float, d: float) -> float:
    return math.hypot(s - cv.s_ego, d - cv.d_ego)


class FacadePiece:
    """Up to 4 m of a building's road-facing wall, with its windows and ground-floor band."""

    def __init__(self, side, s0, s1, d_face, height, colour, band, windows, glass):
        self.side, self.s0, self.s1, self.d, self.height = side, s0, s1, d_face, height
        self.colour, self.band, self.windows, self.glass = colour, band, windows, glass

    def span(self, t):
        return self.s0, self.s1

    def key(self, cv, t):
        return _dist(cv, 0.5 * (self.s0 + self.s1), self.side * self.d) + LINE_BIAS

    def draw(self, cv: Canvas, t: float) -> None:
        z = max(0.5 * (self.s0 + self.s1) - cv.s_ego, 0.0)
        d = self.side * self.d
        cv.fill(quad_d(d, self.s0, self.s1, 0, self.height)[None], cv.fog(self.colour, z), BUILDING)
        if self.band is not None:  # shop front / plinth and a cornice
            cv.fill(quad_d(d, self.s0, self.s1, 0, 3.2)[None], cv.fog(self.band, z), BUILDING)
            cv.fill(quad_d(d, self.s0, self.s1, self.height - 0.5, self.height)[None],
                    cv.fog(shade(self.colour, 0.7), z), BUILDING)
        if z < 90:  # windows: geometry of their own, part of the building class
            for polys, colour in zip(self.windows, self.glass):
                if len(polys):
                    cv.fill(polys, cv.fog(colour, z), BUILDING)


class EndFace:
    """The side wall of a building at its near end (seen at a gap or a cross street)."""

    def __init__(self, side, s, d_face, depth, height, colour, cls=BUILDING):
        self.side, self.s, self.d, self.depth, self.height = side, s, d_face, depth, height
        self.colour, self.cls = colour, cls

    def span(self, t):
        return self.s, self.s

    def key(self, cv, t):
        return _dist(cv, self.s, self.side * (self.d + 0.5 * self.depth)) + LINE_BIAS

    def draw(self, cv, t):
        z = self.s - cv.s_ego
        if z <= cv.near:
            return
        sd = self.side
        cv.fill(quad_s(self.s, sd * self.d, sd * (self.d + self.depth), 0, self.height)[None],
                cv.fog(shade(self.colour, 0.72), z), self.cls)


class Barrier:
    """A wall (solid) or a fence (with posts) along the building line or the sidewalk."""

    def __init__(self, side, s0, s1, d, height, colour, cls):
        self.side, self.s0, self.s1, self.d, self.height = side, s0, s1, d, height
        self.colour, self.cls = colour, cls
        n = max(int((s1 - s0) / 2.0), 1)
        ss = np.linspace(s0, s1, n + 1)
        dd = side * (d - 0.02)
        self.posts = np.stack([quad_d(dd, a - 0.06, a + 0.06, 0, height + 0.1) for a in ss])

    def span(self, t):
        return self.s0, self.s1

    def key(self, cv, t):
        return _dist(cv, 0.5 * (self.s0 + self.s1), self.side * self.d) + LINE_BIAS

    def draw(self, cv, t):
        z = max(0.5 * (self.s0 + self.s1) - cv.s_ego, 0.0)
        d = self.side * self.d
        # Split long runs so the curvature bends them like the kerb.
        n = max(int(math.ceil((self.s1 - self.s0) / 4.0)), 1)
        ss = np.linspace(self.s0, self.s1, n + 1)
        quads = np.stack([quad_d(d, a, b, 0, self.height) for a, b in zip(ss[:-1], ss[1:])])
        cv.fill(quads, cv.fog(self.colour, z), self.cls)
        if self.cls == FENCE:
            cv.fill(quads * [1, 1, 0.25] + [0, 0, 0.75 * self.height],
                    cv.fog(shade(self.colour, 1.25), z), FENCE)
            cv.fill(self.posts, cv.fog(shade(self.colour, 0.6), z), FENCE)
        else:
            cv.fill(quads * [1, 1, 0.1] + [0, 0, 0.9 * self.height],
                    cv.fog(shade(self.colour, 1.15), z), WALL)


class Tree:
    """Trunk plus a canopy of overlapping discs (all vegetation)."""

    def __init__(self, s, d, trunk_h, trunk_colour, blobs, in_line):
        self.s, self.d, self.trunk_h, self.trunk_colour = s, d, trunk_h, trunk_colour
        self.blobs = blobs  # list of (ds, dd, h, r, colour), back to front
        self.bias = LINE_BIAS if in_line else 0.0

    def span(self, t):
        return self.s - 3, self.s + 3

    def key(self, cv, t):
        return _dist(cv, self.s, self.d) + self.bias

    def draw(self, cv, t):
        z = self.s - cv.s_ego
        if z <= cv.near:
            return
        cv.fill(quad_s(self.s, self.d - 0.15, self.d + 0.15, 0, self.trunk_h + 0.5)[None],
                cv.fog(self.trunk_colour, z), VEGETATION)
        for ds, dd, h, r, colour in self.blobs:
            cv.disc(self.s + ds, self.d + dd, h, r, cv.fog(colour, z + ds), VEGETATION)


class Hedge:
    def __init__(self, side, s0, s1, d, height, colour):
        self.side, self.s0, self.s1, self.d, self.height, self.colour = side, s0, s1, d, height, colour

    def span(self, t):
        return self.s0, self.s1

    def key(self, cv, t):
        return _dist(cv, 0.5 * (self.s0 + self.s1), self.side * self.d)

    def draw(self, cv, t):
        z = max(0.5 * (self.s0 + self.s1) - cv.s_ego, 0.0)
        d = self.side * self.d
        n = max(int(math.ceil((self.s1 - self.s0) / 4.0)), 1)
        ss = np.linspace(self.s0, self.s1, n + 1)
        top = np.stack([quad_h(self.height, a, b, d, d + self.side * 0.8)
                        for a, b in zip(ss[:-1], ss[1:])])
        front = np.stack([quad_d(d, a, b, 0, self.height) for a, b in zip(ss[:-1], ss[1:])])
        cv.fill(top, cv.fog(shade(self.colour, 1.2), z), VEGETATION)
        cv.fill(front, cv.fog(self.colour, z), VEGETATION)
        if self.s0 > cv.s_ego + cv.near:
            cv.fill(quad_s(self.s0, d, d + self.side * 0.8, 0, self.height)[None],
                    cv.fog(shade(self.colour, 0.8), z), VEGETATION)


class PoleThing:
    """A street lamp, a traffic sign or a traffic light on a pole at the kerb."""

    def __init__(self, kind, s, d, side, height, variant, phase=0.0):
        self.kind, self.s, self.d, self.side, self.height = kind, s, d, side, height
        self.variant, self.phase = variant, phase

    def span(self, t):
        return self.s, self.s

    def key(self, cv, t):
        return _dist(cv, self.s, self.d)

    def draw(self, cv, t):
        z = self.s - cv.s_ego
        if z <= cv.near:
            return
        s, d, H = self.s, self.d, self.height
        grey = cv.fog((118, 120, 124), z)
        cv.fill(quad_s(s, d - 0.07, d + 0.07, 0, H)[None], grey, POLE)
        if self.kind == "lamp":
            arm = d - self.side * 1.6
            cv.fill(quad_s(s, min(d, arm), max(d, arm), H - 0.12, H)[None], grey, POLE)
            cv.fill(quad_s(s, arm - 0.3, arm + 0.3, H - 0.25, H - 0.05)[None],
                    cv.fog((70, 72, 76), z), POLE)
        elif self.kind == "sign":
            self._sign(cv, s, d, H, z)
        else:
            self._light(cv, s, d, H, z, t)

    def _sign(self, cv, s, d, H, z):
        v = self.variant
        c = H - 0.35
        if v == 0:  # prohibition: red ring, white face
            cv.disc(s, d, c, 0.33, cv.fog((200, 30, 35), z), SIGN)
            cv.disc(s, d, c, 0.25, cv.fog((238, 238, 235), z), SIGN)
        elif v == 1:  # mandatory: blue disc with a white bar
            cv.disc(s, d, c, 0.32, cv.fog((30, 80, 175), z), SIGN)
            cv.fill(quad_s(s, d - 0.18, d + 0.18, c - 0.04, c + 0.04)[None], cv.fog((240, 240, 240), z), SIGN)
        elif v == 2:  # warning triangle
            tri = np.array([[s, d - 0.38, c - 0.3], [s, d + 0.38, c - 0.3], [s, d, c + 0.36]])
            inner = np.array([[s, d - 0.26, c - 0.23], [s, d + 0.26, c - 0.23], [s, d, c + 0.22]])
            cv.fill(tri[None], cv.fog((205, 35, 35), z), SIGN)
            cv.fill(inner[None], cv.fog((240, 235, 225), z), SIGN)
        elif v == 3:  # priority road: yellow diamond
            dia = np.array([[s, d, c - 0.35], [s, d + 0.35, c], [s, d, c + 0.35], [s, d - 0.35, c]])
            cv.fill(dia[None], cv.fog((245, 245, 240), z), SIGN)
            cv.fill((dia - [0, d, c]) * [1, 0.65, 0.65] + [0, d, c], cv.fog((240, 190, 20), z), SIGN)
        else:  # street name / direction board
            cv.fill(quad_s(s, d - 0.55, d + 0.55, c - 0.25, c + 0.25)[None], cv.fog((20, 95, 60), z), SIGN)
            cv.fill(quad_s(s, d - 0.45, d + 0.45, c - 0.05, c + 0.03)[None], cv.fog((230, 230, 230), z), SIGN)

    def _light(self, cv, s, d, H, z, t):
        # 20 s cycle: green 9 s, amber 2 s, red 9 s.
        phase = (t + self.phase) % 20.0
        lit = 2 if phase < 9 else (1 if phase < 11 else 0)
        heads = [d]
        if self.variant == 1:  # a mast arm over the road with a second head
            arm = d - self.side * 3.5
            cv.fill(quad_s(s, min(d, arm), max(d, arm), H - 0.1, H + 0.05)[None],
                    cv.fog((118, 120, 124), z), POLE)
            heads.append(arm)
        for hd in heads:
            top = H + 0.35 if hd == d else H
            cv.fill(quad_s(s, hd - 0.2, hd + 0.2, top - 1.0, top)[None], cv.fog((38, 40, 36), z), LIGHT)
            for k, colour in enumerate(((235, 40, 30), (245, 170, 20), (40, 225, 110))):
                on = colour if k == lit else shade(colour, 0.25)
                cv.disc(s - 0.01, hd, top - 0.18 - 0.31 * k, 0.12, cv.fog(on, z), LIGHT)


class Vehicle:
    """A car, truck or bus driving along a lane at constant speed (``s(t) = s0 + v t``)."""

    def __init__(self, kind, s0, v, d, length, width, colour, lead=None):
        self.kind, self.s0, self.v, self.d = kind, s0, v, d
        self.length, self.width, self.colour = length, width, colour
        self.lead = lead  # callable t -> s centre (the car ahead of ego), overrides s0 + v t
        self.cls = {"car": CAR, "truck": TRUCK, "bus": BUS}[kind]

    def centre(self, t):
        return self.lead(t) if self.lead is not None else self.s0 + self.v * t

    def span(self, t):
        c = self.centre(t)
        return c - self.length / 2, c + self.length / 2

    def key(self, cv, t):
        return _dist(cv, self.centre(t), self.d)

    def draw(self, cv, t):
        c = self.centre(t)
        s0, s1 = c - self.length / 2, c + self.length / 2
        if s1 <= cv.s_ego + cv.near:
            return
        z = max(s0 - cv.s_ego, 0.0)
        w2 = self.width / 2
        d0, d1 = self.d - w2, self.d + w2
        facing = self.v < 0  # oncoming: we see its front
        # Contact shadow on the road first (still road, as in real labels).
        cv.fill(quad_h(0.01, s0 - 0.2, s1 + 0.2, d0 - 0.15, d1 + 0.15)[None],
                cv.fog((35, 35, 38), z), ROAD)
        if self.kind == "car":
            self._box(cv, z, s0, s1, d0, d1, 0.28, 1.02, self.colour, facing, body=True)
            ca, cb = (s0 + 0.9, s1 - 0.6) if facing else (s0 + 0.6, s1 - 0.9)
            self._box(cv, z, ca, cb, d0 + 0.12, d1 - 0.12, 1.02, 1.48, self.colour, facing, cabin=True)
        elif self.kind == "truck":
            cab = (s0, s0 + 2.3) if facing else (s1 - 2.3, s1)
            cargo = (s0 + 2.5, s1) if facing else (s0, s1 - 2.5)
            parts = [(cab, 0.35, 2.9, self.colour, True), (cargo, 0.9, 3.6, (225, 225, 220), False)]
            if facing:
                parts.reverse()  # the farther box first
            for (a, b), lo, hi, col, is_cab in parts:
                self._box(cv, z, a, b, d0, d1, lo, hi, col, facing, body=is_cab)
        else:
            self._box(cv, z, s0, s1, d0, d1, 0.3, 3.1, self.colour, facing, body=True, bus=True)
        self._wheels(cv, z, s0, s1, d0, d1)

    def _box(self, cv, z, s0, s1, d0, d1, h0, h1, colour, facing, body=False, cabin=False, bus=False):
        cls = self.cls
        cam = cv.s_ego
        glass = cv.fog((40, 48, 58), z)
        if cv.cam_h > h1:
            cv.fill(quad_h(h1, s0, s1, d0, d1)[None], cv.fog(shade(colour, 1.12), z), cls)
        sides = []
        if cv.d_ego < d0:
            sides.append(d0)
        elif cv.d_ego > d1:
            sides.append(d1)
        for sd in sides:
            cv.fill(quad_d(sd, s0, s1, h0, h1)[None], cv.fog(shade(colour, 0.8), z), cls)
            if cabin:
                cv.fill(quad_d(sd, s0 + 0.15, s1 - 0.15, h0 + 0.06, h1 - 0.06)[None], glass, cls)
            if bus:
                cv.fill(quad_d(sd, s0 + 0.5, s1 - 0.5, 1.5, 2.7)[None], glass, cls)
        if cam < s0:  # the face towards us: the rear, or the front of an oncoming vehicle
            cv.fill(quad_s(s0, d0, d1, h0, h1)[None], cv.fog(colour, z), cls)
            w = d1 - d0
            if cabin:
                cv.fill(quad_s(s0, d0 + 0.1, d1 - 0.1, h0 + 0.05, h1 - 0.07)[None], glass, cls)
            if bus:
                cv.fill(quad_s(s0, d0 + 0.15, d1 - 0.15, 1.4, 2.8)[None], glass, cls)
            if body:
                lamp = (250, 245, 215) if facing else (200, 20, 25)
                lh = h0 + 0.45 if not bus else 0.9
                for a in (d0 + 0.08, d1 - 0.08 - 0.22 * w / 1.8):
                    cv.fill(quad_s(s0, a, a + 0.22 * w / 1.8, lh, lh + 0.14)[None], cv.fog(lamp, z), cls)
                mid = 0.5 * (d0 + d1)
                cv.fill(quad_s(s0, mid - 0.26, mid + 0.26, h0 + 0.12, h0 + 0.25)[None],
                        cv.fog((235, 235, 230), z), cls)
                if facing and not bus:  # windscreen of an oncoming car is in its cabin; grille here
                    cv.fill(quad_s(s0, mid - 0.4, mid + 0.4, lh - 0.02, lh + 0.12)[None],
                            cv.fog((30, 30, 32), z), cls)

    def _wheels(self, cv, z, s0, s1, d0, d1):
        tyre = cv.fog((22, 22, 24), z)
        if cv.s_ego < s0:
            for a in (d0 + 0.05, d1 - 0.3):
                cv.fill(quad_s(s0 + 0.6, a, a + 0.25, 0, 0.34)[None], tyre, self.cls)
        side = d0 if cv.d_ego < d0 else (d1 if cv.d_ego > d1 else None)
        if side is not None:
            for a in (s0 + 0.75, s1 - 0.75):
                ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
                poly = np.stack([a + 0.34 * np.cos(ang), np.full(10, side), 0.34 + 0.34 * np.sin(ang)], -1)
                cv.fill(poly[None], tyre, self.cls)


class Person:
    """A pedestrian walking along the sidewalk: legs, torso, arms, head (all person)."""

    def __init__(self, s0, v, d, height, shirt, trousers, skin, hair):
        self.s0, self.v, self.d, self.height = s0, v, d, height
        self.shirt, self.trousers, self.skin, self.hair = shirt, trousers, skin, hair

    def span(self, t):
        s = self.s0 + self.v * t
        return s, s

    def key(self, cv, t):
        return _dist(cv, self.s0 + self.v * t, self.d)

    def draw(self, cv, t):
        s = self.s0 + self.v * t
        z = s - cv.s_ego
        if z <= cv.near:
            return
        H, d = self.height, self.d
        step = 2 * math.pi * abs(self.v) * t / 1.5
        swing = 0.07 * math.sin(step)
        hip, shoulder = 0.5 * H, 0.81 * H
        polys = []
        for sign in (-1, 1):
            foot = d + sign * 0.1 + sign * swing
            lift = max(0.0, 0.09 * math.sin(step) * sign)
            polys.append([[s, d + sign * 0.11 - 0.06, hip], [s, d + sign * 0.11 + 0.06, hip],
                          [s, foot + 0.06, lift], [s, foot - 0.06, lift]])
        cv.fill(np.array(polys), cv.fog(self.trousers, z), PERSON)
        arms = []
        for sign in (-1, 1):
            hand = d + sign * 0.24 - sign * swing * 0.6
            arms.append([[s, d + sign * 0.17, shoulder], [s, d + sign * 0.25, shoulder - 0.02],
                         [s, hand + 0.04, 0.47 * H], [s, hand - 0.04, 0.47 * H]])
        cv.fill(np.array(arms), cv.fog(shade(self.shirt, 0.85), z), PERSON)
        cv.fill(quad_s(s, d - 0.19, d + 0.19, hip - 0.04, shoulder + 0.02)[None], cv.fog(self.shirt, z), PERSON)
        cv.fill(quad_s(s, d - 0.05, d + 0.05, shoulder, 0.88 * H)[None], cv.fog(self.skin, z), PERSON)
        cv.disc(s, d, 0.93 * H, 0.105, cv.fog(self.skin, z), PERSON, squash=1.2)
        cv.disc(s + 0.01, d, 0.95 * H, 0.1, cv.fog(self.hair, z), PERSON, squash=0.9)
