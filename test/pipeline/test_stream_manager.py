"""streams: every reset trigger resets exactly the affected camera; skipped frames never do."""
from __future__ import annotations

import threading

import pytest

from tv3s_ros.streams import RESET_REASONS, ResetPolicy, StreamManager

MS = 1_000_000  # nanoseconds per millisecond


class Cameras:
    """Drives two cameras at 10 Hz; each step feeds both and returns {camera: reason}."""

    def __init__(self, manager, names=("front", "rear")):
        self.m = manager
        self.t = {n: 0 for n in names}
        self.size = {n: (48, 64) for n in names}
        self.frame_id = {n: f"{n}_optical" for n in names}

    def frame(self, name, dt_ms=100):
        self.t[name] += dt_ms * MS
        h, w = self.size[name]
        return self.m.observe(name, self.t[name], h, w, self.frame_id[name])

    def step(self, dt_ms=100):
        return {n: self.frame(n, dt_ms) for n in self.t}


def _started(policy=None):
    cams = Cameras(StreamManager(policy or ResetPolicy(max_gap_s=1.0)))
    assert cams.step() == {"front": "first_frame", "rear": "first_frame"}
    for _ in range(3):
        assert cams.step() == {"front": "", "rear": ""}
    return cams


def test_first_frame_then_state_kept():
    cams = _started()
    assert cams.m.stats("front").frames_since_reset == 3
    assert cams.m.stats("front").processed == 4
    assert cams.m.stats("front").resets["first_frame"] == 1


def test_size_change_resets_only_that_camera():
    cams = _started()
    cams.size["rear"] = (96, 128)
    assert cams.step() == {"front": "", "rear": "size_changed"}
    assert cams.step() == {"front": "", "rear": ""}


def test_frame_id_change_resets_only_that_camera():
    cams = _started()
    cams.frame_id["front"] = "other"
    assert cams.step() == {"front": "frame_id_changed", "rear": ""}
    assert cams.step() == {"front": "", "rear": ""}


def test_time_backwards_resets_only_that_camera():
    cams = _started()
    assert cams.frame("front", dt_ms=-5000) == "time_backwards"   # bag loop
    assert cams.frame("rear") == ""
    assert cams.step() == {"front": "", "rear": ""}             # continues from the new time


def test_equal_stamp_is_not_backwards():
    cams = _started()
    assert cams.frame("front", dt_ms=0) == ""


def test_gap_resets_only_that_camera():
    cams = _started(ResetPolicy(max_gap_s=0.5))
    assert cams.frame("front", dt_ms=500) == ""                 # exactly the limit: kept
    assert cams.frame("front", dt_ms=501) == "gap"
    assert cams.frame("rear") == ""


def test_gap_disabled():
    for disabled in (0.0, -1.0, float("inf")):
        cams = _started(ResetPolicy(max_gap_s=disabled))
        assert cams.frame("front", dt_ms=3_600_000) == ""


def test_max_state_frames_spans_exactly_n_frames():
    m = StreamManager(ResetPolicy(max_state_frames=3))
    seen = []
    for i in range(8):
        obs = m.observe_frame("cam", i * 100 * MS, 10, 10, "f")
        seen.append((obs.reason, obs.frames_since_reset))
    assert seen == [("first_frame", 0), ("", 1), ("", 2), ("max_state_frames", 0), ("", 1), ("", 2),
                    ("max_state_frames", 0), ("", 1)]


def test_max_state_frames_one_resets_every_frame():
    m = StreamManager(ResetPolicy(max_state_frames=1))
    reasons = [m.observe("cam", i * MS, 4, 4, "f") for i in range(4)]
    assert reasons == ["first_frame"] + ["max_state_frames"] * 3


def test_max_state_frames_counts_per_camera():
    cams = _started(ResetPolicy(max_state_frames=5))
    cams.frame("front", dt_ms=-1000)                              # front restarts its count
    assert cams.step() == {"front": "", "rear": ""}
    assert cams.step() == {"front": "", "rear": "max_state_frames"}


@pytest.mark.parametrize("reason", ["service", "ros_time_jump"])
def test_requested_reset_applies_to_named_camera_at_next_frame(reason):
    cams = _started()
    assert cams.m.request_reset("rear", reason) == ["rear"]
    assert cams.m.stats("rear").frames_since_reset == 3        # nothing happens until a frame
    assert cams.step() == {"front": "", "rear": reason}
    assert cams.step() == {"front": "", "rear": ""}             # applied once


def test_requested_reset_of_all_cameras():
    cams = _started()
    assert sorted(cams.m.request_reset(None, "ros_time_jump")) == ["front", "rear"]
    assert cams.step() == {"front": "ros_time_jump", "rear": "ros_time_jump"}
    assert cams.m.stats("front").resets["ros_time_jump"] == 1


def test_request_for_unknown_camera_and_bad_reason():
    m = StreamManager()
    assert m.request_reset("nobody") == []
    assert m.request_reset() == []
    with pytest.raises(ValueError, match="reset reason"):
        m.request_reset(None, "gap")


def test_skipped_frames_do_not_reset_and_are_counted():
    # Frames at 30 Hz, the model processes one in ten: 330 ms between processed frames,
    # above max_gap_s, yet the camera never paused.
    m = StreamManager(ResetPolicy(max_gap_s=0.1))
    results = []
    for i in range(40):
        stamp = i * 33 * MS
        if i % 10:
            m.note_skipped("cam", stamp)
        else:
            results.append(m.observe_frame("cam", stamp, 8, 8, "f"))
    assert [r.reason for r in results] == ["first_frame", "", "", ""]
    assert [r.frames_since_reset for r in results] == [0, 1, 2, 3]
    assert [r.skipped_frames for r in results] == [0, 9, 9, 9]
    st = m.stats("cam")
    assert (st.processed, st.skipped, st.total_resets) == (4, 36, 1)


def test_loop_hidden_in_skipped_frames_still_resets():
    m = StreamManager(ResetPolicy(max_gap_s=1.0))
    m.observe("cam", 5000 * MS, 8, 8, "f")
    m.observe("cam", 5100 * MS, 8, 8, "f")
    m.note_skipped("cam", 100 * MS)          # the bag looped while the model was busy
    assert m.observe("cam", 200 * MS, 8, 8, "f") == "time_backwards"
    m.note_skipped("cam", 5000 * MS)         # and a long gap, also unseen by the model
    assert m.observe("cam", 5050 * MS, 8, 8, "f") == "gap"
    assert m.observe("cam", 5100 * MS, 8, 8, "f") == ""


def test_skipped_before_first_frame():
    m = StreamManager()
    m.note_skipped("cam", 0)
    obs = m.observe_frame("cam", 100 * MS, 8, 8, "f")
    assert (obs.reason, obs.skipped_frames) == ("first_frame", 1)


def test_reason_priority_and_counters():
    m = StreamManager(ResetPolicy(max_gap_s=1.0))
    m.observe("cam", 0, 8, 8, "f")
    m.request_reset("cam")
    # Size change and a gap at once: the size change is reported, the request consumed.
    assert m.observe("cam", 5000 * MS, 16, 16, "f") == "size_changed"
    assert m.observe("cam", 5100 * MS, 16, 16, "f") == ""
    st = m.stats("cam")
    assert st.resets == {**{r: 0 for r in RESET_REASONS}, "first_frame": 1, "size_changed": 1}
    assert st.last_reset_reason == "size_changed"
    assert set(m.all_stats()) == {"cam"}


def test_forget_makes_next_frame_first():
    m = StreamManager()
    m.observe("cam", 0, 8, 8, "f")
    m.forget("cam")
    assert m.observe("cam", 1, 8, 8, "f") == "first_frame"


def test_stats_are_snapshots():
    m = StreamManager()
    m.observe("cam", 0, 8, 8, "f")
    snap = m.stats("cam")
    m.observe("cam", 1, 8, 8, "f")
    snap.resets["gap"] = 99
    assert snap.processed == 1 and m.stats("cam").processed == 2
    assert m.stats("cam").resets["gap"] == 0


@pytest.mark.parametrize("kwargs", [dict(max_state_frames=-1), dict(max_state_frames=1.5),
                                    dict(max_gap_s=float("nan")), dict(max_gap_s="1")])
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        ResetPolicy(**kwargs)


def test_thread_safety_of_requests_and_observations():
    m = StreamManager(ResetPolicy(max_gap_s=0))
    n = 2000

    def feed(camera):
        for i in range(n):
            m.observe(camera, i, 8, 8, "f")

    def poke():
        for _ in range(n):
            m.request_reset(None)

    threads = [threading.Thread(target=feed, args=(c,)) for c in ("a", "b")] + [threading.Thread(target=poke)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cam in ("a", "b"):
        st = m.stats(cam)
        assert st.processed == n
        # Every processed frame either kept the state or reset it, nothing lost or double counted.
        assert st.resets["first_frame"] == 1
        assert st.frames_since_reset <= n - 1
