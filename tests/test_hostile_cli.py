"""Bad inputs across every command, as a hostile or careless user would give them.

Each case asserts: the exit code (2 bad input / usage, 1 failed check), exactly one ``error:`` line,
no traceback, and that nothing in the test's folder changed (no partial files, inputs unchanged).
The CLI runs in-process; cases fail before any export, so the table stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hostile_helpers import assert_one_error, digest, listing, run_cli, write

pytestmark = pytest.mark.usefixtures("single_thread")
FEATURES, CLASSES = 64, 10  # the small MLP of conftest.py

FACTORIES = """
import torch
from torch import nn

def raises():
    raise RuntimeError("cannot build this model")

def not_module():
    return 42

def wrong():
    return nn.Sequential(nn.Linear(64, 5))
"""


@dataclass
class Env:
    """Paths a case can use; everything a case writes goes under ``tmp``."""

    tmp: Path
    pt2: Path
    state_dict: Path
    pickled: Path
    built: Path  # a finished build folder (good.onnx, good.dense.onnx, build.json)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def npz(self, name: str, **arrays: np.ndarray) -> str:
        path = self.tmp / name
        np.savez(path, **arrays)
        return str(path)

    def file(self, name: str, data: bytes | str) -> str:
        return str(write(self.tmp / name, data))

    def build(self, *args: str) -> list[str]:
        return ["build", str(self.pt2), "--out", str(self.out), "--quiet", *args]

    def data(self, n: int = 32, *, y: np.ndarray | None = None, x: np.ndarray | None = None) -> str:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, FEATURES)).astype(np.float32) if x is None else x
        y = rng.integers(0, CLASSES, n) if y is None else y
        return self.npz(f"data{len(list(self.tmp.glob('data*')))}.npz", x=x, y=y)


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Env], list[str]]
    needle: str = ""
    code: int = 2


def _nan(n: int = 16) -> np.ndarray:
    x = np.zeros((n, FEATURES), np.float32)
    x[3, 5] = np.nan
    return x


BUILD_CASES = [
    # the model file
    Case("model-missing", lambda e: ["build", str(e.tmp / "nope.pt2"), "--out", str(e.out)], "not found"),
    Case("model-is-folder", lambda e: ["build", str(e.tmp), "--out", str(e.out)], "a folder without config.json"),
    Case("pt2-empty", lambda e: ["build", e.file("e.pt2", b""), "--out", str(e.out)], "not a readable"),
    Case("pt2-random", lambda e: ["build", e.file("r.pt2", bytes(range(256)) * 8), "--out", str(e.out)],
         "not a readable"),
    Case("pt2-truncated", lambda e: ["build", e.file("t.pt2", e.pt2.read_bytes()[:3000]), "--out", str(e.out)],
         "not a readable"),
    Case("pt2-other-zip", lambda e: ["build", e.file("z.pt2", _zip_bytes()), "--out", str(e.out)], "not a readable"),
    Case("pt-random", lambda e: ["build", e.file("r.pt", bytes(range(256)) * 8), "--out", str(e.out)],
         "not a readable"),
    Case("pt-empty", lambda e: ["build", e.file("e.pt", b""), "--out", str(e.out)], "not a readable"),
    Case("state-dict-no-factory", lambda e: ["build", str(e.state_dict), "--out", str(e.out)], "--factory"),
    Case("factory-raises", lambda e: ["build", str(e.state_dict), "--out", str(e.out), "--factory",
                                      e.file("fac.py", FACTORIES) + ":raises"], "cannot build this model"),
    Case("factory-not-module", lambda e: ["build", str(e.state_dict), "--out", str(e.out), "--factory",
                                          e.file("fac.py", FACTORIES) + ":not_module"], "not an nn.Module"),
    Case("factory-keys-mismatch", lambda e: ["build", str(e.state_dict), "--out", str(e.out), "--factory",
                                             e.file("fac.py", FACTORIES) + ":wrong"], "Unexpected key"),
    Case("factory-bad-spec", lambda e: ["build", str(e.state_dict), "--out", str(e.out), "--factory", "nocolon"],
         "--factory"),
    Case("factory-missing-file", lambda e: ["build", str(e.state_dict), "--out", str(e.out), "--factory",
                                            str(e.tmp / "no.py") + ":f"], "not found"),
    Case("pickle-without-flag", lambda e: ["build", str(e.pickled), "--out", str(e.out)], "--allow-pickle"),
    # options
    Case("input-shape-text", lambda e: e.build("--input-shape", "axb"), "--input-shape"),
    Case("input-shape-zero", lambda e: e.build("--input-shape", "0x64"), "positive"),
    Case("input-shape-misfit", lambda e: e.build("--input-shape", "1x63"), "does not fit"),
    Case("exclude-bad-regex", lambda e: e.build("--exclude", "(["), "--exclude"),
    Case("opset-99", lambda e: e.build("--opset", "99"), "--opset"),
    Case("opset-11", lambda e: e.build("--opset", "11"), "--opset"),
    Case("verify-samples-0", lambda e: e.build("--verify-samples", "0"), "--verify-samples"),
    Case("verify-samples-negative", lambda e: e.build("--verify-samples", "-3"), "--verify-samples"),
    Case("atol-negative", lambda e: e.build("--atol", "-1"), "--atol"),
    Case("rtol-nan", lambda e: e.build("--rtol", "nan"), "--rtol"),
    Case("rank-0", lambda e: e.build("--policy", "uniform", "--rank", "0"), "--rank"),
    Case("energy-above-1", lambda e: e.build("--energy", "1.5"), "--energy"),
    Case("target-unknown", lambda e: e.build("--target", "coreml"), "--target"),
    Case("target-size-garbage", lambda e: e.build("--target-size", "lots"), "--target-size"),
    Case("int8-agreement-2", lambda e: e.build("--int8-agreement", "2"), "--int8-agreement"),
    Case("eval-samples-0", lambda e: e.build("--eval", "digits", "--eval-samples", "0"), "--eval-samples"),
    Case("calib-samples-0", lambda e: e.build("--policy", "data", "--calib", "digits", "--calib-samples", "0"),
         "--calib-samples"),
    Case("epochs-0", lambda e: e.build("--finetune", "digits", "--epochs", "0"), "--epochs"),
    Case("data-policy-no-calib", lambda e: e.build("--policy", "data"), "--calib"),
    Case("svd-training-no-train", lambda e: e.build("--policy", "svd-training"), "--train"),
    Case("eval-split-is-test", lambda e: e.build("--max-accuracy-drop", "1", "--eval-split", "digits:test"),
         "test split"),
    Case("name-traversal", lambda e: e.build("--name", "../y"), "--name"),
    Case("out-is-file", lambda e: ["build", str(e.pt2), "--out", e.file("f", "x")], "not a folder"),
    Case("out-below-file", lambda e: ["build", str(e.pt2), "--out", e.file("f", "x") + "/sub"], "f/sub"),
    Case("json-is-folder", lambda e: e.build("--json", str(e.tmp)), "is a folder"),
    # data
    Case("eval-missing", lambda e: e.build("--eval", str(e.tmp / "no.npz")), "not found"),
    Case("eval-zero-byte-npz", lambda e: e.build("--eval", e.file("z.npz", b"")), "z.npz"),
    Case("eval-garbage-npz", lambda e: e.build("--eval", e.file("g.npz", b"PK\x03\x04garbage")), "g.npz"),
    Case("eval-npz-no-x", lambda e: e.build("--eval", e.npz("nox.npz", a=np.zeros(3))), "no array 'x'"),
    Case("eval-zero-samples", lambda e: e.build("--eval", e.data(0)), "no samples"),
    Case("eval-labels-out-of-range", lambda e: e.build("--eval", e.data(y=np.full(32, CLASSES))), "label 10"),
    Case("eval-labels-negative", lambda e: e.build("--eval", e.data(y=np.full(32, -1))), "negative labels"),
    Case("eval-wrong-features", lambda e: e.build("--eval", e.data(x=np.zeros((8, 50), np.float32),
                                                                   y=np.zeros(8, int))), "shape"),
    Case("eval-nan", lambda e: e.build("--eval", e.data(x=_nan(), y=np.zeros(16, int))), "NaN"),
    Case("eval-x-y-mismatch", lambda e: e.build("--eval", e.data(x=np.zeros((8, 64), np.float32),
                                                                 y=np.zeros(5, int))), "samples"),
    Case("calib-nan", lambda e: e.build("--policy", "data", "--calib", e.data(x=_nan(), y=np.zeros(16, int))),
         "NaN"),
    Case("calib-zero-byte-npz", lambda e: e.build("--policy", "data", "--calib", e.file("z.npz", b"")), "z.npz"),
    Case("calib-zero-samples", lambda e: e.build("--policy", "data", "--calib", e.data(0)), "no samples"),
    Case("train-zero-byte-npz", lambda e: e.build("--policy", "svd-training", "--train", e.file("z.npz", b"")),
         "z.npz"),
    Case("finetune-labels-out-of-range", lambda e: e.build("--finetune", e.data(y=np.full(32, 12))), "labels"),
    Case("eval-split-zero-samples", lambda e: e.build("--max-accuracy-drop", "1", "--eval-split", e.data(0)),
         "no samples"),
    Case("eval-split-labels-out-of-range", lambda e: e.build("--max-accuracy-drop", "1", "--eval-split",
                                                             e.data(y=np.full(32, 99))), "label 99"),
    Case("eval-unknown-format", lambda e: e.build("--eval", e.file("d.csv", "1,2,3")), "unsupported dataset"),
]

OTHER_CASES = [
    # usage errors of click, in the tool's format
    Case("unknown-command", lambda e: ["frobnicate"], "No such command"),
    Case("unknown-option", lambda e: e.build("--no-such-option"), "No such option"),
    Case("missing-argument", lambda e: ["build"], "Missing argument"),
    Case("bad-int", lambda e: e.build("--rank", "abc"), "--rank"),
    Case("bad-choice", lambda e: e.build("--policy", "magic"), "--policy"),
    # analyze
    Case("analyze-missing", lambda e: ["analyze", str(e.tmp / "no.pt2")], "not found"),
    Case("analyze-empty-pt2", lambda e: ["analyze", e.file("e.pt2", b"")], "not a readable"),
    Case("analyze-bad-regex", lambda e: ["analyze", str(e.pt2), "--exclude", "(["], "--exclude"),
    # bench
    Case("bench-missing", lambda e: ["bench", str(e.tmp / "no.onnx")], "no.onnx"),
    Case("bench-random-onnx", lambda e: ["bench", e.file("r.onnx", bytes(range(256)) * 4)], "r.onnx"),
    Case("bench-empty-onnx", lambda e: ["bench", e.file("e.onnx", b"")], "e.onnx"),
    Case("bench-data-zero-byte", lambda e: ["bench", str(e.built / "good.onnx"), "--data", e.file("z.npz", b"")],
         "z.npz"),
    Case("bench-data-wrong-shape", lambda e: ["bench", str(e.built / "good.onnx"), "--no-memory", "--data",
                                              e.data(x=np.zeros((4, 7), np.float32), y=np.zeros(4, int))], ""),
    Case("bench-batch-0", lambda e: ["bench", str(e.built / "good.onnx"), "--batch", "0"], "--batch"),
    Case("bench-json-folder", lambda e: ["bench", str(e.built / "good.onnx"), "--json", str(e.tmp)], "folder"),
    # report
    Case("report-missing", lambda e: ["report", str(e.tmp / "no.json")], "not found"),
    Case("report-not-json", lambda e: ["report", e.file("b.json", "{oops")], "not JSON"),
    Case("report-binary", lambda e: ["report", e.file("b.json", bytes(range(256)))], "b.json"),
    Case("report-list", lambda e: ["report", e.file("b.json", "[1, 2]")], "not a bench.json"),
    Case("report-build-json", lambda e: ["report", str(e.built / "build.json")], "not a bench.json"),
    Case("report-missing-fields", lambda e: ["report", e.file("b.json", json.dumps(
        {"schema": "edgecompress.bench/1", "models": [{}], "results": [{}], "reference": "x"}))], "b.json"),
    # check
    Case("check-missing", lambda e: ["check", str(e.tmp / "no.json"), "--config", e.file("c.toml", BUDGET)],
         "no.json path", 1),  # a missing artifact fails the CI gate (exit 1), it is not bad usage
    Case("check-bad-toml", lambda e: ["check", str(e.built / "build.json"), "--config", e.file("c.toml", "[[x")],
         "c.toml"),
    Case("check-not-a-record", lambda e: ["check", e.file("n.json", '{"a": 1}'), "--config",
                                          e.file("c.toml", BUDGET)], "n.json"),
    Case("check-random-onnx", lambda e: ["check", e.file("r.onnx", bytes(range(256))), "--config",
                                         e.file("c.toml", BUDGET)], "r.onnx"),
    Case("check-over-budget", lambda e: ["check", str(e.built / "build.json"), "--config",
                                         e.file("c.toml", BUDGET.replace("10 MB", "1 KB"))], "budget", 1),
    # demo: bad values fail before training, leaving nothing
    Case("demo-out-is-file", lambda e: ["demo", "--out", e.file("f", "x"), "--quiet"], "not a folder"),
    Case("demo-rank-0", lambda e: ["demo", "--out", str(e.out), "--rank", "0", "--quiet"], "--rank"),
    Case("demo-energy-2", lambda e: ["demo", "--out", str(e.out), "--policy", "energy", "--energy", "2"], "--energy"),
    Case("demo-epochs-0", lambda e: ["demo", "--out", str(e.out), "--epochs", "0", "--quiet"], "--epochs"),
]

BUDGET = """
[tool.edgecompress.budgets."*.onnx"]
max_size = "10 MB"
"""


def _zip_bytes() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("top/readme.txt", "not a model")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def built(small_mlp_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecompress.cli import main

    out = tmp_path_factory.mktemp("built") / "out"
    try:
        main(["build", str(small_mlp_pt2), "--out", str(out), "--name", "good", "--policy", "uniform", "--rank", "8",
              "--quiet", "--verify-samples", "8"])
    except SystemExit as exc:
        assert not exc.code
    return out


@pytest.fixture
def env(tmp_path: Path, small_mlp_pt2: Path, small_mlp_state_dict: Path, small_mlp_pickle: Path,
        built: Path) -> Env:
    return Env(tmp_path / "case", small_mlp_pt2, small_mlp_state_dict, small_mlp_pickle, built)


@pytest.mark.parametrize("case", BUILD_CASES + OTHER_CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    env.tmp.mkdir()
    monkeypatch.chdir(env.tmp)  # check's config search and any stray relative write stay in here
    args = case.args(env)
    shared = [digest(p) for p in (env.pt2, env.state_dict, env.pickled, env.built)]
    before, files = digest(env.tmp), listing(env.tmp)
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, case.code, case.needle)
    assert listing(env.tmp) == files and digest(env.tmp) == before  # no partial files, inputs unchanged
    assert [digest(p) for p in (env.pt2, env.state_dict, env.pickled, env.built)] == shared


def test_unwritable_out(env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only --out (simulated: tests may run as root, who can write anywhere)."""
    env.out.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK and real_access(path, mode, **kw))
    code, _, err = run_cli(env.build(), capsys)
    assert_one_error(code, err, 2, "not writable")
    assert listing(env.tmp) == ["out"]


def test_permission_error_creating_out(env: Env, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env.tmp.mkdir()

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli(env.build(), capsys)
    assert_one_error(code, err, 2, "Permission denied")
    assert listing(env.tmp) == []


def test_unexpected_error_is_one_line_and_debug_shows_it(env: Env, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("edgecompress.pipeline.build", boom)
    code, _, err = run_cli(env.build(), capsys)
    assert_one_error(code, err, 1, "unexpected ZeroDivisionError: a bug (re-run with --debug")
    with pytest.raises(ZeroDivisionError):
        from edgecompress.cli import main

        main(["--debug", *env.build()])


class _DataDependent(__import__("torch").nn.Module):
    """A program whose exported guard (k <= 96) holds for its example but not for a batch of inputs."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.a, self.b = torch.nn.Linear(96, 96), torch.nn.Linear(96, 10)

    def forward(self, x):  # noqa: ANN001, ANN201 - traced by torch.export
        import torch

        h = torch.relu(self.a(x))
        k = (h > 0).sum().item()
        torch._check(k <= 96)
        return self.b(h) * k


class _Branches(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch

        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 10)

    def forward(self, x):  # noqa: ANN001, ANN201 - traced by torch.export
        import torch

        return self.c(torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,)))


def _export(module: object, features: int, path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    torch.export.save(torch.export.export(module, (torch.randn(1, features),)), path)
    return path


def test_data_dependent_program_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _export(_DataDependent(), 96, tmp_path / "dd.pt2")
    before = digest(tmp_path)
    code, _, err = run_cli(["build", str(model), "--out", str(tmp_path / "out"), "--quiet", "--policy", "uniform",
                            "--rank", "8"], capsys)
    assert_one_error(code, err, 2, "Runtime assertion failed")
    assert digest(tmp_path) == before


def test_linear_layers_in_cond_branches_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _export(_Branches(), 64, tmp_path / "cond.pt2")
    code, _, err = run_cli(["build", str(model), "--out", str(tmp_path / "out"), "--quiet", "--policy", "uniform",
                            "--rank", "8", "--verify-samples", "8"], capsys)
    assert code == 0, err
    assert err.startswith("warning: Linear layers inside control-flow branches") and "true_graph_0" in err
    record = json.loads((tmp_path / "out" / "build.json").read_text())
    assert "false_graph_0" in record["warnings"][0]


def test_written_opset_must_match(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    from edgecompress.errors import ExportError
    from edgecompress.validate import check_written_opset

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    check_written_opset(path, 18)
    with pytest.raises(ExportError, match="wrote opset 18"):
        check_written_opset(path, 21)
