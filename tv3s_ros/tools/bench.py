"""tv3s-bench: per-frame time of SegFormer baseline vs TV3S clip recompute vs TV3S streaming.

All methods of one configuration are measured in the same process, interleaved frame by frame
(baseline, clip, stream, [node]), so machine noise hits them alike. See ``tv3s-bench --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tv3s_ros.host_memory import keep_freed_memory
from tv3s_ros.model.device import PRECISIONS, autocast
from tv3s_ros.tools.cli import hxw

CLIP_OFFSETS = (-9, -6, -3, 0)  # official test clip: frames t-9, t-6, t-3, t
METHODS = ("baseline", "clip", "stream")
COLUMNS = ("model", "input", "precision", "mode", "method", "scan", "median ms", "p95 ms", "FPS", "floor ms",
           "clip/stream", "stream/baseline", "vs ref", "notes")
SCAN_ENV = "TV3S_SCAN_BACKEND"

EXAMPLES = """\
what is measured (per frame, batch 1, random weights and frames: timing does not depend on them):
  baseline  per-frame SegFormer: backbone + MLP decoder + linear_pred (model.forward_baseline)
  clip      TV3S as officially evaluated: the 4-frame clip [t-9, t-6, t-3, t] recomputed
            for every frame from a zero state (model.forward_clip)
  stream    TV3S with the Mamba state carried from frame to frame (model.forward_stream)
  node      (--node-pipeline) the engine on camera frames (default 1080x1920 rgb8): upload,
            preprocess (resize to the model input), stream, postprocess (labels, colour,
            overlay, confidence, coverage) back on the host; notes give its overhead
            over "stream" at the same model input size
  floor ms  FLOPs of one frame (torch FlopCounterMode: matmul/conv/attention; the scan's
            elementwise work is not counted) divided by the dense-matmul peak measured on this
            device at the same precision: a lower bound (default on cuda; --floor on cpu)
  train     (--train) one training step: forward and backward of the 4-frame clip (loss = mean
            square of the logits, eval-mode BatchNorm, no optimizer step)
  scan      the selective-scan backend of the row (TV3S_SCAN_BACKEND): on cpu by default every
            scan-using method runs with "fused" (the C++ kernel, the CPU default; left out when
            it cannot be built), "chunked" (plain PyTorch) and "ref" (the per-token reference),
            interleaved in the same run; baseline has no scan ("-")
  ratios    clip/stream = speed-up of streaming over clip recompute;
            stream/baseline = cost of temporal context over plain SegFormer;
            vs ref = speed-up of this row over the same method with the "ref" scan

examples:
  # CPU table (B0 and B1 at 256x512, fp32, fused, chunked and ref scans side by side), markdown
  tv3s-bench --device cpu --model tv3s_b0_cityscapes,tv3s_b1_cityscapes --size 256x512 --markdown

  # plus one training step (forward + backward, 4-frame clip), fused scan against the reference
  tv3s-bench --device cpu --model tv3s_b0_cityscapes --size 256x512 --scan-backend fused,ref --train

  # GPU: B1 at the official test scales, fp32 and bf16, eager and CUDA-graphed, plus the node
  tv3s-bench --device cuda --size 512x1024,480x864 --precision fp32,bf16 --graphs both --node-pipeline

  # compressed outputs at 1080x1920: bytes per frame and encode time (labels PNG, color/overlay JPEG)
  tv3s-bench --encode --jpeg-quality 75,90,95 --markdown

  # quick smoke test with a tiny model
  tv3s-bench --device cpu --model tv3s_b0_cityscapes --overrides embed_dim=32,n_mambas=2,window=4,shift=2 \\
             --size 64x128 --warmup 1 --iters 2
"""


# ----------------------------------------------------------------------------- arguments

def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides(text: str) -> Dict[str, object]:
    import yaml  # values typed like YAML: 32 -> int, true -> bool, mit_b0 -> str

    out: Dict[str, object] = {}
    for item in _csv(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"override must be key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tv3s-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per-frame time of the SegFormer baseline, TV3S 4-frame clip recompute and TV3S "
                    "streaming, measured side by side, printed as one table.",
        epilog=EXAMPLES)
    p.add_argument("--model", type=_csv, default=["tv3s_b1_cityscapes"],
                   help="preset name(s) or YAML path(s), comma separated (default: tv3s_b1_cityscapes)")
    p.add_argument("--size", type=lambda t: [hxw(s) for s in _csv(t)], default=None,
                   help="model input size(s) HxW, comma separated (default: 512x1024,480x864 on cuda, "
                        "256x512 on cpu)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", type=_csv, default=["fp32"], help="fp32,bf16,fp16 (autocast; the Mamba "
                   "state stays fp32; fp16 is skipped on cpu). Default fp32")
    p.add_argument("--graphs", choices=("eager", "graphed", "both"), default="eager",
                   help="graphed: replay CUDA graphs captured per input size (cuda only; skipped with a note "
                        "on cpu). Default eager")
    p.add_argument("--graph-impl", choices=("cudagraph", "compile"), default="cudagraph",
                   help="how 'graphed' is made: torch.cuda.CUDAGraph capture (default) or "
                        "torch.compile(mode='reduce-overhead')")
    p.add_argument("--warmup", type=int, default=None, help="untimed frames per method (default 10 cuda, 1 cpu)")
    p.add_argument("--iters", type=int, default=None, help="timed frames per method (default 100 cuda, 5 cpu)")
    p.add_argument("--overrides", type=_overrides, default={},
                   help="ModelConfig fields for small models, e.g. embed_dim=64,n_mambas=2,window=10,shift=5")
    p.add_argument("--node-pipeline", action="store_true",
                   help="also time the whole engine (upload, preprocess, model, postprocess) on camera frames")
    p.add_argument("--camera-size", type=hxw, default=(1080, 1920), help="camera frame HxW for --node-pipeline "
                   "(default 1080x1920, rgb8)")
    p.add_argument("--node-input-size", default="official",
                   help="engine input_size policy for --node-pipeline: official (default), HxW, keep_aspect:N")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=None,
                   help="count FLOPs and measure the matmul peak for the floor column (default: on for cuda; "
                        "off for cpu, where counting through the reference scan's per-token loop takes minutes)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--output", help="also write the header and markdown table to this file")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine")
    p.add_argument("--scan-backend", type=_csv, default=None,
                   help="selective-scan backends to compare, comma separated (TV3S_SCAN_BACKEND values: "
                        "auto, fused, chunked, ref, triton; default: $TV3S_SCAN_BACKEND when set, else "
                        "fused,chunked,ref "
                        "on cpu and auto on cuda)")
    p.add_argument("--train", type=_csv, nargs="?", const=["all"], default=None,
                   help="also time one training step (forward + backward of the 4-frame clip) with these "
                        "scan backends (default when given without a value: all of --scan-backend)")
    p.add_argument("--encode", action="store_true",
                   help="instead of the model table: bytes per frame and encode time of the compressed outputs "
                        "(labels PNG, color and overlay JPEG, confidence PNG) at --camera-size, on a synthetic "
                        "world frame through the tv3s_demo engine (default 20 encodes per row)")
    p.add_argument("--jpeg-quality", type=lambda t: [int(q) for q in _csv(t)], default=[90],
                   help="JPEG qualities for --encode, comma separated (default 90, the node's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


# ----------------------------------------------------------------------------- measurement helpers

def progress(args, text: str) -> None:
    if not args.quiet:
        print(f"[tv3s-bench] {text}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_ctx(device: torch.device, precision: str):
    # cache=False: the weight-cast cache must not outlive a CUDA graph capture.
    return autocast(device, PRECISIONS[precision], cache=False)


def measure_peak_flops(device: torch.device, precision: str) -> float:
    """Best observed dense matmul throughput (FLOP/s) at this precision: the floor's denominator."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = PRECISIONS[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    reps = 10 if device.type == "cuda" else 3
    for i in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:  # first one is warm-up
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cpu_backends() -> List[str]:
    """The CPU default: every backend side by side, the fused kernel only where it builds."""
    from tv3s_ros.model import scan_fused
    return (["fused"] if scan_fused.available() else []) + ["chunked", "ref"]


@contextlib.contextmanager
def scan_backend(name: Optional[str]):
    """``TV3S_SCAN_BACKEND=name`` for the duration (None: leave it alone)."""
    if name is None:
        yield
        return
    old = os.environ.get(SCAN_ENV)
    os.environ[SCAN_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SCAN_ENV, None)
        else:
            os.environ[SCAN_ENV] = old


@dataclass
class Row:
    model: str
    input: str
    precision: str
    mode: str
    method: str
    scan: str = "-"
    times_s: List[float] = field(default_factory=list)
    floor_s: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.times_s) * 1e3 if self.times_s else None


# ----------------------------------------------------------------------------- runners

class FramePool:
    """A few random normalised frames cycled through, so consecutive frames differ."""

    def __init__(self, size: Tuple[int, int], device: torch.device, count: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.frames = torch.randn(count, 3, *size, generator=g).to(device)
        self.count = count
        # clip member indices for every t mod count, on the device (no upload per frame)
        self.clip_index = torch.tensor([[(t + o) % count for o in CLIP_OFFSETS] for t in range(count)],
                                       device=device)

    def frame(self, t: int) -> torch.Tensor:
        return self.frames[t % self.count].unsqueeze(0)

    def clip(self, t: int) -> torch.Tensor:
        """``[1, 4, 3, H, W]``: frames t-9, t-6, t-3, t."""
        return self.frames.index_select(0, self.clip_index[t % self.count]).unsqueeze(0)


class Runner:
    """Processes "the next frame" for one method; eager or replaying a captured graph."""

    def __init__(self, name: str, step: Callable[[int], torch.Tensor], count: Callable[[], object]):
        self.name = name
        self._step = step          # eager step: frame index -> logits
        self._count = count        # one untimed call for FLOP counting (must not disturb the timed state)
        self._on_replay = None
        self._graph = None
        self._load = None          # copies frame t into the graph's static input
        self.note = ""
        self.backend: Optional[str] = None   # scan backend set around every call (None: as is)

    @property
    def key(self) -> str:
        return self.name if self.backend is None else f"{self.name}@{self.backend}"

    def __call__(self, t: int) -> None:
        with scan_backend(self.backend):
            if self._graph is None:
                self._step(t)
            else:
                self._load(t)
                self._graph.replay()
                if self._on_replay:
                    self._on_replay()

    def flops(self) -> int:
        with scan_backend(self.backend):
            return count_flops(self._count)

    def use_graph(self, graph, load: Callable[[int], object], on_replay: Optional[Callable[[], None]] = None):
        """Replay ``graph`` per frame after ``load(t)`` filled its static input."""
        self._graph, self._load, self._on_replay = graph, load, on_replay

    def use_step(self, step: Callable[[int], torch.Tensor]) -> None:
        self._step = step


def make_runners(model, pool: FramePool, precision: str, device: torch.device):
    """``(runners by method, the stream's state)`` for eager timing."""
    amp = lambda: autocast_ctx(device, precision)  # noqa: E731
    state = model.new_state(1)
    flop_state = model.new_state(1)

    def baseline(t):
        with amp():
            return model.forward_baseline(pool.frame(t))

    def clip(t):
        with amp():
            return model.forward_clip(pool.clip(t))

    def stream(t):
        with amp():
            return model.forward_stream(pool.frame(t), state)[0]

    return {
        "baseline": Runner("baseline", baseline, lambda: model.forward_baseline(pool.frame(0))),
        "clip": Runner("clip", clip, lambda: model.forward_clip(pool.clip(9))),
        "stream": Runner("stream", stream, lambda: model.forward_stream(pool.frame(0), flop_state)),
    }, state


def make_train_runner(model, pool: FramePool, precision: str, device: torch.device) -> Runner:
    """One training step per call: forward and backward of the 4-frame clip through the
    temporal head (model.forward_clip without its no_grad; eval-mode BatchNorm)."""
    forward = getattr(type(model).forward_clip, "__wrapped__", type(model).forward_clip)

    def train(t):
        with torch.inference_mode(False), torch.enable_grad(), autocast_ctx(device, precision):
            clip = pool.clip(t).clone()
            forward(model, clip).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return Runner("train", train, lambda: None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def capture_cudagraphs(model, runners: Dict[str, Runner], state, pool: FramePool, precision: str,
                       device: torch.device, warmup: int) -> None:
    """Capture each method as one CUDA graph with static input/state buffers and check that
    replay reproduces eager results (the stream over two frames, state included).

    Works because ``forward_stream`` updates the state buffers in place (stable addresses);
    only the host-side frame counter needs advancing after each replay.
    """
    amp = lambda: autocast_ctx(device, precision)  # noqa: E731
    static_frame = pool.frame(0).clone()
    static_clip = pool.clip(9).clone()
    bodies = {
        "baseline": (lambda: model.forward_baseline(static_frame), lambda t: static_frame.copy_(pool.frame(t))),
        "clip": (lambda: model.forward_clip(static_clip), lambda t: static_clip.copy_(pool.clip(t))),
        "stream": (lambda: model.forward_stream(static_frame, state)[0],
                   lambda t: static_frame.copy_(pool.frame(t))),
    }
    for name, (body, load) in bodies.items():
        runner = runners[name]
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), amp():
                for _ in range(max(2, warmup)):
                    body()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), amp():
                out = body()
            # Check: two frames eager vs two replays from the same (zeroed) state.
            state.reset()
            load(0)
            with amp():
                ref0 = body().clone()
            load(1)
            with amp():
                ref1 = body().clone()
            state.reset()
            errs = []
            for t, ref in ((0, ref0), (1, ref1)):
                load(t)
                graph.replay()
                errs.append(_rel(out, ref))
            if max(errs) > 1e-3:
                runner.note = f"GRAPH MISMATCH rel err {max(errs):.1e}"
            # The host-side frame counter is not part of the graph.
            runner.use_graph(graph, load, (lambda: state.advance(1)) if name == "stream" else None)
        except Exception as err:  # noqa: BLE001 - capture needs a sync-free forward; report instead of dying
            runner.note = f"graph capture failed ({type(err).__name__}: {str(err)[:80]}); eager timing"


def compile_runners(model, runners: Dict[str, Runner], state, pool: FramePool, precision: str,
                    device: torch.device) -> None:
    """torch.compile(mode='reduce-overhead') variant of the three methods."""
    amp = lambda: autocast_ctx(device, precision)  # noqa: E731
    fns = {
        "baseline": torch.compile(model.forward_baseline, mode="reduce-overhead", dynamic=False),
        "clip": torch.compile(model.forward_clip, mode="reduce-overhead", dynamic=False),
        "stream": torch.compile(lambda f: model.forward_stream(f, state)[0], mode="reduce-overhead", dynamic=False),
    }
    inputs = {"baseline": pool.frame, "clip": pool.clip, "stream": pool.frame}
    for name, fn in fns.items():
        def step(t, fn=fn, get=inputs[name]):
            with amp():
                return fn(get(t))
        runners[name].use_step(step)
        runners[name].note = "torch.compile reduce-overhead"


# ----------------------------------------------------------------------------- node pipeline

def make_node_runner(model, args, precision: str, device: torch.device):
    """(runner, stream runner at the engine's model input size, input label) or a note string."""
    try:
        from tv3s_ros.engine import Engine, FrameInput
    except Exception as err:  # noqa: BLE001 - the engine is optional for the benchmark
        return f"node pipeline skipped: tv3s_ros.engine not importable ({type(err).__name__}: {err})"
    engine = Engine(model, device=device, precision=precision, input_size=args.node_input_size)
    h, w = args.camera_size
    in_h, in_w = engine.model_input_size(h, w)
    rng = np.random.default_rng(args.seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
    period_ns = 33_333_333  # 30 Hz stamps: no time-gap resets

    def node(t):
        return engine.process([FrameInput("bench", images[t % 4], stamp_ns=(t + 1) * period_ns, frame_id="cam")])

    pool = FramePool((in_h, in_w), device, seed=args.seed + 1)
    state, flop_state = model.new_state(1), model.new_state(1)

    def stream(t):
        with autocast_ctx(device, precision):
            return model.forward_stream(pool.frame(t), state)[0]

    node_runner = Runner("node", node, lambda: None)
    stream_runner = Runner("stream", stream, lambda: model.forward_stream(pool.frame(0), flop_state))
    label = f"{h}x{w} rgb8 -> {in_h}x{in_w}"
    return node_runner, stream_runner, (in_h, in_w), label


# ----------------------------------------------------------------------------- the run

def time_interleaved(runners: Sequence[Runner], device: torch.device, warmup: int, iters: int,
                     args, label: str) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {r.key: [] for r in runners}
    for i in range(warmup + iters):
        for r in runners:
            sync(device)
            t0 = time.perf_counter()
            r(i)
            sync(device)
            if i >= warmup:
                times[r.key].append(time.perf_counter() - t0)
        done = i + 1 - warmup
        if i < warmup:
            progress(args, f"{label}: warm-up frame {i + 1}/{warmup}")
        elif done == iters or done % max(1, iters // 5) == 0:
            summary = ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items())
            progress(args, f"{label}: {done}/{iters} timed frames (median so far: {summary})")
    return times


def environment(device: torch.device) -> Dict[str, str]:
    from tv3s_ros.model import scan

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - a broken triton install is reported, not fatal
        info["triton"] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu"] = f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    try:
        info["load average at start"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - nvidia-smi missing or failing: the driver is optional info
            info["driver"] = "unknown"
    probe = torch.zeros(1, 1, 1, device=device)
    try:
        info["scan backend"] = scan.backend_for(probe)
    except Exception as err:  # noqa: BLE001 - reported in the table instead of ending the run
        info["scan backend"] = f"error: {err}"
    info["device"] = str(device)
    return info


def run(args) -> Tuple[Dict[str, str], List[Row]]:
    from tv3s_ros.model import build_model
    from tv3s_ros.model.device import select_device  # same device rules as the node

    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    sizes = args.size or ([(512, 1024), (480, 864)] if on_gpu else [(256, 512)])
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    iters = args.iters if args.iters is not None else (100 if on_gpu else 5)
    modes = {"eager": ["eager"], "graphed": ["graphed"], "both": ["eager", "graphed"]}[args.graphs]
    want_floor = on_gpu if args.floor is None else args.floor
    env_backend = os.environ.get(SCAN_ENV, "").strip().lower()
    backends = args.scan_backend or ([env_backend] if env_backend else ["auto"] if on_gpu else cpu_backends())
    from tv3s_ros.model.scan import BACKENDS
    bad = [b for b in backends + (args.train or []) if b not in BACKENDS and b != "all"]
    if bad:
        raise SystemExit(f"unknown scan backend(s) {bad}; use {', '.join(BACKENDS)}")
    train_backends = [] if not args.train else (backends if "all" in args.train else args.train)
    info = environment(device)
    info["host memory"] = ("freed blocks kept (glibc malloc tuning, tv3s_ros/host_memory.py)" if keep_freed_memory()
                           else "malloc as configured (TV3S_MALLOC_TUNING=0, MALLOC_* set, or not glibc)")
    info["scan backends compared"] = ", ".join(backends) + (
        f"; training step: {', '.join(train_backends)}" if train_backends else "")
    rows: List[Row] = []
    peaks: Dict[str, float] = {}

    for precision in args.precision:
        if precision not in PRECISIONS:
            raise SystemExit(f"unknown precision {precision!r}; use fp32, bf16, fp16")
        if want_floor and not (precision == "fp16" and not on_gpu):
            progress(args, f"measuring {precision} matmul peak on {device}")
            peaks[precision] = measure_peak_flops(device, precision)
            info[f"peak {precision}"] = f"{peaks[precision] / 1e12:.2f} TFLOP/s (dense matmul, measured)"

    for name in args.model:
        torch.manual_seed(args.seed)
        model = build_model(name, **args.overrides).to(device).eval()
        label_model = os.path.basename(name).removesuffix(".yaml") + (" (overrides)" if args.overrides else "")
        for size in sizes:
            pool = FramePool(size, device, seed=args.seed)
            flops: Dict[str, int] = {}
            for precision in args.precision:
                for mode in modes:
                    common = dict(model=label_model, input=f"{size[0]}x{size[1]}", precision=precision, mode=mode)
                    skip = None
                    if precision == "fp16" and not on_gpu:
                        skip = "fp16 not supported on cpu"
                    elif mode == "graphed" and not on_gpu:
                        skip = "graphs need cuda: skipped on cpu"
                    if skip:
                        rows.append(Row(method="-", notes=[skip], **common))
                        continue
                    label = f"{label_model} {size[0]}x{size[1]} {precision} {mode}"
                    # no_grad instead of inference_mode with --train: the model's cached index tensors
                    # (window permutations) must not be inference tensors when autograd saves them.
                    with torch.no_grad() if train_backends else torch.inference_mode():
                        timed: List[Runner] = []
                        for i, backend in enumerate(backends):
                            runners, state = make_runners(model, pool, precision, device)
                            for r in runners.values():
                                r.backend = backend
                            if mode == "graphed":
                                progress(args, f"{label}: capturing graphs (scan {backend})")
                                with scan_backend(backend):
                                    if args.graph_impl == "compile":
                                        compile_runners(model, runners, state, pool, precision, device)
                                    else:
                                        capture_cudagraphs(model, runners, state, pool, precision, device, warmup)
                            # baseline has no scan: timed once, with the first backend's runners
                            timed += [runners[m] for m in METHODS if m != "baseline" or i == 0]
                        timed[0].backend = None
                        if mode == "eager":
                            for backend in train_backends:
                                r = make_train_runner(model, pool, precision, device)
                                r.backend = backend
                                timed.append(r)
                        if want_floor and not flops:
                            progress(args, f"{label}: counting FLOPs")
                            flops = {r.name: r.flops() for r in timed if r.name in METHODS}
                        times = time_interleaved(timed, device, warmup, iters, args, label)
                    for r in timed:
                        row = Row(method=r.name, scan=r.backend or "-", times_s=times[r.key], **common)
                        if r.note:
                            row.notes.append(r.note)
                        if precision in peaks and r.name in flops:
                            row.floor_s = flops[r.name] / peaks[precision]
                            row.notes.append(f"{flops[r.name] / 1e9:.1f} GFLOP")
                        rows.append(row)
        if args.node_pipeline:
            for precision in args.precision:
                rows.extend(run_node(model, args, label_model, precision, device, warmup, iters, peaks))
        del model
    # What actually served the scan kernels (a first-launch fallback shows here, with its reason).
    # With several backends compared, "the last call's backend" is just the last one timed.
    from tv3s_ros.model import scan
    info.update({k: v for k, v in scan.backend_status().items()
                 if len(set(backends) | set(train_backends)) == 1 or not k.startswith("scan_backend.")})
    return info, rows


def run_node(model, args, label_model, precision, device, warmup, iters, peaks) -> List[Row]:
    common = dict(model=label_model, precision=precision, mode="eager")
    if precision == "fp16" and device.type != "cuda":
        return []
    made = make_node_runner(model, args, precision, device)
    if isinstance(made, str):
        return [Row(input=f"{args.camera_size[0]}x{args.camera_size[1]} rgb8", method="node", notes=[made],
                    **common)]
    node_runner, stream_runner, in_size, label = made
    with torch.inference_mode():
        times = time_interleaved([stream_runner, node_runner], device, warmup, iters, args, f"{label_model} node")
        flops = stream_runner.flops() if precision in peaks else None
    stream_row = Row(input=f"{in_size[0]}x{in_size[1]}", method="stream", times_s=times["stream"],
                     notes=["model input of the node row below"], **common)
    if flops is not None:
        stream_row.floor_s = flops / peaks[precision]
    node_row = Row(input=label, method="node", times_s=times["node"], **common)
    overhead = statistics.median(times["node"]) - statistics.median(times["stream"])
    node_row.notes.append(f"overhead over stream {overhead * 1e3:.2f} ms (upload+pre+post)")
    return [stream_row, node_row]


# ----------------------------------------------------------------------------- output

def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table_cells(rows: Sequence[Row]) -> List[List[str]]:
    # Ratios per (model, input, precision, mode, scan) group, shown on its stream row; the
    # baseline (no scan) is shared by all scan backends; "vs ref" compares scan backends.
    medians = {(r.model, r.input, r.precision, r.mode, r.method, r.scan): r.median_ms for r in rows}
    baselines = {(r.model, r.input, r.precision, r.mode): r.median_ms for r in rows if r.method == "baseline"}
    out = []
    for r in rows:
        med = r.median_ms
        key = (r.model, r.input, r.precision, r.mode)
        clip_ratio = base_ratio = ref_ratio = None
        if r.method == "stream" and med:
            clip_ms, base_ms = medians.get(key + ("clip", r.scan)), baselines.get(key)
            clip_ratio = clip_ms / med if clip_ms else None
            base_ratio = med / base_ms if base_ms else None
        if med and r.scan not in ("-", "ref"):
            ref_ms = medians.get(key + (r.method, "ref"))
            ref_ratio = ref_ms / med if ref_ms else None
        out.append([
            r.model, r.input, r.precision, r.mode, r.method, r.scan, _fmt(med),
            _fmt(percentile(r.times_s, 95) * 1e3 if r.times_s else None),
            _fmt(1e3 / med if med else None, 1 if med and med < 100 else 3),
            _fmt(r.floor_s * 1e3 if r.floor_s is not None else None),
            _fmt(clip_ratio) + ("x" if clip_ratio else ""), _fmt(base_ratio) + ("x" if base_ratio else ""),
            _fmt(ref_ratio) + ("x" if ref_ratio else ""), "; ".join(r.notes),
        ])
    return out


def format_table(rows: Sequence[Row], markdown: bool) -> str:
    cells = table_cells(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) if cells else len(COLUMNS[i])
              for i in range(len(COLUMNS))]
    fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])


def format_header(info: Dict[str, str], args) -> str:
    lines = [f"tv3s-bench {info['date']}: " + " ".join(sys.argv[1:] if args._argv is None else args._argv)]
    lines += [f"- {k}: {v}" for k, v in info.items() if k != "date"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(argv) if argv is not None else None
    keep_freed_memory()   # as in the node and the other tools: no page faults per frame
    if args.encode:
        from tv3s_ros.tools import encode_bench

        bad = [q for q in args.jpeg_quality if not 1 <= q <= 100]
        if bad:
            parser.error(f"--jpeg-quality must be in 1..100, got {bad}")
        info, rows = encode_bench.run_encode(args)
        table = encode_bench.format_table
    else:
        info, rows = run(args)
        table = format_table
    text = format_header(info, args) + "\n\n" + table(rows, args.markdown)
    print(text, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(format_header(info, args) + "\n\n" + table(rows, True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
