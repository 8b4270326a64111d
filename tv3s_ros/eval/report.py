"""Evaluation outputs: summary tables (markdown, CSV, JSON) and plots (confusion matrix, drift).

All metrics are reported in percent. A metric that cannot be computed (mVC on a dataset
with one labelled frame per video, a class never seen) is empty in CSV, ``null`` in JSON and
``n/a`` in markdown.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from tv3s_ros.eval.metrics import VC_CLIPS
from tv3s_ros.eval.runner import EvalResult

__all__ = ["summary_rows", "markdown_table", "write_outputs", "plot_confusion", "plot_drift"]


def _pct(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else round(100.0 * value, 4)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def summary_rows(result: EvalResult) -> List[Dict[str, object]]:
    """One dict per mode: mode, miou, miou_present, mvc8, mvc16 (percent), frames."""
    rows = []
    for mode, res in result.modes.items():
        row = {"mode": mode, "miou": _pct(res.miou), "miou_present": _pct(res.miou_present)}
        for clip in VC_CLIPS:
            row[f"mvc{clip}"] = _pct(res.mvc(clip))
        row["frames"] = res.frames
        rows.append(row)
    return rows


def _present_classes(result: EvalResult) -> List[int]:
    total = sum(res.confusion for res in result.modes.values())
    return [c for c in range(len(result.class_names)) if total[c, :].sum() or total[:, c].sum()]


def markdown_table(result: EvalResult) -> str:
    """The summary table, then per-class IoU of the classes seen in ground truth or predictions."""
    rows = summary_rows(result)
    lines = ["| mode | mIoU | mIoU (GT classes) | mVC8 | mVC16 | frames |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {_fmt(r['miou'])} | {_fmt(r['miou_present'])} | {_fmt(r['mvc8'])} "
                     f"| {_fmt(r['mvc16'])} | {r['frames']} |")
    modes = list(result.modes)
    lines += ["", "| class | " + " | ".join(f"IoU {m}" for m in modes) + " |",
              "|---|" + "---:|" * len(modes)]
    ious = {m: result.modes[m].iou() for m in modes}
    for c in _present_classes(result):
        lines.append(f"| {result.class_names[c]} | " + " | ".join(_fmt(_pct(ious[m][c])) for m in modes) + " |")
    return "\n".join(lines) + "\n"


def _csv_text(result: EvalResult) -> str:
    rows = summary_rows(result)
    names = result.class_names
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(rows[0].keys()) + [f"iou_{n}" for n in names])
    for r in rows:
        iou = result.modes[r["mode"]].iou()
        writer.writerow(["" if v is None else v for v in r.values()]
                        + ["" if _pct(v) is None else _pct(v) for v in iou])
    return buf.getvalue()


def _json_obj(result: EvalResult) -> dict:
    modes = {}
    for row in summary_rows(result):
        res = result.modes[row["mode"]]
        since, miou, frames = res.drift_curve()
        modes[row["mode"]] = dict(
            row, per_class_iou={n: _pct(v) for n, v in zip(result.class_names, res.iou())},
            vc_windows={str(c): res.consistency.windows(c) for c in VC_CLIPS},
            drift={"frames_since_reset": since.tolist(), "miou": [_pct(v) for v in miou],
                   "frames": frames.tolist()},
            confusion=res.confusion.tolist())
    return {"settings": result.settings, "videos": result.videos, "class_names": result.class_names,
            "units": "percent", "modes": modes}


def plot_confusion(result: EvalResult, path: Path) -> None:
    """Row-normalised confusion matrices (ground truth rows), one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = _present_classes(result) or list(range(len(result.class_names)))
    names = [result.class_names[c] for c in classes]
    n = len(result.modes)
    side = min(16.0, max(4.0, 0.3 * len(classes) + 2))   # 124 VSPW classes: capped
    fig, axes = plt.subplots(1, n, figsize=(side * n, side), squeeze=False)
    for ax, (mode, res) in zip(axes[0], result.modes.items()):
        cm = res.confusion[np.ix_(classes, classes)].astype(np.float64)
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{mode}: mIoU {_fmt(_pct(res.miou))} %")
        ticks = range(len(classes))
        font = 7 if len(classes) <= 40 else 4
        ax.set_xticks(ticks, names, rotation=90, fontsize=font)
        ax.set_yticks(ticks, names, fontsize=font)
        ax.set_xlabel("prediction")
        ax.set_ylabel("ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_drift(result: EvalResult, path: Path) -> None:
    """mIoU against frames since the stream's reset (position in the video without stream mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    for mode, res in result.modes.items():
        since, miou, frames = res.drift_curve()
        top.plot(since, 100 * miou, marker=".", label=mode)
    since, _, frames = next(iter(result.modes.values())).drift_curve()
    bottom.bar(since, frames, width=1.0, color="grey")
    axis = ("frames since reset of the streaming state" if "stream" in result.modes
            else "frame position in the video")
    stride = result.settings.get("stride", 1)
    top.set_title(f"mIoU by {axis}" + (f" (stride {stride}: one step = {stride} frames)" if stride != 1 else ""))
    top.set_ylabel("mIoU (%)")
    top.grid(alpha=0.3)
    top.legend()
    bottom.set_xlabel(axis)
    bottom.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: EvalResult, out: Path) -> Dict[str, Path]:
    """Write results.md/.csv/.json, confusion.png and drift.png into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "confusion": out / "confusion.png", "drift": out / "drift.png"}
    paths["markdown"].write_text(markdown_table(result), encoding="utf-8")
    paths["csv"].write_text(_csv_text(result), encoding="utf-8")
    paths["json"].write_text(json.dumps(_json_obj(result), indent=1), encoding="utf-8")
    plot_confusion(result, paths["confusion"])
    plot_drift(result, paths["drift"])
    return paths
