"""run_benchmark and the `bench` command end to end on small ONNX MLPs (dense vs factorized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.bench import SCHEMA, run_benchmark
from edgecompress.cli import main
from edgecompress.errors import InputError

FAST = {"runs": 3, "warmup": 1, "progress": False}


def make_mlp(path: Path, sizes: tuple[int, ...] = (64, 256, 10), *, rank: int | None = None,
             batch: int | str = "N", feature: int | str | None = None, input_name: str = "x") -> Path:
    """An MLP of MatMul+Add(+Relu) layers; with ``rank``, each weight is an SVD factor pair."""
    rng = np.random.default_rng(0)
    inits, nodes, cur = [], [], input_name
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        if rank is not None and rank * (a + b) < a * b:
            u, s, vt = np.linalg.svd(w, full_matrices=False)
            inits += [numpy_helper.from_array((u[:, :rank] * s[:rank]).astype(np.float32), f"A{i}"),
                      numpy_helper.from_array(vt[:rank].astype(np.float32), f"B{i}")]
            nodes += [helper.make_node("MatMul", [cur, f"A{i}"], [f"t{i}"]),
                      helper.make_node("MatMul", [f"t{i}", f"B{i}"], [f"m{i}"])]
        else:
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
        inits.append(numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"]))
        cur = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Identity", [cur], ["logits"]))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, feature or sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    dense = make_mlp(root / "model.dense.onnx")
    small = make_mlp(root / "model.onnx", rank=16)
    x = np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)
    logits = ort.InferenceSession(str(dense)).run(None, {"x": x})[0]
    y = logits.argmax(1)
    y[:10] = (y[:10] + 1) % 10  # the dense model gets 90% right
    np.savez(root / "test.npz", x=x, y=y)
    np.savez(root / "nolabels.npz", x=x)
    np.savez(root / "images.npz", x=x.reshape(100, 8, 8), y=y)
    return {"dense": dense, "small": small, "data": root / "test.npz", "nolabels": root / "nolabels.npz",
            "images": root / "images.npz", "root": root}


RESULT_KEYS = {"model", "batch", "seq", "runs", "latency_ms", "throughput_per_s", "init_ms", "first_inference_ms",
               "peak_rss_mib", "rss_increment_mib", "baseline_rss_mib", "bytes", "params", "accuracy", "macro_f1",
               "quality_measure", "top1_agreement", "cosine_mean", "cosine_p5", "relative_error", "max_abs_diff",
               "eval_samples", "ratios"}


def test_bench_json_structure_and_figures(files: dict[str, Path]) -> None:
    result = run_benchmark([files["dense"], files["small"]], data=files["data"], batches=(1, 8), **FAST)
    assert list(result) == ["schema", "provenance", "config", "reference", "models", "results"]
    assert result["schema"] == SCHEMA
    assert result["reference"] == "model.dense.onnx"
    prov = result["provenance"]
    for key in ("versions", "cpu", "os", "timestamp", "command", "threads", "inter_op_threads",
                "cpu_governor", "cpu_temp_c"):
        assert key in prov
    assert prov["threads"] == 1
    assert result["config"]["batches"] == [1, 8] and result["config"]["labels"] is True
    assert [(r["model"], r["batch"]) for r in result["results"]] == [
        ("model.dense.onnx", 1), ("model.onnx", 1), ("model.dense.onnx", 8), ("model.onnx", 8)]
    dense_params = 64 * 256 + 256 + 256 * 10 + 10
    small_params = 16 * (64 + 256) + 256 + 256 * 10 + 10  # 256x10 is not worth factorizing at rank 16
    assert [m["params"] for m in result["models"]] == [dense_params, small_params]
    for row in result["results"]:
        assert set(row) == RESULT_KEYS
        lat = row["latency_ms"]
        assert len(lat["samples"]) == row["runs"] == 3
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["peak_rss_mib"] > row["rss_increment_mib"] >= 0
        assert row["bytes"] > 0 and row["init_ms"] > 0 and row["throughput_per_s"] > 0
        # throughput comes from the median: its ratio never contradicts the p50 ratio
        assert row["throughput_per_s"] == pytest.approx(row["batch"] * 1000 / lat["p50"], rel=1e-2)  # p50 is rounded to 0.1 µs
        assert row["ratios"]["throughput_per_s"] * row["ratios"]["p50"] == pytest.approx(1.0, rel=1e-2)
    ref, small = result["results"][0], result["results"][1]
    assert ref["accuracy"] == pytest.approx(0.9, abs=0.02) and ref["top1_agreement"] == 1.0 and ref["max_abs_diff"] == 0.0
    assert all(v == 1.0 for v in ref["ratios"].values())
    assert small["ratios"]["params"] == pytest.approx(small_params / dense_params, abs=1e-4)
    assert small["ratios"]["p50"] == pytest.approx(small["latency_ms"]["p50"] / ref["latency_ms"]["p50"], rel=1e-2)
    assert 0 <= small["top1_agreement"] <= 1 and small["max_abs_diff"] > 0
    # class logits are judged by top-1 agreement (the build's measure); the other measures do not apply
    assert result["config"]["quality_output"]["kind"] == "logits" and small["quality_measure"] == "top1_agreement"
    assert small["cosine_mean"] is None and small["relative_error"] is None
    assert 0 <= small["macro_f1"] <= 1


def test_missing_labels_give_null_accuracy_not_zero(files: dict[str, Path]) -> None:
    result = run_benchmark([files["dense"], files["small"]], data=files["nolabels"], memory=False, **FAST)
    for row in result["results"]:
        assert row["accuracy"] is None and row["macro_f1"] is None
        assert row["top1_agreement"] is not None
        assert row["ratios"]["accuracy"] is None
    assert result["config"]["labels"] is False


def test_random_inputs_are_seeded(files: dict[str, Path]) -> None:
    runs = [run_benchmark([files["dense"], files["small"]], seed=s, memory=False, **FAST) for s in (3, 3, 4)]
    diffs = [r["results"][1]["max_abs_diff"] for r in runs]
    assert diffs[0] == diffs[1] != diffs[2]
    assert runs[0]["config"]["data"] is None and runs[0]["config"]["eval_samples"] == 256
    assert runs[0]["results"][0]["accuracy"] is None


def test_dynamic_feature_dim_needs_input_shape(files: dict[str, Path]) -> None:
    dyn = make_mlp(files["root"] / "dyn.onnx", feature="features")
    with pytest.raises(InputError, match=r"--input-shape x:NxSIZE"):
        run_benchmark([dyn], memory=False, **FAST)
    result = run_benchmark([dyn], input_shapes={"x": ("N", 64)}, batches=(2,), memory=False, **FAST)
    assert result["config"]["inputs"] == [{"name": "x", "shape": ["N", 64], "dtype": "float32"}]
    # the data fixes the dimension too
    assert run_benchmark([dyn], data=files["data"], memory=False, **FAST)["results"][0]["accuracy"] is not None


def test_fixed_batch_model(files: dict[str, Path]) -> None:
    fixed = make_mlp(files["root"] / "fixed.onnx", batch=1)
    result = run_benchmark([files["dense"], fixed], data=files["data"], batches=(1,), memory=False, **FAST)
    # same weights, evaluated one by one: the outputs agree to rounding (a near-tie may flip one argmax)
    assert result["results"][1]["max_abs_diff"] < 1e-4 and result["results"][1]["top1_agreement"] >= 0.98
    with pytest.raises(InputError, match="fixes the batch size"):
        run_benchmark([files["dense"], fixed], batches=(1, 4), memory=False, **FAST)


@pytest.mark.parametrize("case, pattern", [
    ("not_onnx", "is not an ONNX model"),
    ("missing", "model not found"),
    ("other_input_name", "inputs differ"),
    ("other_input_size", "inputs differ"),
    ("data_shape", "data samples have shape"),
    ("other_outputs", "outputs differ"),
    ("tflite", "not a .tflite file"),
])
def test_bad_input_is_one_clear_line(files: dict[str, Path], case: str, pattern: str) -> None:
    root, dense, data = files["root"], files["dense"], None
    if case == "not_onnx":
        other = root / "notes.onnx"
        other.write_text("these are notes, not a model\n")
    elif case == "missing":
        other = root / "missing.onnx"
    elif case == "other_input_name":
        other = make_mlp(root / "renamed.onnx", input_name="input")
    elif case == "other_input_size":
        other = make_mlp(root / "wide.onnx", sizes=(32, 16, 10))
    elif case == "data_shape":
        other, data = files["small"], files["images"]
    elif case == "other_outputs":
        other = make_mlp(root / "twelve.onnx", sizes=(64, 16, 12))
    else:
        other = root / "model.tflite"
        other.write_bytes(b"TFL3")
    with pytest.raises(InputError, match=pattern) as info:
        run_benchmark([dense, other], data=data, memory=False, **FAST)
    assert "\n" not in str(info.value)


def test_bad_options() -> None:
    with pytest.raises(InputError, match="at least one model"):
        run_benchmark([], progress=False)
    with pytest.raises(InputError, match="batch sizes"):
        run_benchmark(["x.onnx"], batches=(0,), progress=False)


# --- the command line -------------------------------------------------------------------------


def test_cli_bench_writes_every_format(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reports"
    main(["bench", str(files["dense"]), str(files["small"]), "--data", str(files["data"]), "--batch", "1,4",
          "--runs", "3", "--warmup", "1", "--no-memory", "--quiet",
          "--json", str(out / "bench.json"), "--md", str(out / "bench.md"), "--html", str(out / "bench.html")])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet: nothing but errors
    assert sorted(p.name for p in out.iterdir()) == ["bench.html", "bench.json", "bench.md"]  # no temp files
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["batches"] == [1, 4] and len(bench["results"]) == 4
    assert "## Speed and memory" in (out / "bench.md").read_text()
    assert "<table>" in (out / "bench.html").read_text()


def test_cli_bench_prints_tables_not_markdown(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    """Without --md the terminal gets a verdict line and rich tables; Markdown only with --md -."""
    args = ["bench", str(files["dense"]), str(files["small"]), "--data", str(files["data"]),
            "--runs", "3", "--warmup", "1", "--no-memory"]
    main(args)
    out = capsys.readouterr().out
    assert out.startswith("model.onnx: ") and " size, " in out and "p50 latency (batch 1)" in out
    assert " pt accuracy vs model.dense.onnx" in out
    assert "Speed and memory" in out and "─" in out  # a rich table (box drawing) ...
    assert "| model.onnx" not in out and "## " not in out and "| ---" not in out  # ... not Markdown
    main([*args, "--md", "-", "--quiet"])
    md = capsys.readouterr()
    assert "## Speed and memory" in md.out and "| model.onnx" in md.out and md.err == ""


def test_cli_json_to_stdout(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    main(["bench", str(files["dense"]), "--runs", "2", "--warmup", "0", "--no-memory", "-q", "--json", "-"])
    bench = json.loads(capsys.readouterr().out)
    assert bench["schema"] == SCHEMA and bench["results"][0]["accuracy"] is None


@pytest.mark.parametrize("args, pattern", [
    (["{bad}"], "is not an ONNX model"),
    (["{dense}", "--batch", "1,x"], "--batch"),
    (["{dense}", "--json", "{dense}"], "would overwrite an input file"),
    (["{dense}", "--data", "{root}/absent.npz"], "dataset not found"),
    (["{dense}", "--input-shape", "q:Nx3"], "unknown input"),
])
def test_cli_bad_input_exits_2_with_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture,
                                              args: list[str], pattern: str) -> None:
    bad = files["root"] / "bad.onnx"
    bad.write_text("nope")
    fmt = {"dense": files["dense"], "bad": bad, "root": files["root"]}
    with pytest.raises(SystemExit) as info:
        main(["bench", *(a.format(**fmt) for a in args), "--runs", "1", "--no-memory", "-q"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_help_has_examples(capsys: pytest.CaptureFixture) -> None:
    try:
        main(["bench", "--help"])
    except SystemExit as exc:  # click may exit 0 after printing help
        assert exc.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "--seconds" in text and "--input-shape" in text
