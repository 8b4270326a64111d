"""A synthetic driving world: temporally coherent videos with pixel-exact Cityscapes labels.

    python -m tv3s_ros.data.world /tmp/world --videos 8 --val-videos 2 --frames 120 --size 256x512
    python -m tv3s_ros.data.world /tmp/world --videos 2 --frames 60 --format png --bag

Each video is one seed: a road (curving, 1 or 2 lanes per direction) with lane markings, kerbs,
sidewalks, buildings, trees, walls and fences, lamps, signs and traffic lights, cars, trucks,
buses and pedestrians that move in world coordinates, seen by a pinhole camera on a car that
drives and turns. Capture effects: lighting drift, sensor noise, motion blur from turning, and
short "hard" events (a wiper or a dirt blob over the lens, an over-exposed flash, heavy noise)
whose labels stay the true scene. Labels are Cityscapes train ids (0 road ... 18 bicycle,
255 ignore); see ``CLASSES``.

In memory::

    from tv3s_ros.data import World
    for image, label, flags in World(seed=3, size=(256, 512)).frames(30):
        ...   # RGB uint8 HxWx3, uint8 HxW train ids, dict (flags["hard"], flags["event"], ...)

Everything is a function of (seed, frame index): any frame renders on its own, and the same
seed gives byte-identical frames on the same numpy/OpenCV build.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from tv3s_ros.data import world_render as R

WORLD_VERSION = "1"
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
IGNORE_INDEX = 255
EVENTS = ("wiper", "blob", "flash", "noise")

CHUNK_M = 40.0      # static content and traffic are generated per 40 m of road, seeded by index
Z_FAR = 170.0       # nothing is drawn beyond this depth (haze hides the pop-in)
EVENT_BLOCK = 16    # at most one hard event starts per block of frames
_MAX_PED_SPEED = 1.7

_FACADES = ((188, 170, 146), (160, 88, 66), (196, 196, 190), (220, 204, 166), (128, 128, 134),
            (204, 176, 152), (172, 146, 114), (150, 160, 170), (226, 222, 210), (120, 96, 84))
_CAR_COLOURS = ((235, 235, 232), (25, 25, 28), (160, 163, 168), (150, 25, 30), (30, 55, 120),
                (40, 70, 50), (110, 112, 118), (200, 170, 40), (90, 40, 30), (70, 110, 160))
_CLOTHES = ((30, 30, 35), (60, 70, 110), (150, 30, 40), (200, 200, 195), (80, 100, 60),
            (170, 120, 60), (40, 90, 140), (120, 60, 110), (210, 170, 60), (90, 90, 92))
_SKIN = ((232, 190, 160), (200, 150, 110), (150, 100, 70), (100, 66, 46))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    # SeedSequence entropy must be non-negative: shift chunk indices (negative behind the start).
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [int(k) + (1 << 20) for k in keys])


def _jitter(rng, colour, amount=14):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _style(seed: int, size: Tuple[int, int]) -> dict:
    rng = _rng(seed, 0)
    lanes = int(rng.choice([1, 2], p=[0.35, 0.65]))
    lane_w = float(rng.uniform(3.2, 3.7))
    sky_top = np.array([rng.uniform(60, 110), rng.uniform(115, 150), rng.uniform(185, 230)], np.float32)
    sky_low = np.float32(0.45) * sky_top + np.float32(0.55) * np.array([215, 222, 230], np.float32)
    haze = 0.75 * sky_low + 0.25 * np.array([150, 150, 150], np.float32)
    grey = rng.uniform(78, 100)
    return dict(
        lanes_per_side=lanes, lane_width=lane_w, road_half=lanes * lane_w + 0.3,
        sidewalk=float(rng.uniform(2.6, 4.5)), double_centre=bool(rng.random() < 0.5),
        asphalt=(grey, grey, grey + rng.uniform(0, 6)),
        paving=tuple(np.array([165, 160, 150]) + rng.uniform(-15, 15)),
        curb=(190, 188, 182), paint=(228, 228, 220),
        centre_paint=(225, 185, 50) if rng.random() < 0.4 else (228, 228, 220),
        grass=(rng.uniform(75, 105), rng.uniform(112, 138), rng.uniform(50, 72)), dirt=(140, 122, 88),
        sky_top=sky_top, sky_low=sky_low, cloud=np.array([238, 238, 242], np.float32) * rng.uniform(0.82, 1.0),
        cloud_cover=float(rng.uniform(-0.2, 1.2)), haze=haze,
        treeline=float(rng.uniform(0.4, 1.0)),
        treeline_colour=np.array([55, 82, 45], np.float32) * rng.uniform(0.8, 1.2),
        building_p=float(rng.uniform(0.55, 0.9)), tree_p=float(rng.uniform(0.2, 0.7)),
        traffic_gap=float(rng.uniform(18, 45)), peds=float(rng.uniform(1.0, 4.5)),
        hfov=float(rng.uniform(72, 86)), cam_h=float(rng.uniform(1.35, 1.6)),
        horizon=float(rng.uniform(0.42, 0.5)), fog_m=float(rng.uniform(90, 220)),
        v_ego=float(rng.uniform(7.0, 12.0)), v_lane=float(rng.uniform(6.0, 14.0)),
        v_onc=(float(rng.uniform(7.0, 14.0)), float(rng.uniform(7.0, 14.0))),
        lead=bool(rng.random() < 0.7), lead_gap=float(rng.uniform(11, 28)),
        exposure=float(rng.uniform(0.85, 1.12)), tint=rng.uniform(0.94, 1.06, 3).astype(np.float32),
        noise=float(rng.uniform(1.5, 4.5)), event_p=float(rng.uniform(0.45, 0.75)),
        curv=(rng.uniform(-1, 1, 2) * [1 / 180, 1 / 320]), curv_w=2 * math.pi / rng.uniform([260, 700], [520, 1400]),
        curv_p=rng.uniform(0, 2 * math.pi, 2), osc=rng.uniform(0, 2 * math.pi, 8),
    )


class World:
    """One synthetic drive (a seed). ``render(i)`` gives frame ``i``; ``frames(n)`` the first n."""

    def __init__(self, seed: int, size: Tuple[int, int] = (256, 512), fps: float = 15.0,
                 events: bool = True):
        self.seed = int(seed)
        self.height, self.width = (int(v) for v in size)
        self.fps = float(fps)
        self.events = events
        st = self.style = _style(self.seed, (self.height, self.width))
        self.road = R.Road(st["curv"], st["curv_w"], st["curv_p"])
        self.backdrop = R.Backdrop(_rng(self.seed, 1), st)
        lw = st["lane_width"]
        self.ego_lane = 0.5 * lw
        # Traffic streams: (lane centre d, speed); ego drives in the inner lane of its side.
        self.streams = [(-(k + 0.5) * lw, -st["v_onc"][k]) for k in range(st["lanes_per_side"])]
        if st["lanes_per_side"] > 1:
            self.streams.append((1.5 * lw, st["v_lane"]))
        self._chunks: Dict[int, list] = {}
        self._traffic: Dict[Tuple[int, int], list] = {}
        self._peds: Dict[int, list] = {}
        self.lead = None
        if st["lead"]:
            rng = _rng(self.seed, 2)
            self.lead = _vehicle(rng, "car", 0.0, 0.0, self.ego_lane)
            self.lead.lead = self._lead_centre
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        r2 = ((xx - self.width / 2) / self.width) ** 2 + ((yy - self.height / 2) / self.height) ** 2
        self._vignette = (1.0 - 0.35 * r2)[..., None].astype(np.float32)
        # Sensor noise: one bank per world, each frame a randomly offset window of it (cheaper
        # than fresh normals per frame, and still different frame to frame).
        self._noise = _rng(self.seed, 8).standard_normal((self.height + 32, self.width + 32, 3),
                                                         dtype=np.float32)

    # -- ego motion (analytic in time) -----------------------------------------------------
    def ego(self, t: float) -> Tuple[float, float, float, float]:
        """(s, d, yaw relative to the road, pitch in pixels) of the camera at time ``t``."""
        st, o = self.style, self.style["osc"]
        v0, w = st["v_ego"], 2 * math.pi / 9.0
        s = v0 * t - 0.15 * v0 / w * (math.cos(w * t + o[0]) - math.cos(o[0]))
        d = self.ego_lane + 0.22 * math.sin(2 * math.pi * t / 7.0 + o[1])
        psi = 0.025 * math.sin(2 * math.pi * t / 5.5 + o[2]) + 0.01 * math.sin(2 * math.pi * t / 2.3 + o[3])
        pitch = self.height * (0.003 * math.sin(2 * math.pi * t / 1.3 + o[4])
                               + 0.0012 * math.sin(2 * math.pi * t / 0.45 + o[5]))
        return s, d, psi, pitch

    def _lead_centre(self, t: float) -> float:
        o = self.style["osc"]
        return self.ego(t)[0] + self.style["lead_gap"] + 5.0 * math.sin(2 * math.pi * t / 13.0 + o[6])

    # -- content --------------------------------------------------------------------------
    def _chunk(self, c: int) -> list:
        if c not in self._chunks:
            self._chunks[c] = _static_chunk(self.seed, c, self.style)
        return self._chunks[c]

    def _stream(self, lane: int, c: int) -> list:
        key = (lane, c)
        if key not in self._traffic:
            d, v = self.streams[lane]
            rng = _rng(self.seed, 3, lane, c)
            cars, s = [], c * CHUNK_M + rng.uniform(0, 10)
            while True:
                kind = rng.choice(["car", "truck", "bus"], p=[0.86, 0.08, 0.06])
                veh = _vehicle(rng, kind, s, v, d)
                if s + veh.length > (c + 1) * CHUNK_M:
                    break
                veh.s0 = s + veh.length / 2
                cars.append(veh)
                s += veh.length + max(6.0, rng.exponential(self.style["traffic_gap"]))
            self._traffic[key] = cars
        return self._traffic[key]

    def _pedestrians(self, c: int) -> list:
        if c not in self._peds:
            rng = _rng(self.seed, 4, c)
            st = self.style
            inner = st["road_half"] + 0.6
            people = []
            for _ in range(int(rng.poisson(st["peds"]))):
                side = 1 if rng.random() < 0.6 else -1
                v = 0.0 if rng.random() < 0.2 else rng.choice([-1, 1]) * rng.uniform(0.9, 1.6)
                people.append(R.Person(
                    c * CHUNK_M + rng.uniform(0, CHUNK_M), v,
                    side * rng.uniform(inner, inner + st["sidewalk"] - 0.6), rng.uniform(1.55, 1.92),
                    _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))]),
                    _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))]),
                    _SKIN[rng.integers(len(_SKIN))], _jitter(rng, (45, 32, 24), 20)))
            self._peds[c] = people
        return self._peds[c]

    def objects(self, t: float, s_ego: float) -> list:
        """Everything that may be visible at time ``t``, unsorted."""
        lo, hi = s_ego - 6.0, s_ego + Z_FAR
        if len(self._chunks) > 64:  # long videos: forget static chunks well behind the camera
            behind = math.floor(lo / CHUNK_M) - 2
            self._chunks = {c: v for c, v in self._chunks.items() if c >= behind}
        out = []
        for c in range(int(math.floor(lo / CHUNK_M)), int(math.floor(hi / CHUNK_M)) + 1):
            out.extend(self._chunk(c))
        for lane, (_, v) in enumerate(self.streams):
            for c in range(int(math.floor((lo - 15 - v * t) / CHUNK_M)),
                           int(math.floor((hi - v * t) / CHUNK_M)) + 1):
                out.extend(self._stream(lane, c))
        reach = _MAX_PED_SPEED * t
        for c in range(int(math.floor((lo - reach) / CHUNK_M)), int(math.floor((hi + reach) / CHUNK_M)) + 1):
            out.extend(self._pedestrians(c))
        if self.lead is not None:
            out.append(self.lead)
        keep = []
        for obj in out:
            a, b = obj.span(t)
            if b > s_ego + 0.3 and a < hi:
                keep.append(obj)
        return keep

    # -- events ---------------------------------------------------------------------------
    def event_at(self, index: int) -> Optional[dict]:
        """The hard event covering frame ``index`` (or None): wiper, blob, flash or noise."""
        if not self.events:
            return None
        b = index // EVENT_BLOCK
        for block in (b, b - 1):
            if block < 0:
                continue
            rng = _rng(self.seed, 5, block)
            happens = rng.random() < self.style["event_p"]
            first = 6 if block == 0 else 0  # leave the first frames clean: context to use
            start = block * EVENT_BLOCK + int(rng.integers(first, EVENT_BLOCK - 4))
            length = int(rng.integers(2, 6))
            kind = EVENTS[int(rng.integers(len(EVENTS)))]
            params = rng.random(6)
            if happens and start <= index < start + length:
                return dict(kind=kind, start=start, length=length, step=index - start, params=params)
        return None

    # -- rendering ------------------------------------------------------------------------
    def render(self, index: int) -> Tuple[np.ndarray, np.ndarray, dict]:
        """Frame ``index``: (RGB uint8 HxWx3, labels uint8 HxW, flags)."""
        st = self.style
        t = index / self.fps
        s_ego, d_ego, psi, pitch = self.ego(t)
        cv = R.Canvas(self.height, self.width, st["hfov"], st["cam_h"], st["horizon"], 0.3,
                      st["haze"], st["fog_m"])
        cv.set_pose(self.road, s_ego, d_ego, psi, pitch)
        heading = float(self.road.heading(s_ego)) + psi
        self.backdrop.draw(cv, heading)
        objs = self.objects(t, s_ego)
        objs.sort(key=lambda o: -o.key(cv, t))
        for obj in objs:
            obj.draw(cv, t)
        cv.flush()
        label = cv.label
        image, flags = self._capture(index, t, cv.image, label)
        return image, label, flags

    def _capture(self, index: int, t: float, image: np.ndarray, label: np.ndarray):
        """Camera effects on the rendered image; the label map is never touched."""
        st = self.style
        rng = _rng(self.seed, 6, index)
        h, w = self.height, self.width
        o = st["osc"]
        gain = st["exposure"] * (1 + 0.12 * math.sin(2 * math.pi * t / 11.0 + o[7]))
        tint = st["tint"] * (1 + 0.04 * np.sin(2 * math.pi * t / np.array([17.0, 23.0, 29.0], np.float32)))
        img = image.astype(np.float32) * (self._vignette * (gain * tint).astype(np.float32))
        # Motion blur: yaw rate in pixels per frame, a third of the frame time exposed.
        s0, _, p0, _ = self.ego(t)
        s1, _, p1, _ = self.ego(t + 1 / self.fps)
        yaw = abs(float(self.road.heading(s1) - self.road.heading(s0)) + p1 - p0)
        blur = 0.35 * yaw * (0.5 * w / math.tan(math.radians(st["hfov"]) / 2))
        img = R.motion_blur(img, blur, 0.0)
        sigma = st["noise"]
        ev = self.event_at(index)
        flags = dict(index=index, stamp_s=round(t, 6), hard=ev is not None, event=None,
                     occlusion=False, flash=False, noise=False, occluded_fraction=0.0,
                     blur_px=round(blur, 2))
        if ev is not None:
            kind, p = ev["kind"], ev["params"]
            flags["event"] = kind
            if kind in ("wiper", "blob"):
                mask = np.zeros((h, w), np.uint8)
                if kind == "wiper":  # a dark blade sweeping around a pivot below the frame
                    ang = math.radians(160 - 140 * (ev["step"] + 0.5) / ev["length"])
                    pivot = np.array([w * (0.3 + 0.4 * p[0]), h * 1.15])
                    tip = pivot + 1.6 * h * np.array([math.cos(ang), -math.sin(ang)])
                    cv2.line(mask, tuple(int(v) for v in pivot), tuple(int(v) for v in tip), 255,
                             max(int(w * (0.07 + 0.06 * p[1])), 2), cv2.LINE_8)
                    colour = np.float32([18, 18, 20])
                else:  # a dirt splash that lingers on the lens
                    centre = (int(w * (0.2 + 0.6 * p[0])), int(h * (0.25 + 0.5 * p[1])))
                    axes = (int(w * (0.16 + 0.12 * p[2])), int(h * (0.22 + 0.15 * p[3])))
                    cv2.ellipse(mask, centre, axes, 360 * p[4], 0, 360, 255, -1, cv2.LINE_8)
                    colour = np.float32([58, 48, 36]) * (0.6 + 0.6 * p[5])
                flags["occluded_fraction"] = round(float((mask > 0).mean()), 4)
                alpha = cv2.GaussianBlur(mask, (0, 0), max(w / 160, 0.8)).astype(np.float32)[..., None] / 255
                img = img * (1 - 0.96 * alpha) + colour * (0.96 * alpha)
                flags["occlusion"] = True
            elif kind == "flash":  # over-exposure: most of the frame clips to white
                img = img * (2.4 + 1.4 * p[0]) + (70 + 70 * p[1])
                flags["flash"] = True
            else:
                sigma = 28 + 18 * p[0]
                flags["noise"] = True
        dy, dx = (int(v) for v in rng.integers(0, 33, 2))
        img += self._noise[dy:dy + h, dx:dx + w] * np.float32(sigma)
        return np.clip(img, 0, 255).astype(np.uint8), flags

    def frames(self, n: int, start: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray, dict]]:
        """Frames ``start .. start + n - 1`` as (image RGB uint8, labels uint8, flags)."""
        for index in range(start, start + n):
            yield self.render(index)


def _vehicle(rng, kind, s, v, d) -> R.Vehicle:
    if kind == "car":
        length, width = rng.uniform(3.9, 4.9), rng.uniform(1.72, 1.95)
        colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 10)
    elif kind == "truck":
        length, width = rng.uniform(6.5, 9.0), 2.4
        colour = _jitter(rng, ((200, 200, 205), (40, 70, 140), (170, 40, 35))[rng.integers(3)], 10)
    else:
        length, width = rng.uniform(10.5, 12.5), 2.5
        colour = _jitter(rng, ((230, 200, 40), (200, 40, 40), (235, 235, 235), (40, 110, 170))[rng.integers(4)], 8)
    return R.Vehicle(kind, s, v, d, length, width, colour)


def _tree(rng, s, d, scale, in_line) -> R.Tree:
    trunk_h = rng.uniform(1.6, 3.0) * scale
    crown = rng.uniform(1.6, 2.8) * scale
    base = np.array([rng.uniform(40, 70), rng.uniform(75, 110), rng.uniform(28, 45)])
    blobs = []
    for _ in range(int(rng.integers(6, 11))):
        ang = rng.uniform(0, 2 * math.pi)
        rr = rng.uniform(0, 0.6) * crown
        blobs.append((rng.uniform(-0.5, 0.5) * crown, rr * math.cos(ang),
                      trunk_h + crown * 0.8 + rr * math.sin(ang), crown * rng.uniform(0.45, 0.75),
                      tuple(int(v) for v in np.clip(base * rng.uniform(0.7, 1.3), 0, 255))))
    blobs.sort(key=lambda b: -b[0])  # back to front within the crown
    return R.Tree(s, d, trunk_h, _jitter(rng, (82, 62, 44), 10), blobs, in_line)


def _static_chunk(seed: int, c: int, st: dict) -> list:
    """Buildings, gaps, trees, barriers and kerb furniture of road chunk ``c``, both sides."""
    rng = _rng(seed, 7, c)
    s_lo, s_hi = c * CHUNK_M, (c + 1) * CHUNK_M
    kerb = st["road_half"] + 0.25
    walk_out = kerb + st["sidewalk"]
    objs: list = []
    for side in (1, -1):
        s = s_lo + rng.uniform(0, 3)
        while s < s_hi - 3:
            length = min(rng.uniform(9, 26), s_hi - s)
            if rng.random() < st["building_p"]:
                setback = 0.0 if rng.random() < 0.6 else rng.uniform(1.5, 5)
                objs.extend(_building(rng, side, s, s + length, walk_out + setback))
                if setback > 0 and rng.random() < 0.6:
                    objs.append(_barrier(rng, side, s, s + length, walk_out + 0.1))
            else:  # a gap: grass, trees, maybe a wall or fence along the sidewalk
                for _ in range(int(rng.integers(0, 4))):
                    objs.append(_tree(rng, s + rng.uniform(0, length), side * rng.uniform(walk_out + 1, walk_out + 12),
                                      rng.uniform(0.9, 1.6), True))
                if rng.random() < 0.6:
                    objs.append(_barrier(rng, side, s, s + length, walk_out + 0.1))
            s += length + (rng.uniform(0.5, 4) if rng.random() < 0.5 else 0.0)
        # Kerb furniture.
        for k in range(2):
            if rng.random() < 0.8:
                objs.append(R.PoleThing("lamp", s_lo + 5 + 20 * k + rng.uniform(-2, 2), side * (kerb + 0.45),
                                        side, rng.uniform(6.0, 8.0), 0))
        if rng.random() < 0.55:
            objs.append(R.PoleThing("sign", s_lo + rng.uniform(0, CHUNK_M), side * (kerb + 0.35), side,
                                    rng.uniform(2.4, 3.0), int(rng.integers(5))))
        if rng.random() < st["tree_p"]:
            for k in range(int(rng.integers(1, 4))):
                objs.append(_tree(rng, s_lo + rng.uniform(0, CHUNK_M), side * (kerb + rng.uniform(0.9, 1.4)),
                                  rng.uniform(0.8, 1.2), False))
        if rng.random() < 0.25:
            objs.append(R.Hedge(side, s_lo + 2, s_lo + rng.uniform(8, 20), walk_out - 0.9,
                                rng.uniform(0.7, 1.3), _jitter(rng, (55, 92, 40), 12)))
    if rng.random() < 0.3:  # a signalled crossing: lights on both sides
        s = s_lo + rng.uniform(5, CHUNK_M - 5)
        phase = rng.uniform(0, 20)
        for side in (1, -1):
            objs.append(R.PoleThing("light", s, side * (kerb + 0.4), side, 3.0, int(rng.random() < 0.5), phase))
    return objs


def _building(rng, side, s0, s1, d_face) -> list:
    height = rng.uniform(6, 26)
    colour = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 16)
    band = _jitter(rng, ((90, 85, 80), (60, 58, 62), (150, 140, 120), (120, 70, 50))[rng.integers(4)], 12) \
        if rng.random() < 0.6 else None
    glass = [_jitter(rng, (48, 58, 74), 10), _jitter(rng, (92, 110, 130), 12), (205, 192, 140)]
    win_w = rng.uniform(0.9, 1.6)
    pitch = win_w + rng.uniform(0.8, 2.0)
    floors = int((height - 4.0) // 3.1)
    d = side * (d_face - 0.03)
    cols = np.arange(s0 + 0.8, s1 - win_w - 0.5, pitch)
    pieces = []
    n = max(int(math.ceil((s1 - s0) / 4.0)), 1)
    edges = np.linspace(s0, s1, n + 1)
    wins = [[[] for _ in glass] for _ in range(n)]
    for fl in range(floors):
        h0 = 4.0 + fl * 3.1
        for a in cols:
            g = int(rng.choice(3, p=[0.55, 0.4, 0.05]))
            k = min(int(np.searchsorted(edges, a, side="right")) - 1, n - 1)
            wins[k][g].append(R.quad_d(d, a, a + win_w, h0, h0 + 1.5))
    if band is not None:  # shop windows in the plinth
        for a in np.arange(s0 + 1.0, s1 - 3.0, rng.uniform(3.5, 6.0)):
            k = min(int(np.searchsorted(edges, a, side="right")) - 1, n - 1)
            wins[k][1].append(R.quad_d(d, a, a + 2.5, 0.6, 2.8))
    for k in range(n):
        polys = [np.stack(w) if w else np.zeros((0, 4, 3)) for w in wins[k]]
        pieces.append(R.FacadePiece(side, edges[k], edges[k + 1], d_face, height, colour, band, polys, glass))
    pieces.append(R.EndFace(side, s0, d_face, 12.0, height, colour))
    return pieces


def _barrier(rng, side, s0, s1, d) -> R.Barrier:
    if rng.random() < 0.5:
        return R.Barrier(side, s0, s1, d, rng.uniform(1.0, 2.2), _jitter(rng, (165, 160, 150), 18), R.WALL)
    return R.Barrier(side, s0, s1, d, rng.uniform(1.0, 1.8),
                     _jitter(rng, ((112, 96, 72), (128, 134, 140))[rng.integers(2)], 12), R.FENCE)


# -- CLI ----------------------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    from tv3s_ros.preprocess import parse_hxw

    try:
        return parse_hxw(text, minimum=16)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Optional[List[str]] = None) -> int:
    from tv3s_ros.data.world_io import write_bag, write_vspw

    parser = argparse.ArgumentParser(
        prog="python -m tv3s_ros.data.world",
        description="Write synthetic driving videos with Cityscapes train-id labels (one video per seed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
output layout (VSPW):
  OUT/world.json                       layout, label space, version, splits (video names, seeds)
  OUT/<video>/origin/00000.jpg         RGB frames (.png with --format png: lossless)
  OUT/<video>/mask/00000.png           uint8 train ids, 255 = ignore
  OUT/<video>/meta.json                seed, size, classes present, per-frame flags
  OUT/bags/<video>/                    with --bag: rosbag2, /cam/front/image_raw (rgb8) and
                                       /cam/front/labels (mono8, same header stamp and frame_id)

Videos are named world_<seed>. Train videos use seeds SEED .. SEED+N-1, validation videos the
next --val-videos seeds. Frames flagged "hard" in meta.json (a wiper or dirt blob over the lens,
an over-exposed flash, heavy noise) keep the true scene as their label: the subset where
temporal context should help.

examples:
  python -m tv3s_ros.data.world /tmp/world --videos 8 --val-videos 2 --frames 120
  python -m tv3s_ros.data.world /tmp/world_png --videos 1 --frames 30 --format png --bag
  # grow a world: 120 more training videos (seeds 1100-1219) join /tmp/world's train split
  python -m tv3s_ros.data.world /tmp/world --add --videos 120 --frames 120 --seed 1100
""")
    parser.add_argument("output", type=Path, help="output folder (created; existing videos are overwritten)")
    parser.add_argument("--add", action="store_true",
                        help="grow the world in OUTPUT: the new videos join its splits (same --size, "
                             "--frames, --fps, --format and events as it was made with)")
    parser.add_argument("--videos", type=int, default=4, help="training videos (default 4)")
    parser.add_argument("--val-videos", type=int, default=0, help="validation videos after them (default 0)")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    parser.add_argument("--size", type=parse_size, default=(256, 512), help="HxW (default 256x512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first video (default 0)")
    parser.add_argument("--fps", type=float, default=15.0, help="frame rate in Hz (default 15)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg",
                        help="frame files: jpg (as VSPW) or png (lossless, byte-exact)")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="jpg and bag jpeg quality (default 95)")
    parser.add_argument("--no-events", action="store_true", help="no occlusions, flashes or noise bursts")
    parser.add_argument("--bag", action="store_true", help="also write one rosbag2 per video under OUT/bags/")
    parser.add_argument("--bag-images", choices=("raw", "jpeg", "both"), default="raw",
                        help="camera topic: raw rgb8 Image, jpeg CompressedImage, or both (default raw)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default mcap)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.videos < 0 or args.val_videos < 0 or args.frames < 1 or args.videos + args.val_videos < 1:
        parser.error("need at least one video and one frame")
    from tqdm import tqdm

    seeds = list(range(args.seed, args.seed + args.videos))
    val = list(range(args.seed + args.videos, args.seed + args.videos + args.val_videos))
    total = (len(seeds) + len(val)) * args.frames * (2 if args.bag else 1)
    with tqdm(total=total, unit="frame", disable=args.no_progress, file=sys.stderr,
              dynamic_ncols=True, desc="world") as bar:
        try:
            info = write_vspw(args.output, seeds, args.frames, args.size, val_seeds=val, fps=args.fps,
                              image_format=args.format, jpeg_quality=args.jpeg_quality,
                              events=not args.no_events, progress=bar.update, add=args.add)
        except ValueError as error:
            bar.close()
            print(f"world: error: {error}", file=sys.stderr)
            return 2
        if args.bag:
            for seed in seeds + val:
                write_bag(args.output / "bags" / video_name(seed), seed, args.frames, args.size,
                          fps=args.fps, images=args.bag_images, storage=args.storage,
                          jpeg_quality=args.jpeg_quality, events=not args.no_events,
                          progress=bar.update)
    print(f"wrote {len(seeds)} train + {len(val)} val videos of {args.frames} frames "
          f"({args.size[0]}x{args.size[1]}) to {args.output}"
          + (f" (the world now has {len(info['splits']['train'])} train + "
             f"{len(info['splits'].get('val', []))} val videos)" if args.add else ""))
    return 0


def video_name(seed: int) -> str:
    return f"world_{seed:06d}"


if __name__ == "__main__":
    raise SystemExit(main())
