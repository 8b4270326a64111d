"""Logit adjustment of class-weighted checkpoints (python -m tv3s_ros.train.calibrate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.data.datasets import open_dataset
from tv3s_ros.eval.runner import evaluate
from tv3s_ros.tools import calibrate
from tv3s_ros.train.calibrate import CLASSIFIER_BIAS, adjust_checkpoint, logit_offsets, sweep_alphas

# A wide spread, so that alpha moves the tiny random model's labels a lot.
WEIGHTS = [float(w) for w in np.geomspace(1.0, 60.0, 19)]
SIZE = "64x96"


def _model(weights=WEIGHTS):
    from tv3s_ros.model import build_model

    torch.manual_seed(3)
    model = build_model(TINY_PRESET, **tiny_overrides())
    with torch.no_grad():
        for layer in model.decode_head.vs.layers:
            layer.mixer.D.normal_()
    return model


def _checkpoint(path, weights=WEIGHTS, extra=None):
    from tv3s_ros.model import save_checkpoint

    train = {"class_weights": weights} if weights is not None else {"seed": 0}
    return save_checkpoint(_model(), path, meta={"tv3s_train": train, **(extra or {})})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tv3s_ros.data.world_io import write_vspw

    root = tmp_path_factory.mktemp("world")
    write_vspw(root, seeds=[], val_seeds=[5000, 5001], frames=5, size=(48, 80), image_format="png")
    return root


def _engine(path):
    from tv3s_ros.engine import Engine, EngineSettings

    return Engine.from_settings(EngineSettings(TINY_PRESET, weights=str(path), device="cpu", input_size=SIZE,
                                               max_gap_s=0.0, model_overrides=tiny_overrides()))


def test_offsets_are_the_centred_log_prior():
    offsets = logit_offsets([1.0, np.e, np.e ** 2], 0.5)
    assert np.allclose(offsets, [0.5, 0.0, -0.5])
    assert np.allclose(logit_offsets(WEIGHTS, 0.0), 0.0)
    with pytest.raises(ValueError):
        logit_offsets([1.0, 0.0], 1.0)


def test_adjusted_checkpoint_shifts_every_logit_by_its_class_offset(tmp_path):
    from tv3s_ros.model import build_model, load_checkpoint

    src = _checkpoint(tmp_path / "w.pth")
    dst = adjust_checkpoint(src, tmp_path / "adj.pth", 0.7, {"fitted_on": "test"})
    before, after = build_model(TINY_PRESET, **tiny_overrides()), build_model(TINY_PRESET, **tiny_overrides())
    load_checkpoint(before, src)
    load_checkpoint(after, dst)                           # strict: same keys and shapes
    record = torch.load(dst, weights_only=True)["meta"]["logit_adjustment"]
    assert record["alpha"] == 0.7 and record["fitted_on"] == "test" and record["parameter"] == CLASSIFIER_BIAS
    frames = torch.randn(1, 3, 3, 64, 96)
    diff = after.forward_clip(frames) - before.forward_clip(frames)
    expected = torch.from_numpy(logit_offsets(WEIGHTS, 0.7)).float()[None, :, None, None].expand_as(diff)
    assert torch.allclose(diff, expected, atol=1e-5)
    # streaming: the state never sees the classifier, so every frame shifts the same way
    state_b, state_a = before.new_state(1), after.new_state(1)
    for t in range(3):
        (lb, state_b), (la, state_a) = before.forward_stream(frames[:, t], state_b), after.forward_stream(frames[:, t], state_a)
        assert torch.allclose(la - lb, expected, atol=1e-5)
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed == [CLASSIFIER_BIAS]


def test_sweep_equals_tv3s_eval_of_the_adjusted_checkpoint(tmp_path, world):
    """The sweep's confusion for each alpha is what tv3s-eval's stream mode measures on the
    checkpoint written with that alpha (the collector streams exactly as the node does)."""
    src = _checkpoint(tmp_path / "w.pth")
    videos = open_dataset(world, split="val")
    sweep = sweep_alphas(_engine(src), videos, "synthetic", WEIGHTS, [0.0, 1.0])
    assert np.abs(sweep[0.0] - sweep[1.0]).sum() > 0.05 * sweep[0.0].sum()   # alpha matters here
    for alpha in (0.0, 1.0):
        path = adjust_checkpoint(src, tmp_path / f"a{alpha}.pth", alpha)
        measured = evaluate(videos, "synthetic", _engine(path), ["stream"]).modes["stream"].confusion
        assert measured.sum() == sweep[alpha].sum() > 0
        # identical up to argmax ties at float rounding (a few pixels at most)
        assert np.abs(measured - sweep[alpha]).sum() <= 2e-3 * measured.sum(), alpha


def test_cli_writes_the_best_alpha(tmp_path, world, capsys):
    from tv3s_ros.eval.metrics import mean_iou

    src = _checkpoint(tmp_path / "w.pth")
    out = tmp_path / "cal.pth"
    status = calibrate.main([str(src), str(world), str(out), "--model", TINY_PRESET, "--model-overrides",
                             tiny_cli(), "--size", SIZE, "--device", "cpu", "--alphas", "0.5,1,2",
                             "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    record = torch.load(out, weights_only=True)["meta"]["logit_adjustment"]
    sweep = {float(a): v for a, v in record["sweep_miou"].items()}
    assert set(sweep) == {0.0, 0.5, 1.0, 2.0}              # 0 (unadjusted) is always measured
    assert record["alpha"] == max(sweep, key=sweep.get)
    assert "(best)" in captured.out and f"alpha {record['alpha']:g}" in captured.out
    videos = open_dataset(world, split="val")
    measured = evaluate(videos, "synthetic", _engine(out), ["stream"]).modes["stream"].confusion
    assert abs(100 * mean_iou(measured) - sweep[record["alpha"]]) < 0.5
    # a given alpha skips the sweep
    status = calibrate.main([str(src), str(world), str(tmp_path / "given.pth"), "--model", TINY_PRESET,
                             "--model-overrides", tiny_cli(), "--alpha", "0.3"])
    assert status == 0
    assert torch.load(tmp_path / "given.pth", weights_only=True)["meta"]["logit_adjustment"]["alpha"] == 0.3


@pytest.mark.parametrize("case", ["unweighted", "adjusted", "alphas", "missing", "unreadable"])
def test_cli_bad_input_exit_2(tmp_path, world, capsys, case):
    """Refused up front, or (unreadable) part-way through the sweep: one line, exit 2."""
    src = tmp_path / "w.pth"
    args = ["--model", TINY_PRESET, "--model-overrides", tiny_cli(), "--size", SIZE, "--device", "cpu",
            "--no-progress"]
    if case == "unweighted":
        _checkpoint(src, weights=None)
        expected = "trained without class weights"
    elif case == "adjusted":
        _checkpoint(tmp_path / "orig.pth")
        adjust_checkpoint(tmp_path / "orig.pth", src, 0.5)
        expected = "already logit-adjusted"
    elif case == "alphas":
        _checkpoint(src)
        args += ["--alphas", "0.5,x"]
        expected = "--alphas"
    elif case == "missing":
        _checkpoint(src)
        world = tmp_path / "absent"
        expected = "absent"
    else:
        import shutil

        _checkpoint(src)
        world = shutil.copytree(world, tmp_path / "world")
        label = sorted((world / "world_005001" / "mask").glob("*.png"))[-1]   # the last frame's label
        data = label.read_bytes()
        label.write_bytes(data[:len(data) // 2])   # the header reads (the up-front check passes), the pixels not
        expected = label.name
    status = calibrate.main([str(src), str(world), str(tmp_path / "out.pth"), *args])
    err = capsys.readouterr().err
    assert status == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out.pth").exists()
