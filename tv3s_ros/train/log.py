"""Training log: a CSV row per logged iteration (and per validation) and a PNG loss curve."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["FIELDS", "TrainLog"]

FIELDS = ("iter", "loss", "loss_main", "loss_aux", "lr", "time_s", "step_s", "val_miou", "val_mvc8")


class TrainLog:
    """``log.csv`` and ``loss.png`` in the work dir. On resume, rows past the checkpoint's
    iteration (logged after the last save of an interrupted run) are dropped."""

    def __init__(self, work_dir: Path, resume_iter: Optional[int] = None):
        self.csv_path = Path(work_dir) / "log.csv"
        self.png_path = Path(work_dir) / "loss.png"
        self.rows: List[Dict[str, str]] = []
        if resume_iter is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= resume_iter]
        self._rewrite()

    def _rewrite(self) -> None:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def add(self, **values) -> None:
        row = {k: "" for k in FIELDS}
        for key, value in values.items():
            if key not in row:
                raise KeyError(key)
            row[key] = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
        self.rows.append(row)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow(row)

    def plot(self) -> Path:
        """Loss against iteration, validation mIoU on a second axis."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(int(r["iter"]), float(r[key])) for r in self.rows if r.get(key) not in ("", None)]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        it, loss = series("loss")
        ax.plot(it, loss, color="tab:blue", label="loss")
        if loss and all(v > 0 and math.isfinite(v) for v in loss):
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        vit, vmiou = series("val_miou")
        if vit:
            ax2 = ax.twinx()
            ax2.plot(vit, vmiou, "o-", color="tab:orange", label="val mIoU (stream)")
            ax2.set_ylabel("validation mIoU (%)")
            ax2.legend(loc="upper right")
        ax.legend(loc="upper left")
        ax.set_title("tv3s-train")
        fig.tight_layout()
        tmp = self.png_path.with_name(".loss.tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, self.png_path)
        return self.png_path
