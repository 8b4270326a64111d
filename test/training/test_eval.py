"""tv3s-eval: metrics against hand-computed values, dataset readers, clip offsets, stride
equivalence of streaming with clips, the CLI end to end and its bad-input exit codes."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.data.datasets import (
    DatasetError,
    Frame,
    Video,
    check_sizes,
    frame_flags,
    load_image,
    load_label,
    open_dataset,
)
from tv3s_ros.eval.metrics import (
    VideoConsistency,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    mean_iou_present,
    video_consistency,
    window_consistency,
)
from tv3s_ros.eval.runner import clip_positions, evaluate
from tv3s_ros.tools import eval as eval_tool

PRESET = TINY_PRESET
TINY = tiny_overrides()
TINY_CLI = tiny_cli()


# ---------------------------------------------------------------------------------------------
# metrics


def test_confusion_and_iou_by_hand():
    gt = np.array([[0, 1], [1, 255]])
    pred = np.array([[0, 1], [0, 2]])
    cm = confusion_matrix(gt, pred, 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]      # the 255 pixel is not counted
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(1 / 2) and math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx(0.5)


def test_miou_conventions_class_only_predicted():
    # class 2 is predicted but absent from the ground truth; class 1 is in neither.
    cm = confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 2, 2]), 3)
    assert iou_per_class(cm)[0] == pytest.approx(0.5)
    assert iou_per_class(cm)[2] == 0.0 and math.isnan(iou_per_class(cm)[1])
    assert mean_iou(cm) == pytest.approx(0.25)            # mean over classes 0 and 2
    assert mean_iou_present(cm) == pytest.approx(0.5)     # class 0 only


def _vc_frames():
    gt = [np.array([1, 1, 2, 2]), np.array([1, 1, 2, 3]), np.array([1, 1, 1, 3]), np.array([0, 0, 0, 0])]
    pred = [np.array([1, 0, 2, 2]), np.array([1, 1, 2, 2]), np.array([1, 1, 2, 2]), np.array([5, 5, 5, 5])]
    return gt, pred


def test_video_consistency_by_hand():
    gt, pred = _vc_frames()
    # window 0 (frames 0, 1): GT constant on 3 pixels, prediction also constant on 2 of them;
    # window 1 (frames 1, 2): 3 of 3. Frame 3 only makes window 1 exist (official i < len - n).
    assert video_consistency(gt, pred, 2) == pytest.approx([2 / 3, 1.0])
    vc = VideoConsistency(clips=(2,), min_frames=3)
    for g, p in zip(gt, pred):
        vc.add(g, p)
    vc.end_video()
    assert vc.value(2) == pytest.approx(5 / 6)
    short = VideoConsistency(clips=(2,), min_frames=4)   # the official length rule: len > 16
    for g, p in zip(gt, pred):
        short.add(g, p)
    short.end_video()
    assert math.isnan(short.value(2)) and short.windows(2) == 0


def test_video_consistency_ignore_counts_as_common_and_empty_window():
    # As the official script: a pixel ignored (255) in every frame is part of the common set.
    assert window_consistency([np.array([255, 0]), np.array([255, 0])],
                              [np.array([0, 1]), np.array([1, 1])]) == pytest.approx(0.5)
    assert math.isnan(window_consistency([np.array([1]), np.array([2])], [np.array([1]), np.array([1])]))


def test_running_consistency_equals_batch_definition():
    rng = np.random.default_rng(0)
    gts = [(rng.random((16, 16)) < 0.02).astype(np.uint8) for _ in range(20)]     # mostly constant
    preds = [(rng.random((16, 16)) < 0.03).astype(np.uint8) for _ in range(20)]
    selected = [i in (3, 17) for i in range(20)]
    for sel in (None, selected):
        vc = VideoConsistency()
        for i, (g, p) in enumerate(zip(gts, preds)):
            vc.add(g, p, True if sel is None else sel[i])
        vc.end_video()
        for clip in (8, 16):
            expected = video_consistency(gts, preds, clip, sel)
            assert vc.windows(clip) == len(expected) and np.isfinite(expected).all()
            assert vc.value(clip) == pytest.approx(float(np.nanmean(expected)))


# ---------------------------------------------------------------------------------------------
# dataset readers


def _png(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="P" if palette else None)
    if palette:
        image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(path)


def _rgb(path, h=8, w=10, seed=0, jpg=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image[:, :, ::-1])
    return image


def test_vspw_layout_with_data_dir_and_splits(tmp_path):
    root = tmp_path / "VSPW_480p"
    for video in ("vidA", "vidB"):
        for n in (1, 2, 3):
            _rgb(root / "data" / video / "origin" / f"{n:08d}.jpg")
    _png(root / "data" / "vidA" / "mask" / "00000002.png", np.array([[0, 1, 5, 255, 124] * 2] * 8), palette=True)
    (root / "val.txt").write_text("vidA\n")
    (root / "train.txt").write_text("vidB\n")
    videos = open_dataset(root)
    assert [v.name for v in videos] == ["vidA", "vidB"]
    (video,) = open_dataset(root, "vspw", "val")
    assert [f.index for f in video.frames] == [1, 2, 3]
    assert [f.label is not None for f in video.frames] == [False, True, False]
    # Palette indices, not colours; reduce_zero_label: 0 -> ignore, i -> i-1, 255 stays.
    assert load_label(video.frames[1].label, "vspw")[0, :5].tolist() == [255, 0, 4, 255, 123]
    image = load_image(video.frames[0].image)
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    with pytest.raises(DatasetError, match="split list not found"):
        open_dataset(root, "vspw", "test")


def test_load_image_is_rgb(tmp_path):
    rgb = _rgb(tmp_path / "a.png", seed=3)
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)


def test_cityscapes_sequences(tmp_path):
    seq = tmp_path / "leftImg8bit_sequence" / "val" / "lindau"
    for s, frames in (("000001", (0, 1, 2, 5, 6)), ("000002", (10, 11))):
        for n in frames:
            _rgb(seq / f"lindau_{s}_{n:06d}_leftImg8bit.png", h=4, w=4)
    gt = tmp_path / "gtFine" / "val" / "lindau"
    _png(gt / "lindau_000001_000002_gtFine_labelIds.png", np.array([[7, 26, 0, 33]] * 4))
    _png(gt / "lindau_000002_000011_gtFine_labelTrainIds.png", np.array([[0, 13, 255, 18]] * 4))
    _png(gt / "lindau_000002_000011_gtFine_labelIds.png", np.array([[1, 1, 1, 1]] * 4))  # trainIds win
    videos = open_dataset(tmp_path)
    assert [v.name for v in videos] == ["lindau_000001_000000", "lindau_000001_000005", "lindau_000002_000010"]
    assert [f.index for f in videos[0].frames] == [0, 1, 2]
    assert [f.label is not None for f in videos[0].frames] == [False, False, True]
    assert videos[1].frames[0].label is None
    assert load_label(videos[0].frames[2].label, "cityscapes")[0].tolist() == [0, 13, 255, 18]
    assert load_label(videos[2].frames[1].label, "cityscapes")[0].tolist() == [0, 13, 255, 18]
    assert open_dataset(tmp_path, "cityscapes", "val")[0].name == "lindau_000001_000000"
    with pytest.raises(DatasetError, match="split folder not found"):
        open_dataset(tmp_path, "cityscapes", "train")


def test_synthetic_layout_splits_flags(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"layout": "synthetic",
                                                     "splits": {"train": ["v0"], "val": ["v1"]}}))
    for video in ("v0", "v1"):
        for n in range(3):
            _rgb(tmp_path / video / "origin" / f"{n:05d}.png", h=4, w=4)
            _png(tmp_path / video / "mask" / f"{n:05d}.png", np.full((4, 4), 13))
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(
        {"frames": [{"index": 0, "hard": False}, {"index": 1, "hard": True, "flash": True}, {"index": 2}]}))
    assert [v.name for v in open_dataset(tmp_path)] == ["v0", "v1"]
    (v1,) = open_dataset(tmp_path, split="val")
    assert v1.name == "v1" and [f.index for f in v1.frames] == [0, 1, 2]
    assert (load_label(v1.frames[0].label, "synthetic") == 13).all()      # no reduction
    assert frame_flags(v1, "hard") == {1} and frame_flags(v1, "flash") == {1}
    assert frame_flags(open_dataset(tmp_path, split="train")[0], "hard") == set()
    with pytest.raises(DatasetError, match="no split 'test'"):
        open_dataset(tmp_path, split="test")


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="cannot recognise"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown layout"):
        open_dataset(tmp_path, "kitti")
    (tmp_path / "v" / "origin").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no frames found"):
        open_dataset(tmp_path)
    _rgb(tmp_path / "v" / "origin" / "0.jpg", h=4, w=6)
    _png(tmp_path / "v" / "mask" / "0.png", np.zeros((4, 5)))
    with pytest.raises(DatasetError, match="is 5x4 but its image"):
        check_sizes(open_dataset(tmp_path))


# ---------------------------------------------------------------------------------------------
# clip offsets


def test_official_clip_positions():
    assert [clip_positions(p) for p in range(3)] == [[0], [1], [2]]   # nothing before: T = 1
    assert clip_positions(3) == [0, 1, 2, 3]
    assert clip_positions(4) == [0, 2, 3, 4]
    assert clip_positions(5) == [0, 2, 4, 5]
    assert clip_positions(6) == [0, 2, 4, 6]
    assert clip_positions(7) == [0, 3, 5, 7]
    assert clip_positions(8) == [0, 3, 6, 8]
    assert clip_positions(9) == [0, 3, 6, 9]
    assert clip_positions(40) == [31, 34, 37, 40]
    assert clip_positions(1, (-2, -1)) == [0, 1]       # other offsets: the frames that exist


# ---------------------------------------------------------------------------------------------
# modes on a tiny random model


def _engine(max_state_frames=0, **kw):
    from tv3s_ros.engine import Engine
    from tv3s_ros.model import build_model
    from tv3s_ros.streams import ResetPolicy

    torch.manual_seed(0)
    model = build_model(PRESET, **TINY)
    with torch.no_grad():   # non-trivial BN statistics and Mamba skip terms, as test_streaming
        bn = model.decode_head.linear_fuse.bn
        bn.running_mean.normal_(std=0.1)
        bn.running_var.uniform_(0.5, 1.5)
        for layer in model.decode_head.vs.layers:
            layer.mixer.D.normal_()
    return Engine(model, device="cpu", input_size="64x64", graphs="off", gpu_jpeg=False,
                  reset_policy=ResetPolicy(max_gap_s=0.0, max_state_frames=max_state_frames), **kw)


def _video(tmp_path, n, h=40, w=56, labelled=True):
    frames = []
    for i in range(n):
        image = tmp_path / "v" / "origin" / f"{i:05d}.png"
        _rgb(image, h=h, w=w, seed=i)
        label = None
        if labelled:
            label = tmp_path / "v" / "mask" / f"{i:05d}.png"
            _png(label, np.random.default_rng(100 + i).integers(0, 19, (h, w)))
        frames.append(Frame(image, label, i))
    return Video("v", tuple(frames), tmp_path / "v")


def _inputs(engine, video):
    from tv3s_ros.preprocess import to_model_input

    return [to_model_input(load_image(f.image), engine.cfg, engine.input_policy)[0] for f in video.frames]


@pytest.mark.parametrize("stride,max_state_frames", [(2, 3), (3, 0)])
def test_stream_stride_equals_clip_since_reset(tmp_path, monkeypatch, stride, max_state_frames):
    engine = _engine(max_state_frames)
    video = _video(tmp_path, 9)
    recorded = []
    forward_stream = engine.model.forward_stream

    def record(frame, state):
        logits, state = forward_stream(frame, state)
        recorded.append(logits.clone())
        return logits, state

    monkeypatch.setattr(engine.model, "forward_stream", record)
    result = evaluate([video], "synthetic", engine, ["stream"], stride=stride)
    assert len(recorded) == 9 and result.modes["stream"].frames == 9
    x = _inputs(engine, video)
    worst = 0.0
    for t in range(9):
        step = t // stride
        start = (step // max_state_frames) * max_state_frames if max_state_frames else 0
        positions = [t % stride + stride * s for s in range(start, step + 1)]     # ..., t-k, t
        expected = engine.model.forward_clip(torch.stack([x[p] for p in positions])[None])
        worst = max(worst, (recorded[t] - expected).abs().max().item())
        if t >= stride + 1 and len(positions) > 1:
            # The test can fail: consecutive frames give other logits than the strided clip.
            consecutive = engine.model.forward_clip(torch.stack(x[t - len(positions) + 1:t + 1])[None])
            assert (recorded[t] - consecutive).abs().max().item() > 1e-3
    assert worst < 2e-5, worst
    # frames since reset (the drift plot's axis) follow the strided states
    since = sorted(result.modes["stream"].drift_frames)
    assert since == sorted({(t // stride) - ((t // stride) // max_state_frames) * max_state_frames
                            if max_state_frames else t // stride for t in range(9)})


def test_frame_and_clip_modes_use_the_official_clips(tmp_path, monkeypatch):
    """Frame and clip modes run the official clips from backbone features computed once per
    frame; their logits equal forward_clip of the clip's inputs."""
    engine = _engine()
    video = _video(tmp_path, 11)
    calls, backbone_frames = [], []
    model = engine.model
    forward_clip_features, features = model.forward_clip_features, model.features

    def record(feats, batch, size):
        logits = forward_clip_features(feats, batch, size)
        calls.append(([f.clone() for f in feats], batch, size, logits))
        return logits

    def count(frames):
        backbone_frames.append(frames.shape[0])
        return features(frames)

    monkeypatch.setattr(model, "forward_clip_features", record)
    monkeypatch.setattr(model, "features", count)
    result = evaluate([video], "synthetic", engine, ["frame", "clip"])
    x = _inputs(engine, video)
    assert len(calls) == 22                   # per frame: the T=1 call, then the clip
    assert sum(backbone_frames) == 11         # the backbone saw each frame once
    worst = 0.0
    for t in range(11):
        for (feats, batch, size, logits), positions in zip(calls[2 * t:2 * t + 2], ([t], clip_positions(t))):
            assert batch == 1 and size == tuple(x[t].shape[-2:])
            expected_feats = features(torch.stack([x[p] for p in positions]))
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(feats, expected_feats))
            expected = model.forward_clip(torch.stack([x[p] for p in positions])[None])
            worst = max(worst, ((logits - expected).abs().max() / expected.abs().max()).item())
    assert worst < 1e-5, worst
    # the test can fail: the clip of t=10 is not the T=1 run of frame 10
    assert (calls[-1][3] - calls[-2][3]).abs().max().item() > 1e-3
    # the labels scored are the argmax of those logits at the label size
    from tv3s_ros.preprocess import logits_to_size

    for mode, offset in (("frame", 0), ("clip", 1)):
        expected_cm = np.zeros((19, 19), dtype=np.int64)
        for t in range(11):
            gt = load_label(video.frames[t].label, "synthetic")
            pred = logits_to_size(calls[2 * t + offset][3], gt.shape).argmax(1)[0].numpy()
            expected_cm += confusion_matrix(gt, pred, 19)
        assert result.modes[mode].frames == 11
        assert np.array_equal(result.modes[mode].confusion, expected_cm)


def test_subset_flags_of_generated_world_videos(tmp_path):
    """The flags tv3s-eval --subset reads are the ones the world generator writes."""
    from tv3s_ros.data.world_io import write_vspw

    write_vspw(tmp_path, seeds=[], val_seeds=[5000], frames=60, size=(48, 64), image_format="png")
    (video,) = open_dataset(tmp_path, split="val")
    meta = json.loads((video.directory / "meta.json").read_text())
    assert meta["hard_frames"], "seed 5000 has events in its first 60 frames"
    assert frame_flags(video, "hard") == set(meta["hard_frames"])
    for kind in ("flash", "noise"):       # event kinds that are also per-frame flags
        assert frame_flags(video, kind) == set(meta["subsets"][kind])
    assert frame_flags(video, "no_such_flag") == set()


def test_subset_scores_flagged_frames_but_streams_all(tmp_path):
    engine = _engine()
    video = _video(tmp_path, 6)
    (tmp_path / "v" / "meta.json").write_text(json.dumps(
        {"frames": [{"index": i, "hard": i in (2, 5)} for i in range(6)]}))
    result = evaluate([video], "synthetic", engine, ["frame", "stream"], subset="hard")
    assert result.modes["stream"].frames == 2 and result.modes["frame"].frames == 2
    assert sorted(result.modes["stream"].drift_frames) == [2, 5]    # the state ran over every frame


def test_also_subsets_equal_separate_runs(tmp_path):
    """All frames and the flagged frames from one pass score exactly as two separate runs."""
    engine = _engine()
    video = _video(tmp_path, 10)
    (tmp_path / "v" / "meta.json").write_text(json.dumps(
        {"frames": [{"index": i, "hard": i in (2, 3, 7)} for i in range(10)]}))
    modes = ["frame", "clip", "stream"]
    both = evaluate([video], "synthetic", engine, modes, also_subsets=["hard"])
    alone = {None: evaluate([video], "synthetic", engine, modes),
             "hard": evaluate([video], "synthetic", engine, modes, subset="hard")}
    assert set(both.subsets) == {"hard"} and both.settings["subset"] is None
    assert both.subsets["hard"].settings["subset"] == "hard"
    for flag, got in ((None, both), ("hard", both.subsets["hard"])):
        for mode in modes:
            a, b = got.modes[mode], alone[flag].modes[mode]
            assert a.frames == b.frames == (3 if flag else 10)
            np.testing.assert_array_equal(a.confusion, b.confusion)
            assert a.drift_frames == b.drift_frames
            assert a.consistency.windows(8) == b.consistency.windows(8)
            assert a.mvc(8) == pytest.approx(b.mvc(8), nan_ok=True)


# ---------------------------------------------------------------------------------------------
# CLI


def _synthetic_world(root, videos=2, frames=18, size=(24, 32)):
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.json").write_text(json.dumps({"layout": "synthetic", "splits": {"val": ["v0", "v1"]}}))
    for v in range(videos):
        rng = np.random.default_rng(v)
        for i in range(frames):
            _rgb(root / f"v{v}" / "origin" / f"{i:05d}.png", *size, seed=10 * v + i)
            label = np.zeros(size, dtype=np.uint8)
            label[size[0] // 2:] = 13
            label[:, :4] = rng.integers(0, 19)
            _png(root / f"v{v}" / "mask" / f"{i:05d}.png", label)
        (root / f"v{v}" / "meta.json").write_text(json.dumps(
            {"frames": [{"index": i, "hard": i % 5 == 0} for i in range(frames)]}))


@pytest.fixture
def checkpoint(tmp_path):
    from tv3s_ros.model import build_model, save_checkpoint

    torch.manual_seed(1)
    return save_checkpoint(build_model(PRESET, **TINY), tmp_path / "tiny.pth")


def test_cli_end_to_end(tmp_path, checkpoint, capsys):
    world, out = tmp_path / "world", tmp_path / "out"
    _synthetic_world(world)
    status = eval_tool.main([str(world), "--model", PRESET, "--weights", str(checkpoint), "--model-overrides",
                             TINY_CLI, "--size", "64x64", "--device", "cpu", "--split", "val",
                             "--stride", "2", "--max-state-frames", "5", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "| mode | mIoU |" in captured.out and "| stream |" in captured.out
    for name in ("results.md", "results.csv", "results.json", "confusion.png", "drift.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert set(data["modes"]) == {"frame", "clip", "stream"}
    assert data["settings"]["stride"] == 2 and data["settings"]["max_state_frames"] == 5
    for mode in data["modes"].values():
        assert mode["frames"] == 36
        assert mode["mvc8"] is not None and mode["mvc16"] is not None   # 18 > 16 frames per video
        assert mode["vc_windows"] == {"8": 20, "16": 4}                 # 2 videos x (18 - n)
        cm = np.array(mode["confusion"])
        assert cm.sum() == 36 * 24 * 32
        assert mode["miou"] == pytest.approx(100 * mean_iou(cm), abs=1e-3)
    # stride 2, 5 frames per state: frames since reset run 0..4
    assert data["modes"]["stream"]["drift"]["frames_since_reset"] == [0, 1, 2, 3, 4]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["mode", "miou", "miou_present", "mvc8", "mvc16", "frames"] and "iou_road" in header
    assert (out / "results.md").read_text() in captured.out


def test_cli_subset(tmp_path, capsys):
    world = tmp_path / "world"
    _synthetic_world(world, videos=1, frames=6)
    status = eval_tool.main([str(world), "--model", PRESET, "--allow-random-weights", "--model-overrides",
                             TINY_CLI, "--size", "64x64", "--device", "cpu", "--modes", "frame,stream",
                             "--subset", "hard", "--out", str(tmp_path / "o"), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(data["modes"]) == {"frame", "stream"}
    assert data["modes"]["frame"]["frames"] == 2          # frames 0 and 5 are flagged
    assert data["modes"]["frame"]["mvc8"] is None         # 6 frames: no VC window


def test_cli_also_subset(tmp_path, capsys):
    world, out = tmp_path / "world", tmp_path / "o"
    _synthetic_world(world, videos=1, frames=6)
    status = eval_tool.main([str(world), "--model", PRESET, "--allow-random-weights", "--model-overrides",
                             TINY_CLI, "--size", "64x64", "--device", "cpu", "--modes", "frame,stream",
                             "--also-subset", "hard", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.count("| mode | mIoU |") == 2 and "frames flagged hard" in captured.out
    everything = json.loads((out / "results.json").read_text())
    hard = json.loads((out / "subset-hard" / "results.json").read_text())
    assert everything["modes"]["frame"]["frames"] == 6 and everything["settings"]["subset"] is None
    assert hard["modes"]["frame"]["frames"] == 2 and hard["settings"]["subset"] == "hard"  # frames 0 and 5
    assert (out / "subset-hard" / "drift.png").is_file()


def _bad(args, capsys):
    status = eval_tool.main(args)
    err = capsys.readouterr().err
    return status, err


@pytest.mark.parametrize("case", ["missing", "empty", "layout", "mismatch", "split", "subset", "also_subset",
                                  "weights"])
def test_cli_bad_input_exit_2(tmp_path, capsys, case):
    world = tmp_path / "world"
    base = ["--model", PRESET, "--allow-random-weights", "--model-overrides", TINY_CLI, "--device", "cpu",
            "--no-progress"]
    target = world
    if case == "missing":
        target = tmp_path / "absent"
    elif case == "empty":
        world.mkdir()
    else:
        _synthetic_world(world, videos=1, frames=2)
    if case == "layout":
        base += ["--layout", "kitti"]
    elif case == "mismatch":
        _png(world / "v0" / "mask" / "00001.png", np.zeros((24, 31)))
    elif case == "split":
        base += ["--split", "test"]
    elif case == "subset":
        base += ["--subset", "nonexistent_flag"]
    elif case == "also_subset":
        base += ["--also-subset", "nonexistent_flag"]
    elif case == "weights":
        base = [b for b in base if b != "--allow-random-weights"] + ["--weights", str(tmp_path / "no.pth")]
    status, err = _bad([str(target)] + base, capsys)
    assert status == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("tv3s-eval: error: "), err
    assert "Traceback" not in err
