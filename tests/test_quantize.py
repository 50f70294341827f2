"""int8 ONNX on top of low rank: dynamic (weight-only) and static (QDQ), and its verification bounds.
TFLite int8 is tested in test_tflite.py (it needs the [tflite] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgecompress.data import load_dataset
from edgecompress.errors import InputError, VerificationError
from edgecompress.export.onnx import initializer_shapes
from edgecompress.export.quantize import INT8_MIN_AGREEMENT, int8_checks, int8_tolerance, quantize_onnx
from edgecompress.export.verify import ort_runner, verify
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
                             quantize="int8", eval_data="digits"))


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
    result = build(BuildConfig(model=digits_pt2, out=tmp_path, policy=UniformPolicy(rank=16), quantize="int8",
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
