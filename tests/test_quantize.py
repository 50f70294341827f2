"""int8 ONNX on top of low rank: dynamic (weight-only) and static (QDQ), and its verification bounds;
int4 (MatMulNBits) ONNX: block sizes, packing, verification, refold guard, bench and check.
TFLite int8 is tested in test_tflite.py (it needs the [tflite] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgecompress.bench import run_benchmark
from edgecompress.cli import main as cli_main
from edgecompress.data import load_dataset
from edgecompress.errors import InputError, RefoldError, VerificationError
from edgecompress.export.int4 import block_size_for, packed_bytes, quantize_model_int4, quantize_weight
from edgecompress.export.onnx import initializer_shapes
from edgecompress.export.quantize import (INT4_MIN_AGREEMENT, INT8_MIN_AGREEMENT, check_quantized_factors, int8_checks,
                                          int8_per_channel, int8_tolerance, quantize_kinds, quantize_onnx,
                                          quantize_onnx_int4)
from edgecompress.export.verify import ort_runner, verify, verify_outputs
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.models import digits_mlp, save_exported, train_classifier
from edgecompress.pipeline import BuildConfig, BuildResult, build

@pytest.fixture(scope="module")
def digits_pt2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 64-256-256-10 MLP trained on the digits train split; the module runs on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train_classifier(digits_mlp(), load_dataset("digits:train"), epochs=8, seed=0)
    yield save_exported(model, (1, 64), tmp_path_factory.mktemp("digits") / "digits.pt2")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dynamic_build(digits_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(BuildConfig(model=digits_pt2, out=tmp_path_factory.mktemp("dynamic"), policy=UniformPolicy(rank=16),
                             quantize="int8,int4", eval_data="digits"))


def quantized_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]


def test_dynamic_int8_onnx_is_smaller_and_as_accurate(dynamic_build: BuildResult) -> None:
    artifacts = dynamic_build.record["artifacts"]
    int8, fp32 = artifacts["int8"], artifacts["compressed"]
    assert int8["path"] == "digits.int8.onnx" and int8["quantization"]["mode"] == "dynamic"
    assert fp32["bytes"] / int8["bytes"] > 2.5  # weights 4 bytes -> 1; fp32 biases and graph text stay
    assert all(check["passed"] for check in int8["verification"])
    eval_check = next(c for c in int8["verification"] if c["inputs"] == "eval")
    assert eval_check["top1_agreement"] >= INT8_MIN_AGREEMENT
    assert abs(int8["eval"]["accuracy"] - fp32["eval"]["accuracy"]) <= 0.02


def test_dynamic_int8_weights_are_int8_in_factor_shapes(dynamic_build: BuildResult) -> None:
    result = dynamic_build
    path = result.artifact("int8")
    shapes = {w.shape for w in quantized_weights(path)}
    assert {(64, 16), (16, 256), (256, 16)} <= shapes or {(16, 64), (256, 16), (16, 256)} <= shapes, shapes
    assert (256, 256) not in initializer_shapes(onnx.load(str(path)))
    random_check = next(c for c in result.record["artifacts"]["int8"]["verification"] if c["inputs"] == "random")
    assert random_check["tolerance"]["min_agreement"] == 0.0  # agreement is not enforced on random inputs


def test_static_int8_quantizes_activations_with_calibration(digits_pt2: Path, tmp_path: Path) -> None:
    result = build(BuildConfig(model=digits_pt2, out=tmp_path, policy=UniformPolicy(rank=16), quantize="int8-static",
                               calib_data="digits:val", calib_samples=200, eval_data="digits"))
    int8 = result.record["artifacts"]["int8"]
    assert int8["quantization"]["mode"] == "static" and int8["quantization"]["calibration_samples"] == 200
    ops = int8["ops"]
    matmuls = ops.get("Gemm", 0) + ops.get("MatMul", 0)
    assert ops.get("QuantizeLinear", 0) >= matmuls > 0  # every matmul's input activation is quantized
    assert [c["inputs"] for c in int8["verification"]] == ["calib", "eval"]
    assert all(c["passed"] and c["top1_agreement"] >= INT8_MIN_AGREEMENT for c in int8["verification"])
    assert abs(int8["eval"]["accuracy"] - result.record["artifacts"]["compressed"]["eval"]["accuracy"]) <= 0.02


def test_int8_checks_choose_inputs_and_bounds() -> None:
    random, data, calib = (np.zeros((4, 3), np.float32) + i for i in range(3))
    dynamic = int8_checks([(random, "random"), (data, "eval")], None, 0.97, samples=2)
    assert [(d, t.min_agreement) for _, d, t in dynamic] == [("random", 0.0), ("eval", 0.97)]
    static = int8_checks([(random, "random"), (data, "eval")], calib, 0.97, samples=2)
    assert [(d, t.min_agreement, len(x)) for x, d, t in static] == [("calib", 0.97, 2), ("eval", 0.97, 4)]


def test_int8_of_an_embedding_output_is_verified_by_mean_cosine() -> None:
    """Embedding outputs: no top-1 over dimensions; the mean cosine to the fp32 model must reach the int8
    bound on data inputs (not on random ones), next to the gross-error bound."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((64, 16)).astype(np.float32)
    reference[0, 0] = 100.0  # one large value: the gross-error bound (0.5 * max|fp32|) is 50
    close = reference + 0.05 * rng.standard_normal(reference.shape).astype(np.float32)
    turned = rng.standard_normal(reference.shape).astype(np.float32)  # unrelated directions, errors < 50
    turned[0, 0] = 100.0
    kinds = {"emb": "embedding"}

    def check(outputs: np.ndarray, description: str) -> list:
        tolerance = int8_tolerance(0.0 if description == "random" else 0.98)
        return verify_outputs("x.int8.onnx", lambda _x: {"emb": outputs}, {"emb": reference}, reference, description,
                              tolerance, kinds)

    (good,) = check(close, "eval")
    assert good.top1_agreement is None and 0.98 <= good.cosine_mean < 1 and "cosine mean 0.99" in good.line()
    (random,) = check(turned, "random")
    assert random.passed and random.cosine_mean < 0.5
    with pytest.raises(VerificationError, match=r"cosine mean 0\.[0-4]\d* on 64 eval inputs .* min cosine 0\.9800"):
        check(turned, "eval")


def test_int8_verification_fails_on_a_wrong_scale(dynamic_build: BuildResult, tmp_path: Path) -> None:
    """The int8 bounds are not vacuous: a broken weight scale is caught."""
    source, broken = dynamic_build.artifact("compressed"), tmp_path / "broken.int8.onnx"
    assert quantize_onnx(source, broken).mode == "dynamic"
    model = onnx.load(str(broken))
    for init in model.graph.initializer:
        if init.name.endswith("_scale") and init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
    onnx.save(model, str(broken))
    data = load_dataset("digits").x
    reference = ort_runner(source)(data)
    verify("good", ort_runner(dynamic_build.artifact("int8")), reference, data, "eval", int8_tolerance())
    with pytest.raises(VerificationError):
        verify("broken", ort_runner(broken), reference, data, "eval", int8_tolerance())


def test_int8_agreement_bound_is_validated(digits_pt2: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--int8-agreement"):
        build(BuildConfig(model=digits_pt2, out=tmp_path / "o", quantize="int8", int8_min_agreement=1.5))
    assert not (tmp_path / "o").exists()


def test_calib_with_plain_int8_is_refused_static_is_explicit(digits_pt2: Path, tmp_path: Path) -> None:
    """--calib no longer silently turns --quantize int8 into static int8: int8-static says so, and needs --calib."""
    with pytest.raises(InputError, match="int8-static"):
        build(BuildConfig(model=digits_pt2, out=tmp_path / "a", quantize="int8", calib_data="digits:val"))
    with pytest.raises(InputError, match="--quantize int8-static needs calibration data"):
        build(BuildConfig(model=digits_pt2, out=tmp_path / "b", quantize="int8-static"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quantize_kinds_parse_lists_and_refuse_unknown_or_clashing() -> None:
    assert quantize_kinds(None) == () and quantize_kinds("int8") == ("int8",)
    assert quantize_kinds("int8, int4,int8") == ("int8", "int4")
    with pytest.raises(InputError, match="'int3' is not one of"):
        quantize_kinds("int8,int3")
    with pytest.raises(InputError, match="both write"):
        quantize_kinds("int8,int8-static")


def test_int8_weights_choice_auto_is_per_channel_for_embeddings_only() -> None:
    assert int8_per_channel("auto", "embedding") and not int8_per_channel("auto", "logits")
    assert not int8_per_channel("auto", None) and int8_per_channel("per-channel", "logits")
    assert not int8_per_channel("per-tensor", "embedding")
    with pytest.raises(InputError, match="--int8-weights must be one of"):
        int8_per_channel("per-row", None)
    from edgecompress.cli.build import INT8_WEIGHTS as CLI_CHOICES
    from edgecompress.export.quantize import INT8_WEIGHTS
    assert CLI_CHOICES == INT8_WEIGHTS


def test_dynamic_int8_of_class_logits_is_per_tensor_by_default(dynamic_build: BuildResult) -> None:
    assert dynamic_build.record["artifacts"]["int8"]["quantization"]["weights"] == "int8 per-tensor"


def test_per_channel_int8_keeps_columns_of_small_scale(tmp_path: Path) -> None:
    """A weight whose columns differ 100x in scale: one scale per tensor rounds the small columns to a few
    levels, one per column (7-bit range) keeps them; both files run in onnxruntime."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) * np.where(np.arange(32) < 16, 1.0, 0.01)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 5, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5, 32])],
        [numpy_helper.from_array(weight, "w")])
    source = tmp_path / "fp32.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(source))
    x = rng.standard_normal((4, 5, 64)).astype(np.float32)
    small = (x @ weight)[..., 16:]
    errors = {}
    for per_channel in (False, True):
        target = tmp_path / f"int8-{per_channel}.onnx"
        scheme = quantize_onnx(source, target, per_channel=per_channel)
        assert scheme.weights == ("int8 per-channel (7-bit range)" if per_channel else "int8 per-tensor")
        errors[per_channel] = np.linalg.norm(ort_runner(target)(x)[..., 16:] - small) / np.linalg.norm(small)
    assert errors[True] < 0.1 < errors[False], errors  # measured: 0.016 vs 0.84


def test_int4_onnx_runs_is_smaller_than_int8_and_verified(dynamic_build: BuildResult) -> None:
    artifacts = dynamic_build.record["artifacts"]
    int4, int8, fp32 = artifacts["int4"], artifacts["int8"], artifacts["compressed"]
    assert int4["path"] == "digits.int4.onnx" and int4["quantization"]["bits"] == 4
    assert int4["bytes"] < int8["bytes"] < fp32["bytes"]
    assert int4["ops"].get("com.microsoft.MatMulNBits") == 5 and "Gemm" not in int4["ops"]  # factors and head
    assert int4["params"] == fp32["params"] + sum(s.size for s in int4_scales(dynamic_build.artifact("int4")))
    assert all(check["passed"] for check in int4["verification"])
    eval_check = next(c for c in int4["verification"] if c["inputs"] == "eval")
    assert eval_check["top1_agreement"] >= INT4_MIN_AGREEMENT == eval_check["tolerance"]["min_agreement"]
    assert abs(int4["eval"]["accuracy"] - fp32["eval"]["accuracy"]) <= 0.03
    blocks = {(layer["K"], layer["N"]): layer["block_size"] for layer in int4["quantization"]["layers"]}
    assert blocks == {(64, 16): 32, (16, 256): 16, (256, 16): 32, (256, 10): 32}


def int4_scales(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name.endswith("_scales")]


def test_int4_refold_guard_passes_on_factors_and_catches_a_dense_weight(dynamic_build: BuildResult,
                                                                         tmp_path: Path) -> None:
    check_quantized_factors(dynamic_build.artifact("int4"), dynamic_build.plan, where="int4")
    dense_int4 = tmp_path / "dense.int4.onnx"
    quantize_onnx_int4(dynamic_build.artifact("dense"), dense_int4)
    with pytest.raises(RefoldError, match="dense 256x64 weight"):
        check_quantized_factors(dense_int4, dynamic_build.plan, where="dense int4")


@pytest.mark.parametrize("k", [16, 29, 48, 100, 784, 1024])
def test_block_size_fits_odd_factor_shapes(k: int) -> None:
    """The chosen block is a power of two >= 16 storing K rows in the fewest bytes; a block dividing K wins
    over padding unless padding is smaller."""
    choices = (16, 32, 64)
    block = block_size_for(k, max_block=64)
    assert block in choices
    assert all(packed_bytes(k, 8, block, True) <= packed_bytes(k, 8, other, True) for other in choices)
    assert (block_size_for(29), block_size_for(784), block_size_for(1024), block_size_for(48)) == (32, 32, 32, 16)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("shape", [(29, 37), (50, 3), (784, 20)])
def test_matmulnbits_computes_with_the_packed_weights(shape: tuple[int, int], symmetric: bool, tmp_path: Path) -> None:
    """onnxruntime's MatMulNBits on our packing computes x @ (dequantized weight) + bias, and the 4-bit weight
    is close to the fp32 one, for factor shapes that are not multiples of the block."""
    rng = np.random.default_rng(0)
    k, n = shape
    weight, bias = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    quantized, layers = quantize_model_int4(model, symmetric=symmetric, accuracy_level=0)  # fp32 compute: exact
    assert [layer["K"] for layer in layers] == [k] and [i.name for i in quantized.graph.initializer if i.name == "w"] == []
    path = tmp_path / "q.onnx"
    onnx.save(quantized, str(path))
    x = rng.standard_normal((5, k)).astype(np.float32)
    packed = quantize_weight(weight.T, block_size=layers[0]["block_size"], symmetric=symmetric)
    expected = x @ packed.dequantized() + bias
    np.testing.assert_allclose(ort_runner(path)(x), expected, rtol=1e-4, atol=1e-4)
    error = np.linalg.norm(packed.dequantized() - weight.T) / np.linalg.norm(weight)
    assert error < 0.15  # 4 bits with MSE-chosen clipping: ~0.1 on Gaussian weights; a wrong scale is ~1


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_int4_accuracy_level_4_is_the_default_and_stays_close_to_fp32_compute(symmetric: bool, tmp_path: Path) -> None:
    """accuracy_level 4 (int8 activations per block inside MatMulNBits) is written by default, runs in
    onnxruntime on a factor shape that is not a multiple of the block, and differs from the fp32-compute
    result only by activation rounding (~1% of the output norm); an undefined level is refused."""
    rng = np.random.default_rng(1)
    k, n = 29, 37
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", n])],
        [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    x = rng.standard_normal((64, k)).astype(np.float32)
    outputs = {}
    for level in (None, 0):
        quantized, _ = quantize_model_int4(model, symmetric=symmetric, **({} if level is None else {"accuracy_level": level}))
        node = next(node for node in quantized.graph.node if node.op_type == "MatMulNBits")
        assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "accuracy_level")) == \
            (4 if level is None else 0)
        onnx.save(quantized, str(tmp_path / f"q{level}.onnx"))
        outputs[level] = ort_runner(tmp_path / f"q{level}.onnx")(x)
    relative = np.linalg.norm(outputs[None] - outputs[0]) / np.linalg.norm(outputs[0])
    assert relative < 0.03  # int8 activations: ~0.5%; a wrong scale or layout is ~1
    with pytest.raises(InputError, match="accuracy_level"):
        quantize_onnx_int4(tmp_path / "q0.onnx", tmp_path / "bad.onnx", accuracy_level=5)


def test_bench_and_check_read_int4_files(dynamic_build: BuildResult) -> None:
    report = run_benchmark([dynamic_build.artifact("compressed"), dynamic_build.artifact("int4")], data="digits",
                           runs=5, warmup=1, memory=False, progress=False)
    row = next(r for r in report["results"] if r["model"] == "digits.int4.onnx")
    assert row["latency_ms"]["p50"] > 0 and row["top1_agreement"] >= INT4_MIN_AGREEMENT
    assert row["accuracy"] == pytest.approx(dynamic_build.record["artifacts"]["int4"]["eval"]["accuracy"])
    size = dynamic_build.record["artifacts"]["int4"]["bytes"]
    out = dynamic_build.out
    (out / "budgets.toml").write_text(f'[budgets."digits.int4.onnx"]\nmax_size = "{size + 1} B"\nmin_accuracy = 0.5\n')
    (out / "tight.toml").write_text(f'[budgets."digits.int4.onnx"]\nmax_size = "{size - 1} B"\n')
    try:
        assert (check_exit(out, "budgets.toml"), check_exit(out, "tight.toml")) == (0, 1)
    finally:
        (out / "budgets.toml").unlink()
        (out / "tight.toml").unlink()


def check_exit(folder: Path, config: str) -> int:
    """``edgecompress check FOLDER/build.json --config FOLDER/CONFIG`` in-process; its exit code."""
    try:
        cli_main(["check", str(folder / "build.json"), "--config", str(folder / config)])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
