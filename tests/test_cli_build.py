"""The build command end to end: outputs, exit codes, one-line errors, no partial files."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.cli import main
from edgecompress.load import load_factory
from edgecompress.models import save_exported


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line_error(err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def test_build_writes_artifacts_and_build_json(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["build", str(small_mlp_pt2), "--policy", "uniform", "--rank", "8", "--out", str(out),
                               "--eval", "digits"], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "small.dense.onnx", "small.onnx"]
    record = json.loads((out / "build.json").read_text())
    assert record["totals"]["linear_params_after"] < record["totals"]["linear_params_before"]
    assert [layer["rank"] for layer in record["layers"]] == [8, 8, None]  # the classifier head stays dense
    assert "--compress-head" in record["layers"][2]["reason"] and record["options"]["keep_head"] is True
    for role in ("dense", "compressed"):
        artifact = record["artifacts"][role]
        assert all(check["passed"] for check in artifact["verification"])
        assert 0.0 <= artifact["eval"]["accuracy"] <= 1.0
    assert record["input"]["sha256"] and record["provenance"]["versions"]["torch"]
    assert "✓ small.onnx" in stdout and "small.dense.onnx" in stdout


def test_build_is_deterministic(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    for name in ("a", "b"):
        code, _, _ = run_cli(["build", str(small_mlp_pt2), "--policy", "energy", "--energy", "0.8", "--quiet",
                              "--compress-head", "--out", str(tmp_path / name)], capsys)
        assert code == 0
    for file in ("small.onnx", "small.dense.onnx"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    ranks = [json.loads((tmp_path / n / "build.json").read_text())["layers"] for n in "ab"]
    assert ranks[0] == ranks[1] and all(layer["factorized"] for layer in ranks[0])  # --compress-head: the head too


def test_json_to_stdout(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    code, stdout, _ = run_cli(["build", str(small_mlp_pt2), "--out", str(tmp_path / "o"), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["schema"] == "edgecompress.build/1"


def test_model_without_linear_builds_dense_only(tmp_path: Path, capsys) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
    path = save_exported(model, (1, 1, 8, 8), tmp_path / "conv.pt2")
    code, stdout, _ = run_cli(["build", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and "nothing was compressed" in stdout
    assert json.loads((tmp_path / "o" / "build.json").read_text())["totals"]["layers_total"] == 0


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case,needle", [
    ("missing", "not found"),
    ("random", "not a readable PyTorch file"),
    ("truncated", "not a readable"),
    ("state_dict", "--factory"),
    ("pickle", "--allow-pickle"),
    ("nan", "NaN or Inf"),
    ("bad_shape", "does not fit the model"),
    ("out_is_file", "is not a folder"),
    ("bad_policy_value", "--energy"),
])
def test_bad_input_exit_2_one_line_no_partial_output(case: str, needle: str, tmp_path: Path, small_mlp_pt2: Path,
                                                     small_mlp_state_dict: Path, small_mlp_pickle: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["build", "MODEL", "--out", str(out)]
    model = small_mlp_pt2
    if case == "missing":
        model = tmp_path / "nope.pt2"
    elif case == "random":
        model = write(tmp_path / "r.pt", bytes(range(256)) * 8)
    elif case == "truncated":
        model = write(tmp_path / "t.pt2", small_mlp_pt2.read_bytes()[:2000])
    elif case == "state_dict":
        model = small_mlp_state_dict
    elif case == "pickle":
        model = small_mlp_pickle
    elif case == "nan":
        broken = nn.Sequential(nn.Linear(4, 4))
        with torch.no_grad():
            broken[0].bias[1] = float("inf")
        model = save_exported(broken, (1, 4), tmp_path / "nan.pt2")
    elif case == "bad_shape":
        args += ["--input-shape", "1x63"]
    elif case == "out_is_file":
        write(out, b"not a folder")
    elif case == "bad_policy_value":
        args += ["--energy", "1.7"]
    args[1] = str(model)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_line_error(err, needle)
    if case == "out_is_file":
        assert out.read_bytes() == b"not a folder"
    else:
        assert not out.exists(), "a failed build must leave no output folder behind"


def test_failed_build_keeps_existing_output_folder_untouched(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["build", str(small_mlp_pt2), "--out", str(out), "--input-shape", "1x5"], capsys)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_verification_failure_exits_1_and_leaves_nothing(small_mlp_pt2: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupted export must fail verification: every weight of the compressed file is shifted by 0.5 after
    onnxsim, so onnxruntime really computes something else (no reliance on rounding differences)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgecompress import pipeline

    simplify = pipeline.onnx_export.simplify_onnx

    def simplify_then_corrupt(path: Path) -> bool:
        simplified = simplify(path)
        if path.name == "small.onnx":  # the compressed artifact; the dense reference stays intact
            model = onnx.load(str(path))
            for init in model.graph.initializer:
                values = numpy_helper.to_array(init)
                if values.ndim == 2:
                    init.CopyFrom(numpy_helper.from_array((values + np.float32(0.5)).astype(values.dtype), init.name))
            onnx.save(model, str(path))
        return simplified

    monkeypatch.setattr(pipeline.onnx_export, "simplify_onnx", simplify_then_corrupt)
    out = tmp_path / "out"
    code, _, err = run_cli(["build", str(small_mlp_pt2), "--policy", "uniform", "--rank", "8", "--out", str(out)],
                           capsys)
    assert code == 1, err
    assert_one_line_error(err, "exceeds tolerance")
    assert "small.onnx" in err and "✗" in err
    assert not out.exists()


def test_unsupported_op_at_export_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "weights.pt"
    factory = tmp_path / "arch.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n"
        "class Gate(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n"
        "    def forward(self, x):\n        return torch.histc(self.fc(x), bins=4)\n"
        "def make():\n    return Gate()\n")
    torch.save(load_factory(f"{factory}:make")().state_dict(), path)
    code, _, err = run_cli(["build", str(path), "--factory", f"{factory}:make", "--input-shape", "2x8",
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "ONNX export failed: aten_histc")
    assert not (tmp_path / "o").exists()


def test_help_has_examples(capsys) -> None:
    code, stdout, _ = run_cli(["build", "--help"], capsys)
    assert code == 0 and "Examples:" in stdout and "--policy" in stdout


def test_build_bench_writes_bench_json_with_dense_reference(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, _, _ = run_cli(["build", str(small_mlp_pt2), "--policy", "uniform", "--rank", "8", "--out", str(out),
                          "--eval", "digits", "--bench", "--quiet"], capsys)
    assert code == 0
    bench = json.loads((out / "bench.json").read_text())
    assert [m["name"] for m in bench["models"]] == ["small.dense.onnx", "small.onnx"]
    assert bench["reference"] == "small.dense.onnx"
    compressed = [r for r in bench["results"] if r["model"] == "small.onnx"][0]
    assert compressed["ratios"]["params"] < 1 and compressed["accuracy"] is not None


def test_build_help_groups_its_options(capsys: pytest.CaptureFixture) -> None:
    """`build --help` lists options under titled groups; every option appears exactly once."""
    code, out, _ = run_cli(["build", "--help"], capsys)
    assert code == 0
    titles = ["Model and inputs:", "Rank policy:", "Data:", "Budget mode", "Training", "Targets and quantization:",
              "Verification:", "Output:"]
    positions = [out.index(title) for title in titles]
    assert positions == sorted(positions)
    assert "digits:train" in out and "--eval DATA" in out
    assert "Other options:" not in out  # every build option is in a group
    data = out[out.index("Data:"):out.index("Budget mode")]
    assert "--calib DATA" in data and "--rank" not in data


def test_an_ungrouped_option_lands_in_other() -> None:
    import click
    from click.testing import CliRunner

    from edgecompress.cli.help import OTHER, GroupedCommand

    @click.command(cls=GroupedCommand, groups=(("Main", "", ("--a",)),))
    @click.option("--a")
    @click.option("--b", help="added later")
    def cmd(a: str, b: str) -> None:
        """Test."""

    out = CliRunner().invoke(cmd, ["--help"]).output
    assert out.index("Main:") < out.index("--a") < out.index(f"{OTHER}:") < out.index("--b")


def _plain_and_with_calib_flag(model: Path, flag: str, tmp_path: Path, capsys) -> tuple[dict, dict]:
    """``flag`` without --calib is refused (exit 2, no folder); then build.json of a uniform rank-8 build
    without the flag and of one with ``flag --calib digits:train``."""
    common = ["build", str(model), "--policy", "uniform", "--rank", "8", "--quiet"]
    code, _, err = run_cli(common + [flag, "--out", str(tmp_path / "no-calib")], capsys)
    assert code == 2 and f"{flag} needs calibration data" in err and not (tmp_path / "no-calib").exists()
    for name, extra in (("plain", []), ("flagged", [flag, "--calib", "digits:train"])):
        code, _, err = run_cli(common + extra + ["--out", str(tmp_path / name)], capsys)
        assert code == 0, err
    return tuple(json.loads((tmp_path / n / "build.json").read_text()) for n in ("plain", "flagged"))


def test_whiten_factors_on_calibration_data_and_needs_calib(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    plain, white = _plain_and_with_calib_flag(small_mlp_pt2, "--whiten", tmp_path, capsys)
    assert white["options"]["whiten"] is True and plain["options"]["whiten"] is False
    assert "calibration" in white and "calibration" not in plain
    assert [layer["rank"] for layer in white["layers"]] == [layer["rank"] for layer in plain["layers"]]
    # same ranks, other factors: the whitened pair fits the calibration inputs, not the weights alone
    assert (tmp_path / "plain" / "small.onnx").read_bytes() != (tmp_path / "flagged" / "small.onnx").read_bytes()


def test_sequential_refit_keeps_ranks_and_lowers_every_layers_error(small_mlp_pt2: Path, tmp_path: Path,
                                                                     capsys) -> None:
    plain, refit = _plain_and_with_calib_flag(small_mlp_pt2, "--sequential-refit", tmp_path, capsys)
    assert refit["options"]["sequential_refit"] is True and "refit" not in plain
    assert [layer["rank"] for layer in refit["layers"]] == [layer["rank"] for layer in plain["layers"]]
    layers = refit["refit"]["layers"]
    assert layers and refit["refit"]["metric"] == "layer output"  # class logits: no embedding metric
    assert all(r["error_after"] <= r["error_before"] + 1e-6 for r in layers.values()), layers
    assert any(r["error_after"] < r["error_before"] for r in layers.values()), layers
