"""Class-weighted cross-entropy: the option's parsing, the class shares counted from the
labels, ENet weights, the weighted loss against a hand computation, and a run that uses them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.data.datasets import load_label, open_dataset
from tv3s_ros.tools import train as train_tool
from tv3s_ros.train import Recipe, TrainConfig, Trainer
from tv3s_ros.train.checkpoints import read_training_checkpoint
from tv3s_ros.train.class_weights import enet_weights, label_frequencies, parse_class_weights
from tv3s_ros.train.objective import cross_entropy

SIZE = (48, 64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tv3s_ros.data.world_io import write_vspw

    root = tmp_path_factory.mktemp("world")
    write_vspw(root, seeds=[1, 2], frames=6, size=SIZE, val_seeds=[3], image_format="png")
    return root


def test_parse_class_weights():
    assert parse_class_weights(None) is None and parse_class_weights("none") is None
    assert parse_class_weights("enet") == ("enet", 1.02)
    assert parse_class_weights("enet:1.1") == ("enet", 1.1)
    assert parse_class_weights("1,2.5,0") == [1.0, 2.5, 0.0]
    for bad in ("enet:1", "enet:0.5", "1,x", "1,-2", "0,0", "nan,1"):
        with pytest.raises(ValueError):
            parse_class_weights(bad)


def test_frequencies_count_every_labelled_pixel_and_enet_favours_rare_classes(world):
    videos = open_dataset(world, "synthetic", "train")
    counts = np.zeros(19)
    for video in videos:
        for frame in video.frames:
            label = load_label(frame.label, "synthetic")
            counts += np.bincount(label[label < 19].ravel(), minlength=256)[:19]
    freq = label_frequencies(videos, "synthetic", 19, max_frames=10_000)
    np.testing.assert_allclose(freq, counts / counts.sum(), rtol=1e-12)
    weights = enet_weights(freq, 1.02)
    order = np.argsort(freq)
    assert all(weights[a] >= weights[b] for a, b in zip(order[:-1], order[1:]))   # rarer: heavier
    assert max(weights) == pytest.approx(1 / math.log(1.02))                       # an absent class
    assert weights[int(order[-1])] == pytest.approx(1 / math.log(1.02 + freq.max()))


def test_weighted_cross_entropy_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0, :3] = 255
    weight = torch.tensor([0.5, 2.0, 3.0])
    logp = torch.log_softmax(logits, 1)
    total = 0.0
    for n in range(2):
        for y in range(4):
            for x in range(5):
                k = int(labels[n, y, x])
                if k != 255:
                    total += -float(weight[k] * logp[n, k, y, x])
    # mmseg 0.11: the mean runs over all pixels, ignored ones included
    assert float(cross_entropy(logits, labels, weight)) == pytest.approx(total / labels.numel(), rel=1e-6)
    assert float(cross_entropy(logits, labels, torch.ones(3))) == pytest.approx(float(cross_entropy(logits, labels)))


def test_training_with_enet_weights_records_them(world, tmp_path):
    config = TrainConfig(dataset=world, work_dir=tmp_path / "run", preset=TINY_PRESET, model_overrides=tiny_overrides(),
                         iters=2, batch=1, crop=SIZE, log_every=1, save_every=2, progress=False,
                         recipe=Recipe(lr=1e-3, warmup_iters=1), class_weights=("enet", 1.1))
    trainer = Trainer(config)
    assert "class weights road" in trainer.summary()
    freq = label_frequencies(trainer.train_videos, "synthetic", 19)
    assert trainer.class_weights == pytest.approx(enet_weights(freq, 1.1))
    trainer.run()
    meta = read_training_checkpoint(tmp_path / "run" / "iter_2.pth")["meta"]
    assert meta["tv3s_train"]["class_weights"] == pytest.approx(trainer.class_weights)


def test_cli_class_weights(world, tmp_path, capsys):
    base = [str(world), "--model", TINY_PRESET, "--model-overrides", tiny_cli(), "--crop", "48x64", "--iters", "1",
            "--batch", "1", "--no-progress", "--device", "cpu"]
    assert train_tool.main(base + ["--work-dir", str(tmp_path / "ok"), "--class-weights", "enet:1.2"]) == 0
    assert "class weights road" in capsys.readouterr().err
    for bad in ("enet:0.9", "1,2,3"):      # bad constant; 3 weights for 19 classes
        status = train_tool.main(base + ["--work-dir", str(tmp_path / "bad"), "--class-weights", bad])
        err = capsys.readouterr().err
        assert status == 2 and "Traceback" not in err, err
        assert err.count("tv3s-train: error:") == 1, err


def test_resume_keeps_the_recorded_weights_and_refuses_other_ones(world, tmp_path):
    """A resumed run trains with the weights its checkpoint recorded, even when the data it
    would count them on has changed, and a resume asking for other weights stops with a reason."""
    def config(**kw):
        base = dict(dataset=world, work_dir=tmp_path / "run", preset=TINY_PRESET, model_overrides=tiny_overrides(),
                    iters=2, batch=1, crop=SIZE, log_every=1, save_every=1, progress=False,
                    recipe=Recipe(lr=1e-3, warmup_iters=1), class_weights=("enet", 1.1))
        return TrainConfig(**{**base, **kw})

    first = Trainer(config())
    first.run(stop_at=1)
    meta = read_training_checkpoint(tmp_path / "run" / "iter_1.pth")["meta"]["tv3s_train"]
    assert meta["class_weights_spec"] == ["enet", 1.1]
    # Change the recorded weights in the checkpoint: a recount would not find these.
    path = tmp_path / "run" / "iter_1.pth"
    obj = torch.load(path, weights_only=True)
    planted = [0.5 + 0.1 * k for k in range(19)]
    obj["meta"]["tv3s_train"]["class_weights"] = planted
    torch.save(obj, path)
    resumed = Trainer(config(resume=str(path)))
    assert resumed.class_weights == pytest.approx(planted)
    assert resumed._class_weight.tolist() == pytest.approx(planted)
    resumed.run()
    assert read_training_checkpoint(tmp_path / "run" / "iter_2.pth")["meta"]["tv3s_train"]["class_weights"] \
        == pytest.approx(planted)

    for other, reason in ((None, "trained with class weights"), (("enet", 1.2), "enet:1.1"),
                          ([1.0] * 19, "differ from the ones")):
        with pytest.raises(ValueError, match=reason):
            Trainer(config(resume=str(path), class_weights=other))
    assert Trainer(config(resume=str(path), class_weights=planted)).class_weights == pytest.approx(planted)


def test_resume_of_an_unweighted_run_refuses_weights(world, tmp_path):
    run = Trainer(TrainConfig(dataset=world, work_dir=tmp_path / "run", preset=TINY_PRESET,
                              model_overrides=tiny_overrides(), iters=1, batch=1, crop=SIZE, save_every=1,
                              progress=False, recipe=Recipe(lr=1e-3, warmup_iters=1)))
    run.run()
    with pytest.raises(ValueError, match="without class weights"):
        Trainer(TrainConfig(dataset=world, work_dir=tmp_path / "run", preset=TINY_PRESET,
                            model_overrides=tiny_overrides(), iters=2, batch=1, crop=SIZE, progress=False,
                            resume="auto", class_weights=("enet", 1.1)))
