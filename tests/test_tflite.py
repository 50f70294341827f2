"""--target tflite: litert-torch conversion with a fixed batch, the refold guard on the .tflite, LiteRT
verification, int8 dynamic range, and the one-line message when the [tflite] extra is missing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cli.build_view import artifact_notes
from edgecompress.data import load_dataset
from edgecompress.errors import InputError, MissingExtraError, RefoldError
from edgecompress.export import tflite as tflite_export
from edgecompress.export.quantize import INT8_MIN_AGREEMENT
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.models import digits_mlp, save_exported, train_classifier
from edgecompress.pipeline import BuildConfig, BuildResult, build

HAVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in tflite_export.CONVERTER_MODULES)
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="needs the [tflite] extra: pip install 'edgecompress[tflite]'")
BATCH = 7  # the digits test split (360 rows) is not a multiple of 7: the runner pads the last chunk


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """One build with every target: dense/compressed/int8 ONNX and TFLite, a digits MLP, batch 7."""
    if not HAVE_EXTRA:
        pytest.skip("needs the [tflite] extra: pip install 'edgecompress[tflite]'")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_classifier(digits_mlp(), load_dataset("digits:train"), epochs=8, seed=0)
        folder = tmp_path_factory.mktemp("tflite")
        pt2 = save_exported(model, (1, 64), folder / "digits.pt2")
        return build(BuildConfig(model=pt2, out=folder / "out", policy=UniformPolicy(rank=16), targets=("onnx", "tflite"),
                                 quantize="int8", batch=BATCH, eval_data="digits"))
    finally:
        torch.set_num_threads(threads)


def run_without_extra(args: list[str], blocked: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where importing ``blocked`` modules fails, as if not installed."""
    code = ("import sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None  # import raises ModuleNotFoundError, find_spec returns None\n"
            "from edgecompress.cli import main\n"
            f"main({args!r})\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_missing_extra_is_one_line_exit_2_and_writes_nothing(small_mlp_pt2: Path, tmp_path: Path) -> None:
    result = run_without_extra(["build", str(small_mlp_pt2), "--target", "onnx,tflite", "--out", "out"],
                               ("litert_torch",), tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == ["error: --target tflite needs the optional extra: pip install 'edgecompress[tflite]'"]
    assert not (tmp_path / "out").exists()


def test_missing_runtime_names_the_litert_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgecompress\[litert\]'"):
        tflite_export.litert_runner(tmp_path / "model.tflite")


def test_module_imports_without_torch() -> None:
    """bench (runtime only) uses the LiteRT runner and facts: importing them must not import torch."""
    code = "import sys, edgecompress.export.tflite; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@needs_extra
def test_not_a_tflite_file_is_an_input_error(tflite_build: BuildResult, tmp_path: Path) -> None:
    bogus, truncated = tmp_path / "bogus.tflite", tmp_path / "truncated.tflite"
    bogus.write_bytes(b"definitely not a flatbuffer")
    truncated.write_bytes(tflite_build.artifact("tflite").read_bytes()[:2000])
    for path, pattern in ((bogus, "not a .tflite file"), (truncated, "truncated or corrupt"),
                          (tmp_path / "missing.tflite", "model not found")):
        with pytest.raises(InputError, match=pattern) as info:
            tflite_export.tflite_facts(path)
        assert "\n" not in str(info.value)


@needs_extra
def test_tflite_artifacts_verified_with_fixed_batch(tflite_build: BuildResult) -> None:
    artifacts = tflite_build.record["artifacts"]
    assert sorted(artifacts) == ["compressed", "dense", "dense_tflite", "int8", "int8_tflite", "tflite"]
    assert tflite_build.record["options"]["tflite_batch"] == BATCH
    for role, name in (("dense_tflite", "digits.dense.tflite"), ("tflite", "digits.tflite")):
        artifact = artifacts[role]
        assert artifact["path"] == name and artifact["format"] == "tflite" and artifact["batch"] == BATCH
        assert [c["inputs"] for c in artifact["verification"]] == ["random", "eval"]
        assert all(c["passed"] and c["top1_agreement"] >= 0.999 for c in artifact["verification"])
        onnx_role = "dense" if role == "dense_tflite" else "compressed"
        assert artifact["eval"]["accuracy"] == pytest.approx(artifacts[onnx_role]["eval"]["accuracy"], abs=1e-9)
    assert any(f"fixed batch of {BATCH}" in note for note in artifact_notes(tflite_build.record))


@needs_extra
def test_tflite_size_tracks_factorized_params(tflite_build: BuildResult) -> None:
    artifacts = tflite_build.record["artifacts"]
    for role in ("dense_tflite", "tflite"):
        artifact = artifacts[role]
        assert artifact["params"] == artifacts["dense" if role == "dense_tflite" else "compressed"]["params"]
        assert 4 * artifact["params"] <= artifact["bytes"] <= 4 * artifact["params"] + 16 * 1024
    assert artifacts["tflite"]["params"] == tflite_build.plan.linear_params_after


@needs_extra
def test_factor_pairs_survive_conversion(tflite_build: BuildResult) -> None:
    constants = tflite_export.constant_shapes(tflite_build.artifact("tflite"))
    assert {(16, 64), (256, 16), (16, 256)} <= set(constants)
    assert (256, 256) not in constants and (256, 64) not in constants
    tflite_export.check_tflite_factors(tflite_build.artifact("tflite"), tflite_build.plan, where="test")


@needs_extra
def test_refold_guard_rejects_a_dense_tflite(tflite_build: BuildResult) -> None:
    with pytest.raises(RefoldError, match="dense 256x64 weight"):
        tflite_export.check_tflite_factors(tflite_build.artifact("dense_tflite"), tflite_build.plan, where="dense")


@needs_extra
def test_runner_pads_the_last_chunk(tflite_build: BuildResult) -> None:
    x = np.random.default_rng(1).standard_normal((BATCH + 3, 64)).astype(np.float32)
    run = tflite_export.litert_runner(tflite_build.artifact("tflite"))
    with torch.no_grad():
        expected = tflite_build.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(x), expected, atol=1e-4)
    np.testing.assert_allclose(run(x[:2]), expected[:2], atol=1e-4)


@needs_extra
def test_conversion_is_deterministic(tflite_build: BuildResult, tmp_path: Path) -> None:
    again = tflite_export.convert_tflite(tflite_build.model, (1, 64), tmp_path / "again.tflite", batch=BATCH)
    assert again.read_bytes() == tflite_build.artifact("tflite").read_bytes()


@needs_extra
def test_int8_tflite_is_dynamic_range_and_agrees(tflite_build: BuildResult) -> None:
    artifacts = tflite_build.record["artifacts"]
    int8, fp32 = artifacts["int8_tflite"], artifacts["tflite"]
    assert int8["path"] == "digits.int8.tflite" and int8["quantization"]["mode"] == "dynamic"
    assert fp32["bytes"] / int8["bytes"] > 2.0  # per-channel scales and fp32 biases stay
    int8_constants = {t.shape for t in tflite_export.tflite_tensors(tflite_build.artifact("int8_tflite"))
                      if t.constant and t.dtype == "INT8"}
    assert {(16, 64), (256, 16), (16, 256)} <= int8_constants
    eval_check = next(c for c in int8["verification"] if c["inputs"] == "eval")
    assert eval_check["passed"] and eval_check["top1_agreement"] >= INT8_MIN_AGREEMENT
    assert abs(int8["eval"]["accuracy"] - fp32["eval"]["accuracy"]) <= 0.02


@needs_extra
def test_build_json_lists_every_artifact(tflite_build: BuildResult) -> None:
    on_disk = json.loads((tflite_build.out / "build.json").read_text())
    assert sorted(p.name for p in tflite_build.out.iterdir()) == sorted(
        [a["path"] for a in on_disk["artifacts"].values()] + ["build.json"])


@needs_extra
def test_static_int8_tflite_is_full_integer_and_agrees(tflite_build: BuildResult, tmp_path: Path) -> None:
    """--quantize int8-static for TFLite: int8 activations from calibration (int8 graph I/O with scales, which the
    runner and bench quantize float data with), agreeing with the fp32 model on real data."""
    from edgecompress.bench.backends import backend_for
    from edgecompress.export.quantize import convert_tflite_int8

    data = load_dataset("digits")
    path = tmp_path / "static.int8.tflite"
    scheme = convert_tflite_int8(tflite_build.model, (1, 64), path, batch=BATCH,
                                 calibration=load_dataset("digits:val").x[:100])
    assert scheme.mode == "static" and scheme.calibration_samples == 100
    graph = tflite_export.read_tflite(path)
    assert [(t.dtype, t.quantized, t.feed_dtype) for t in graph.inputs] == [("INT8", True, "float32")]
    activations = [t for t in graph.tensors if not t.constant and t.dtype == "INT8"]
    assert len(activations) >= 5  # each matmul's output is int8 too, not only the weights
    with torch.no_grad():
        expected = tflite_build.model(torch.from_numpy(data.x)).numpy().argmax(1)
    assert (tflite_export.litert_runner(path)(data.x).argmax(1) == expected).mean() >= INT8_MIN_AGREEMENT
    backend = backend_for(path)
    assert backend.inspect().inputs[0].dtype == "float32"
    backend.load()
    outputs = backend.run({backend.inspect().inputs[0].name: data.x[:BATCH]})[0]
    assert outputs.dtype == np.float32 and (outputs.argmax(1) == expected[:BATCH]).mean() >= 0.8
