"""Fine-tuning and SVD training on the digits set: they improve on plain truncation, are deterministic,
and fail with one clear error on bad data, divergence and Ctrl-C."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.data import Dataset, load_dataset
from edgecompress.errors import InputError, TrainingError
from edgecompress.export.onnx import check_factors_kept, export_onnx
from edgecompress.export.verify import Tolerance, ort_runner, torch_outputs, verify
from edgecompress.lowrank.factorize import LowRankLinear, apply_ranks, compress, count_linear_params
from edgecompress.lowrank.finetune import (Hooks, TrainingInterrupted, TrainSettings, accuracy_of, distillation_loss,
                                           finetune, fit, phase_settings, torch_threads)
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.lowrank.spectrum import model_spectra
from edgecompress.lowrank.training import SvdTrainingPolicy, svd_train
from edgecompress.models import digits_mlp, train_classifier

FAST = TrainSettings(epochs=4, lr=3e-3, batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous, _ = torch.get_num_threads(), torch.set_num_threads(1)  # tiny models: threads only add contention
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset, Dataset]:
    return load_dataset("digits:train"), load_dataset("digits:val"), load_dataset("digits:test")


@pytest.fixture(scope="module")
def dense(digits: tuple[Dataset, Dataset, Dataset]) -> nn.Module:
    torch.manual_seed(0)
    return train_classifier(digits_mlp(), digits[0], epochs=15, seed=0)


def truncated(dense: nn.Module, rank: int = 2) -> nn.Module:
    return compress(dense, UniformPolicy(rank))[0]


def test_finetune_improves_on_the_untrained_truncation(dense: nn.Module, digits) -> None:
    train, val, test = digits
    model = truncated(dense)
    before_val, before_test = accuracy_of(model, val), accuracy_of(model, test)
    result = finetune(model, train, val, teacher=dense, settings=FAST)
    assert [stats.epoch for stats in result.history] == [0, 1, 2, 3, 4]
    assert result.history[0].val_accuracy == pytest.approx(before_val)
    assert result.best_val_accuracy == max(stats.val_accuracy for stats in result.history)
    assert accuracy_of(model, val) == pytest.approx(result.best_val_accuracy)  # the best epoch was kept
    assert result.best_val_accuracy > before_val + 0.05
    assert accuracy_of(model, test) > before_test + 0.05
    assert all(isinstance(model[i], LowRankLinear) and model[i].rank == 2 for i in (0, 2))


def test_finetune_is_deterministic_for_a_seed(dense: nn.Module, digits) -> None:
    train, val, _ = digits
    settings = replace(FAST, epochs=1)
    runs = [truncated(dense) for _ in range(3)]
    finetune(runs[0], train, val, teacher=dense, settings=settings)
    finetune(runs[1], train, val, teacher=dense, settings=settings)
    finetune(runs[2], train, val, teacher=dense, settings=replace(settings, seed=1))
    state = [model.state_dict() for model in runs]
    assert all(torch.equal(state[0][k], state[1][k]) for k in state[0])
    assert not all(torch.equal(state[0][k], state[2][k]) for k in state[0])


def test_distillation_loss_mixes_cross_entropy_and_soft_targets() -> None:
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert distillation_loss(logits, labels, None, 0.5, 2.0) == pytest.approx(float(ce))
    assert distillation_loss(logits, labels, logits, 1.0, 2.0) == pytest.approx(0.0, abs=1e-7)  # same as teacher
    other = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    mixed = distillation_loss(logits, labels, other, 0.25, 1.0)
    soft = distillation_loss(logits, labels, other, 1.0, 1.0)
    assert float(mixed) == pytest.approx(0.75 * float(ce) + 0.25 * float(soft))


def test_svd_training_on_digits_beats_truncation_at_its_rank_and_exports(dense: nn.Module, digits,
                                                                          tmp_path: Path) -> None:
    train, val, test = digits
    policy = SvdTrainingPolicy(lambda_sparsity=0.05, prune_energy=0.1)
    small, plan, report = svd_train(dense, train, val, policy, settings=replace(FAST, epochs=3),
                                    finetune_settings=replace(FAST, epochs=3))
    assert [phase.phase for phase in report.phases] == ["svd-training", "finetune"]
    svd_phase = report.phases[0]
    assert svd_phase.best_epoch == 3  # SVD training keeps its last epoch
    assert svd_phase.history[-1].total_rank < svd_phase.history[0].total_rank  # sparsity shrank the spectrum
    ranks = report.ranks["after_pruning"]
    assert report.ranks["decomposed"] == {"0": 64, "2": 256}  # the head is kept dense by default
    assert all(ranks[name] <= report.ranks["before_pruning"][name] <= report.ranks["decomposed"][name]
               for name in ranks)
    assert all(ranks[name] < report.ranks["decomposed"][name] for name in ("0", "2"))
    assert plan.ranks == {**ranks, "4": None} and "head (the last Linear) kept dense" in plan.layers[2].reason
    assert type(small[4]) is nn.Linear and small[4].weight.shape == dense[4].weight.shape  # dense, still trained
    assert count_linear_params(small) == plan.linear_params_after < plan.linear_params_before
    assert count_linear_params(dense) == plan.linear_params_before
    # plain truncation to the same ranks, untrained, is worse
    baseline, _ = apply_ranks(dense, model_spectra(dense), plan.ranks, {"name": "same ranks"})
    assert accuracy_of(small, test) > accuracy_of(baseline, test)
    # the trained factorized model exports with its factors apart and verifies against torch
    path = tmp_path / "svd.onnx"
    export_onnx(small, (1, 64), path)
    check_factors_kept(onnx.load(str(path)), plan, where="svd.onnx")
    assert verify("svd.onnx", ort_runner(path), torch_outputs(small, test.x), test.x, "test", Tolerance()).passed


def test_training_refuses_unlabelled_data_and_labels_beyond_the_outputs(dense: nn.Module, digits) -> None:
    train, val, _ = digits
    with pytest.raises(InputError, match="no labels"):
        finetune(truncated(dense), Dataset(train.x, None, "unlabelled.npz"), val, settings=FAST)
    wide = Dataset(train.x, np.where(train.y == 9, 12, train.y), "twelve.npz")
    with pytest.raises(InputError, match="10 values per sample.*0..12"):
        finetune(truncated(dense), wide, val, settings=FAST)
    with pytest.raises(InputError, match="validation data"):
        finetune(truncated(dense), train, Dataset(val.x, None, "v.npz"), settings=FAST)


def test_divergence_is_a_training_error(dense: nn.Module, digits) -> None:
    train, val, _ = digits
    model = truncated(dense)
    with torch.no_grad():
        model[0].first.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="diverged.*epoch 1, step 1.*--lr"):
        finetune(model, train, val, settings=FAST)


def test_ctrl_c_saves_the_best_state_so_far(dense: nn.Module, digits, tmp_path: Path) -> None:
    train, val, _ = digits
    model = truncated(dense)

    class InterruptInEpochTwo(Hooks):
        steps = 0

        def regularizer(self, model: nn.Module) -> None:
            self.steps += 1
            if self.steps == 20:  # 17 steps per epoch at batch 64
                raise KeyboardInterrupt

    checkpoint = tmp_path / "ckpt" / "finetune-best.pt"
    with pytest.raises(TrainingInterrupted, match=f"epoch 1.*saved to {checkpoint}") as info:
        fit(model, train, val, FAST, hooks=InterruptInEpochTwo(), checkpoint=checkpoint)
    assert info.value.exit_code == 130
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["meta"]["epoch"] == 1 and saved["meta"]["modules"]["0"] == {"type": "LowRankLinear", "rank": 2}
    restored = truncated(dense)
    restored.load_state_dict(saved["state_dict"])
    assert accuracy_of(restored, val) == pytest.approx(saved["meta"]["val_accuracy"])
    assert not list(checkpoint.parent.glob(".*tmp"))


def test_settings_are_validated() -> None:
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"distill_weight": 1.5}, {"temperature": 0.0},
                {"keep": "worst"}, {"threads": 0}):
        with pytest.raises(InputError):
            TrainSettings(**bad)
    assert phase_settings({"lr": 0.01, "val": "x", "batch_size": None}, epochs=None, seed=3) == TrainSettings(
        lr=0.01, seed=3)


def test_training_threads_are_restored() -> None:
    with torch_threads(2):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads(None):
            assert torch.get_num_threads() == 2
