"""The synthetic driving world: determinism, label sanity, temporal coherence, hard events,
the VSPW layout and the rosbag2 output, all on small frames with real files."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from tv3s_ros.data import CLASSES, World
from tv3s_ros.data.world import main as world_main
from tv3s_ros.data.world_io import IMAGE_TOPIC, JPEG_TOPIC, LABEL_TOPIC, START_NS, write_bag, write_vspw

SIZE = (64, 128)
ROAD, SKY, CAR = 0, 10, 13


def _frames(seed, n, size=SIZE, **kw):
    return list(World(seed, size, **kw).frames(n))


def test_same_seed_same_bytes_other_seed_differs():
    a, b = _frames(5, 6), _frames(5, 6)
    for (ia, la, fa), (ib, lb, fb) in zip(a, b):
        assert ia.tobytes() == ib.tobytes() and la.tobytes() == lb.tobytes() and fa == fb
    c = _frames(6, 6)
    assert not np.array_equal(a[3][0], c[3][0]) and not np.array_equal(a[3][1], c[3][1])
    # Random access: a frame rendered on its own equals the same frame of a sequence.
    image, label, flags = World(5, SIZE).render(4)
    assert np.array_equal(image, a[4][0]) and np.array_equal(label, a[4][1]) and flags == a[4][2]


def test_output_types_and_valid_ids():
    image, label, flags = World(0, SIZE).render(0)
    assert image.shape == SIZE + (3,) and image.dtype == np.uint8
    assert label.shape == SIZE and label.dtype == np.uint8
    for seed in range(4):
        for _, label, _ in World(seed, SIZE).frames(4):
            assert set(np.unique(label).tolist()) <= set(range(len(CLASSES)))  # nothing unlabelled


def test_road_car_sky_in_most_frames_and_many_classes():
    present = {ROAD: 0, SKY: 0, CAR: 0}
    seen, total = set(), 0
    for seed in range(6):
        for _, label, _ in World(seed, (96, 192)).frames(8, start=5):
            ids = set(np.unique(label).tolist())
            seen |= ids
            total += 1
            for k in present:
                present[k] += k in ids
    assert present[ROAD] == total and present[SKY] >= 0.9 * total
    assert present[CAR] >= 0.75 * total, present
    # Every class the world draws shows up somewhere (rider, train, motorcycle, bicycle are not drawn).
    assert seen >= {0, 1, 2, 5, 7, 8, 9, 10, 11, 13}, sorted(seen)


def test_image_matches_label_colours():
    # The image is drawn with the label's geometry: sky pixels are bright and blue, road pixels
    # grey and darker, car pixels differ from the road around them (no shift or transpose).
    for seed in (0, 3):
        image, label, _ = World(seed, (96, 192), events=False).render(10)
        img = image.astype(float)
        sky, road = img[label == SKY], img[label == ROAD]
        assert sky[:, 2].mean() > sky[:, 0].mean() + 15 and sky.mean() > road.mean() + 40
        assert abs(road[:, 0].mean() - road[:, 2].mean()) < 15
        # Label boundaries sit on image edges best without any shift (catches off-by-a-few).
        grad = np.abs(np.diff(img.mean(-1), axis=1))
        score = {}
        for shift in (-2, -1, 0, 1, 2):
            lab = np.roll(label, shift, axis=1)
            edge = lab[:, 1:] != lab[:, :-1]
            score[shift] = grad[edge].mean() / grad[~edge].mean()
        assert max(score, key=score.get) == 0 and score[0] > 3, score


def test_consecutive_labels_agree():
    for seed in (0, 1, 2):
        labels = [lab for _, lab, _ in World(seed, SIZE).frames(20)]
        agree = [np.mean(a == b) for a, b in zip(labels, labels[1:])]
        assert min(agree) > 0.8, (seed, min(agree))


def _lead_car_track(world, n):
    """Centroid and area of the car region at the middle of the frame (the car ahead)."""
    track = []
    for _, label, _ in world.frames(n):
        count, comp, stats, cents = cv2.connectedComponentsWithStats((label == CAR).astype(np.uint8), connectivity=4)
        h, w = label.shape
        best = None
        for k in range(1, count):
            cx, cy = cents[k]
            if abs(cx - w / 2) < w / 6 and (best is None or stats[k, cv2.CC_STAT_AREA] > stats[best, cv2.CC_STAT_AREA]):
                best = k
        assert best is not None, "no car ahead"
        track.append((cents[best][0], cents[best][1], stats[best, cv2.CC_STAT_AREA]))
    return np.array(track)


def test_car_ahead_moves_smoothly():
    seed = next(s for s in range(50) if World(s, SIZE).style["lead"])
    world = World(seed, (128, 256), events=False)
    track = _lead_car_track(world, 16)
    step = np.abs(np.diff(track[:, :2], axis=0))
    assert step.max() < 0.04 * 256, track  # a few pixels per frame, no jumps
    ratio = track[1:, 2] / track[:-1, 2]
    assert ratio.min() > 0.75 and ratio.max() < 1.33, track


def _hard_seed(n=48):
    for seed in range(40):
        flags = [f for _, _, f in World(seed, (32, 64)).frames(n)]
        if sum(f["occlusion"] for f in flags) and sum(f["flash"] or f["noise"] for f in flags):
            return seed
    raise AssertionError("no seed with events")


def test_hard_frames_flagged_image_differs_label_true():
    seed, n = _hard_seed(), 48
    with_events = _frames(seed, n)
    clean = _frames(seed, n, events=False)
    hard = [f["index"] for _, _, f in with_events if f["hard"]]
    assert 0 < len(hard) < n / 2 and min(hard) >= 6  # the first frames are clean context
    for (img, lab, flags), (cimg, clab, cflags) in zip(with_events, clean):
        assert np.array_equal(lab, clab)  # the label is the true scene, event or not
        assert not cflags["hard"]
        if flags["hard"]:
            diff = np.abs(img.astype(int) - cimg.astype(int)).mean()
            assert diff > 4, (flags, diff)
            if flags["occlusion"]:
                assert flags["occluded_fraction"] > 0.03
            if flags["flash"]:
                assert img.mean() > cimg.mean() + 40
        else:
            assert np.array_equal(img, cimg)
    # Labels of hard frames agree with their neighbours as any other frame does.
    for i in hard:
        if 0 < i < n - 1:
            assert np.mean(with_events[i][1] == with_events[i - 1][1]) > 0.8


def test_vspw_layout_round_trip_png(tmp_path):
    info = write_vspw(tmp_path, [3], 6, SIZE, val_seeds=[4], image_format="png")
    on_disk = json.loads((tmp_path / "world.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert on_disk["layout"] == "synthetic" and on_disk["label_space"] == "cityscapes train ids"
    assert on_disk["splits"] == {"train": ["world_000003"], "val": ["world_000004"]}
    assert on_disk["classes"] == list(CLASSES) and on_disk["version"]
    for seed in (3, 4):
        video = tmp_path / f"world_{seed:06d}"
        meta = json.loads((video / "meta.json").read_text())
        assert meta["seed"] == seed and meta["size"] == list(SIZE) and len(meta["frame_flags"]) == 6
        assert sorted(p.name for p in (video / "origin").iterdir()) == [f"{i:05d}.png" for i in range(6)]
        present = set()
        for i, (image, label, flags) in enumerate(World(seed, SIZE).frames(6)):
            disk_img = cv2.imread(str(video / "origin" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
            disk_lab = cv2.imread(str(video / "mask" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
            assert disk_lab.dtype == np.uint8 and disk_lab.ndim == 2
            assert np.array_equal(disk_img, image) and np.array_equal(disk_lab, label)
            assert meta["frame_flags"][i] == json.loads(json.dumps(flags))
            present |= set(np.unique(label).tolist())
        assert sorted(int(k) for k in meta["classes_present"]) == sorted(present)


def test_add_grows_a_world_like_one_made_at_once(tmp_path):
    from tv3s_ros.data.datasets import open_dataset

    grown, whole = tmp_path / "grown", tmp_path / "whole"
    write_vspw(grown, [3], 4, SIZE, val_seeds=[4], image_format="png")
    before = json.loads((grown / "world.json").read_text())
    write_vspw(grown, [7, 8], 4, SIZE, image_format="png", add=True)
    info = json.loads((grown / "world.json").read_text())
    assert info["splits"] == {"train": ["world_000003", "world_000007", "world_000008"], "val": ["world_000004"]}
    assert info["seeds"] == {"train": [3, 7, 8], "val": [4]}
    assert set(info["hard_frames_per_video"]) == {"world_000003", "world_000004", "world_000007", "world_000008"}
    # the same videos and description as a world written in one go
    write_vspw(whole, [3, 7, 8], 4, SIZE, val_seeds=[4], image_format="png")
    assert info == json.loads((whole / "world.json").read_text())
    assert [v.name for v in open_dataset(grown, split="train")] == ["world_000003", "world_000007", "world_000008"]
    # adding the same training seed again changes nothing in the description
    write_vspw(grown, [7], 4, SIZE, image_format="png", add=True)
    assert json.loads((grown / "world.json").read_text()) == info
    # refused, with nothing written: another size, a validation seed into training, no world
    for kwargs, message in [(dict(seeds=[9], size=(32, 48)), "size"), (dict(seeds=[4]), "another split"),
                            (dict(seeds=[9], frames=5), "frames_per_video")]:
        args = {**dict(frames=4, size=SIZE, image_format="png", add=True), **kwargs}
        with pytest.raises(ValueError, match=message):
            write_vspw(grown, **args)
        assert json.loads((grown / "world.json").read_text()) == info and not (grown / "world_000009").exists()
    with pytest.raises(ValueError, match="no world"):
        write_vspw(tmp_path / "none", [1], 4, SIZE, add=True)
    assert before["splits"]["train"] == ["world_000003"]


def test_cli_add_bad_world_exit_2(tmp_path, capsys):
    assert world_main([str(tmp_path / "w"), "--videos", "1", "--frames", "2", "--size", "24x32",
                       "--no-progress"]) == 0
    capsys.readouterr()
    status = world_main([str(tmp_path / "w"), "--add", "--videos", "1", "--frames", "3", "--size", "24x32",
                         "--seed", "5", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "world: error: --add" in err and "frames_per_video" in err and "Traceback" not in err
    assert world_main([str(tmp_path / "w"), "--add", "--videos", "1", "--frames", "2", "--size", "24x32",
                       "--seed", "5", "--no-progress"]) == 0
    assert "now has 2 train + 0 val videos" in capsys.readouterr().out


def test_vspw_jpg_close_masks_exact(tmp_path):
    write_vspw(tmp_path, [7], 3, SIZE)
    for i, (image, label, _) in enumerate(World(7, SIZE).frames(3)):
        jpg = cv2.imread(str(tmp_path / "world_000007" / "origin" / f"{i:05d}.jpg"))[:, :, ::-1]
        assert np.abs(jpg.astype(int) - image.astype(int)).mean() < 6
        mask = cv2.imread(str(tmp_path / "world_000007" / "mask" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, label)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(tmp_path, storage):
    from rosbags.rosbag2 import Reader

    from tv3s_ros.bag.typestore import build_typestore

    path = tmp_path / "drive"
    meta = write_bag(path, 9, 5, SIZE, images="both", storage=storage)
    expected = list(World(9, SIZE).frames(5))
    store = build_typestore()
    got = {IMAGE_TOPIC: [], JPEG_TOPIC: [], LABEL_TOPIC: []}
    with Reader(path) as reader:
        assert {c.topic for c in reader.connections} == set(got)
        assert reader.message_count == 15
        for conn, log_ns, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == log_ns and msg.header.frame_id == "front"
            got[conn.topic].append((stamp, msg))
    stamps = [[s for s, _ in got[t]] for t in (IMAGE_TOPIC, JPEG_TOPIC, LABEL_TOPIC)]
    assert stamps[0] == stamps[1] == stamps[2] and len(stamps[0]) == 5
    assert stamps[0] == [START_NS + round(i * 1e9 / 15) for i in range(5)]  # 15 Hz, no resets
    for (image, label, _), (_, raw_msg), (_, jpeg_msg), (_, label_msg) in zip(
            expected, got[IMAGE_TOPIC], got[JPEG_TOPIC], got[LABEL_TOPIC]):
        assert raw_msg.encoding == "rgb8" and label_msg.encoding == "mono8"
        assert np.array_equal(raw_msg.data.reshape(raw_msg.height, raw_msg.width, 3), image)
        assert np.array_equal(label_msg.data.reshape(label_msg.height, label_msg.width), label)
        decoded = cv2.imdecode(jpeg_msg.data, cv2.IMREAD_COLOR)[:, :, ::-1]
        assert decoded.shape == image.shape and np.abs(decoded.astype(int) - image.astype(int)).mean() < 6
    assert meta["frames"] == 5
    custom = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["custom_data"]
    assert custom["tv3s.world.seed"] == "9" and json.loads(custom["tv3s.world.hard_frames"]) == meta["hard_frames"]


def test_cli_writes_everything(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        world_main(["--help"])
    assert done.value.code == 0
    assert "VSPW" in capsys.readouterr().out
    out = tmp_path / "w"
    assert world_main([str(out), "--videos", "1", "--val-videos", "1", "--frames", "2", "--size", "32x64",
                       "--seed", "11", "--format", "png", "--bag", "--bag-images", "jpeg", "--no-progress"]) == 0
    info = json.loads((out / "world.json").read_text())
    assert info["splits"] == {"train": ["world_000011"], "val": ["world_000012"]}
    for name in info["splits"]["train"] + info["splits"]["val"]:
        assert (out / name / "origin" / "00001.png").is_file() and (out / name / "mask" / "00001.png").is_file()
        assert (out / "bags" / name / "metadata.yaml").is_file()
    with pytest.raises(SystemExit):
        world_main([str(out), "--size", "big"])
