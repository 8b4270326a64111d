"""End-to-end pixel truth with the shipped demo model (``tv3s_demo`` and its weights).

Synthetic-world frames (pixel-exact ground truth) go through the real node (separate process,
real ROS 2 graph; bgr8, rgb8 and JPEG cameras) and through tv3s-bag. Their labels must equal
the offline streaming labels (the Engine, as tv3s-eval's stream mode runs it), their confusion
matrices and mIoU against the ground truth must equal tv3s-eval's, and that mIoU must clear a
floor that a colour swap or a flip in the shared pre/post-processing falls below (the node
and the offline path share that code, so only the ground truth can catch it there). A
geometry check of the engine against independent OpenCV/numpy references catches what mIoU
cannot: an off-by-one resize or a one-pixel shift.

Frames are 240x480, so the official policy resizes them to the model's test scale (OpenCV's
integer bilinear) and the logits back: both resizes are exercised.
"""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch

from tv3s_ros.data import World
from tv3s_ros.engine import Engine, EngineSettings, FrameInput
from tv3s_ros.eval.metrics import confusion_matrix, mean_iou

SEED = 2000          # held out: the demo model trained on seeds 1000..1023 and 1100..1219 (validated on 1024..1027)
FRAMES = 4
SIZE = (240, 480)    # not the model's input size: both resizes run
# mIoU (%) of the demo weights on these frames must stay above this. Measured with the
# shipped weights (five stages and a logit adjustment, see model/README.md): 44.8 correct,
# 30.1 with an RGB/BGR swap in preprocessing, 17.4 with a horizontal flip in postprocessing
# (a one-row resize shift barely moves mIoU: the geometry test below catches it).
# Re-measure when the weights change.
MIOU_FLOOR = 38.5
NUM_CLASSES = 19


@pytest.fixture(scope="module")
def world():
    """(images RGB, labels) of the test video."""
    frames = list(World(SEED, SIZE).frames(FRAMES))
    return [f[0] for f in frames], [f[1] for f in frames]


def offline_stream(images):
    """Labels of the streaming engine with the preset's shipped weights (tv3s-eval's stream path)."""
    engine = Engine.from_settings(EngineSettings("tv3s_demo", device="cpu", max_gap_s=0.0))
    assert engine.weights and engine.shipped_weights
    return [engine.process([FrameInput("v", im, i * 50_000_000)], outputs=("labels",))[0].labels
            for i, im in enumerate(images)]


def confusion(preds, gts) -> np.ndarray:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for p, g in zip(preds, gts):
        cm += confusion_matrix(g, p, NUM_CLASSES)
    return cm


@pytest.fixture(scope="module")
def eval_stream(tmp_path_factory):
    """tv3s-eval (streaming mode, shipped weights) on the same frames, written losslessly."""
    from tv3s_ros.data.world_io import write_vspw
    from tv3s_ros.tools import eval as eval_tool

    root = tmp_path_factory.mktemp("world")
    write_vspw(root, seeds=[], val_seeds=[SEED], frames=FRAMES, size=SIZE, image_format="png")
    out = root / "eval_out"
    assert eval_tool.main([str(root), "--model", "tv3s_demo", "--modes", "stream", "--device", "cpu",
                           "--cpu-threads", "1", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    stream = result["modes"]["stream"]
    return np.array(stream["confusion"], np.int64), stream


@pytest.fixture(scope="module")
def offline_rgb(world):
    return offline_stream(world[0])


# ------------------------------------------------------------------------------- the node


@pytest.mark.ros
def test_node_bgr8_rgb8_jpeg_equal_offline_and_eval(world, offline_rgb, eval_stream, tmp_path):
    from ros_helpers.feed import labels_array
    from ros_helpers.frames import decode_jpeg, jpeg_bytes
    from ros_helpers.graph import NodeProcess, Probe, stamp_ns
    from ros_helpers.messages import compressed_image, raw_image
    from sensor_msgs.msg import CompressedImage, Image

    images, gts = world
    ns = "/pt"
    cams = {"bgr": f"{ns}/bgr/image_raw", "rgb": f"{ns}/rgb/image_raw", "jpg": f"{ns}/jpg/image_raw/compressed"}
    # No weights parameter: the preset's shipped weights must be used, without allow_random_weights.
    node = NodeProcess(tmp_path / "node.log", {"model": "tv3s_demo", "device": "cpu", "reliability": "reliable",
                                               "input_size": "official", "max_gap_s": 0.0,
                                               "camera_topics": list(cams.values())}, namespace=ns)
    probe = Probe("pixel_truth_probe")
    try:
        log = node.wait_for_log("ready:", timeout=90)
        assert "shipped with the preset" in log and "tv3s_demo.pth" in log, log
        assert "RANDOM" not in log
        for name, topic in cams.items():
            probe.subscribe(Image, f"{ns}/tv3s_node/{name}/labels")
            probe.publisher(CompressedImage if name == "jpg" else Image, topic)
            probe.wait_for_subscribers(topic, timeout=30)
            probe.wait_for_publishers(f"{ns}/tv3s_node/{name}/labels", timeout=30)
        time.sleep(0.3)
        got = {name: [] for name in cams}
        for i, rgb in enumerate(images):
            stamp = 1_000_000_000_000 + i * 50_000_000
            msgs = {"bgr": raw_image(np.ascontiguousarray(rgb[:, :, ::-1]), stamp, "cam", encoding="bgr8"),
                    "rgb": raw_image(rgb, stamp, "cam"),
                    "jpg": compressed_image(rgb, stamp, "cam")}
            for name, msg in msgs.items():   # lock-step: the next frame only after this one's labels
                topic = f"{ns}/tv3s_node/{name}/labels"
                probe.publish(cams[name], msg)
                msg_out = probe.wait_for(lambda: next((m for m in probe.received(topic)
                                                       if stamp_ns(m.header) == stamp), None),
                                         60, f"{name} labels of frame {i}")
                got[name].append(labels_array(msg_out).copy())
    finally:
        probe.close()
        code = node.stop()
    assert code == 0, node.log()

    # Lossless inputs: pixel for pixel the offline streaming labels.
    for name in ("bgr", "rgb"):
        for i, (a, b) in enumerate(zip(got[name], offline_rgb)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} frame {i}")
    # JPEG: the offline stream of the same decoded frames (same libjpeg, so the same pixels).
    offline_jpg = offline_stream([decode_jpeg(jpeg_bytes(im)) for im in images])
    for i, (a, b) in enumerate(zip(got["jpg"], offline_jpg)):
        np.testing.assert_array_equal(a, b, err_msg=f"jpeg frame {i}")

    # Against the ground truth: exactly tv3s-eval's stream confusion matrix and mIoU.
    eval_cm, stream = eval_stream
    cm = confusion(got["rgb"], gts)
    np.testing.assert_array_equal(cm, eval_cm)
    miou = 100 * mean_iou(cm)
    # The confusion matrices are equal, so the mIoU is; results.json rounds percents to 4 decimals.
    assert abs(miou - stream["miou"]) <= 0.5e-4 + 1e-9, (miou, stream["miou"])
    jpeg_miou = 100 * mean_iou(confusion(got["jpg"], gts))
    print(f"\nnode mIoU vs ground truth: {miou:.2f} % (raw), {jpeg_miou:.2f} % (jpeg); floor {MIOU_FLOOR}")
    assert miou > MIOU_FLOOR and jpeg_miou > MIOU_FLOOR


# ------------------------------------------------------------------------------- tv3s-bag


def test_bag_tool_equals_offline_and_eval(world, offline_rgb, eval_stream, tmp_path, capsys):
    from rosbags.highlevel import AnyReader

    from tv3s_ros.data.world_io import IMAGE_TOPIC, LABEL_TOPIC, write_bag
    from tv3s_ros.tools import bag as bag_tool

    write_bag(tmp_path / "drive", SEED, FRAMES, size=SIZE, images="raw")
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"), "--model", "tv3s_demo",
                            "--topics", IMAGE_TOPIC, "--input-size", "official", "--device", "cpu",
                            "--cpu-threads", "1", "--no-progress", "--outputs", "labels"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "tv3s_demo.pth (shipped with the preset)" in err, err

    def read(path, topic):
        """mono8 images of ``topic`` in bag order."""
        out = []
        with AnyReader([path]) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            for c, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, c.msgtype)
                assert msg.encoding == "mono8"
                out.append(np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width])
        return out

    labels = read(tmp_path / "out", "/tv3s/front/labels")
    gts = read(tmp_path / "drive", LABEL_TOPIC)
    assert len(labels) == len(gts) == FRAMES
    for i, (a, b, g) in enumerate(zip(labels, offline_rgb, world[1])):
        np.testing.assert_array_equal(g, gts[i])                 # the bag's labels are the world's
        np.testing.assert_array_equal(a, b, err_msg=f"bag frame {i}")
    eval_cm, stream = eval_stream
    cm = confusion(labels, gts)
    np.testing.assert_array_equal(cm, eval_cm)
    assert abs(100 * mean_iou(cm) - stream["miou"]) <= 0.5e-4 + 1e-9
    assert 100 * mean_iou(cm) > MIOU_FLOOR


# ------------------------------------------------------------------------------- geometry


def _reference_input(rgb: np.ndarray, cfg) -> np.ndarray:
    """The official test pipeline written independently: keep-ratio rescale into the preset's
    test scale (mmcv's rescale_size rounding), cv2 INTER_LINEAR, RGB normalise."""
    h, w = rgb.shape[:2]
    factor = min(max(cfg.test_scale) / max(h, w), min(cfg.test_scale) / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x = (resized - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    return x.transpose(2, 0, 1)


def _marker_frame() -> np.ndarray:
    """Red left part, blue right part, a green band at the top: orientation and channel order
    are visible, and the edges sit at columns/rows where a one-pixel shift shows."""
    rgb = np.zeros((*SIZE, 3), np.uint8)
    rgb[:, :173] = (230, 20, 10)
    rgb[:, 173:] = (15, 25, 220)
    rgb[:61] = (20, 210, 30)
    return rgb


def test_engine_geometry_matches_independent_reference(world):
    """The decode + preprocess path gives exactly OpenCV's resize of the RGB frame, and the
    labels come back where the logits put them (checked with a model whose logits are the
    pooled input colours, resized back with OpenCV)."""
    from types import SimpleNamespace

    from tv3s_ros.image_codec import decode_msg

    engine = Engine.from_settings(EngineSettings("tv3s_demo", device="cpu", max_gap_s=0.0))
    cfg = engine.cfg
    seen = {}
    real = engine.model.forward_stream

    def spy(x, state):
        logits, state = real(x, state)
        seen["x"], seen["grid"] = x.detach().clone(), tuple(logits.shape[-2:])
        # Logits from the input itself: class c = channel c (R, G, B) pooled to the logits' grid.
        pooled = torch.nn.functional.avg_pool2d(x, x.shape[-1] // logits.shape[-1])
        fake = torch.full_like(logits, -1e4)
        fake[:, :3] = pooled
        return fake, state

    engine.model.forward_stream = spy
    for k, rgb in enumerate([world[0][0], _marker_frame()]):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        msg = SimpleNamespace(encoding="bgr8", height=SIZE[0], width=SIZE[1], step=3 * SIZE[1],
                              is_bigendian=0, data=bgr.tobytes())
        decoded = decode_msg(msg)
        np.testing.assert_array_equal(decoded, rgb)
        out = engine.process([FrameInput(f"g{k}", decoded, 0)], outputs=("labels",))[0]
        ref_x = _reference_input(rgb, cfg)
        np.testing.assert_allclose(seen["x"][0].numpy(), ref_x, rtol=0, atol=1e-5)
        # Labels: pool the reference input, resize the three logit planes back with OpenCV.
        (gh, gw), k_pool = seen["grid"], ref_x.shape[-1] // seen["grid"][1]
        pooled = ref_x.reshape(3, gh, k_pool, gw, k_pool).mean((2, 4))
        planes = np.stack([cv2.resize(p, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR) for p in pooled])
        expected = planes.argmax(0)
        top2 = np.sort(planes, 0)[-2:]
        decided = (top2[1] - top2[0]) > 1e-3          # ignore exact ties of the reference
        wrong = (out.labels != expected) & decided
        assert decided.mean() > 0.95 and not wrong.any(), f"frame {k}: {wrong.sum()} pixels differ, e.g. at {np.argwhere(wrong)[:3].tolist()}"
    # The marker frame's labels: red (0) on the left, blue (2) on the right, green (1) on top.
    assert out.labels[200, 5] == 0 and out.labels[200, 470] == 2 and out.labels[10, 240] == 1
