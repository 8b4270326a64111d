"""tv3s-bag --ray: many bags on a Ray cluster, one Engine per worker, results as sequential.

The driver (this process) plans the bags, starts one Ray actor per worker (each builds the
Engine once: a GPU per actor when the cluster has GPUs, else --worker-cpus CPUs), hands out
whole bags largest first (or pieces of long bags cut where the state resets anyway, see
``split``), and collects one report per bag. Outputs use the tool's own staging
(OUT.tv3s-incomplete/OUT, renamed when complete), so a rerun skips complete outputs and
redoes the rest. A worker that dies costs its current task, retried once on another actor.
Ray is imported only here, and only when --ray is given.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tv3s_ros.host_memory import keep_freed_memory

MISSING_RAY = ("--ray needs Ray, an optional extra of tv3s_ros: pip install .[fleet] "
               "(or pip install ray==2.40.0)")
MAX_ATTEMPTS = 2          # a worker death is retried once on another actor
STOP_GRACE_S = 60.0       # after Ctrl-C, how long workers get to close their bags


# ---------------------------------------------------------------------------------- worker
class BagWorker:
    """One Ray actor: one Engine (the model loads once), one task at a time.

    Runs as a threaded actor (max_concurrency=2) so ``progress`` and ``request_stop`` answer
    while ``process`` runs.
    """

    def __init__(self, args, name: str):
        from tv3s_ros.tools import bag as bag_tool

        keep_freed_memory()
        bag_tool._set_cpu_threads(args.cpu_threads)
        bag_tool._quiet_opencv()
        self.name = name
        self.engine = bag_tool._build_engine(args)
        self.frames = 0
        self.current = ""
        self.stop_signal: Optional[str] = None

    def info(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "device": str(self.engine.device), "class_names": list(self.engine.class_names),
                "palette": [[int(c) for c in row] for row in
                            __import__("numpy").asarray(self.engine.palette).tolist()]}

    def progress(self) -> tuple:
        return self.frames, self.current

    def request_stop(self, signal_name: str) -> None:
        self.stop_signal = signal_name

    def process(self, task: "Task", options) -> dict:
        from tv3s_ros.bag.runner import NoProgress, process_bag

        worker = self

        class _Counter(NoProgress):  # the runner's progress protocol, counting into the actor
            def update(self, n=1):
                super().update(n)
                worker.frames += n

        options.should_stop = lambda: self.stop_signal
        if task.piece is not None:
            options.window_ns = task.piece.window_ns
            options.first_frames = task.piece.first_frames
            options.seen_offsets = task.piece.seen_offsets
            options.custom_data = dict(options.custom_data, **{"tv3s.piece": str(task.piece.index)})
        self.current, self.frames = task.label, 0
        try:
            report = process_bag(Path(task.bag), Path(task.output), self.engine,
                                 self.engine.class_names, options, _Counter)
        finally:
            self.current = ""
        return {"report": report, "worker": self.name, "pid": os.getpid(),
                "host": socket.gethostname()}


# ---------------------------------------------------------------------------------- driver
@dataclass
class Task:
    bag: str
    output: str            # the bag's output, or for a piece the piece's own bag
    label: str
    size: int              # scheduling weight (frames, else bytes): largest first
    piece: object = None   # split.Piece, or None for a whole bag
    attempts: int = 0
    workers: list = field(default_factory=list)


@dataclass
class BagEntry:
    """Everything the summary says about one input bag in a fleet run."""

    bag: Path
    target: Path
    frames_planned: int = 0
    tasks: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)   # piece index (0 whole) -> BagReport
    status: str = "pending"   # complete | skipped | failed | interrupted | not_started
    error: str = ""
    retries: int = 0
    workers: list = field(default_factory=list)
    pieces: int = 1
    report: object = None


def _import_ray():
    try:
        import ray
    except ImportError:
        return None
    return ray


def _bag_bytes(bag: Path) -> int:
    if bag.is_file():
        return bag.stat().st_size
    return sum(p.stat().st_size for p in bag.rglob("*") if p.is_file())


def _connect(ray, args) -> bool:
    """Join ``--ray ADDRESS`` or, for ``auto``, a running instance or a new local one.
    Returns True when this process started Ray (and so shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level="ERROR", log_to_driver=args.verbose, configure_logging=True)
    if args.ray != "auto":
        ray.init(address=args.ray, **quiet)
        return True
    try:
        ray.init(address="auto", **quiet)
        return True
    except ConnectionError:
        pass
    workers = args.workers or 1
    ray.init(num_cpus=workers * args.worker_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", **quiet)
    return True


def run(args, stop, parser) -> int:
    """``tv3s-bag ... --ray``; returns the exit status (as the sequential tool's)."""
    from tv3s_ros.tools import bag as bag_tool

    ray = _import_ray()
    if ray is None:
        print(f"tv3s-bag: error: {MISSING_RAY}", file=sys.stderr)
        return bag_tool.EXIT_USAGE
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.worker_cpus <= 0:
        parser.error("--worker-cpus must be above 0")
    if args.split_min_frames and (args.start is not None or args.end is not None):
        parser.error("--split-min-frames cannot be combined with --start/--end")
    try:
        plan = _plan(args, bag_tool)
    except bag_tool.UsageError as error:
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return bag_tool.EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - BagInputError, OutputExistsError
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return bag_tool.EXIT_USAGE
    entries, options = plan
    started_ray = _connect(ray, args)
    try:
        return _Fleet(ray, args, stop, entries, options).run()
    finally:
        if started_ray:
            ray.shutdown()


def _plan(args, bag_tool):
    """Bags, targets and options, checked as the sequential tool does; complete outputs are
    skipped (resume) unless --overwrite."""
    from tv3s_ros.bag.runner import BagFailure, RunOptions, plan_bag
    from tv3s_ros.bag.source import BagSource, bag_stem, find_bags
    from tv3s_ros.bag.split import is_complete_bag, pieces_dir
    from tv3s_ros.bag.writer import check_output_path, staging_dir

    inputs = args.input if isinstance(args.input, list) else [args.input]
    bags = [bag for path in inputs for bag in find_bags(path)]
    several = len(bags) > 1 or len(inputs) > 1 or (inputs[0].is_dir() and bags[0] != inputs[0])
    targets = [args.output / bag_stem(bag) if several else args.output for bag in bags]
    if args.summary_json is None:
        args.summary_json = (args.output / "fleet_summary.json" if several else
                             args.output.with_name(args.output.name + ".fleet_summary.json"))
    options = RunOptions(
        topics=args.topics, camera_names=args.camera_names, start_s=args.start, end_s=args.end,
        every_n=args.every_n, allow_16bit_cameras=tuple(args.allow_16bit_cameras),
        outputs=bag_tool.parse_outputs(args.outputs), copy_input=args.copy_input,
        storage=args.storage, overwrite=args.overwrite, progress=False)
    outputs = [("output", args.output), ("--summary-json", args.summary_json)]
    for target in targets:
        outputs += [("output", target), ("temporary output", staging_dir(target)),
                    ("temporary output", pieces_dir(target))]
    bag_tool._check_no_overlap(outputs, bags)
    bag_tool._check_collisions(bags, targets)
    entries = []
    for bag, target in zip(bags, targets):
        entry = BagEntry(bag, target)
        entries.append(entry)
        if not args.overwrite and is_complete_bag(target):
            entry.status = "skipped"
            continue
        try:
            plan_bag(bag, options)
            with BagSource(bag) as source:
                counts = source.message_counts()
                topics = source.select_topics(options.topics)
            entry.frames_planned = sum(counts.get(t, 0) for t in topics) // max(args.every_n, 1)
        except BagFailure as failure:
            entry.status, entry.error = "failed", str(failure)
            continue
        check_output_path(target, args.overwrite)
    return entries, options


class _Fleet:
    """The scheduling loop: actors, task queue, retries, progress, stop."""

    def __init__(self, ray, args, stop, entries, options):
        self.ray, self.args, self.stop, self.entries, self.options = ray, args, stop, entries, options
        self.started = time.perf_counter()
        self.actors: dict = {}      # name -> handle
        self.idle: list = []
        self.running: dict = {}     # ObjectRef -> (actor name, task, entry)
        self.infos: dict = {}
        self.next_id = 0
        self.frames_done = 0        # frames of finished tasks
        self.live_frames: dict = {}  # actor name -> frames of its current task (last poll)
        self.class_names: list = []
        self.palette: list = []

    # -- actors ---------------------------------------------------------------------------
    def _actor_class(self):
        resources = self.ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            opts = {"num_gpus": 1, "num_cpus": self.args.worker_cpus}
        else:
            opts = {"num_cpus": self.args.worker_cpus}
        # max_restarts=0: a dead actor is replaced by a fresh one and its task retried by
        # this driver, which counts the retry for the summary.
        return self.ray.remote(max_concurrency=2, max_restarts=0, **opts)(BagWorker)

    def _workers_wanted(self) -> int:
        if self.args.workers:
            return self.args.workers
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        return gpus or max(1, int(resources.get("CPU", 1) // self.args.worker_cpus))

    def _start_actor(self):
        name = f"worker-{self.next_id}"
        self.next_id += 1
        actor = self.cls.options(name=f"tv3s-bag-{name}-{os.getpid()}").remote(self.args, name)
        self.actors[name] = actor
        self.idle.append(name)
        self.live_frames[name] = 0
        return name

    # -- tasks ----------------------------------------------------------------------------
    def _tasks(self) -> deque:
        from tv3s_ros.bag.split import is_complete_bag, piece_path, plan_pieces, scan_frames

        tasks = []
        for entry in self.entries:
            if entry.status != "pending":
                continue
            weight = entry.frames_planned or _bag_bytes(entry.bag)
            if self.args.split_min_frames and entry.frames_planned > self.args.split_min_frames:
                try:
                    frames, log_times = scan_frames(
                        entry.bag, self.options.topics, self.options.camera_names,
                        self.args.every_n, self.args.max_gap_s, self.args.max_state_frames)
                    pieces = plan_pieces(frames, log_times, self.args.split_min_frames)
                except Exception:  # noqa: BLE001 - unreadable in the middle: the whole-bag task says why
                    pieces = []
                if len(pieces) > 1:
                    entry.pieces = len(pieces)
                    for piece in pieces:
                        out = piece_path(entry.target, piece)
                        task = Task(str(entry.bag), str(out), f"{entry.bag.name}#{piece.index}",
                                    piece.frames, piece)
                        if is_complete_bag(out):  # finished by an interrupted earlier run
                            entry.reports[piece.index] = None
                            continue
                        entry.tasks.append(task)
                        tasks.append((task, entry))
                    continue
            task = Task(str(entry.bag), str(entry.target), entry.bag.name, weight)
            entry.tasks.append(task)
            tasks.append((task, entry))
        tasks.sort(key=lambda te: -te[0].size)   # largest first: the long tail starts early
        return deque(tasks)

    def _options_for(self, entry: BagEntry):
        import copy

        from tv3s_ros.tools.bag import plot_path

        options = copy.copy(self.options)
        options.custom_data = dict(self.custom_data, **{"tv3s.source_bag": str(entry.bag)})
        options.plot = plot_path(self.args.plot, entry.bag, len(self.entries) > 1)
        options.should_stop = None   # set on the actor (a lambda does not travel)
        return options

    def _assign(self) -> None:
        while self.queue and self.idle and not self.stop.signal_name:
            task, entry = self.queue.popleft()
            # A retried task goes to an actor that has not failed it.
            choices = [n for n in self.idle if n not in task.workers] or self.idle
            name = choices[0]
            self.idle.remove(name)
            task.attempts += 1
            task.workers.append(name)
            ref = self.actors[name].process.remote(task, self._options_for(entry))
            self.running[ref] = (name, task, entry)
            self.live_frames[name] = 0
            self._say(f"{name}: started {task.label} (attempt {task.attempts})")

    def _finished(self, ref) -> None:
        from tv3s_ros.bag.runner import SPLIT_CHECK

        name, task, entry = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as error:  # noqa: BLE001 - the actor died (crash, OOM, killed) or the call raised
            dead = isinstance(error, self.ray.exceptions.RayActorError)
            self._say(f"{name}: {'died' if dead else 'failed'} on {task.label}: "
                      f"{type(error).__name__}", force=True)
            if dead:
                entry.workers.append(f"{name} (lost)")
                self.actors.pop(name, None)
                self.live_frames.pop(name, None)
                if not self.stop.signal_name:
                    self._start_actor()
            else:
                self.idle.append(name)
            entry.retries += 1 if task.attempts < MAX_ATTEMPTS else 0
            if task.attempts < MAX_ATTEMPTS and not self.stop.signal_name:
                self.queue.appendleft((task, entry))
            else:
                entry.status = "failed" if not self.stop.signal_name else "interrupted"
                entry.error = (f"worker lost twice ({', '.join(task.workers)}): "
                               f"{type(error).__name__}")
            return
        self.idle.append(name)
        self.live_frames[name] = 0
        if not any(t is task for t in entry.tasks):
            return  # a piece of a bag since redone unsplit: its result is not used
        report = result["report"]
        self.frames_done += report.frames
        if result["worker"] not in entry.workers:
            entry.workers.append(result["worker"])
        index = task.piece.index if task.piece is not None else 0
        entry.reports[index] = report
        if report.error.startswith(SPLIT_CHECK) and task.piece is not None:
            # The header-only plan did not hold (an undecodable frame at a cut): redo the
            # bag in one piece, which is always identical to the sequential run.
            self._say(f"{task.label}: {report.error}; running the bag unsplit", force=True)
            entry.tasks = [t for t in entry.tasks if t.piece is None]
            self.queue = deque((t, e) for t, e in self.queue if e is not entry)
            entry.reports.clear()
            entry.pieces = 1
            whole = Task(str(entry.bag), str(entry.target), entry.bag.name, entry.frames_planned)
            entry.tasks.append(whole)
            self.queue.appendleft((whole, entry))
            return
        self._say(f"{name}: {report.status} {task.label}: {report.frames} frames in "
                  f"{report.wall_s:.1f} s")
        self._maybe_complete(entry)

    def _maybe_complete(self, entry: BagEntry) -> None:
        from tv3s_ros.bag.split import merge_pieces, merge_reports

        if any(t for t in entry.tasks if (t.piece.index if t.piece else 0) not in entry.reports):
            return
        reports = [r for r in entry.reports.values() if r is not None]
        bad = [r for r in reports if r.status != "complete"]
        if entry.pieces > 1:
            report = merge_reports([entry.reports[i] for i in sorted(entry.reports)
                                    if entry.reports[i] is not None],
                                   str(entry.bag), str(entry.target))
            if not bad:
                parts = sorted(p for p in _pieces_of(entry))
                try:
                    merge_pieces(parts, entry.target, self.options.storage, self.args.overwrite,
                                 {"tv3s.pieces": entry.pieces})
                except Exception as error:  # noqa: BLE001 - any merge failure fails that bag only
                    report.fail(f"cannot merge the pieces: {error}")
        else:
            report = reports[0] if reports else None
        entry.report = report
        if report is None:
            entry.status = "complete"
            return
        entry.status = report.status
        entry.error = report.error
        if report.status == "failed":
            print(f"tv3s-bag: error: {entry.bag}: {report.error}", file=sys.stderr, flush=True)

    # -- loop -----------------------------------------------------------------------------
    def _say(self, text: str, force: bool = False) -> None:
        if self.args.verbose or force:
            line = f"tv3s-bag: {text}"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def _poll_progress(self) -> int:
        busy = {n: self.actors[n].progress.remote() for n, _, _ in self.running.values()
                if n in self.actors}
        for name, ref in busy.items():
            try:
                frames, _ = self.ray.get(ref, timeout=5)
                self.live_frames[name] = frames
            except Exception:  # noqa: BLE001 - a dying actor: its task's outcome reports it
                pass
        running = {n for n, _, _ in self.running.values()}
        live = sum(v for n, v in self.live_frames.items() if n in running)
        return self.frames_done + live

    def run(self) -> int:
        from tv3s_ros.tools import bag as bag_tool

        self.bar = None
        for entry in self.entries:
            if entry.status == "failed":
                print(f"tv3s-bag: error: {entry.bag}: {entry.error} (skipped; the other bags "
                      "go on)", file=sys.stderr, flush=True)
        skipped = [e for e in self.entries if e.status == "skipped"]
        if skipped:
            print(f"tv3s-bag: {len(skipped)} complete output(s) kept (resume; --overwrite "
                  "redoes them)", file=sys.stderr)
        self.cls = self._actor_class()
        todo = [e for e in self.entries if e.status == "pending"]
        self.queue = self._tasks() if todo else deque()
        count = min(self._workers_wanted(), max(len(self.queue), 1)) if self.queue else 0
        for _ in range(count):
            self._start_actor()
        if self.actors:
            first = next(iter(self.actors.values()))
            try:
                info = self.ray.get(first.info.remote())
            except Exception as error:  # noqa: BLE001 - any set-up failure on a worker: one line
                print(f"tv3s-bag: error: cannot set up the model on a worker: "
                      f"{bag_tool._model_error(getattr(error, 'cause', None) or error)}",
                      file=sys.stderr)
                return bag_tool.EXIT_USAGE
            self.class_names, self.palette = info["class_names"], info["palette"]
            print(f"tv3s-bag: fleet of {len(self.actors)} worker(s) on {info['device']}, "
                  f"{len(self.queue)} task(s) for {len(todo)} bag(s)", file=sys.stderr)
        self.custom_data = {
            "tv3s.tool": "tv3s-bag --ray", "tv3s.model": self.args.model,
            "tv3s.weights": self.args.weights or "random", "tv3s.input_size": self.args.input_size,
            "tv3s.precision": self.args.precision, "tv3s.every_n": self.args.every_n,
            "tv3s.max_gap_s": self.args.max_gap_s}
        for entry in todo:
            if not entry.tasks:  # every piece complete in an earlier run: only the merge is left
                self._maybe_complete(entry)
        total = sum(t.piece.frames if t.piece else e.frames_planned for t, e in self.queue)
        if not self.args.no_progress and self.queue:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True,
                            smoothing=0.1, mininterval=0.5)
        self.stop.deferring = True
        asked_stop = None
        try:
            while self.queue or self.running:
                self._assign()
                if not self.running:
                    break
                ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=0.5)
                for ref in ready:
                    self._finished(ref)
                if self.stop.signal_name and not asked_stop:
                    asked_stop = time.monotonic()
                    self.queue.clear()
                    for name, _, _ in self.running.values():
                        if name in self.actors:
                            self.actors[name].request_stop.remote(self.stop.signal_name)
                if asked_stop and time.monotonic() - asked_stop > STOP_GRACE_S:
                    raise KeyboardInterrupt
                self._update_bar()
        except KeyboardInterrupt:
            # A second signal: stop at once. Killed workers leave their bags in staging.
            for actor in self.actors.values():
                self.ray.kill(actor)
            self.stop.signal_name = self.stop.signal_name or "SIGINT"
            for name, task, entry in self.running.values():
                entry.status = "interrupted"
        finally:
            if self.bar is not None:
                self._update_bar()
                self.bar.close()
        for entry in self.entries:
            if entry.status == "pending":
                entry.status = "interrupted" if entry.reports else "not_started"
        return self._finish(bag_tool)

    def _update_bar(self) -> None:
        if self.bar is None:
            return
        done = self._poll_progress()
        bags = sum(e.status in ("complete", "skipped", "failed") for e in self.entries)
        self.bar.set_description(f"bags {bags}/{len(self.entries)}", refresh=False)
        self.bar.update(max(done - self.bar.n, 0))

    # -- summary --------------------------------------------------------------------------
    def _finish(self, bag_tool) -> int:
        from tv3s_ros.bag.summary import format_report, plot_coverage

        wall = time.perf_counter() - self.started
        rows = []
        for entry in self.entries:
            report = entry.report
            if report is not None:
                print(format_report(report, self.class_names), flush=True)
                plot = bag_tool.plot_path(self.args.plot, entry.bag, len(self.entries) > 1)
                if plot is not None and report.frames and entry.status == "complete":
                    plot.parent.mkdir(parents=True, exist_ok=True)
                    plot_coverage(report, plot, self.class_names, self.palette)
            rows.append(self._row(entry))
        frames = sum(r["frames"] for r in rows)
        counts = {s: sum(r["status"] == s for r in rows)
                  for s in ("complete", "skipped", "failed", "interrupted", "not_started")}
        print(f"Fleet: {len(rows)} bags: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
              + f"; {frames} frames in {wall:.1f} s ({frames / wall if wall else 0:.2f} frames/s "
              f"over {self.next_id} worker(s))", flush=True)
        summary = {"model": self.args.model, "weights": self.args.weights,
                   "ray": self.args.ray, "workers": self.next_id, "wall_s": wall,
                   "frames": frames, "fps": frames / wall if wall else 0.0,
                   "bags": rows, "bags_planned": len(rows)}
        path = Path(self.args.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        csv_path = path.with_suffix(".csv")
        fields = ["input", "output", "status", "frames", "resets", "top_classes", "wall_s",
                  "workers", "retries", "pieces", "error"]
        with open(csv_path.with_name(csv_path.name + ".tmp"), "w", newline="",
                  encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(dict(row, resets=json.dumps(row["resets"]),
                                     top_classes=json.dumps(row["top_classes"]),
                                     workers=" ".join(row["workers"])))
        os.replace(csv_path.with_name(csv_path.name + ".tmp"), csv_path)
        print(f"tv3s-bag: summary {path} and {csv_path}", file=sys.stderr)
        if self.stop.signal_name:
            print(f"tv3s-bag: stopped by {self.stop.signal_name}", file=sys.stderr)
            return self.stop.exit_status()
        bad = any(r["status"] not in ("complete", "skipped") for r in rows)
        return bag_tool.EXIT_SOME_FAILED if bad else bag_tool.EXIT_OK

    def _row(self, entry: BagEntry) -> dict:
        report = entry.report
        details = report.to_dict(self.class_names) if report is not None else {}
        resets: dict = {}
        coverage: dict = {}
        for camera in details.get("cameras", {}).values():
            for reason, n in camera["resets"].items():
                resets[reason] = resets.get(reason, 0) + n
            for name, share in camera["mean_coverage"].items():
                coverage[name] = max(coverage.get(name, 0.0), share)
        top = dict(sorted(coverage.items(), key=lambda kv: -kv[1])[:5])
        return dict(details, input=str(entry.bag), output=str(entry.target),
                    status=entry.status, error=entry.error or details.get("error"),
                    frames=details.get("frames", 0), resets=resets, top_classes=top,
                    wall_s=details.get("wall_s", 0.0), workers=entry.workers,
                    retries=entry.retries, pieces=entry.pieces)


def _pieces_of(entry: BagEntry) -> list:
    return [Path(t.output) for t in entry.tasks if t.piece is not None] + [
        p for p in _resumed_pieces(entry)]


def _resumed_pieces(entry: BagEntry) -> list:
    from tv3s_ros.bag.split import pieces_dir

    done = {Path(t.output) for t in entry.tasks}
    root = pieces_dir(entry.target)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith("part_") and p not in done
            and not p.name.endswith(".tv3s-incomplete")
            and int(p.name.split("_")[1]) in {i for i, r in entry.reports.items() if r is None}]
