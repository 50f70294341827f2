"""``edgecompress build --finetune`` / ``--policy svd-training --train``: build.json's training section,
verified exports, one-line errors with nothing written, exit 130 with a checkpoint on Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cli import main
from edgecompress.cli.build_view import training_lines
from edgecompress.data import load_dataset
from edgecompress.models import digits_mlp, train_classifier

FACTORY = ["--factory", "edgecompress.models:digits_mlp"]


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_classifier(digits_mlp(), load_dataset("digits:train"), epochs=10, seed=0)
    path = tmp_path_factory.mktemp("models") / "digits.pt"
    torch.save(model.state_dict(), path)
    return path


def run_build(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of ``edgecompress build ARGS``."""
    try:
        main(["build", *args])
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def assert_fails_cleanly(args: list[str], needle: str, out: Path, capsys, code: int = 2) -> str:
    exit_code, err = run_build([*args, "--out", str(out), "--quiet"], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert exit_code == code and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists(), "a failed build must not leave an output folder"
    return lines[0]


def test_svd_training_build_records_training_and_verifies(digits_weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "svd"
    code, err = run_build([str(digits_weights), *FACTORY, "--policy", "svd-training", "--train", "digits",
                            "--epochs", "2", "--finetune-epochs", "2", "--lr", "3e-3", "--train-batch", "64",
                            "--lambda-sparsity", "0.05", "--prune-energy", "0.1", "--sparsity", "l1", "--compress-head",
                            "--eval", "digits", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "build.json").read_text())
    assert record["policy"] == {"name": "svd-training", "sparsity": "l1", "lambda_orth": 1.0,
                                "lambda_sparsity": 0.05, "prune_energy": 0.1, "keep_head": False}
    training = record["training"]
    assert training["method"] == "svd-training" and training["data"] == {
        "train": "digits:train", "val": "digits:val", "train_samples": 1078}
    assert [phase["phase"] for phase in training["phases"]] == ["svd-training", "finetune"]
    assert [len(phase["epochs"]) for phase in training["phases"]] == [3, 3]  # epoch 0 + 2
    assert training["phases"][0]["settings"]["lr"] == 3e-3 and training["phases"][1]["settings"]["epochs"] == 2
    assert all(epoch["total_rank"] is not None for phase in training["phases"] for epoch in phase["epochs"])
    assert training["ranks"]["decomposed"] == {"0": 64, "2": 256, "4": 10}
    assert {layer["name"]: layer["rank"] for layer in record["layers"]} == training["ranks"]["final"]
    assert record["totals"]["linear_params_after"] < record["totals"]["linear_params_before"]
    assert record["timings_s"]["train"] > 0 and "compress" not in record["timings_s"]
    compressed = record["artifacts"]["compressed"]
    assert all(check["passed"] for check in compressed["verification"])
    assert compressed["eval"]["accuracy"] > 0.5
    lines = training_lines(record)  # what the build table prints under the layers
    assert lines[0].startswith("training (svd-training) on digits:train (1,078 samples)")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["svd-training", "finetune"]
    assert lines[3].startswith("  total rank: 330 decomposed → ")
    assert lines[3].endswith(f"{sum(training['ranks']['after_pruning'].values()):,} after pruning")


def test_finetune_build_keeps_the_best_epoch(digits_weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ft"
    code, err = run_build([str(digits_weights), *FACTORY, "--policy", "uniform", "--rank", "3",
                            "--finetune", "digits", "--epochs", "4", "--lr", "3e-3", "--distill-weight", "0.7",
                            "--eval", "digits", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "build.json").read_text())
    phase, = record["training"]["phases"]
    accuracies = [epoch["val_accuracy"] for epoch in phase["epochs"]]
    assert phase["best_epoch"] == int(np.argmax(accuracies)) and phase["best_epoch"] > 0
    assert phase["best_val_accuracy"] > accuracies[0]
    assert phase["settings"]["distill_weight"] == 0.7 and phase["epochs"][1]["regularizer"] is None
    assert record["training"]["ranks"]["final"] == {"0": 3, "2": 3, "4": None}  # the head stays dense
    assert all(check["passed"] for check in record["artifacts"]["compressed"]["verification"])


def test_bad_training_input_fails_with_one_line(digits_weights: Path, tmp_path: Path, capsys) -> None:
    base = [str(digits_weights), *FACTORY]
    x = load_dataset("digits:train").x
    np.savez(tmp_path / "unlabelled.npz", x=x)
    assert_fails_cleanly([*base, "--policy", "uniform", "--rank", "4", "--finetune", str(tmp_path / "unlabelled.npz")],
                         "has no labels", tmp_path / "a", capsys)
    np.savez(tmp_path / "wide.npz", x=x, y=np.arange(len(x)) % 12)
    assert_fails_cleanly([*base, "--policy", "uniform", "--rank", "4", "--finetune", str(tmp_path / "wide.npz")],
                         "outputs 10 values per sample", tmp_path / "b", capsys)
    assert_fails_cleanly([*base, "--policy", "svd-training"], "needs --train", tmp_path / "c", capsys)
    assert_fails_cleanly([*base, "--policy", "uniform", "--train", "digits"], "use --finetune", tmp_path / "d", capsys)
    assert_fails_cleanly([*base, "--policy", "uniform", "--prune-energy", "0.1"], "only apply to --policy svd-training",
                         tmp_path / "e", capsys)
    assert_fails_cleanly([*base, "--policy", "uniform", "--finetune", "digits", "--val", "digits:test"],
                         "is the test data", tmp_path / "f", capsys)
    assert_fails_cleanly([*base, "--policy", "svd-training", "--train", "digits", "--prune-energy", "1.5"],
                         "--prune-energy must be in [0, 1)", tmp_path / "g", capsys)
    assert_fails_cleanly([*base, "--policy", "uniform", "--finetune", "digits", "--epochs", "0"],
                         "--epochs must be >= 1", tmp_path / "h", capsys)


def test_divergence_fails_cleanly(digits_weights: Path, tmp_path: Path, capsys) -> None:
    assert_fails_cleanly([str(digits_weights), *FACTORY, "--policy", "uniform", "--rank", "4",
                          "--finetune", "digits", "--lr", "1e30"], "diverged", tmp_path / "nan", capsys)


def test_ctrl_c_exits_130_and_says_where_the_checkpoint_is(digits_weights: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import edgecompress.lowrank.finetune as finetune_module
    import edgecompress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "CACHE_DIR", tmp_path / "cache")
    real_loss, calls = finetune_module.distillation_loss, {"n": 0}

    def loss_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # in epoch 2 (9 steps per epoch at batch 128)
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "distillation_loss", loss_then_ctrl_c)
    line = assert_fails_cleanly([str(digits_weights), *FACTORY, "--policy", "uniform", "--rank", "4",
                                 "--finetune", "digits", "--name", "dig"], "interrupted", tmp_path / "out", capsys,
                                code=130)
    checkpoint = tmp_path / "cache" / "checkpoints" / "dig" / "finetune-best.pt"
    assert str(checkpoint) in line and checkpoint.is_file()
    assert set(torch.load(checkpoint, weights_only=True)["state_dict"]) == {
        "0.first.weight", "0.second.weight", "0.second.bias", "2.first.weight", "2.second.weight", "2.second.bias",
        "4.weight", "4.bias"}


@pytest.mark.parametrize("method", [["--policy", "uniform", "--rank", "4", "--finetune", "digits"],
                                    ["--policy", "svd-training", "--train", "digits", "--finetune-epochs", "1"]])
def test_training_a_torch_export_program(small_mlp_pt2: Path, tmp_path: Path, capsys, method: list[str]) -> None:
    """A .pt2's module comes from torch.export with train()/eval() that raise; training must still work."""
    out = tmp_path / "out"
    code, err = run_build([str(small_mlp_pt2), *method, "--epochs", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "build.json").read_text())
    assert record["training"]["phases"][0]["epochs"][1]["loss"] is not None
    assert all(check["passed"] for check in record["artifacts"]["compressed"]["verification"])


def test_cli_sparsity_choices_match_the_policy() -> None:
    from edgecompress.cli.build import SPARSITY_CHOICES
    from edgecompress.lowrank.training import SPARSITY

    assert SPARSITY_CHOICES == SPARSITY
