"""tv3s-train: fine-tuning with a new class list and exact resume, strict checkpoint loading,
streaming-aware gradients against whole clips, a tiny overfit, clip sampling, the schedule
and the CLI end to end."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.data.datasets import Frame, Video
from tv3s_ros.model import build_model, load_checkpoint, save_checkpoint
from tv3s_ros.model.checkpoint import split_checkpoint
from tv3s_ros.tools import train as train_tool
from tv3s_ros.train import Recipe, TrainConfig, Trainer
from tv3s_ros.train.clips import ClipSampler
from tv3s_ros.train.objective import clip_loss, stream_backward
from tv3s_ros.train.recipe import lr_at, param_groups

PRESET = TINY_PRESET
TINY = tiny_overrides()
TINY_CLI = tiny_cli()
SIZE = (48, 64)
CLASSES = ["road", "sidewalk", "building", "other"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tv3s_ros.data.world_io import write_vspw

    root = tmp_path_factory.mktemp("world")
    write_vspw(root, seeds=[1, 2], frames=13, size=SIZE, val_seeds=[3], image_format="png")
    return root


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """A 19-class checkpoint in the mmcv layout (what an official release file looks like)."""
    torch.manual_seed(5)
    return save_checkpoint(build_model(PRESET, **TINY), tmp_path_factory.mktemp("ckpt") / "official.pth")


def _config(world, work_dir, **kw):
    base = dict(dataset=world, work_dir=work_dir, preset=PRESET, model_overrides=dict(TINY), iters=4, batch=2,
                crop=SIZE, log_every=1, save_every=2, progress=False, seed=3,
                recipe=Recipe(lr=1e-3, warmup_iters=2))
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_new_classes_resume_equals_uninterrupted(world, official_checkpoint, tmp_path):
    kw = dict(init=str(official_checkpoint), classes=CLASSES)
    straight = Trainer(_config(world, tmp_path / "a", **kw))
    official = split_checkpoint(torch.load(official_checkpoint, weights_only=True))[1]
    start = _state(straight.model)
    # Everything but the classifiers comes from the checkpoint; the classifiers are new.
    assert torch.equal(start["backbone.block1.0.attn.q.weight"], official["backbone.block1.0.attn.q.weight"])
    assert torch.equal(start["decode_head.vs.layers.1.mixer.A_log"], official["decode_head.vs.layers.1.mixer.A_log"])
    for key in ("conv_seg", "linear_pred", "linear_pred2"):
        assert start[f"decode_head.{key}.weight"].shape[0] == len(CLASSES)
    assert straight.model.cfg.class_names == CLASSES
    straight.run()

    first = Trainer(_config(world, tmp_path / "b", **kw))
    first.run(stop_at=2)
    assert sorted(p.name for p in (tmp_path / "b").glob("iter_*.pth")) == ["iter_2.pth"]
    resumed = Trainer(_config(world, tmp_path / "b", resume="auto"))
    assert resumed.start_iter == 2 and resumed.model.cfg.class_names == CLASSES
    steps = {int(s["step"]) for s in resumed.optimizer.state_dict()["state"].values()}
    assert steps == {2}
    resumed.run()

    # The resumed run ends exactly where the uninterrupted one does (weights, BN statistics,
    # optimizer moments); a changed data order, RNG or schedule would break this.
    a, b = _state(straight.model), _state(resumed.model)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    moved = max((a[k].double() - start[k].double()).abs().max().item() for k in a if k in start and a[k].is_floating_point())
    assert moved > 1e-4                                  # and training did change the weights
    oa, ob = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.allclose(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"], rtol=0, atol=1e-9) for i in oa)
    # Same log (lr schedule continues), minus the timing columns.
    rows = lambda d: [(r["iter"], r["lr"], r["loss"]) for r in csv.DictReader(open(d / "log.csv"))]  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert [float(r[1]) for r in rows(tmp_path / "a")] == pytest.approx(
        [lr_at(1e-3, i, 4, Recipe(lr=1e-3, warmup_iters=2)) for i in range(4)])


def test_saved_checkpoint_loads_strictly_with_same_logits(world, official_checkpoint, tmp_path):
    trainer = Trainer(_config(world, tmp_path, init=str(official_checkpoint), classes=CLASSES, iters=2))
    trainer.run()
    path = tmp_path / "iter_2.pth"
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"meta", "state_dict", "optimizer"}
    meta = raw["meta"]
    assert list(meta["CLASSES"]) == CLASSES and len(meta["PALETTE"]) == len(CLASSES)
    assert meta["iter"] == 2 and meta["preset"] == PRESET and "epoch" in meta
    assert all(type(v) is torch.Tensor for v in raw["state_dict"].values())
    assert all(k.startswith(("backbone.", "decode_head.")) for k in raw["state_dict"])
    fresh = build_model(PRESET, **TINY, num_classes=len(CLASSES), class_names=CLASSES,
                        palette=meta["PALETTE"])
    loaded = load_checkpoint(fresh, path, strict=True)
    assert loaded.class_names == CLASSES and loaded.preset == PRESET
    x = torch.randn(1, 4, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    assert torch.equal(fresh.forward_clip(x), trainer.model.forward_clip(x))
    # and it serves as a starting point without --classes (class count and names from the file)
    again = Trainer(_config(world, tmp_path / "again", init=str(path), iters=1))
    assert again.model.cfg.class_names == CLASSES


def _frozen_tiny(seed=0):
    torch.manual_seed(seed)
    model = build_model(PRESET, **TINY).train()
    model.decode_head.linear_fuse.bn.eval()   # batch statistics would differ between prefix clips
    with torch.no_grad():
        for layer in model.decode_head.vs.layers:
            layer.mixer.D.normal_()
    return model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_streaming_gradients_equal_whole_clips():
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 4, 3, *SIZE, generator=gen)
    labels = torch.randint(0, 19, (2, 4, *SIZE), generator=gen)
    labels[:, :, :5] = 255
    model = _frozen_tiny()

    # Reference: every frame t is the last frame of the whole clip 0..t, run at once.
    model.zero_grad()
    total = sum(clip_loss(model, frames[:, :t + 1], labels[:, :t + 1], dropout=0.0)[0] for t in range(4)) / 4
    total.backward()
    reference = _grads(model)

    for chunk in (1, 3):
        model.zero_grad()
        parts = stream_backward(model, frames, labels, tbptt=0, chunk=chunk, dropout=0.0)
        assert parts["loss"] == pytest.approx(total.item(), rel=1e-5)
        got = _grads(model)
        assert got.keys() == reference.keys()
        for name, g in reference.items():
            scale = g.abs().max().item() + 1e-12
            assert (got[name] - g).abs().max().item() <= 1e-4 * scale + 1e-7, (chunk, name)
    # The Mamba parameters get gradient through the carried state: truncating it changes them.
    model.zero_grad()
    stream_backward(model, frames, labels, tbptt=1, chunk=1, dropout=0.0)
    truncated = _grads(model)["decode_head.vs.layers.0.mixer.in_proj.weight"]
    full = reference["decode_head.vs.layers.0.mixer.in_proj.weight"]
    assert (truncated - full).abs().max().item() > 1e-3 * full.abs().max().item()


def test_tiny_overfit_loss_decreases(world, tmp_path):
    config = _config(world, tmp_path, iters=30, batch=1, ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False,
                     dropout=0.0, drop_path=0.0, save_every=1000, log_every=1, train_split="val",
                     recipe=Recipe(lr=2e-3, warmup_iters=0))
    trainer = Trainer(config)
    trainer.run()
    losses = [float(r["loss"]) for r in trainer.log.rows if r["loss"]]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


def _video(name, n, labelled=None):
    labelled = set(range(n)) if labelled is None else set(labelled)
    return Video(name, tuple(Frame(Path(f"{i}.png"), Path(f"{i}_l.png") if i in labelled else None, i)
                             for i in range(n)))


def test_clip_sampling_official_offsets():
    sampler = ClipSampler([_video("a", 30)], "synthetic", seed=0)
    for g in range(20):
        vi, pos = sampler.draw(g, np.random.default_rng(g))
        t = pos[-1]
        assert t >= 9 and pos == [t - 9, t - 6, t - 3, t]
    short = ClipSampler([_video("s", 5)], "vspw", seed=0, reverse_prob=0.0)
    _, pos = short.draw(0, np.random.default_rng(0))
    assert pos == [max(pos[-1] + o, 0) for o in (-9, -6, -3)] + [pos[-1]]
    # Cityscapes: the annotated frame is last; later frames when earlier ones are missing.
    city = ClipSampler([_video("c", 30, labelled=[19]), _video("d", 30, labelled=[4])], "cityscapes", seed=0)
    draws = {tuple(city.draw(g, np.random.default_rng(g))[1]) for g in range(4)}
    assert draws == {(10, 13, 16, 19), (13, 10, 7, 4)}
    # VSPW plays videos backwards half of the time (official flip_video)
    rev = ClipSampler([_video("v", 30)], "vspw", seed=0)
    orders = {tuple(np.sign(np.diff(rev.draw(g, np.random.default_rng(g))[1]))) for g in range(40)}
    assert orders == {(1, 1, 1), (-1, -1, -1)}
    runs = ClipSampler([_video("r", 12)], "synthetic", run_frames=4, run_stride=3)
    _, pos = runs.draw(0, np.random.default_rng(0))
    assert pos == [0, 3, 6, 9] or pos == [1, 4, 7, 10] or pos == [2, 5, 8, 11]


def test_recipe_groups_and_schedule():
    model = build_model(PRESET, **TINY)
    groups = {g["name"]: g for g in param_groups(model, Recipe())}
    assert groups["decode_head.vs.layers.0.norm.weight"]["lr"] == pytest.approx(6e-4)       # head first
    assert groups["decode_head.vs.layers.0.norm.weight"]["weight_decay"] == pytest.approx(0.01)
    assert groups["backbone.block1.0.norm1.weight"]["weight_decay"] == 0.0
    assert groups["backbone.block1.0.attn.q.weight"]["lr"] == pytest.approx(6e-5)
    r = Recipe()
    assert lr_at(6e-5, 0, 160000, r) == pytest.approx(6e-5 * 1e-6)
    assert lr_at(6e-5, 750, 160000, r) == pytest.approx(6e-5 * (1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_at(6e-5, 80000, 160000, r) == pytest.approx(3e-5)


def test_cli_end_to_end_and_bad_input(world, official_checkpoint, tmp_path, capsys):
    work = tmp_path / "run"
    args = [str(world), "--work-dir", str(work), "--model", PRESET, "--model-overrides", TINY_CLI,
            "--init", str(official_checkpoint), "--classes", ",".join(CLASSES), "--crop", "48x64",
            "--iters", "2", "--batch", "1", "--save-every", "1", "--keep", "1", "--log-every", "1",
            "--val-split", "val", "--val-every", "2", "--val-size", "48x64", "--no-progress", "--device", "cpu"]
    status = train_tool.main(args)
    err = capsys.readouterr().err
    assert status == 0, err
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth", "latest.pth"]
    for name in ("log.csv", "loss.png", "val/iter_2/results.json"):
        assert (work / name).is_file() and (work / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(work / "log.csv")))
    assert [r["iter"] for r in rows] == ["1", "2", "2"] and rows[-1]["val_miou"] != ""
    assert "scan backend fused" in err
    # resuming a finished run does nothing, successfully
    assert train_tool.main(args[:args.index("--init")] + args[args.index("--crop"):] + ["--resume"]) == 0
    capsys.readouterr()

    bad = {
        "missing": [str(tmp_path / "absent")],
        "checkpoint": [str(world), "--init", str(tmp_path / "nope.pth")],
        "mismatch": [str(world), "--init", str(official_checkpoint), "--model-overrides", "{embed_dim: 16}"],
        "split": [str(world), "--train-split", "test"],
    }
    for case, extra in bad.items():
        base = ["--work-dir", str(tmp_path / case), "--model", PRESET, "--no-progress", "--iters", "1"]
        if case != "mismatch":
            base += ["--model-overrides", TINY_CLI]
        status = train_tool.main(extra + base)
        err = capsys.readouterr().err
        assert status == 2, (case, err)
        lines = [line for line in err.splitlines() if "error" in line]
        assert len(lines) == 1 and lines[0].startswith("tv3s-train: error: "), (case, err)
        assert "Traceback" not in err
        assert not list((tmp_path / case).glob("*.pth"))
