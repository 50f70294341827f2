"""Reports from a bench.json: JSON text, Markdown tables, self-contained HTML, the `report` command."""

from __future__ import annotations

import base64
import copy
import html
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecompress.cli import main
from edgecompress.errors import InputError
from edgecompress.report import (load_bench, render_html, render_markdown, to_json_text, write_json,
                                 write_text)
from edgecompress.report.html import NO_MATPLOTLIB


def _row(model: str, batch: int, scale: float, acc: float | None, peak: float | None) -> dict[str, Any]:
    samples = [scale * (1 + 0.01 * (i % 7)) for i in range(20)]
    return {
        "model": model, "batch": batch, "runs": 20,
        "latency_ms": {"p50": scale * 1.03, "p90": scale * 1.06, "p99": scale * 1.06, "min": scale,
                       "mean": scale * 1.03, "max": scale * 1.06, "std": 0.01, "samples": samples},
        "throughput_per_s": batch * 1000 / (scale * 1.03), "init_ms": 12.0 * scale, "first_inference_ms": 0.9,
        "peak_rss_mib": peak, "rss_increment_mib": None if peak is None else peak - 50, "baseline_rss_mib": 50.0,
        "bytes": 7_456_123 if model == "dense.onnx" else 545_000,
        "params": 1_863_690 if model == "dense.onnx" else 136_202,
        "accuracy": acc, "macro_f1": None if acc is None else acc - 0.001,
        "top1_agreement": 1.0 if model == "dense.onnx" else 0.995,
        "max_abs_diff": 0.0 if model == "dense.onnx" else 0.0123,
        "eval_samples": 10000, "ratios": {},
    }


def bench_fixture(labels: bool = True) -> dict[str, Any]:
    """A hand-made bench.json with two models and two batch sizes."""
    results = []
    for batch in (1, 32):
        for model, scale, acc, peak in (("dense.onnx", 0.4 * batch, 0.981, 60.0),
                                        ("model.onnx", 0.2 * batch, 0.979, 54.0)):
            results.append(_row(model, batch, scale, acc if labels else None, peak))
    for row in results:
        ref = next(r for r in results if r["model"] == "dense.onnx" and r["batch"] == row["batch"])
        row["ratios"] = {"p50": row["latency_ms"]["p50"] / ref["latency_ms"]["p50"],
                         "bytes": row["bytes"] / ref["bytes"], "params": row["params"] / ref["params"],
                         "peak_rss_mib": row["peak_rss_mib"] / ref["peak_rss_mib"], "accuracy": None}
    return {
        "schema": "edgecompress.bench/1",
        "provenance": {"versions": {"onnxruntime": "1.23.2"}, "python": "3.11.7", "os": "Linux 6.1 (aarch64)",
                       "cpu": "Cortex-A76", "cpu_count": 4, "git_commit": "abcdef1234567890",
                       "timestamp": "2025-01-01T00:00:00+00:00",
                       "command": "edgecompress bench dense.onnx model.onnx", "threads": 1, "inter_op_threads": 1,
                       "cpu_governor": "performance", "cpu_temp_c": 48.0, "cpu_temp_c_end": 51.5},
        "config": {"batches": [1, 32], "threads": 1, "inter_op_threads": 1, "execution_mode": "sequential",
                   "runs": 20, "seconds": None, "warmup": 5, "seed": 0, "data": "test.npz" if labels else None,
                   "labels": labels, "eval_samples": 10000,
                   "inputs": [{"name": "x", "shape": ["N", 784], "dtype": "float32"}],
                   "memory": True, "cold_start": "subprocess"},
        "reference": "dense.onnx",
        "models": [{"path": "build/dense.onnx", "name": "dense.onnx", "format": "onnx", "bytes": 7_456_123,
                    "params": 1_863_690},
                   {"path": "build/model.onnx", "name": "model.onnx", "format": "onnx", "bytes": 545_000,
                    "params": 136_202}],
        "results": results,
    }


def _tables(markdown: str) -> list[list[str]]:
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


# --- Markdown ---------------------------------------------------------------------------------


def test_markdown_tables_have_a_row_per_model_and_batch() -> None:
    text = render_markdown(bench_fixture())
    speed, size = _tables(text)
    assert len(speed) == 2 + 4 and len(size) == 2 + 2
    for table in (speed, size):
        assert len({line.count("|") for line in table}) == 1  # well-formed: same column count everywhere
        assert re.fullmatch(r"\|[ \-:|]+\|", table[1])
    header = [c.strip() for c in speed[0].strip("|").split("|")]
    assert header[:3] == ["Model", "Batch", "p50 ms"] and "Peak RSS MiB" in header
    assert "| model.onnx " in speed[3] and "(0.50×)" in speed[3]  # p50 ratio vs the reference
    assert "(0.07×)" in size[3]  # parameters 136,202 / 1,863,690
    assert "98.10%" in size[2] and "(−0.20 pt)" in size[3]
    assert "governor performance" in text and "48.0 °C → 51.5 °C" in text


def test_markdown_says_n_a_without_labels_or_memory() -> None:
    bench = bench_fixture(labels=False)
    for row in bench["results"]:
        row["peak_rss_mib"] = row["rss_increment_mib"] = None
    speed, size = _tables(render_markdown(bench))
    size_cells = [c.strip() for c in size[3].strip("|").split("|")]
    assert size_cells[4:6] == ["n/a", "n/a"]  # accuracy, macro-F1 — never 0
    assert "0.00%" not in size[3]
    assert speed[2].rstrip(" |").endswith("n/a")


def test_markdown_of_a_minimal_bench_json_does_not_crash() -> None:
    bench = {"schema": "edgecompress.bench/1", "reference": "a.onnx", "models": [{"name": "a.onnx"}],
             "results": [{"model": "a.onnx", "batch": 1}]}
    assert "a.onnx" in render_markdown(bench)
    assert "<table>" in render_html(bench)


# --- HTML ---------------------------------------------------------------------------------------


def test_html_is_self_contained_with_png_plots() -> None:
    page = render_html(bench_fixture())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # latency distributions, size vs accuracy
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert page.count("<table>") == 2 and "model.onnx" in page


def test_html_has_the_verdict_and_coloured_ratios() -> None:
    page = render_html(bench_fixture())
    verdict = re.search(r'<p class="verdict">([^<]*)</p>', page)
    assert verdict and verdict[1] == ("model.onnx: 0.07× size, 0.50× p50 latency (batch 1), 0.50× p50 latency "
                                      "(batch 32), −0.20 pt accuracy vs dense.onnx")
    assert '<span class="x good">0.50×</span>' in page  # faster than the reference
    assert '<span class="x bad">−0.20 pt</span>' in page  # accuracy lost
    assert "7.11 MiB" in page and "532.23 KiB" in page  # one size convention: binary units


def test_log_ticks_are_dense_enough_within_one_decade() -> None:
    from edgecompress.report.plots import nice_log_ticks

    assert nice_log_ticks(45, 500) == [50, 100, 200, 500]
    assert nice_log_ticks(61, 69) == [61, 69]  # no round value inside: the two ends
    assert nice_log_ticks(40, 95) == [40, 50, 60, 70, 80, 90]


def test_html_without_matplotlib_has_tables_and_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = render_html(bench_fixture())
    assert "<img" not in page and html.escape(NO_MATPLOTLIB) in page and page.count("<table>") == 2


def test_html_escapes_names() -> None:
    bench = bench_fixture()
    bench["models"][1]["name"] = "<script>.onnx"
    page = render_html(bench)
    assert "<script>.onnx" not in page and "&lt;script&gt;.onnx" in page


# --- JSON and files ------------------------------------------------------------------------------


def test_json_text_is_strict_and_keeps_key_order() -> None:
    bench = bench_fixture()
    bench["results"][1]["max_abs_diff"] = math.nan
    bench["results"][1]["ratios"]["p50"] = math.inf
    text = to_json_text(bench)
    data = json.loads(text)  # strict: would fail on NaN with parse_constant below
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data["results"][1]["max_abs_diff"] is None and data["results"][1]["ratios"]["p50"] is None
    assert list(data) == ["schema", "provenance", "config", "reference", "models", "results"]


def test_write_text_is_atomic_and_dash_is_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "sub" / "bench.json"
    write_json(bench_fixture(), target)
    write_json(bench_fixture(), target)  # overwrite in place
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]
    assert load_bench(target)["reference"] == "dense.onnx"
    write_text("-", "hello")
    assert capsys.readouterr().out == "hello\n"
    with pytest.raises(InputError, match="is a folder"):
        write_text(tmp_path, "x")


@pytest.mark.parametrize("content, pattern", [
    ("{not json", "is not JSON"),
    ('{"schema": "edgecompress.build/1"}', "is not a bench.json"),
    ('{"schema": "edgecompress.bench/1", "results": []}', "incomplete"),
    ("[]", "is not a bench.json"),
])
def test_load_bench_rejects_bad_files(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "bench.json"
    path.write_text(content)
    with pytest.raises(InputError, match=pattern):
        load_bench(path)
    with pytest.raises(InputError, match="not found"):
        load_bench(tmp_path / "absent.json")


# --- the report command ----------------------------------------------------------------------


def test_report_command_renders_files_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "bench.json"
    write_json(bench_fixture(), source)
    before = source.read_bytes()
    main(["report", str(source), "--md", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html"), "-q"])
    assert "## Size and accuracy" in (tmp_path / "r.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()
    assert source.read_bytes() == before
    capsys.readouterr()
    main(["report", str(source)])
    assert "| dense.onnx" in capsys.readouterr().out


def test_report_command_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as info:
        main(["report", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    good = tmp_path / "good.json"
    write_json(copy.deepcopy(bench_fixture()), good)
    with pytest.raises(SystemExit) as info:
        main(["report", str(good), "--md", str(good)])
    assert info.value.code == 2 and "overwrite" in capsys.readouterr().err
