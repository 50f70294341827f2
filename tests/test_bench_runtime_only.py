"""The bench and report work where torch is not installed (a Raspberry Pi has only the runtime).

A ``sitecustomize`` on PYTHONPATH installs an import hook that makes ``import torch`` (and
scikit-learn, which the runtime-only install lacks too) raise ImportError and logs the attempt to
stderr; child processes (the memory probe) inherit it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgecompress

BLOCKER = textwrap.dedent('''
    import sys

    class _NoTorch:
        """Pretend torch is not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "sklearn"):
                sys.stderr.write(f"TORCH-IMPORT-ATTEMPT {name}\\n")
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
''')

REPO = Path(edgecompress.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    hook = tmp_path_factory.mktemp("notorch")
    (hook / "sitecustomize.py").write_text(BLOCKER)
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO)])
    environ.pop("PYTHONSTARTUP", None)
    return environ


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)


def _model(path: Path, rank: int | None) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 10)).astype(np.float32)
    if rank is None:
        inits, nodes = [numpy_helper.from_array(w, "W")], [helper.make_node("MatMul", ["x", "W"], ["y"])]
    else:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        inits = [numpy_helper.from_array((u[:, :rank] * s[:rank]).astype(np.float32), "A"),
                 numpy_helper.from_array(vt[:rank].astype(np.float32), "B")]
        nodes = [helper.make_node("MatMul", ["x", "A"], ["t"]), helper.make_node("MatMul", ["t", "B"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_blocker_really_hides_torch(env: dict[str, str], tmp_path: Path) -> None:
    proc = _run(["-c", "import torch"], env, tmp_path)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_bench_and_report_packages_import_without_torch(env: dict[str, str], tmp_path: Path) -> None:
    code = ("import sys, edgecompress.bench, edgecompress.report, edgecompress.report.plots, "
            "edgecompress.cli.bench, edgecompress.onnxinfo; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']; print('ok')")
    proc = _run(["-c", code], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and "TORCH-IMPORT-ATTEMPT" not in proc.stderr


def test_bench_help_without_torch(env: dict[str, str], tmp_path: Path) -> None:
    proc = _run(["-m", "edgecompress", "bench", "--help"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Examples:" in proc.stdout and "TORCH-IMPORT-ATTEMPT" not in proc.stderr


def test_real_bench_and_report_without_torch(env: dict[str, str], tmp_path: Path) -> None:
    dense, small = _model(tmp_path / "m.dense.onnx", None), _model(tmp_path / "m.onnx", 4)
    x = np.random.default_rng(2).standard_normal((40, 32)).astype(np.float32)
    np.savez(tmp_path / "test.npz", x=x, y=(x @ np.ones((32, 10), np.float32)).argmax(1))
    proc = _run(["-m", "edgecompress", "bench", str(dense), str(small), "--data", str(tmp_path / "test.npz"),
                 "--batch", "1,4", "--runs", "3", "--warmup", "1", "--json", "-", "--html", "r.html"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-IMPORT-ATTEMPT" not in proc.stderr
    bench = json.loads(proc.stdout)
    assert len(bench["results"]) == 4
    assert all(r["peak_rss_mib"] and r["accuracy"] is not None for r in bench["results"])  # probe ran too
    assert bench["provenance"]["threads"] == 1
    assert "<img" in (tmp_path / "r.html").read_text()
    (tmp_path / "bench.json").write_text(proc.stdout)
    proc = _run(["-m", "edgecompress", "report", "bench.json", "--md", "r.md"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-IMPORT-ATTEMPT" not in proc.stderr and "m.dense.onnx" in (tmp_path / "r.md").read_text()


def test_top_level_help_lists_every_command_without_torch(env: dict[str, str], tmp_path: Path) -> None:
    """`edgecompress --help` imports every command module: none may import torch at module level."""
    proc = _run(["-m", "edgecompress", "--help"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-IMPORT-ATTEMPT" not in proc.stderr
    for command in ("build", "demo", "analyze", "bench", "report", "check"):
        assert f"  {command}" in proc.stdout, f"{command} missing from --help"
    proc = _run(["-m", "edgecompress", "check", "--help"], env, tmp_path)
    assert proc.returncode == 0 and "TORCH-IMPORT-ATTEMPT" not in proc.stderr


def test_bench_data_digits_without_torch_or_sklearn(env: dict[str, str], tmp_path: Path) -> None:
    """The README's `bench ... --data digits` works on the runtime-only install: the digits test
    split ships with the package."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "d.onnx"))
    proc = _run(["-m", "edgecompress", "bench", "d.onnx", "--data", "digits", "--runs", "2", "--warmup", "0",
                 "--no-memory", "--json", "-", "-q"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-IMPORT-ATTEMPT" not in proc.stderr
    bench = json.loads(proc.stdout)
    assert bench["config"]["eval_samples"] == 360 and bench["results"][0]["accuracy"] is not None


@pytest.mark.parametrize("args, message", [
    (["absent.pt2"], "model file not found: absent.pt2"),
    (["model.pt2", "--out", "afile"], "output path afile exists and is not a folder"),
])
def test_build_cheap_errors_come_before_torch(env: dict[str, str], tmp_path: Path, args: list[str],
                                              message: str) -> None:
    """A missing model file or --out being a file is reported without importing torch (which takes
    tens of seconds on a busy machine): here torch cannot even be imported."""
    (tmp_path / "model.pt2").write_bytes(b"not read")
    (tmp_path / "afile").write_text("x")
    proc = _run(["-m", "edgecompress", "build", *args], env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {message}" and "TORCH-IMPORT-ATTEMPT" not in proc.stderr
