"""Interleaved timing (recorded schedule, fake clock), the backend interface, and the memory probe."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.bench import BACKENDS, run_benchmark
from edgecompress.bench.backends import Backend, ModelInfo
from edgecompress.bench.runner import interleave, peak_rss_kib, probe
from edgecompress.errors import EdgeCompressError
from edgecompress.onnxinfo import TensorSpec


class FakeClock:
    """Advances one second per call: every timed run 'takes' exactly 1000 ms."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _recorders(log: list[str], names: str) -> list:
    return [lambda n=n: log.append(n) for n in names]


def test_interleave_runs_models_round_robin_after_warmup_rotating_the_first() -> None:
    log: list[str] = []
    timing = interleave(_recorders(log, "ABC"), runs=3, warmup=2, clock=FakeClock())
    assert "".join(log) == "ABC" * 2 + "ABC" + "BCA" + "CAB"  # each model first, middle and last once
    assert timing.schedule == [("warmup", i) for _ in range(2) for i in range(3)] + \
                              [("timed", (k + j) % 3) for k in range(3) for j in range(3)]
    assert [len(s) for s in timing.samples_ms] == [3, 3, 3]
    assert all(s == 1000.0 for samples in timing.samples_ms for s in samples)


def test_interleave_seconds_budget_stops_after_the_round_that_exceeds_it() -> None:
    log: list[str] = []
    rounds: list[tuple[int, float]] = []
    # each round: 2 models x 2 clock calls + 1 call for the elapsed check = 5 s of fake time
    timing = interleave(_recorders(log, "AB"), seconds=12, clock=FakeClock(),
                        on_round=lambda done, elapsed: rounds.append((done, elapsed)))
    assert [d for d, _ in rounds] == [1, 2, 3]
    assert rounds[-1][1] >= 12
    assert "".join(log) == "AB" + "BA" + "AB"
    assert [len(s) for s in timing.samples_ms] == [3, 3]


def test_interleave_runs_cap_the_seconds_budget() -> None:
    timing = interleave(_recorders([], "AB"), runs=2, seconds=1e9, clock=FakeClock())
    assert [len(s) for s in timing.samples_ms] == [2, 2]


def test_interleave_pauses_gc_and_restores_it() -> None:
    states: list[bool] = []
    assert gc.isenabled()
    interleave([lambda: states.append(gc.isenabled())], runs=2, clock=FakeClock())
    assert states == [False, False]
    assert gc.isenabled()


def test_interleave_needs_a_stopping_rule() -> None:
    with pytest.raises(ValueError):
        interleave([lambda: None], warmup=1)


# --- the backend interface, through run_benchmark -------------------------------------------


class FakeBackend(Backend):
    """A backend that is not onnxruntime: proves run_benchmark only uses the interface."""

    format = "fake"
    suffixes = (".fake",)
    calls: list[tuple[str, int]] = []

    def inspect(self) -> ModelInfo:
        spec = TensorSpec("x", ("batch", 4), "float32")
        return ModelInfo(self.path, self.format, bytes=self.path.stat().st_size, params=4 * 3,
                         inputs=(spec,), outputs=(TensorSpec("y", ("batch", 3), "float32"),))

    def load(self) -> None:
        self._w = np.arange(12, dtype=np.float32).reshape(4, 3) * (2.0 if "b" in self.path.stem else 1.0)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        FakeBackend.calls.append((self.path.stem, x.shape[0]))
        return [x @ self._w]


def test_run_benchmark_interleaves_any_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "fake", FakeBackend)
    FakeBackend.calls = []
    paths = []
    for stem in ("a", "b"):
        path = tmp_path / f"{stem}.fake"
        path.write_bytes(b"0" * 100)
        paths.append(path)
    result = run_benchmark(paths, batches=(2,), runs=4, warmup=1, memory=False, progress=False)
    batch2 = [stem for stem, batch in FakeBackend.calls if batch == 2]
    # warm-up of the runtime (reference), first runs, then 1 warm-up and 4 timed rounds interleaved
    assert "".join(batch2[-10:]) == "ab" + "ab" + "ba" + "ab" + "ba"  # 1 warm-up, 4 timed rounds rotating
    assert [r["model"] for r in result["results"]] == ["a.fake", "b.fake"]
    assert result["models"][1]["format"] == "fake"
    assert result["results"][1]["ratios"]["params"] == 1.0
    assert result["results"][1]["max_abs_diff"] > 0


# --- memory probe ---------------------------------------------------------------------------


def _matmul_model(path: Path, n_in: int, n_out: int) -> Path:
    w = np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_peak_rss_of_this_process_is_known() -> None:
    peak = peak_rss_kib()
    assert peak is not None and peak > 1024  # more than 1 MiB


def test_probe_sees_a_big_weight(tmp_path: Path) -> None:
    tiny = _matmul_model(tmp_path / "tiny.onnx", 8, 8)
    big = _matmul_model(tmp_path / "big.onnx", 2048, 4096)  # 32 MiB of float32 weight
    tiny_result = probe("onnx", tiny, {"x": np.ones((1, 8), np.float32)}, threads=1)
    big_result = probe("onnx", big, {"x": np.ones((1, 2048), np.float32)}, threads=1)
    for result in (tiny_result, big_result):
        assert result.baseline_rss_mib is not None and result.baseline_rss_mib > 0
        assert result.peak_rss_mib >= result.baseline_rss_mib
        assert result.init_ms > 0 and result.first_inference_ms > 0
    assert big_result.rss_increment_mib > 0
    assert big_result.rss_increment_mib > tiny_result.rss_increment_mib + 16
    assert big_result.peak_rss_mib > tiny_result.peak_rss_mib + 16


def test_probe_failure_is_one_typed_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(EdgeCompressError) as info:
        probe("onnx", bad, {"x": np.ones((1, 8), np.float32)}, threads=1)
    message = str(info.value)
    assert "memory probe for bad.onnx failed" in message and "\n" not in message
