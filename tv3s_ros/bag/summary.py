"""Statistics of one processed bag: frames, resets, corrupt messages, coverage, throughput.

``BagReport`` collects while the bag runs; ``format_report`` prints the end-of-run summary;
``plot_coverage`` draws class coverage over time per camera (matplotlib, Agg backend, so it
works on machines without a display).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


@dataclass
class CameraBagStats:
    """One camera's figures in a bag report: frames, resets by reason, mean class coverage
    and, when a plot is wanted, the coverage time series."""

    topic: str
    frames: int = 0
    resets: Counter = field(default_factory=Counter)
    coverage_sum: Optional[np.ndarray] = None   # sum over frames of per-class fractions
    times_s: list = field(default_factory=list)  # bag time of each frame (plot only)
    fractions: list = field(default_factory=list)  # dense per-class fractions (plot only)
    reset_times_s: list = field(default_factory=list)  # bag time of each reset (plot only)

    def add(self, num_classes: int, class_ids, fraction, reset_reason: str, time_s: float,
            keep_series: bool) -> None:
        dense = np.zeros(num_classes, dtype=np.float64)
        dense[np.asarray(class_ids, dtype=np.int64)] = np.asarray(fraction, dtype=np.float64)
        if self.coverage_sum is None or self.coverage_sum.shape[0] != num_classes:
            self.coverage_sum = np.zeros(num_classes, dtype=np.float64)
        self.coverage_sum += dense
        self.frames += 1
        if reset_reason:
            self.resets[reset_reason] += 1
        if keep_series:
            if reset_reason:
                self.reset_times_s.append(time_s)
            self.times_s.append(time_s)
            self.fractions.append(dense.astype(np.float32))

    def mean_coverage(self) -> np.ndarray:
        if self.coverage_sum is None or self.frames == 0:
            return np.zeros(0)
        return self.coverage_sum / self.frames


@dataclass
class BagReport:
    """Everything the summary says about one input bag."""

    input_path: str
    output_path: str
    cameras: dict = field(default_factory=dict)          # camera name -> CameraBagStats
    corrupt: Counter = field(default_factory=Counter)    # (topic, kind) -> count
    corrupt_examples: dict = field(default_factory=dict)  # (topic, kind) -> first detail
    messages_read: int = 0
    frames_skipped_every_n: int = 0
    wall_s: float = 0.0
    engine_s: float = 0.0
    status: str = "complete"       # complete | failed | interrupted
    error: str = ""                # one line, for a failed bag
    stopped_by: str = ""           # signal name, for an interrupted bag
    partial_output: Optional[str] = None  # where an unfinished bag was left (readable)
    last_log_ns: int = 0           # bag time of the last message read, from the bag start
    duration_s: float = 0.0        # length of the input bag

    def fail(self, error: str) -> None:
        self.status, self.error = "failed", error

    def progress_text(self) -> str:
        """How far the bag got: frames and bag time."""
        return (f"{self.frames} frames, up to {self.last_log_ns / 1e9:.1f} s of "
                f"{self.duration_s:.1f} s bag time")

    def incomplete_status(self) -> str:
        """``tv3s.status`` of an unfinished output bag (its metadata.yaml)."""
        why = f"interrupted by {self.stopped_by}" if self.status == "interrupted" else \
            f"failed ({self.error})" if self.error else self.status
        return f"incomplete: {why} after {self.progress_text()}"

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.cameras.values())

    @property
    def fps(self) -> float:
        """End-to-end throughput: reading, decoding, model, encoding and writing."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def engine_fps(self) -> float:
        """Frames per second of the engine calls alone (model plus post-processing)."""
        return self.frames / self.engine_s if self.engine_s > 0 else 0.0

    def add_corrupt(self, topic: str, kind: str, detail: str) -> None:
        key = (topic, kind)
        self.corrupt[key] += 1
        self.corrupt_examples.setdefault(key, detail)

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready form (``--summary-json``)."""
        cameras = {}
        for name, stats in self.cameras.items():
            mean = stats.mean_coverage()
            cameras[name] = {
                "topic": stats.topic,
                "frames": stats.frames,
                "resets": dict(stats.resets),
                "mean_coverage": {
                    _class_name(class_names, i): float(v) for i, v in enumerate(mean) if v > 0},
            }
        return {
            "input": self.input_path,
            "output": self.output_path,
            "status": self.status,
            "error": self.error or None,
            "partial_output": self.partial_output,
            "bag_time_done_s": self.last_log_ns / 1e9,
            "bag_duration_s": self.duration_s,
            "frames": self.frames,
            "messages_read": self.messages_read,
            "frames_skipped_every_n": self.frames_skipped_every_n,
            "cameras": cameras,
            "corrupt": [
                {"topic": t, "kind": k, "count": n, "example": self.corrupt_examples[(t, k)]}
                for (t, k), n in sorted(self.corrupt.items())],
            "wall_s": self.wall_s,
            "engine_s": self.engine_s,
            "fps": self.fps,
            "engine_fps": self.engine_fps,
        }


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if index < len(class_names) else f"class_{index}"


def format_report(report: BagReport, class_names: Sequence[str], top_classes: int = 8) -> str:
    """Multi-line end-of-run summary of one bag."""
    lines = [f"Summary of {report.input_path} -> {report.output_path}"]
    if report.status == "interrupted":
        lines.append(f"  INTERRUPTED by {report.stopped_by} after {report.progress_text()}")
    elif report.status == "failed":
        lines.append(f"  FAILED after {report.progress_text()}: {report.error}")
    if report.partial_output:
        lines.append(f"  incomplete output kept at {report.partial_output} "
                     "(readable; metadata.yaml says tv3s.status: incomplete)")
    lines.append(
        f"  {report.frames} frames in {report.wall_s:.1f} s: {report.fps:.2f} frames/s end to end, "
        f"{report.engine_fps:.2f} frames/s in the engine")
    if report.frames_skipped_every_n:
        lines.append(f"  {report.frames_skipped_every_n} frames left out by --every-n")
    for name, stats in sorted(report.cameras.items()):
        resets = sum(stats.resets.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(stats.resets.items())) or "none"
        lines.append(f"  camera {name} ({stats.topic}): {stats.frames} frames, "
                     f"{_plural(resets, 'reset')} ({reasons})")
        mean = stats.mean_coverage()
        order = [i for i in np.argsort(-mean) if mean[i] > 0][:top_classes]
        if order:
            shares = ", ".join(f"{_class_name(class_names, i)} {100 * mean[i]:.1f}%" for i in order)
            rest = int((mean > 0).sum()) - len(order)
            lines.append(f"    mean coverage: {shares}" + (f" (+{rest} more)" if rest > 0 else ""))
    if report.corrupt:
        total = sum(report.corrupt.values())
        lines.append(f"  {_plural(total, 'corrupt message')} skipped:")
        for (topic, kind), count in sorted(report.corrupt.items()):
            example = report.corrupt_examples[(topic, kind)]
            lines.append(f"    {count} x {topic}: {kind}  (first: {example[:120]})")
    else:
        lines.append("  no corrupt messages")
    return "\n".join(lines)


def plot_coverage(report: BagReport, path: Path, class_names: Sequence[str],
                  palette: Sequence[Sequence[int]], top_classes: int = 10) -> None:
    """Stacked class coverage over bag time, one panel per camera; dashed lines mark resets."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cameras = [(name, s) for name, s in sorted(report.cameras.items()) if s.fractions]
    if not cameras:
        return
    fig, axes = plt.subplots(len(cameras), 1, figsize=(11, 2.8 * len(cameras) + 0.6),
                             squeeze=False, sharex=True)
    for ax, (name, stats) in zip(axes[:, 0], cameras):
        times = np.asarray(stats.times_s)
        width = max(len(f) for f in stats.fractions)
        fractions = np.stack([np.pad(f, (0, width - len(f))) for f in stats.fractions])
        # The classes with the largest mean share get their own band, the rest share one.
        order = [i for i in np.argsort(-fractions.mean(axis=0)) if fractions[:, i].any()]
        shown, rest = order[:top_classes], order[top_classes:]
        bands = [fractions[:, i] for i in shown]
        labels = [_class_name(class_names, i) for i in shown]
        colors = [_color(palette, i) for i in shown]
        if rest:
            bands.append(fractions[:, rest].sum(axis=1))
            labels.append("other")
            colors.append((0.6, 0.6, 0.6))
        ax.stackplot(times, *bands, labels=labels, colors=colors, step="post")
        for k, reset_time in enumerate(stats.reset_times_s):
            ax.axvline(reset_time, color="black", linewidth=0.8, linestyle="--",
                       label="state reset" if k == 0 else None)
        ax.set_ylim(0, 1)
        ax.set_ylabel("pixel share")
        ax.set_title(f"{name} ({stats.topic}): {stats.frames} frames, "
                     f"{_plural(sum(stats.resets.values()), 'reset')}")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    axes[-1, 0].set_xlabel("time since bag start (s)")
    fig.suptitle(f"Class coverage over time: {Path(report.input_path).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _color(palette: Sequence[Sequence[int]], index: int):
    if index < len(palette):
        return tuple(c / 255.0 for c in palette[index][:3])
    import matplotlib

    return matplotlib.colormaps["tab20"](index % 20)
