"""benchmarks/run.py as CI runs it: the smoke mode on two methods, and its usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECOMPRESS_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, env=env, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    proc = run("--smoke", "--out", str(out), "--methods", "uniform,magnitude", cache=tmp_path_factory.mktemp("cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "digits-mlp-64-256-256-10_cpu-" f"{len(os.sched_getaffinity(0))}core-smoke.json")
                           .read_text())


def test_smoke_writes_json_markdown_and_plot_named_after_the_setup(smoke: tuple[Path, dict]) -> None:
    out, record = smoke
    stems = {p.name.rsplit(".", 1)[0] for p in out.iterdir()}
    assert len(stems) == 1 and {p.suffix for p in out.iterdir()} == {".json", ".md", ".png"}
    assert not list(out.glob("*.onnx")), "ONNX files must stay in a temporary folder"
    markdown = next(out.glob("*.md")).read_text()
    assert "SMOKE RUN" in markdown and "## Paper claims" in markdown
    assert record["smoke"] and record["setup"]["model_name"] == "digits-mlp-64-256-256-10"


def test_smoke_rows_compare_uniform_and_pruning_at_the_same_size(smoke: tuple[Path, dict]) -> None:
    rows = {r["method"]: r for r in smoke[1]["rows"]}
    assert set(rows) == {"dense", "uniform", "magnitude"}
    dense, uniform, pruned = rows["dense"], rows["uniform"], rows["magnitude"]
    assert uniform["label"] == "uniform r=8" and uniform["meta"]["targets"] == ["rank 8"]
    # magnitude pruning is sized to the rank-8 model's Linear parameters, exactly
    assert pruned["linear_params"] == uniform["linear_params"] < dense["linear_params"] // 5
    # zeros do not shrink a dense ONNX file; the sparse (CSR) figure does
    assert abs(pruned["onnx_bytes"] - dense["onnx_bytes"]) < 1024 < dense["onnx_bytes"] - uniform["onnx_bytes"]
    assert pruned["csr_bytes"] < dense["onnx_bytes"]
    for row in rows.values():
        assert 0 < row["accuracy"] <= 1 and 0 < row["macro_f1"] <= 1
        assert row["latency_p50_ratio"] > 0 and row["peak_rss_mib"] > 0 and row["build_seconds"] > 0
    assert dense["latency_p50_ratio"] == 1.0


def test_claims_without_their_methods_say_not_measured(smoke: tuple[Path, dict]) -> None:
    claims = {c["claim"]: c for c in smoke[1]["claims"]}
    assert {"arsvd", "ddlr", "svd-training"} <= set(claims)
    assert all(c["verdict"] == "not measured" and not c["pairs"] for c in claims.values())


@pytest.mark.parametrize("args, message", [
    (("--smoke",), "give --out"),
    (("--methods", "uniform,nope", "--out", "{tmp}/unused"), "unknown method 'nope'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run(*(a.format(tmp=tmp_path) for a in args), cache=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "unused").exists()
