"""Facts from build.json / bench.json / bare ONNX, and every budget type passing and failing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.check import run_check
from edgecompress.check.config import load_config
from edgecompress.check.evaluate import CheckReport, Finding, evaluate
from edgecompress.check.facts import collect
from edgecompress.errors import InputError


def write_mlp(path: Path, sizes: tuple[int, ...] = (16, 32, 4), rank: int | None = None) -> Path:
    """A tiny MLP as ONNX: Gemm layers, or MatMul factor pairs + Add when ``rank`` is set."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if rank:
            inits += [numpy_helper.from_array(rng.standard_normal((a, rank)).astype(np.float32), f"A{i}"),
                      numpy_helper.from_array(rng.standard_normal((rank, b)).astype(np.float32), f"B{i}"),
                      numpy_helper.from_array(np.zeros(b, np.float32), f"c{i}")]
            nodes += [helper.make_node("MatMul", [x, f"A{i}"], [f"u{i}"]),
                      helper.make_node("MatMul", [f"u{i}", f"B{i}"], [f"v{i}"]),
                      helper.make_node("Add", [f"v{i}", f"c{i}"], [f"h{i}"])]
        else:
            inits += [numpy_helper.from_array(rng.standard_normal((b, a)).astype(np.float32), f"W{i}"),
                      numpy_helper.from_array(np.zeros(b, np.float32), f"c{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"c{i}"], [f"h{i}"], transB=1))
        x = f"h{i}"
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))  # not a parameter
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", sizes[-1]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def artifact(path: str, nbytes: int, params: int, ops: dict[str, int], accuracy: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "format": "onnx", "bytes": nbytes, "params": params, "ops": ops}
    if accuracy is not None:
        entry["eval"] = {"dataset": "digits:test", "samples": 360, "accuracy": accuracy, "macro_f1": accuracy}
    return entry


def write_build(folder: Path, *, nbytes: int = 40_000, params: int = 9_000, accuracy: float | None = 0.95,
                dense_accuracy: float | None = 0.99, ops: dict[str, int] | None = None) -> Path:
    """A hand-written build.json (docs/formats.md) with a dense and a compressed artifact."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema": "edgecompress.build/1", "name": "m", "artifacts": {
        "dense": artifact("m.dense.onnx", 340_000, 85_000, {"Gemm": 3, "Relu": 2}, dense_accuracy),
        "compressed": artifact("m.onnx", nbytes, params, ops or {"Gemm": 6, "Relu": 2}, accuracy)}}
    path = folder / "build.json"
    path.write_text(json.dumps(data))
    return path


def write_bench(folder: Path, *, p50: float = 0.2, batch: int = 1, rss: float = 50.0, prefix: str = "") -> Path:
    """A hand-written bench.json measuring m.dense.onnx and m.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    def result(model: str, scale: float) -> dict[str, Any]:
        return {"model": model, "batch": batch, "latency_ms": {"p50": p50 * scale, "p90": p50 * scale * 1.2,
                                                                "p99": p50 * scale * 2, "mean": p50 * scale},
                "peak_rss_mib": rss, "accuracy": None}
    data = {"schema": "edgecompress.bench/1", "reference": "m.dense.onnx",
            "models": [{"path": f"{prefix}m.dense.onnx", "name": "m.dense.onnx", "format": "onnx"},
                       {"path": f"{prefix}m.onnx", "name": "m.onnx", "format": "onnx"}],
            "results": [result("m.dense.onnx", 3.0), result("m.onnx", 1.0)]}
    path = folder / "bench.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports show paths relative to the current folder: run each test inside its tmp_path."""
    monkeypatch.chdir(tmp_path)


def budgets(tmp_path: Path, body: str, pattern: str = "build/m.onnx") -> Path:
    path = tmp_path / "budgets.toml"
    path.write_text(f'[budgets."{pattern}"]\n{body}\n')
    return path


def rows(report: CheckReport, key: str | None = None) -> list[Finding]:
    return [f for f in report.findings if key is None or f.key == key]


def only(report: CheckReport, key: str) -> Finding:
    (finding,) = rows(report, key)
    return finding


# ------------------------------------------------------------------------------------ facts

def test_bare_onnx_facts(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "m.onnx", (16, 32, 4), rank=3)
    facts = collect([path]).artifacts[path]
    assert facts.bytes == path.stat().st_size
    assert facts.params == (16 * 3 + 3 * 32 + 32) + (32 * 3 + 3 * 4 + 4)  # int64 shape not counted
    assert facts.ops == {"Add": 2, "MatMul": 4}
    assert facts.accuracy is None


def test_corrupt_onnx_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(InputError, match="bad.onnx"):
        collect([bad])


@pytest.mark.parametrize(("content", "message"), [("{", "invalid JSON"), ('{"schema": "other/1"}', "neither"),
                                                  ("[]", "JSON object"),
                                                  ('{"schema": "edgecompress.build/1"}', "artifacts")])
def test_bad_json_is_an_input_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "build.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        collect([path])


def test_unknown_file_type_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="notes.txt"):
        collect([tmp_path / "notes.txt"])


def test_build_json_facts_and_dense_reference(tmp_path: Path) -> None:
    build = write_build(tmp_path / "build")
    facts = collect([build])
    compressed = facts.artifacts[tmp_path / "build" / "m.onnx"]
    assert (compressed.role, compressed.bytes, compressed.params, compressed.accuracy) == ("compressed", 40_000, 9_000, 0.95)
    assert compressed.reference == tmp_path / "build" / "m.dense.onnx"
    assert facts.artifacts[tmp_path / "build" / "m.dense.onnx"].reference is None


def test_bench_json_merges_with_build_json_by_path(tmp_path: Path) -> None:
    build = write_build(tmp_path / "build")
    bench = write_bench(tmp_path / "build", p50=0.2, rss=50.0)
    facts = collect([bench, build], cwd=tmp_path)  # order of PATHS does not matter
    assert len(facts.artifacts) == 2
    compressed = facts.artifacts[tmp_path / "build" / "m.onnx"]
    assert compressed.latency_ms[(1, None)]["p50"] == pytest.approx(0.2)
    assert compressed.peak_rss_mib == {(1, None): 50.0}
    assert compressed.bytes == 40_000  # build.json wins


def test_bench_paths_relative_to_cwd_or_unknown_merge_by_name(tmp_path: Path) -> None:
    build = write_build(tmp_path / "build")
    bench = write_bench(tmp_path / "results", prefix="elsewhere/")  # files not on this machine
    facts = collect([build, bench], cwd=tmp_path)
    assert set(facts.artifacts) == {tmp_path / "build" / "m.onnx", tmp_path / "build" / "m.dense.onnx"}
    assert facts.artifacts[tmp_path / "build" / "m.onnx"].latency_ms[(1, None)]["p50"] == pytest.approx(0.2)


def test_folder_and_glob_paths(tmp_path: Path) -> None:
    write_build(tmp_path / "build")
    write_mlp(tmp_path / "build" / "extra.onnx")
    facts = collect(["build"], cwd=tmp_path)
    assert {p.name for p in facts.artifacts} == {"m.onnx", "m.dense.onnx", "extra.onnx"}
    facts = collect(["build/*.onnx", "missing/*.json", "nope.onnx"], cwd=tmp_path)
    assert [p.name for p in facts.artifacts] == ["extra.onnx"]
    assert facts.missing == ["missing/*.json", "nope.onnx"]


# ---------------------------------------------------------------------------------- budgets

def check(tmp_path: Path, body: str, *, build: dict[str, Any] | None = None, baseline: dict[str, Any] | None = None,
          bench: dict[str, Any] | None = None, fail_on_latency: bool = False, pattern: str = "build/m.onnx") -> CheckReport:
    paths = [write_build(tmp_path / "build", **(build or {}))]
    if bench is not None:
        paths.append(write_bench(tmp_path / "build", **bench))
    baselines = [write_build(tmp_path / "main", **baseline)] if baseline is not None else []
    return run_check(paths, config=budgets(tmp_path, body, pattern), baselines=baselines,
                     fail_on_latency=fail_on_latency, cwd=tmp_path)


@pytest.mark.parametrize(("body", "build", "status"), [
    ('max_size = "40 kB"', {"nbytes": 40_000}, "pass"),
    ('max_size = "40 kB"', {"nbytes": 40_001}, "fail"),
    ("max_params = 9000", {"params": 9000}, "pass"),
    ('max_params = "8.9k"', {"params": 9000}, "fail"),
    ("min_accuracy = 0.95", {"accuracy": 0.95}, "pass"),
    ('min_accuracy = "95.5%"', {"accuracy": 0.95}, "fail"),
    ("min_accuracy = 0.9", {"accuracy": None}, "fail"),
    ("max_ops = { Gemm = 6 }", {}, "pass"),
    ("max_ops = { Gemm = 5 }", {}, "fail"),
    ("max_ops = { MatMul = 0 }", {}, "pass"),  # absent op type counts 0
])
def test_absolute_budgets(tmp_path: Path, body: str, build: dict[str, Any], status: str) -> None:
    report = check(tmp_path, body, build=build)
    (finding,) = rows(report)
    assert finding.status == status, finding
    assert report.passed is (status == "pass")


def test_size_row_shows_exact_bytes_when_rounding_hides_the_difference(tmp_path: Path) -> None:
    finding = only(check(tmp_path, 'max_size = "40 kB"', build={"nbytes": 40_001}), "max_size")
    assert (finding.value_text, finding.limit_text) == ("40,001 B", "≤ 40,000 B")


def test_accuracy_drop_vs_dense_reference_without_baseline(tmp_path: Path) -> None:
    report = check(tmp_path, "max_accuracy_drop = 5", build={"accuracy": 0.95, "dense_accuracy": 0.99})
    finding = only(report, "max_accuracy_drop")
    assert finding.status == "pass" and finding.value == pytest.approx(4.0)
    assert "dense reference m.dense.onnx" in finding.note
    report = check(tmp_path, "max_accuracy_drop = 3.5", build={"accuracy": 0.95, "dense_accuracy": 0.99})
    assert only(report, "max_accuracy_drop").status == "fail"


def test_accuracy_drop_vs_baseline(tmp_path: Path) -> None:
    report = check(tmp_path, "max_accuracy_drop = 0.5", build={"accuracy": 0.945}, baseline={"accuracy": 0.95})
    finding = only(report, "max_accuracy_drop")
    assert finding.value == pytest.approx(0.5)
    assert finding.status == "pass"  # exactly at the limit passes
    report = check(tmp_path, "max_accuracy_drop = 0.5", build={"accuracy": 0.94}, baseline={"accuracy": 0.95})
    assert only(report, "max_accuracy_drop").status == "fail"
    assert "vs baseline" in only(report, "max_accuracy_drop").note


def test_accuracy_drop_without_any_reference_is_skipped(tmp_path: Path) -> None:
    report = check(tmp_path, "max_accuracy_drop = 1", build={"dense_accuracy": None})
    assert only(report, "max_accuracy_drop").status == "skip"
    assert report.passed


@pytest.mark.parametrize(("current", "before", "floor", "status"), [
    (41_000, 40_000, '"0 B"', "pass"),      # +2.5% ≤ 5%
    (42_000, 40_000, '"0 B"', "pass"),      # exactly 5%
    (42_001, 40_000, '"0 B"', "fail"),      # just over
    (43_000, 40_000, '"4 KiB"', "pass"),    # +7.5% but 3,000 B < 4 KiB noise floor
    (45_000, 40_000, '"4 KiB"', "fail"),    # +12.5%, 5,000 B ≥ floor
    (30_000, 40_000, '"0 B"', "pass"),      # shrinking always passes
])
def test_size_growth_with_noise_floor(tmp_path: Path, current: int, before: int, floor: str, status: str) -> None:
    report = check(tmp_path, f'max_growth = "5%"\nnoise_floor = {floor}', build={"nbytes": current},
                   baseline={"nbytes": before})
    finding = only(report, "max_growth")
    assert finding.status == status, finding
    assert finding.baseline == before
    assert finding.value == pytest.approx((current - before) / before)


def test_noise_floor_is_named_when_it_saves_a_check(tmp_path: Path) -> None:
    report = check(tmp_path, 'max_growth = "1%"\nnoise_floor = "1 KiB"', build={"nbytes": 40_500},
                   baseline={"nbytes": 40_000})
    assert "below noise floor 1 KiB" in only(report, "max_growth").note


def test_params_growth(tmp_path: Path) -> None:
    body = 'max_params_growth = "10%"\nparams_noise_floor = 100'
    assert only(check(tmp_path, body, build={"params": 9_050}, baseline={"params": 8_000}), "max_params_growth").status == "fail"
    assert only(check(tmp_path, body, build={"params": 8_080}, baseline={"params": 8_000}), "max_params_growth").status == "pass"


def test_growth_without_baseline_is_skipped_with_a_reason(tmp_path: Path) -> None:
    report = check(tmp_path, 'max_growth = "5%"')
    finding = only(report, "max_growth")
    assert finding.status == "skip" and "no --baseline" in finding.note
    assert report.passed


def test_growth_of_a_new_artifact_is_skipped(tmp_path: Path) -> None:
    write_build(tmp_path / "build")
    write_mlp(tmp_path / "build" / "new.onnx")
    main = write_build(tmp_path / "main")
    report = run_check(["build"], config=budgets(tmp_path, 'max_growth = "5%"', "build/new.onnx"),
                       baselines=[main], cwd=tmp_path)
    finding = only(report, "max_growth")
    assert finding.status == "skip" and "new artifact" in finding.note


@pytest.mark.parametrize(("p50", "fail_on_latency", "status"), [
    (0.2, False, "pass"), (0.5, False, "warn"), (0.5, True, "fail")])
def test_latency_warns_unless_asked_to_fail(tmp_path: Path, p50: float, fail_on_latency: bool, status: str) -> None:
    report = check(tmp_path, "max_latency_p50_ms = 0.3", bench={"p50": p50}, fail_on_latency=fail_on_latency)
    finding = only(report, "max_latency_p50_ms")
    assert finding.status == status
    assert report.passed is (status != "fail")


def test_fail_on_latency_per_budget_and_in_config(tmp_path: Path) -> None:
    report = check(tmp_path, "max_latency_p99_ms = 0.3\nfail_on_latency = true", bench={"p50": 0.2})
    assert only(report, "max_latency_p99_ms").status == "fail"  # p99 = 0.4
    cfg = tmp_path / "b.toml"
    cfg.write_text('fail_on_latency = true\n[budgets."build/m.onnx"]\nmax_latency_mean_ms = 0.1\n')
    report = run_check([write_build(tmp_path / "build"), write_bench(tmp_path / "build")], config=cfg, cwd=tmp_path)
    assert only(report, "max_latency_mean_ms").status == "fail"
    cfg.write_text('fail_on_latency = true\n[budgets."build/m.onnx"]\nmax_latency_mean_ms = 0.1\n'
                   'fail_on_latency = false\n')
    report = run_check([write_build(tmp_path / "build"), write_bench(tmp_path / "build")], config=cfg, cwd=tmp_path)
    assert only(report, "max_latency_mean_ms").status == "warn"  # the budget's own setting wins
    report = run_check([write_build(tmp_path / "build"), write_bench(tmp_path / "build")], config=cfg, cwd=tmp_path,
                       fail_on_latency=True)
    assert only(report, "max_latency_mean_ms").status == "fail"  # --fail-on-latency wins over both


def test_latency_at_another_batch(tmp_path: Path) -> None:
    report = check(tmp_path, "max_latency_p50_ms = 1", bench={"batch": 32})
    finding = only(report, "max_latency_p50_ms")
    assert finding.status == "warn" and "measured: 32" in finding.note
    report = check(tmp_path, "max_latency_p50_ms = 1\nbatch = 32", bench={"batch": 32})
    assert only(report, "max_latency_p50_ms").status == "pass"


def test_latency_not_benchmarked_warns(tmp_path: Path) -> None:
    report = check(tmp_path, "max_latency_p90_ms = 1")
    finding = only(report, "max_latency_p90_ms")
    assert finding.status == "warn" and "not benchmarked" in finding.note


def test_latency_growth_vs_baseline_bench(tmp_path: Path) -> None:
    build = write_build(tmp_path / "build")
    bench = write_bench(tmp_path / "build", p50=0.3)
    main_build = write_build(tmp_path / "main")
    main_bench = write_bench(tmp_path / "main", p50=0.2)
    config = budgets(tmp_path, 'max_latency_growth = "10%"')
    report = run_check([build, bench], config=config, baselines=[main_build, main_bench], cwd=tmp_path)
    finding = only(report, "max_latency_growth")
    assert finding.status == "warn" and finding.value == pytest.approx(0.5)
    report = run_check([build, bench], config=config, baselines=[main_build, main_bench], cwd=tmp_path,
                       fail_on_latency=True)
    assert only(report, "max_latency_growth").status == "fail"


def test_peak_rss(tmp_path: Path) -> None:
    assert only(check(tmp_path, 'max_peak_rss = "64 MiB"', bench={"rss": 50.0}), "max_peak_rss").status == "pass"
    assert only(check(tmp_path, 'max_peak_rss = "48 MiB"', bench={"rss": 50.0}), "max_peak_rss").status == "fail"
    assert only(check(tmp_path, 'max_peak_rss = "48 MiB"'), "max_peak_rss").status == "fail"  # not measured


def test_glob_that_matches_nothing_fails(tmp_path: Path) -> None:
    report = check(tmp_path, 'max_size = "1 MB"', pattern="dist/*.onnx")
    finding = only(report, "match")
    assert finding.status == "fail" and finding.artifact == "dist/*.onnx"
    assert not report.passed


def test_path_that_matches_nothing_fails(tmp_path: Path) -> None:
    write_build(tmp_path / "build")
    report = run_check(["build/build.json", "build/bench.json"], config=budgets(tmp_path, 'max_size = "1 MB"'),
                       cwd=tmp_path)
    assert only(report, "path").artifact == "build/bench.json"
    assert not report.passed


def test_missing_baseline_file_is_bad_input(tmp_path: Path) -> None:
    build = write_build(tmp_path / "build")
    with pytest.raises(InputError, match="baseline main/build.json does not exist"):
        run_check([build], config=budgets(tmp_path, 'max_size = "1 MB"'), baselines=["main/build.json"],
                  cwd=tmp_path)


def test_bare_onnx_ops_and_params_budgets(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    write_mlp(tmp_path / "build" / "m.onnx", rank=2)
    config = budgets(tmp_path, "max_ops = { MatMul = 3 }\nmax_params = 1000\nmin_accuracy = 0.5")
    report = run_check(["build/m.onnx"], config=config, cwd=tmp_path)
    assert only(report, "max_ops.MatMul").status == "fail"
    assert only(report, "max_params").status == "pass"
    accuracy = only(report, "min_accuracy")
    assert accuracy.status == "fail" and "accuracy unknown" in accuracy.note


def test_bare_tflite_has_only_a_size(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "m.tflite").write_bytes(b"\x00" * 100)
    config = budgets(tmp_path, 'max_size = "1 kB"\nmax_params = 10', pattern="build/m.tflite")
    report = run_check(["build/m.tflite"], config=config, cwd=tmp_path)
    assert only(report, "max_size").status == "pass"
    params = only(report, "max_params")
    assert params.status == "fail" and ".tflite" in params.note


def test_implicit_paths_from_the_budget_globs(tmp_path: Path) -> None:
    write_build(tmp_path / "build")
    write_mlp(tmp_path / "build" / "m.onnx")
    report = run_check([], config=budgets(tmp_path, "min_accuracy = 0.9"), cwd=tmp_path)
    assert only(report, "min_accuracy").status == "pass"  # accuracy from the build.json beside it


def test_unchecked_artifacts_are_listed(tmp_path: Path) -> None:
    report = check(tmp_path, 'max_size = "1 MB"')
    assert report.unchecked == ["build/m.dense.onnx"]


def test_evaluate_directly_with_a_loaded_config(tmp_path: Path) -> None:
    config = load_config(budgets(tmp_path, 'max_size = "50 kB"'))
    facts = collect([write_build(tmp_path / "build")], cwd=tmp_path)
    report = evaluate(config, facts)
    assert report.passed and report.headline().startswith("✓ all 1 budget checks passed")


def test_downloaded_baseline_bench_merges_with_its_own_build_json(tmp_path: Path) -> None:
    """A baseline's bench.json says build/m.onnx — which exists, but is the pull request's file."""
    build = write_build(tmp_path / "build")
    write_mlp(tmp_path / "build" / "m.onnx")
    bench = write_bench(tmp_path / "build", p50=0.3, prefix="build/")
    main_build = write_build(tmp_path / "baseline")
    main_bench = write_bench(tmp_path / "baseline", p50=0.2, prefix="build/")
    baseline = collect([main_build, main_bench], cwd=tmp_path)
    assert set(baseline.artifacts) == {tmp_path / "baseline" / "m.onnx", tmp_path / "baseline" / "m.dense.onnx"}
    report = run_check([build, bench], config=budgets(tmp_path, 'max_latency_growth = "10%"'),
                       baselines=[main_build, main_bench], cwd=tmp_path)
    assert only(report, "max_latency_growth").baseline == pytest.approx(0.2)
