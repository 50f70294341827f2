"""bench runs .tflite files with ai-edge-litert, side by side with .onnx files, without torch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from edgecompress.bench import run_benchmark
from edgecompress.bench.backends import LiteRTBackend, backend_for
from edgecompress.errors import InputError, MissingExtraError
from edgecompress.export.onnx import export_onnx
from edgecompress.export.tflite import CONVERTER_MODULES, convert_tflite

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in CONVERTER_MODULES),
                                reason="needs the [tflite] extra: pip install 'edgecompress[tflite]'")


@pytest.fixture(scope="module")
def pair(small_mlp: nn.Sequential, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 64-96-96-10 MLP as .onnx (dynamic batch) and .tflite (batch 1)."""
    folder = tmp_path_factory.mktemp("pair")
    return (export_onnx(small_mlp, (1, 64), folder / "mlp.onnx"),
            convert_tflite(small_mlp, (1, 64), folder / "mlp.tflite", batch=1))


def test_inspect_reads_the_signature(pair: tuple[Path, Path]) -> None:
    onnx_info, tflite_info = (backend_for(p).inspect() for p in pair)
    assert isinstance(backend_for(pair[1]), LiteRTBackend) and tflite_info.format == "tflite"
    assert [(s.name, s.shape, s.dtype) for s in tflite_info.inputs] == [("input", (1, 64), "float32")]
    assert tflite_info.outputs[0].shape == (1, 10)
    assert tflite_info.params == onnx_info.params == 64 * 96 + 96 * 96 + 96 * 10 + 96 + 96 + 10
    assert tflite_info.ops.get("FULLY_CONNECTED") == 3


def test_bench_runs_onnx_and_tflite_side_by_side_without_torch(pair: tuple[Path, Path], tmp_path: Path) -> None:
    code = ("import sys\n"
            "class NoTorch:  # as on a device with only the runtimes\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from edgecompress.cli import main\n"
            f"main(['bench', {str(pair[0])!r}, {str(pair[1])!r}, '--data', 'digits', '--runs', '20',"
            " '--warmup', '2', '--json', 'bench.json', '--quiet'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [m["format"] for m in report["models"]] == ["onnx", "tflite"]
    onnx_row, tflite_row = report["results"]
    assert tflite_row["model"] == "mlp.tflite" and tflite_row["latency_ms"]["p50"] > 0
    assert tflite_row["peak_rss_mib"] > 0  # the fresh-process memory probe loaded LiteRT too
    assert tflite_row["top1_agreement"] >= 0.98 and tflite_row["max_abs_diff"] < 1e-4  # near-ties may flip
    assert tflite_row["accuracy"] == onnx_row["accuracy"]


def test_fixed_batch_refuses_another_batch(pair: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="mlp.tflite"):
        run_benchmark([pair[1]], batches=(4,), runs=1, memory=False, progress=False)


def test_bench_without_litert_names_the_extra(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgecompress\[litert\]'"):
        run_benchmark([pair[0], pair[1]], runs=1, memory=False, progress=False)


def test_build_bench_with_only_tflite_targets(small_mlp_pt2: Path, tmp_path: Path) -> None:
    """``build --bench`` takes the dense .tflite as reference and times at the batch fixed in the files."""
    from edgecompress.cli import main

    main(["build", str(small_mlp_pt2), "--target", "tflite", "--batch", "2", "--policy", "uniform", "--rank", "8",
          "--out", str(tmp_path), "--bench", "--quiet"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["reference"] == "small.dense.tflite"
    assert [(r["model"], r["batch"]) for r in report["results"]] == [("small.dense.tflite", 2), ("small.tflite", 2)]
