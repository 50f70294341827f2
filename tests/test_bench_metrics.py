"""Statistics and quality metrics of the bench (numpy only), and ONNX model facts (onnxinfo)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgecompress import onnxinfo
from edgecompress.bench import metrics
from edgecompress.errors import InputError


# --- percentiles and latency statistics --------------------------------------------------------


def test_percentiles_on_known_samples() -> None:
    samples = list(range(1, 101))  # 1..100
    assert metrics.percentile(samples, 50) == pytest.approx(50.5)
    assert metrics.percentile(samples, 90) == pytest.approx(90.1)
    assert metrics.percentile(samples, 99) == pytest.approx(99.01)
    assert metrics.percentile(samples, 0) == 1.0
    assert metrics.percentile(samples, 100) == 100.0
    assert metrics.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert metrics.percentile([7.0], 99) == 7.0


def test_percentile_order_does_not_matter() -> None:
    assert metrics.percentile([4, 1, 3, 2], 50) == metrics.percentile([1, 2, 3, 4], 50)


def test_percentile_rejects_empty_and_bad_q() -> None:
    with pytest.raises(ValueError):
        metrics.percentile([], 50)
    with pytest.raises(ValueError):
        metrics.percentile([1.0], 101)


def test_latency_stats_known_values() -> None:
    stats = metrics.latency_stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["p50"] == 3.0
    assert stats["min"] == 1.0
    assert stats["max"] == 5.0
    assert stats["mean"] == 3.0
    assert stats["p90"] == pytest.approx(4.6)
    assert stats["p99"] == pytest.approx(4.96)
    assert stats["std"] == pytest.approx(math.sqrt(2.0))
    assert stats["runs"] == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=1e4, allow_nan=False), min_size=2, max_size=200))
def test_percentiles_match_statistics_inclusive(samples: list[float]) -> None:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")  # cuts[k-1] is the k-th percentile
    for q in (50, 90, 99):
        assert metrics.percentile(samples, q) == pytest.approx(cuts[q - 1], rel=1e-9, abs=1e-9)
    stats = metrics.latency_stats(samples)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def test_throughput() -> None:
    assert metrics.throughput(32, 2.0) == pytest.approx(16000.0)  # batch * 1000 / p50 ms
    assert metrics.throughput(1, 0.0) is None


# --- accuracy, macro-F1, agreement, output error -----------------------------------------------


def test_accuracy_and_macro_f1_known_example() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    assert metrics.accuracy(y_true, y_pred) == 0.75
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 0 -> 4/5
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_macro_f1_counts_a_class_only_predicted_as_zero() -> None:
    # class 2 never occurs in y_true but is predicted once: its F1 is 0 and it is averaged in.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 2])
    per_class = [1.0, 2 / 3, 0.0]
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(sum(per_class) / 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_macro_f1_matches_scikit_learn(seed: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(1, 60)), int(rng.integers(1, 8))
    y_true = rng.integers(0, classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, classes, n))
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))


def test_top1_agreement_and_max_abs_diff() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    out = ref.copy()
    out[0] = [0.95, 0.05]  # flips sample 0
    assert metrics.top1_agreement(out, ref) == 0.75
    assert metrics.top1_agreement(ref, ref) == 1.0
    assert metrics.max_abs_diff(out, ref) == pytest.approx(0.85)
    assert metrics.max_abs_diff(ref, ref) == 0.0
    bad = out.copy()
    bad[1, 1] = np.nan
    assert metrics.max_abs_diff(bad, ref) == math.inf
    with pytest.raises(ValueError):
        metrics.max_abs_diff(out[:2], ref)


def test_classifier_output_shape() -> None:
    assert metrics.is_classifier_output(np.zeros((4, 10)))
    assert not metrics.is_classifier_output(np.zeros((4, 1)))
    assert not metrics.is_classifier_output(np.zeros(4))


def test_ratio() -> None:
    assert metrics.ratio(1.0, 4.0) == 0.25
    assert metrics.ratio(None, 4.0) is None
    assert metrics.ratio(1.0, None) is None
    assert metrics.ratio(1.0, 0.0) is None
    assert metrics.ratio(math.inf, 1.0) is None


# --- onnxinfo ---------------------------------------------------------------------------------


def _model_with_mixed_initializers() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "W")
    b = numpy_helper.from_array(np.ones(4, np.float16), "b")
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")  # not a parameter
    q = numpy_helper.from_array(np.ones((3, 3), np.int8), "q")  # quantized weight: counts
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["h", "bf"], ["h2"]),
             helper.make_node("Reshape", ["h2", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes, "g",
        # old exporters also list initializers as graph inputs: they are not inputs to feed
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, b, shape, q])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_count_params_counts_float_and_quantized_initializers_only() -> None:
    model = _model_with_mixed_initializers()
    assert onnxinfo.count_params(model) == 8 * 4 + 4 + 9


def test_ops_and_specs() -> None:
    model = _model_with_mixed_initializers()
    assert onnxinfo.ops_by_type(model) == {"Add": 1, "Cast": 1, "MatMul": 1, "Reshape": 1}
    (spec,) = onnxinfo.input_specs(model)
    assert spec == onnxinfo.TensorSpec("x", ("batch", 8), "float32")
    assert spec.describe() == "x: float32[batch, 8]"
    assert [s.name for s in onnxinfo.output_specs(model)] == ["y"]


def test_summarize_counts_external_data_bytes(tmp_path) -> None:
    model = _model_with_mixed_initializers()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    info = onnxinfo.summarize(path)
    assert info["params"] == 8 * 4 + 4 + 9
    assert info["bytes"] == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 8], "dtype": "float32"}]
    assert info["opset"] == 17


@pytest.mark.parametrize("content", [b"hello, not a model\n", b"", bytes(range(256)) * 4])
def test_load_model_rejects_non_onnx(tmp_path, content: bytes) -> None:
    path = tmp_path / "fake.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match="is not an ONNX model"):
        onnxinfo.load_model(path)


def test_load_model_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match="model not found"):
        onnxinfo.load_model(tmp_path / "nope.onnx")
