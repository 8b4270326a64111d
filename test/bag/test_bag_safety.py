"""tv3s-bag never destroys or silently replaces data.

Real rosbag2 files written with rosbags (mcap and sqlite3), real tv3s-bag subprocesses, real
signals, real write failures from the kernel, and the outputs read back with rosbags. Each
test fails on the tool as it was before the fix: it deleted an input given as its own output,
let a second input replace the first one's output, wrote in place (so a failed --overwrite
run lost the old output and SIGTERM left an mcap without footer or metadata.yaml), stopped at
the first unreadable bag with a traceback, and printed tracebacks for bad checkpoints.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.model import build_model, save_checkpoint
from tv3s_ros.tools import bag as bag_tool

PRESET = TINY_PRESET
TINY = tiny_overrides()
TINY_CLI = tiny_cli()
TOPIC = "/cam/front/image_raw"
T0 = 1_700_000_000 * 10**9


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(PRESET, **TINY),
                           tmp_path_factory.mktemp("weights") / "tiny.pth")


def write_bag(path: Path, frames: int, size=(24, 32), storage: str = "mcap") -> None:
    """One raw rgb8 camera at 10 Hz; ``size`` large makes several 1 MB mcap chunks."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=8, storage_plugin=plugin)
    writer.open()
    conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    for i in range(frames):
        stamp = T0 + i * 100_000_000
        rgb = np.stack([(x * 7 + i) % 256, (y * 5) % 256, (x + y + 3 * i) % 256], -1).astype(np.uint8)
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
            frame_id="front")
        msg = types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=3 * w, data=rgb.reshape(-1))
        writer.write(conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    writer.close()


def tool_args(checkpoint, *extra) -> list:
    return ["--model", PRESET, "--weights", str(checkpoint), "--model-overrides", TINY_CLI,
            "--input-size", "32x64", "--device", "cpu", "--cpu-threads", "1", *extra]


def tool_cmd(*args) -> list:
    return [sys.executable, "-m", "tv3s_ros.tools.bag", *map(str, args)]


def run_tool(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(tool_cmd(*args), capture_output=True, text=True, timeout=180, **kwargs)


def tree_digest(path: Path) -> dict:
    """Relative path -> sha256 of every file under ``path`` (or of ``path`` itself)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path) if p != path else p.name): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def read_coverage(bag: Path) -> list:
    """Header stamps of /tv3s/front/coverage, read back with rosbags."""
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == "/tv3s/front/coverage"]
        return [reader.deserialize(raw, c.msgtype).header.stamp.sec * 10**9
                + reader.deserialize(raw, c.msgtype).header.stamp.nanosec
                for c, _, raw in reader.messages(connections=conns)]


def custom_data(bag: Path) -> dict:
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    return meta["rosbag2_bagfile_information"]["custom_data"]


def corrupt_chunk(mcap: Path, index: int) -> int:
    """Give chunk ``index`` its true CRC (rosbags writes 0 = unchecked), then flip one byte
    of its records: a genuine chunk checksum mismatch. Returns the number of chunks."""
    data = bytearray(mcap.read_bytes())
    pos, chunks = 8, []                      # after the magic: opcode u8, length u64, body
    while pos + 9 <= len(data):
        opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        if opcode == 0x06:
            chunks.append(pos + 9)
        if opcode == 0x02:                   # footer
            break
        pos += 9 + length
    body = chunks[index]
    (name_len,) = struct.unpack_from("<I", data, body + 28)
    assert name_len == 0, "expected uncompressed chunks"
    records = body + 32 + 8                  # start, end, size, crc, compression, records length
    (records_len,) = struct.unpack_from("<Q", data, body + 32)
    struct.pack_into("<I", data, body + 24, zlib.crc32(data[records: records + records_len]))
    data[records + records_len // 2] ^= 0xFF
    mcap.write_bytes(bytes(data))
    return len(chunks)


def one_error_line(stderr: str) -> list:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("tv3s-bag: error:")]


# ---------------------------------------------------------------------------------- refusals
def test_output_that_is_the_inputs_bag_directory_is_refused(tmp_path, checkpoint):
    """`tv3s-bag rec/rec.mcap rec --overwrite` used to exit 0 and replace the recording."""
    write_bag(tmp_path / "rec", 3)
    before = tree_digest(tmp_path / "rec")
    proc = run_tool(tmp_path / "rec" / "rec.mcap", tmp_path / "rec", "--overwrite",
                    *tool_args(checkpoint))
    assert proc.returncode == 2, proc.stderr
    assert "refusing output" in proc.stderr and "is the input" in proc.stderr
    assert tree_digest(tmp_path / "rec") == before
    assert not list(tmp_path.glob("*.tv3s-*"))


@pytest.mark.parametrize("case", ["inside", "contains", "symlink", "summary", "folder"])
def test_outputs_overlapping_inputs_are_refused(tmp_path, checkpoint, capsys, case):
    recs = tmp_path / "recs"
    write_bag(recs / "a", 2)
    write_bag(recs / "b", 2)
    (tmp_path / "link").symlink_to(recs / "a")
    extra = []
    input_, output = {
        "inside": (recs / "a", recs / "a" / "seg"),                  # lies inside the input
        "contains": (recs / "a" / "a.mcap", recs),                   # contains the input
        "symlink": (tmp_path / "link", recs / "a"),                  # the input, via a link
        "summary": (recs / "a", tmp_path / "out"),                   # a side output inside it
        "folder": (recs, recs),                                      # folder of bags onto itself
    }[case]
    if case == "summary":
        extra = ["--summary-json", str(recs / "a" / "metadata.yaml")]
    before = tree_digest(tmp_path / "recs")
    status = bag_tool.main([str(input_), str(output), "--overwrite", *tool_args(checkpoint), *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "refusing" in err and "nothing was written" in err
    assert tree_digest(tmp_path / "recs") == before
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_one_output_name_are_refused(tmp_path, checkpoint):
    """recs/a/ and recs/a.mcap both map to out/a: refused before any work."""
    recs = tmp_path / "recs"
    write_bag(recs / "a", 2)
    write_bag(tmp_path / "other", 3)
    shutil.copy(tmp_path / "other" / "other.mcap", recs / "a.mcap")
    for extra in ([], ["--overwrite"]):
        proc = run_tool(recs, tmp_path / "out", *tool_args(checkpoint, "--no-progress", *extra))
        assert proc.returncode == 2, proc.stderr
        assert "would both be written to" in proc.stderr and "a.mcap" in proc.stderr
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- failures
def test_unreadable_bags_fail_alone_and_overwrite_keeps_the_old_output(tmp_path, checkpoint):
    """A checksum mismatch mid-bag and a truncated file: one line each, the other bags go
    on, exit 1; --overwrite had not touched the old output of the failed bag."""
    recs = tmp_path / "recs"
    write_bag(recs / "a_sqlite", 3, storage="sqlite3")
    write_bag(recs / "b_checksum", 40, size=(128, 192))      # ~14 frames per 1 MB chunk
    assert corrupt_chunk(recs / "b_checksum" / "b_checksum.mcap", 1) >= 3
    write_bag(tmp_path / "t", 10)
    data = (tmp_path / "t" / "t.mcap").read_bytes()
    (recs / "c_truncated.mcap").write_bytes(data[: len(data) // 2])
    write_bag(recs / "d_ok", 3)
    # An old output of the bag that will fail: a complete bag from an earlier run.
    write_bag(tmp_path / "old_src", 4)
    first = run_tool(tmp_path / "old_src", tmp_path / "out" / "b_checksum",
                     *tool_args(checkpoint, "--no-progress"))
    assert first.returncode == 0, first.stderr
    old = tree_digest(tmp_path / "out" / "b_checksum")

    proc = run_tool(recs, tmp_path / "out", "--overwrite",
                    *tool_args(checkpoint, "--no-progress", "--summary-json",
                               tmp_path / "summary.json"))
    assert proc.returncode == 1, proc.stderr
    errors = one_error_line(proc.stderr)
    assert len(errors) == 2, proc.stderr
    assert any("b_checksum" in e and "Chunk checksum mismatch" in e for e in errors)
    assert any("c_truncated" in e and "cannot read input" in e for e in errors)
    # The good bags, before and after the failures, are complete.
    for name, frames in (("a_sqlite", 3), ("d_ok", 3)):
        assert len(read_coverage(tmp_path / "out" / name)) == frames
        assert custom_data(tmp_path / "out" / name)["tv3s.status"] == "complete"
    # The failed bag's old output is untouched; what it got to is kept, readable, marked.
    assert tree_digest(tmp_path / "out" / "b_checksum") == old
    partial = tmp_path / "out" / "b_checksum.tv3s-incomplete" / "b_checksum"
    done = read_coverage(partial)
    assert 10 <= len(done) < 40
    status = custom_data(partial)["tv3s.status"]
    assert status.startswith("incomplete: failed (input read error") and f"{len(done)} frames" in status
    assert "FAILED after" in proc.stdout and "incomplete output kept at" in proc.stdout
    assert "Bags: 2 done, 2 failed" in proc.stdout
    assert not (tmp_path / "out" / "c_truncated").exists()
    summary = yaml.safe_load((tmp_path / "summary.json").read_text())
    assert [b["status"] for b in summary["bags"]] == ["complete", "failed", "failed", "complete"]


def _can_mount_tmpfs(probe: Path) -> bool:
    probe.mkdir()
    try:
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def test_disk_full_ends_that_bag_only(tmp_path, checkpoint):
    """A real write failure from the kernel: ENOSPC on a 256 KiB tmpfs in a private mount
    namespace (unshare), or, where user namespaces are not allowed, EFBIG from a 256 KiB
    RLIMIT_FSIZE. Bag a cannot fit; b (written after a's partial is removed) does."""
    recs = tmp_path / "recs"
    write_bag(recs / "a_big", 30, size=(48, 64))      # ~22 KB of output per frame: > 256 KiB
    write_bag(recs / "b_small", 2)
    out, copy = tmp_path / "out", tmp_path / "copy"
    out.mkdir()
    copy.mkdir()
    cmd = tool_cmd(recs, out, *tool_args(checkpoint, "--no-progress"))
    if _can_mount_tmpfs(tmp_path / "probe"):
        expected = "ENOSPC"
        # The tmpfs lives only as long as the namespace: copy the result out before leaving.
        script = (f"mount -t tmpfs -o size=256k tmpfs {out} && "
                  f"{subprocess.list2cmdline(cmd)}; rc=$?; cp -a {out}/. {copy}/; exit $rc")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                              text=True, timeout=180)
    else:
        import resource

        expected = "EFBIG"

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error, not the signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, preexec_fn=limit)
        shutil.copytree(out, copy, dirs_exist_ok=True)
    assert proc.returncode == 1, proc.stderr
    errors = one_error_line(proc.stderr)
    assert len(errors) == 1 and "a_big" in errors[0] and f"({expected})" in errors[0], proc.stderr
    assert "partial output was removed" in errors[0]
    assert sorted(p.name for p in copy.iterdir()) == ["b_small"]
    assert len(read_coverage(copy / "b_small")) == 2


def test_checkpoint_errors_are_one_line(tmp_path, checkpoint):
    write_bag(tmp_path / "rec", 2)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": torch.load(checkpoint, weights_only=True)["state_dict"],
                "meta": {"cfg": argparse.Namespace(lr=1)}}, unsafe)  # needs full unpickling
    wide = tmp_path / "wide.pth"
    torch.manual_seed(0)
    save_checkpoint(build_model(PRESET, **{**TINY, "embed_dim": 64}), wide)
    for weights, needle in ((unsafe, "unsafe.pth"), (wide, "does not match the model")):
        proc = run_tool(tmp_path / "rec", tmp_path / "out", *tool_args(weights, "--no-progress"))
        assert proc.returncode == 2
        errors = one_error_line(proc.stderr)
        assert errors and needle in errors[0], proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "\x1b" not in proc.stderr  # torch's message carries terminal escapes
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- signals
class _Progress:
    """Reads the tool's stderr (tqdm updates) in the background; waits for a frame count."""

    def __init__(self, proc):
        self.proc, self.text, self.done = proc, "", 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read(64), ""):
            self.text += chunk
            counts = re.findall(r"(\d+)/\d+ \[", self.text[-400:])
            if counts:
                self.done = int(counts[-1])

    def wait_for(self, frames: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.done < frames:
            assert self.proc.poll() is None, f"tool ended early:\n{self.text}"
            assert time.monotonic() < deadline, f"no progress:\n{self.text}"
            time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_closes_a_readable_incomplete_bag(tmp_path, checkpoint, signum):
    write_bag(tmp_path / "short", 3)
    write_bag(tmp_path / "long", 2000)
    target = tmp_path / "out"
    assert run_tool(tmp_path / "short", target, *tool_args(checkpoint, "--no-progress")).returncode == 0
    old = tree_digest(target)

    proc = subprocess.Popen(tool_cmd(tmp_path / "long", target, "--overwrite", *tool_args(checkpoint)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = _Progress(proc)
    progress.wait_for(5)
    proc.send_signal(signum)
    stdout, _ = proc.communicate(timeout=60)
    progress.thread.join(timeout=10)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, progress.text
    assert "Traceback" not in progress.text
    # The old output is intact; the partial one is readable and says it is incomplete.
    assert tree_digest(target) == old
    partial = tmp_path / "out.tv3s-incomplete" / "out"
    stamps = read_coverage(partial)
    assert 5 <= len(stamps) < 2000
    assert stamps == [T0 + i * 100_000_000 for i in range(len(stamps))]
    status = custom_data(partial)["tv3s.status"]
    assert status.startswith(f"incomplete: interrupted by {name} after {len(stamps)} frames")
    assert f"INTERRUPTED by {name} after {len(stamps)} frames" in stdout
    assert "incomplete output kept at" in stdout
    # A rerun is not blocked by the leftover, and removes it.
    rerun = run_tool(tmp_path / "short", target, "--overwrite", *tool_args(checkpoint, "--no-progress"))
    assert rerun.returncode == 0, rerun.stderr
    assert not (tmp_path / "out.tv3s-incomplete").exists()
    assert custom_data(target)["tv3s.status"] == "complete"


# ---------------------------------------------------------------------------------- engine
def test_engine_error_ends_that_bag_only(tmp_path, checkpoint, capsys, monkeypatch):
    """An engine failure (here the real engine with a CUDA-style error injected on the 3rd
    batch of bag a: no real fault of the tiny CPU model is reproducible) ends bag a with
    one line; bag b is processed; exit 1."""
    from tv3s_ros.engine import Engine

    recs = tmp_path / "recs"
    write_bag(recs / "a", 6)
    write_bag(recs / "b", 3)
    real_process, calls = Engine.process, {"n": 0}

    def failing_process(self, frames, outputs=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real_process(self, frames, outputs)

    monkeypatch.setattr(Engine, "process", failing_process)
    status = bag_tool.main([str(recs), str(tmp_path / "out"), *tool_args(checkpoint, "--no-progress")])
    printed = capsys.readouterr()
    assert status == 1, printed.err
    errors = one_error_line(printed.err)
    assert errors == [f"tv3s-bag: error: {recs / 'a'}: engine error: RuntimeError: CUDA error: "
                      "an illegal memory access was encountered"]
    assert len(read_coverage(tmp_path / "out" / "b")) == 3
    partial = tmp_path / "out" / "a.tv3s-incomplete" / "a"
    assert len(read_coverage(partial)) == 2 and not (tmp_path / "out" / "a").exists()


# ---------------------------------------------------------------------------------- soak
@pytest.mark.slow
def test_soak_short_memory_threads_and_files_stay_flat(tmp_path):
    """A shortened benchmarks/soak_bag.py (the 10,000-frame figures are in benchmarks/README.md):
    2,000 frames, two cameras, size changes every 100 frames, 1 % corrupt."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from soak_bag import run_soak
    finally:
        sys.path.pop(0)
    figures = run_soak(tmp_path, frames=2000, size_every=100, warmup=400, sample_s=0.25)
    shown = {k: v for k, v in figures.items() if not k.endswith("_tail")}
    assert figures["ok"], f"{shown}\n{figures.get('stderr_tail', '')[-1500:]}"
    assert figures["corrupt_skipped"] == 20 and figures["frames_processed"] == 1980
    assert all(cam["size_changed"] >= 9 for cam in figures["resets"].values()), figures


def test_sigterm_in_a_folder_of_bags_stops_before_the_next_bag(tmp_path, checkpoint):
    """The summary (and --summary-json) still comes out: the done bag, the interrupted one
    with how far it got, and the bag never started."""
    recs = tmp_path / "recs"
    write_bag(recs / "a_short", 2)
    write_bag(recs / "b_long", 2000)
    write_bag(recs / "c_next", 2)
    proc = subprocess.Popen(tool_cmd(recs, tmp_path / "out", "--summary-json", tmp_path / "s.json",
                                     *tool_args(checkpoint)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = _Progress(proc)
    while "b_long" not in progress.text:       # tqdm's description is the bag name
        assert proc.poll() is None, progress.text
        time.sleep(0.05)
    progress.text = progress.text[progress.text.index("b_long"):]
    progress.done = 0
    progress.wait_for(3)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, progress.text
    assert "Bags: 1 done, 0 failed, 1 interrupted, 1 not started" in stdout
    summary = yaml.safe_load((tmp_path / "s.json").read_text())
    assert [b["status"] for b in summary["bags"]] == ["complete", "interrupted"]
    assert summary["bags_planned"] == 3 and summary["bags"][1]["frames"] >= 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_short", "b_long.tv3s-incomplete"]


def test_help_documents_exit_status_and_incomplete_outputs(capsys):
    with pytest.raises(SystemExit):
        bag_tool.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("exit status:", "some bags failed", "130", "143", ".tv3s-incomplete",
                   "tv3s.status: incomplete"):
        assert needle in text
