"""tv3s-bag --ray throughput with 1 and 2 CPU workers, side by side in one run, as a ratio.

    python benchmarks/fleet_bench.py [--bags 6] [--frames 30] [--size 48x64] [--tiny]

Writes synthetic two-camera drives (``tv3s_ros.bag.synthetic``), then runs the real CLI
(``python -m tv3s_ros.tools.bag ... --ray auto --workers N --worker-cpus 1 --cpu-threads 1``),
each in its own fresh local Ray instance, alternating 1 and 2 workers ``--repeats`` times so
load from other jobs hits both alike. Reports fleet frames/s (frames / wall of the whole
fleet run, actor start-up included, and without it: frames / sum of the slowest worker's
bag wall times) and the per-bag figures that the GPU scaling estimate in
benchmarks/README.md is worked out from.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = "{embed_dim: 32, window: 4, shift: 2, n_mambas: 2}"


def run_fleet(inputs: Path, out: Path, workers: int, args) -> dict:
    cmd = [sys.executable, "-m", "tv3s_ros.tools.bag", str(inputs), str(out), "--ray", "auto",
           "--workers", str(workers), "--worker-cpus", "1", "--cpu-threads", "1",
           "--model", "tv3s_b0_cityscapes", "--allow-random-weights", "--seed", "0",
           "--device", "cpu", "--input-size", args.input_size, "--no-progress"]
    if args.tiny:
        cmd += ["--model-overrides", TINY]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"fleet run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "fleet_summary.json").read_text())
    bags = summary["bags"]
    per_worker: dict = {}
    for bag in bags:
        per_worker[bag["workers"][-1]] = per_worker.get(bag["workers"][-1], 0.0) + bag["wall_s"]
    busy = max(per_worker.values())
    frames = summary["frames"]
    return {"workers": workers, "frames": frames, "process_wall_s": wall,
            "fleet_wall_s": summary["wall_s"], "fleet_fps": frames / summary["wall_s"],
            "steady_fps": frames / busy, "bag_wall_s": [b["wall_s"] for b in bags],
            "bag_frames": [b["frames"] for b in bags],
            "bag_engine_s": [b["engine_s"] for b in bags]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30, help="frames per camera per bag")
    parser.add_argument("--size", default="48x64", help="camera HxW")
    parser.add_argument("--input-size", default="keep_aspect:64")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from tv3s_ros.bag.synthetic import write_drive

    height, width = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for k in range(args.bags):
            write_drive(inputs / f"drive_{k}", args.frames, height, width)
        results = {1: [], 2: []}
        for r in range(args.repeats):
            for workers in (1, 2):
                results[workers].append(run_fleet(inputs, Path(tmp) / f"out_{workers}_{r}",
                                                  workers, args))
    rows = []
    for workers, runs in results.items():
        rows.append({
            "workers": workers,
            "fleet_fps": statistics.median(r["fleet_fps"] for r in runs),
            "steady_fps": statistics.median(r["steady_fps"] for r in runs),
            "fleet_wall_s": statistics.median(r["fleet_wall_s"] for r in runs),
            "bag_fps": statistics.median(f / w for r in runs
                                         for f, w in zip(r["bag_frames"], r["bag_wall_s"])),
            "bag_engine_fps": statistics.median(f / e for r in runs for f, e in
                                                zip(r["bag_frames"], r["bag_engine_s"]) if e),
        })
    print("| workers | fleet frames/s (with start-up) | frames/s (busiest worker) | "
          "per-bag frames/s | per-bag engine frames/s | fleet wall (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['fleet_fps']:.1f} | {row['steady_fps']:.1f} | "
              f"{row['bag_fps']:.1f} | {row['bag_engine_fps']:.1f} | {row['fleet_wall_s']:.1f} |")
    print(f"ratio 2/1 workers: {rows[1]['fleet_fps'] / rows[0]['fleet_fps']:.2f} (fleet), "
          f"{rows[1]['steady_fps'] / rows[0]['steady_fps']:.2f} (busiest worker)")
    print(json.dumps({"args": vars(args), "results": results}, default=str)[:4000],
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
