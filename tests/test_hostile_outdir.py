"""Output folders under concurrent, failed, killed and repeated builds: nobody loses finished results,
the input model is never written over, a folder never mixes two builds, and killed runs leave
nothing behind after the next run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgecompress.errors import InputError
from edgecompress.outdir import OutputBusyError, OutputFolder, check_stem, previous_build_files
from hostile_helpers import assert_one_error, digest, listing, run_cli, scrub_env, write

pytestmark = pytest.mark.usefixtures("single_thread")
BUILD = ["--policy", "uniform", "--rank", "8", "--quiet", "--verify-samples", "8"]


@pytest.fixture(scope="module")
def earlier_build(small_mlp_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build folder (with a bench.json and int8 file of that build faked beside it)."""
    from edgecompress.cli import main

    out = tmp_path_factory.mktemp("earlier") / "out"
    try:
        main(["build", str(small_mlp_pt2), "--out", str(out), "--name", "good", *BUILD])
    except SystemExit as exc:
        assert not exc.code
    record = json.loads((out / "build.json").read_text())
    record["artifacts"]["int8"] = {"path": "good.int8.onnx"}
    write(out / "build.json", json.dumps(record))
    for name in ("good.int8.onnx", "good.tflite", "bench.json"):
        write(out / name, b"from the earlier build")
    return out


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_second_build_into_a_locked_folder_fails_fast(small_mlp_pt2: Path, earlier_build: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = copy_folder(earlier_build, tmp_path / "out")
    before = digest(out)
    with OutputFolder(out):  # another run holds the folder
        code, _, err = run_cli(["build", str(small_mlp_pt2), "--out", str(out), *BUILD], capsys)
    assert_one_error(code, err, 2, "another edgecompress run is writing into")
    assert digest(out) == before


def test_failed_build_into_a_new_folder_never_removes_another_runs_files(tmp_path: Path) -> None:
    """Run A created the folder and fails; run B's finished files (written meanwhile) survive."""
    out = tmp_path / "out"
    with pytest.raises(InputError):
        with OutputFolder(out) as folder:
            assert folder.created
            write(out / "b.onnx", b"run B's finished result")  # B finished while A was still working
            raise InputError("run A failed")
    assert listing(out) == ["b.onnx"]


def test_failed_build_removes_the_folder_it_created_when_empty(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with pytest.raises(InputError):
        with OutputFolder(out) as folder, folder.staging() as staging:
            write(staging / "x.onnx", b"partial")
            raise InputError("failed")
    assert not out.exists()


def test_rebuild_replaces_the_earlier_build_as_a_whole(small_mlp_pt2: Path, earlier_build: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = copy_folder(earlier_build, tmp_path / "out")
    write(out / "notes.txt", "the user's own file")
    code, _, err = run_cli(["build", str(small_mlp_pt2), "--out", str(out), "--name", "new", *BUILD], capsys)
    assert code == 0, err
    assert listing(out) == ["build.json", "new.dense.onnx", "new.onnx", "notes.txt"]
    assert json.loads((out / "build.json").read_text())["name"] == "new"


def test_previous_build_files_ignores_paths_outside_the_folder(tmp_path: Path) -> None:
    write(tmp_path / "build.json", json.dumps({"name": "../evil", "artifacts": {
        "a": {"path": "../../etc/passwd"}, "b": {"path": "/abs.onnx"}, "c": {"path": "ok.onnx"}, "d": "x"}}))
    assert previous_build_files(tmp_path) == {"build.json", "bench.json", "ok.onnx"}
    write(tmp_path / "build.json", "[not a record")
    assert previous_build_files(tmp_path) == {"build.json", "bench.json"}


def test_input_named_like_an_artifact_is_never_overwritten(small_mlp_pt2: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    for name, extra in (("build.json", []), ("m.onnx", ["--name", "m"]), ("bench.json", [])):
        folder = tmp_path / name.replace(".", "_")
        model = write(folder / name, small_mlp_pt2.read_bytes())
        before = digest(folder)
        code, _, err = run_cli(["build", str(model), "--out", str(folder), *extra, *BUILD], capsys)
        assert_one_error(code, err, 2, "refusing to overwrite the input model")
        assert digest(folder) == before


def test_protected_input_is_not_replaced_by_a_commit(tmp_path: Path) -> None:
    model = write(tmp_path / "x.onnx", b"the input")
    with pytest.raises(InputError, match="refusing to overwrite"):
        with OutputFolder(tmp_path, protect=[model]) as folder, folder.staging() as staging:
            write(staging / "x.onnx", b"new")
    assert model.read_bytes() == b"the input" and listing(tmp_path) == ["x.onnx"]


def test_stale_staging_folders_are_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(out / ".edgecompress-abc123" / "m.dense.onnx", b"killed run (old naming)")
    write(out / ".edgecompress-staging-99-x" / "m.onnx", b"killed run")
    write(out / "keep.onnx", b"user file")
    with OutputFolder(out) as folder:
        assert folder.cleaned == [".edgecompress-abc123", ".edgecompress-staging-99-x"]
    assert listing(out) == ["keep.onnx"]


def test_lock_is_released_after_the_run(tmp_path: Path) -> None:
    with OutputFolder(tmp_path):
        with pytest.raises(OutputBusyError):
            OutputFolder(tmp_path).__enter__()
    with OutputFolder(tmp_path):
        pass


@pytest.mark.parametrize("stem", ["ok", "model.v2", "a-b_c"])
def test_plain_stems_accepted(stem: str) -> None:
    assert check_stem(stem) == stem


def _start_build(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgecompress", "build", str(model), "--out", str(out), *BUILD,
                             *extra], env=scrub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_staging(out: Path, process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and any(p.name.startswith(".edgecompress-") for p in out.iterdir()):
            return True
        time.sleep(0.005)
    return False


GATED_FACTORY = """
import os
import time

import torch

from edgecompress.models import mlp


class Gated(torch.nn.Module):
    \"\"\"The small MLP; once the test opens the gate, the next forward pass says so and blocks.\"\"\"

    def __init__(self):
        super().__init__()
        self.net = mlp((64, 96, 96, 10))

    def forward(self, x):
        gate = os.environ["EDGECOMPRESS_TEST_GATE"]
        if os.path.exists(gate):
            open(gate + ".blocked", "w").close()
            time.sleep(600)
        return self.net(x)


def make():
    return Gated()
"""


@pytest.fixture(scope="module")
def gated_model(small_mlp: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A state_dict + factory file of the small MLP whose forward blocks while a gate file exists."""
    import torch

    folder = tmp_path_factory.mktemp("gated")
    (folder / "gated.py").write_text(GATED_FACTORY)
    torch.save({f"net.{k}": v for k, v in small_mlp.state_dict().items()}, folder / "gated.pt")
    return folder / "gated.pt", folder / "gated.py"


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, as in a terminal (a child inherits an ignored SIGINT, and then
    Python installs no KeyboardInterrupt handler at all)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Until ``path`` exists (True) or the process ends / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_signal_mid_build(sig: signal.Signals, gated_model: tuple[Path, Path], earlier_build: Path,
                          tmp_path: Path) -> None:
    """SIGINT: exit 130, one line, the folder as before. SIGKILL: the staging folder stays, and the
    next run removes it; the earlier build is intact either way. The signal arrives while the build is
    provably inside its staging folder: the model blocks in its forward pass once the test opens a gate
    (after the staging folder exists) and says so with a marker file."""
    weights, factory = gated_model
    gate = tmp_path / "gate"
    out = copy_folder(earlier_build, tmp_path / "out")
    before = digest(out)
    process = subprocess.Popen([sys.executable, "-m", "edgecompress", "build", str(weights), "--factory",
                                f"{factory}:make", "--input-shape", "2x64", "--out", str(out), *BUILD],
                               env={**scrub_env(), "EDGECOMPRESS_TEST_GATE": str(gate)},
                               preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not _wait_for_staging(out, process):
            pytest.fail(f"the build never staged: {process.communicate()}")
        gate.touch()
        if not _wait_for(gate.with_name("gate.blocked"), process):
            pytest.fail(f"the build never ran its model after staging: {process.communicate()}")
        process.send_signal(sig)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    if sig == signal.SIGINT:
        assert_one_error(process.returncode, err, 130, "interrupted")
        assert digest(out) == before and listing(out) == listing(earlier_build)
        return
    assert process.returncode == -signal.SIGKILL
    assert any(name.startswith(".edgecompress-") for name in listing(out))  # what the kill left
    with OutputFolder(out) as folder:  # what the next build does first
        assert folder.cleaned
    assert digest(out) == before and listing(out) == listing(earlier_build)


def test_concurrent_build_fails_fast_and_the_running_one_finishes(small_mlp_pt2: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Build A (a real process) is writing into a new folder; build B into the same folder fails at
    once with one line, and A's results are complete afterwards."""
    out = tmp_path / "out"
    first = _start_build(small_mlp_pt2, out, "--name", "a")
    if not _wait_for_staging(out, first):
        pytest.fail(f"build A never staged: {first.communicate()}")
    code, _, err = run_cli(["build", str(small_mlp_pt2), "--out", str(out), "--name", "b", *BUILD], capsys)
    assert_one_error(code, err, 2, "another edgecompress run is writing into")
    assert first.wait(timeout=600) == 0, first.communicate()[1]
    assert listing(out) == ["a.dense.onnx", "a.onnx", "build.json"]
