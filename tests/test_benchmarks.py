"""benchmarks/run.py as CI runs it: the smoke page from benchmarks/sweeps/smoke.toml (a real sweep on
a local Ray instance, then the baseline step, then the page), its usage errors, and the pairing of
sizes the claims compare at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN = BENCHMARKS / "run.py"


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECOMPRESS_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, env=env, timeout=900,
                          check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("smoke")
    proc = run("--smoke", "--out", str(out), "--workers", "2", cache=tmp_path_factory.mktemp("cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "digits-mlp-64-256-256-10_cpu-" f"{len(os.sched_getaffinity(0))}core-smoke.json")
                           .read_text())


def test_smoke_page_is_rendered_from_the_sweep_config(smoke: tuple[Path, dict]) -> None:
    out, record = smoke
    stems = {p.name.rsplit(".", 1)[0] for p in out.iterdir()}
    assert len(stems) == 1 and {p.suffix for p in out.iterdir()} == {".json", ".md", ".png"}
    assert not list(out.glob("*.onnx")), "ONNX files and the sweep's folders stay in a temporary folder"
    markdown = next(out.glob("*.md")).read_text()
    assert "SMOKE RUN" in markdown and "## Paper claims" in markdown and "benchmarks/sweeps/smoke.toml" in markdown
    assert record["smoke"] and record["setup"]["model_name"] == "digits-mlp-64-256-256-10"
    assert record["config"] == "benchmarks/sweeps/smoke.toml"
    assert record["sweep"]["counts"] == {"total": 2, "done": 2, "failed": 0, "skipped": 0}


def test_smoke_rows_cover_entries_int8_and_pruning_at_the_same_size(smoke: tuple[Path, dict]) -> None:
    rows = {r["label"]: r for r in smoke[1]["rows"]}
    assert {r["method"] for r in rows.values()} == {"dense", "energy", "uniform", "lowrank-int8", "magnitude", "int8"}
    dense, uniform, energy = rows["dense"], rows["uniform-r8"], rows["energy-0.9"]
    assert uniform["meta"]["targets"] == ["uniform-r8"] and uniform["meta"]["ranks"]
    # magnitude pruning is cut to each entry's Linear parameters, exactly
    pruned = {r["meta"]["targets"][0]: r for r in rows.values() if r["method"] == "magnitude"}
    assert set(pruned) == {"uniform-r8", "energy-0.9"}
    assert pruned["uniform-r8"]["linear_params"] == uniform["linear_params"] < dense["linear_params"] // 5
    assert pruned["energy-0.9"]["linear_params"] == energy["linear_params"]
    # zeros do not shrink a dense ONNX file; the sparse (CSR) figure does; int8 files are ~4x smaller
    small = pruned["uniform-r8"]
    assert abs(small["onnx_bytes"] - dense["onnx_bytes"]) < 1024 < dense["onnx_bytes"] - uniform["onnx_bytes"]
    assert small["csr_bytes"] < dense["onnx_bytes"]
    assert rows["int8 (dense)"]["onnx_bytes"] < dense["onnx_bytes"] / 3
    assert rows["uniform-r8 + int8"]["onnx_bytes"] < uniform["onnx_bytes"] / 2
    for row in rows.values():
        assert 0 < row["accuracy"] <= 1 and 0 < row["macro_f1"] <= 1 and 0 < row["val_accuracy"] <= 1
        assert row["latency_p50_ratio"] > 0 and row["peak_rss_mib"] > 0 and row["build_seconds"] > 0
    assert dense["latency_p50_ratio"] == 1.0


def test_claims_without_their_methods_say_not_measured(smoke: tuple[Path, dict]) -> None:
    record = smoke[1]
    claims = {c["claim"]: c for c in record["claims"]}
    assert {"arsvd", "ddlr", "svd-training"} <= set(claims)
    # energy 0.9 keeps ~90% of the parameters, uniform rank 8 ~11%: too far apart to be paired
    assert all(c["verdict"] == "not measured" and not c["pairs"] for c in claims.values())
    assert record["missing"] == {"finetune": "no SVD-training entry to copy ranks from"}


@pytest.mark.parametrize("args, message", [
    (("--smoke",), "give --out"),
    (("--baselines", "magnitude,nope", "--out", "{tmp}/unused"), "unknown baseline 'nope'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run(*(a.format(tmp=tmp_path) for a in args), cache=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "unused").exists()


def test_matched_rows_pair_with_the_closest_anchor_within_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import page

    def row(label: str, method: str, params: int) -> dict:
        return {"label": label, "method": method, "linear_params": params, "meta": {}}

    rows = [row("dense", "dense", 1000), row("energy", "energy", 500), row("svd", "svd-training", 100),
            row("u8", "uniform", 95), row("u50", "uniform", 480), row("u90", "uniform", 900),
            row("d1", "data", 520), row("d2", "data", 300)]
    page.match(rows, 1000)
    got = {r["label"]: r["meta"].get("targets") for r in rows}
    # anchors first, then every uniform rank as a target; d2 (300) is within 10% of nothing
    assert got == {"dense": None, "energy": None, "svd": None, "u8": ["svd", "u8"], "u50": ["energy", "u50"],
                   "u90": ["u90"], "d1": ["energy", "u50"], "d2": None}
    assert page.magnitude_targets(rows, 1000) == {500: ["energy"], 100: ["svd"], 95: ["u8"], 480: ["u50"],
                                                  900: ["u90"]}


def test_page_configs_load_the_cached_model_and_the_given_mnist_folder(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """Every checked-in page config parses, names a benchmark setup and benchmarks every entry;
    run.py points the entries at the cached model and at --mnist-dir."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run

    from edgecompress.sweep import load_sweep

    names = {}
    for path in sorted((BENCHMARKS / "sweeps").glob("*.toml")):
        if path.stem == "ray-digits":  # sweep_ray.py's timing sweep, not a page
            continue
        config = load_sweep(path)
        if config.name in run.EMBEDDING_PAGES:  # no labels, no setup: tests/test_embedding_page.py
            continue
        names[path.stem] = run.setup_of(config, tmp_path).name
        moved = run.with_model(config, tmp_path / "model.pt", tmp_path / "mnist")
        for entry in moved.entries:
            assert entry.options["model"] == str(tmp_path / "model.pt") and entry.options["bench"] is True
            assert not any(str(v).startswith(run.MNIST_IN_CONFIG) for v in entry.options.values())
    assert names == {"digits": "digits", "fashion-mnist": "fashion-mnist", "mnist": "mnist", "smoke": "digits"}
    mnist = run.with_model(load_sweep(BENCHMARKS / "sweeps" / "mnist.toml"), tmp_path / "m.pt", tmp_path / "mnist")
    assert {e.options["eval"] for e in mnist.entries} == {f"{tmp_path / 'mnist'}:test"}
