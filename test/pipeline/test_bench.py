"""Smoke test of tv3s-bench: a tiny model at a tiny size, two timed frames, on CPU."""
from __future__ import annotations

import pytest
from tiny import TINY_PRESET, tiny_overrides

from tv3s_ros.tools import bench

TINY = ["--device", "cpu", "--model", TINY_PRESET,
        "--overrides", ",".join(f"{k}={v}" for k, v in tiny_overrides().items()), "--size", "64x128",
        "--warmup", "1", "--iters", "2", "--quiet", "--markdown", "--floor"]


def parse_markdown_table(text: str):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, text
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    assert set(lines[1].replace("|", "")) == {"-"}
    return header, [dict(zip(header, split(line))) for line in lines[2:]]


def test_bench_table_parses(capsys, tmp_path):
    out_file = tmp_path / "bench.md"
    assert bench.main(TINY + ["--graphs", "both", "--node-pipeline", "--camera-size", "60x80",
                              "--node-input-size", "64x96", "--output", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "- torch:" in text and "- cpu:" in text and "peak fp32" in text and "- host memory: " in text
    # several backends compared: no "last call's backend" line (it would name the last one timed)
    assert "- scan_backend." not in text and "- scan backends compared: fused, chunked, ref" in text
    header, rows = parse_markdown_table(text)
    assert tuple(header) == bench.COLUMNS
    eager = [r for r in rows if r["mode"] == "eager" and r["input"] == "64x128"]
    # On cpu all scan backends side by side, the baseline (no scan) once.
    assert sorted((r["method"], r["scan"]) for r in eager) == [
        ("baseline", "-"), ("clip", "chunked"), ("clip", "fused"), ("clip", "ref"), ("stream", "chunked"),
        ("stream", "fused"), ("stream", "ref")]
    by_scan = {s: {r["method"]: r for r in eager if r["scan"] in (s, "-")} for s in ("fused", "chunked", "ref")}
    for s, group in by_scan.items():
        ratio = group["stream"]["stream/baseline"]
        assert ratio.endswith("x") and float(ratio[:-1]) == pytest.approx(
            float(group["stream"]["median ms"]) / float(group["baseline"]["median ms"]), rel=0.02)
    for m in ("clip", "stream"):
        for s in ("fused", "chunked"):
            vs_ref = by_scan[s][m]["vs ref"]
            assert vs_ref.endswith("x") and float(vs_ref[:-1]) == pytest.approx(
                float(by_scan["ref"][m]["median ms"]) / float(by_scan[s][m]["median ms"]), rel=0.02)
        assert by_scan["ref"][m]["vs ref"] == "-"
    timed = by_scan["fused"]
    for r in timed.values():
        median, p95, fps = float(r["median ms"]), float(r["p95 ms"]), float(r["FPS"])
        assert 0 < median <= p95 + 1e-9
        assert fps == pytest.approx(1000.0 / median, rel=0.01)
        assert float(r["floor ms"]) > 0 and "GFLOP" in r["notes"]
    # clip recomputes 4 frames: more FLOPs than the stream's single frame
    gflop = lambda r: float(r["notes"].split(" GFLOP")[0].split()[-1])  # noqa: E731
    assert gflop(timed["clip"]) > 2 * gflop(timed["stream"])
    ratio = timed["stream"]["clip/stream"]
    assert ratio.endswith("x") and float(ratio[:-1]) == pytest.approx(
        float(timed["clip"]["median ms"]) / float(timed["stream"]["median ms"]), rel=0.02)
    assert timed["stream"]["stream/baseline"].endswith("x")
    assert timed["baseline"]["clip/stream"] == "-"
    graphed = [r for r in rows if r["mode"] == "graphed"]
    assert graphed and all("skipped on cpu" in r["notes"] for r in graphed)
    node = [r for r in rows if r["method"] == "node"]
    assert len(node) == 1 and node[0]["input"] == "60x80 rgb8 -> 64x96" and "overhead" in node[0]["notes"]
    assert float(node[0]["median ms"]) > 0
    header_f, rows_f = parse_markdown_table(out_file.read_text())
    assert tuple(header_f) == bench.COLUMNS and len(rows_f) == len(rows)


def test_bench_training_step_rows(capsys):
    assert bench.main(TINY[:-1] + ["--no-floor", "--scan-backend", "chunked", "--train", "chunked,ref",
                                    "--iters", "1"]) == 0
    header, rows = parse_markdown_table(capsys.readouterr().out)
    train = {r["scan"]: r for r in rows if r["method"] == "train"}
    assert set(train) == {"chunked", "ref"} and all(float(r["median ms"]) > 0 for r in train.values())
    assert train["chunked"]["vs ref"].endswith("x")
    assert {(r["method"], r["scan"]) for r in rows if r["method"] != "train"} == {
        ("baseline", "-"), ("clip", "chunked"), ("stream", "chunked")}


def test_bench_rejects_unknown_scan_backend():
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--scan-backend", "fast"])


def test_bench_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("examples:", "--node-pipeline", "clip/stream", "floor ms", "tv3s-bench --device cuda",
                 "--scan-backend", "--train", "vs ref"):
        assert word in text


def test_bench_rejects_bad_size():
    with pytest.raises(SystemExit):
        bench.main(["--size", "512by1024"])


def test_bench_encode_table(capsys):
    """--encode: one row per compressed output (labels PNG exact-size math, JPEG rows per quality)."""
    assert bench.main(["--encode", "--camera-size", "64x128", "--iters", "2", "--jpeg-quality", "50,90",
                       "--quiet", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "- camera size: 64x128" in text and "- opencv: " in text
    from tv3s_ros.tools.encode_bench import COLUMNS

    header, rows = parse_markdown_table(text)
    assert tuple(header) == COLUMNS
    by_name = {r["output"]: r for r in rows}
    assert by_name["labels"]["format"] == "`mono8; png compressed `"
    assert by_name["labels"]["raw bytes"] == f"{64 * 128:,}"
    assert by_name["color q90"]["format"] == "`rgb8; jpeg compressed bgr8`"
    assert by_name["color q90"]["raw bytes"] == f"{64 * 128 * 3:,}"
    assert {"color q50", "overlay q50", "overlay q90", "confidence", "labels (ground truth)"} <= set(by_name)
    assert "of the class ids" in by_name["labels q90 (not offered)"]["notes"]
    for r in rows:
        assert int(r["bytes/frame"].replace(",", "")) > 0 and float(r["encode median ms"]) >= 0


def test_bench_encode_rejects_bad_quality(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--encode", "--jpeg-quality", "0"])
    assert "1..100" in capsys.readouterr().err
