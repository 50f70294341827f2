"""Budget mode: sensitivity table, knobs, search, unreachable budgets, and the build command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.cli import main
from edgecompress.data import Dataset, load_dataset
from edgecompress.errors import BudgetExceeded, InputError
from edgecompress.lowrank.budget import (Budget, LayerCurve, accuracy_drop, budget_compress, lagrangian_plans,
                                         plan_params, threshold_plans, uniform_plans)
from edgecompress.lowrank.calibration import calibrate
from edgecompress.lowrank.factorize import count_linear_params
from edgecompress.lowrank.policies import PolicyContext, make_policy
from edgecompress.lowrank.spectrum import model_spectra
from edgecompress.models import digits_mlp, save_exported, train_classifier
from edgecompress.models import test_accuracy as accuracy_of


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits_model(single_thread) -> nn.Sequential:
    """The 64-256-256-10 digits MLP, trained briefly (seeded)."""
    return train_classifier(digits_mlp(), load_dataset("digits:train"), epochs=15, seed=0)


@pytest.fixture(scope="module")
def val() -> Dataset:
    return load_dataset("digits:val")


def correct(data: Dataset):
    def evaluate(model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(data.x)).argmax(-1).numpy() == data.y
    return evaluate


def drop_points(dense: nn.Module, compressed: nn.Module, data: Dataset) -> float:
    return 100 * (accuracy_of(dense, data) - accuracy_of(compressed, data))


@pytest.mark.parametrize("policy", ["energy", "data"])
def test_accuracy_budget_is_met_on_digits_and_is_the_boundary(digits_model, val, policy: str) -> None:
    spectra = model_spectra(digits_model)
    train = load_dataset("digits:train")
    context = PolicyContext(calibration=calibrate(digits_model, train.x, list(spectra)).layers)
    result = budget_compress(digits_model, make_policy(policy), spectra, Budget(max_accuracy_drop=1.0),
                             context=context, evaluate=correct(val), inputs=val.x, confidence=0.0)
    assert drop_points(digits_model, result.model, val) <= 1.0 + 1e-9  # measured here, independently
    assert count_linear_params(result.model) == result.plan.linear_params_after < result.plan.linear_params_before
    record = result.record
    assert record["knob"].startswith("Lagrangian") and record["ranks"] == result.plan.ranks
    assert record["factorization"] == ("data-aware" if policy == "data" else "truncated SVD")
    chosen = record["result"]["linear_params"]
    smaller = [step for step in record["path"] if step["linear_params"] < chosen]
    assert smaller and not any(step["meets"] for step in smaller)  # every smaller candidate tried failed
    measured = [row for row in record["table"]["0"] if "measured" in row]
    assert len(measured) >= 10 and all(row["distortion"] >= row["measured"] - 1e-9 for row in measured)


def test_params_budget_picks_the_largest_model_that_fits(digits_model) -> None:
    spectra = model_spectra(digits_model)
    x = load_dataset("digits:train").x
    context = PolicyContext(calibration=calibrate(digits_model, x, list(spectra)).layers, round_to=4)
    result = budget_compress(digits_model, make_policy("data"), spectra, Budget(target_params=0.1),
                             context=context, allocation="threshold")
    dense = result.plan.linear_params_before
    assert result.plan.linear_params_after <= 0.1 * dense
    assert all(rank is None or rank % 4 == 0 for rank in result.plan.ranks.values())
    larger = [step for step in result.record["path"] if step["linear_params"] > result.plan.linear_params_after]
    assert larger and not any(step["meets"] for step in larger)
    assert result.record["knob"] == "per-layer error threshold"


def test_uniform_knob_matches_brute_force(digits_model) -> None:
    spectra = model_spectra(digits_model)
    result = budget_compress(digits_model, make_policy("uniform"), spectra, Budget(target_params=0.2),
                             context=PolicyContext())
    ranks = {r for r in result.plan.ranks.values() if r is not None}
    assert len(ranks) == 1
    best = max(r for r in range(1, 128) if sum(s.factored_params(r) if s.pays(r) else s.dense_params
                                                for s in spectra.values()) <= 0.2 * result.plan.linear_params_before)
    assert ranks == {best}


def test_size_budget_uses_the_measured_size(digits_model) -> None:
    spectra = model_spectra(digits_model)
    size_of = lambda model: 4 * count_linear_params(model) + 1000  # noqa: E731 - a stand-in exporter
    result = budget_compress(digits_model, make_policy("energy"), spectra, Budget(target_size=60_000),
                             context=PolicyContext(), size_of=size_of)
    assert size_of(result.model) <= 60_000
    assert result.record["result"]["value"] == size_of(result.model)


def test_unreachable_budgets_say_what_is_achievable(digits_model, val) -> None:
    spectra = model_spectra(digits_model)
    with pytest.raises(BudgetExceeded, match=r"smallest model keeps 0\.\d+ of the Linear parameters") as info:
        budget_compress(digits_model, make_policy("energy"), spectra, Budget(target_params=0.001),
                        context=PolicyContext(round_to=8))
    assert info.value.exit_code == 1
    base = correct(val)(digits_model)
    evaluate = lambda model: base if model is digits_model else np.zeros_like(base)  # noqa: E731 - all wrong
    with pytest.raises(BudgetExceeded, match=r"smallest achievable drop is \d+\.\d\d points"):
        budget_compress(digits_model, make_policy("energy"), spectra, Budget(max_accuracy_drop=0.5),
                        context=PolicyContext(), evaluate=evaluate, inputs=val.x)


def test_accuracy_drop_counts_paired_flips() -> None:
    base = np.array([True] * 90 + [False] * 10)
    candidate = base.copy()
    candidate[:4] = False  # 4 lost
    candidate[95] = True  # 1 gained
    drop, bound = accuracy_drop(base, candidate, 0.0)
    assert drop == pytest.approx(3.0) and bound == drop
    _, bound95 = accuracy_drop(base, candidate, 0.95)
    assert bound95 > 3.0
    assert accuracy_drop(base, base, 0.95) == (0.0, 0.0)


def curve(name: str, ranks: list[int], distortion: list[float], width: int = 100) -> LayerCurve:
    params = [r * width for r in ranks]
    return LayerCurve(name, (*ranks, None), (*params, 10 ** 6), tuple(distortion) + (0.0,),
                      tuple(distortion) + (0.0,))


def test_lagrangian_plans_walk_each_hull_one_step_at_a_time() -> None:
    curves = {"a": curve("a", [1, 2, 3, 4], [8.0, 3.0, 2.9, 1.0]), "b": curve("b", [1, 2, 4], [5.0, 1.0, 0.5])}
    plans = lagrangian_plans(curves)
    sizes = [plan_params(p, curves) for p in plans]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    for before, after in zip(plans, plans[1:]):
        assert sum(before[k] != after[k] for k in curves) == 1
    assert all(plan["a"] != 3 for plan in plans)  # rank 3 of "a" is above its convex hull
    assert plans[-1] == {"a": 1, "b": 1}


def test_threshold_and_uniform_plans_shrink_monotonically() -> None:
    curves = {"a": curve("a", [1, 2, 3], [0.5, 0.2, 0.1]), "b": curve("b", [1, 2], [0.3, 0.15])}
    for plans in (threshold_plans(curves), uniform_plans(curves)):
        sizes = [plan_params(p, curves) for p in plans]
        assert sizes == sorted(sizes, reverse=True) and plans[-1] == {"a": 1, "b": 1}
    assert {"a": 3, "b": None} in uniform_plans(curves)  # rank 3 does not exist for "b": it stays dense


def test_budget_validation() -> None:
    with pytest.raises(InputError, match="exactly one"):
        Budget(max_accuracy_drop=1.0, target_params=0.1)
    with pytest.raises(InputError, match="exactly one"):
        Budget()
    with pytest.raises(InputError, match="--target-params"):
        Budget(target_params=1.5)
    assert Budget(target_size=1000).to_json() == {"kind": "size", "target_size": 1000}


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_pt2(tmp_path_factory: pytest.TempPathFactory, digits_model) -> Path:
    return save_exported(digits_model, (1, 64), tmp_path_factory.mktemp("budget") / "digits.pt2")


def test_build_budget_mode_records_the_search(digits_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run(["build", str(digits_pt2), "--policy", "data", "--calib", "digits:train",
                     "--max-accuracy-drop", "1", "--eval-split", "digits:val", "--round-to", "4",
                     "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "build.json").read_text())
    search = record["search"]
    assert search["budget"] == {"kind": "accuracy", "max_accuracy_drop": 1.0}
    assert search["result"]["meets"] and search["result"]["bound"] <= 1.0
    assert search["ranks"] == {layer["name"]: layer["rank"] for layer in record["layers"] if layer["name"] != "4"}
    assert record["layers"][-1]["name"] == "4" and "head" in record["layers"][-1]["reason"]  # kept dense, not searched
    assert all(rank is None or rank % 4 == 0 for rank in search["ranks"].values())
    assert set(search["table"]) == set(search["ranks"]) and search["path"]
    assert record["calibration"]["dataset"].startswith("digits:train")
    assert record["totals"]["linear_params_after"] < record["totals"]["linear_params_before"]


def test_build_budget_mode_plan_covers_excluded_layers(digits_pt2: Path, digits_model, tmp_path: Path,
                                                       capsys) -> None:
    out = tmp_path / "out"
    code, err = run(["build", str(digits_pt2), "--target-params", "0.5", "--exclude", "^2$", "--out", str(out),
                     "--quiet"], capsys)
    assert code == 0, err
    record = json.loads((out / "build.json").read_text())
    excluded = [layer for layer in record["layers"] if layer["name"] == "2"]
    assert len(excluded) == 1 and not excluded[0]["factorized"] and "--exclude" in excluded[0]["reason"]
    assert "2" not in record["search"]["ranks"]  # the search never touched it
    assert record["totals"]["linear_params_before"] == count_linear_params(digits_model)
    assert record["totals"]["layers_total"] == 3


def test_build_budget_errors(digits_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    code, err = run(["build", str(digits_pt2), "--max-accuracy-drop", "1", "--eval-split", "digits:test",
                     "--out", str(out)], capsys)
    assert code == 2 and "validation split" in err and "Traceback" not in err
    code, err = run(["build", str(digits_pt2), "--max-accuracy-drop", "1", "--eval-split", "digits:val",
                     "--eval", "digits:val", "--out", str(out)], capsys)
    assert code == 2 and "also the --eval data" in err
    code, err = run(["build", str(digits_pt2), "--target-params", "0.1", "--round-to", "0", "--out", str(out)], capsys)
    assert code == 2 and "--round-to must be >= 1" in err and "Traceback" not in err
    code, err = run(["build", str(digits_pt2), "--target-params", "0.0001", "--out", str(out)], capsys)
    assert code == 1 and err.startswith("error: --target-params 0.0001 is out of reach") and len(err.splitlines()) == 1
    code, err = run(["build", str(digits_pt2), "--policy", "data", "--calib", "digits:train", "--calib-samples", "100",
                     "--out", str(out)], capsys)
    assert code == 2 and "--calib-samples" in err and "256 inputs" in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((300, 65), np.float32))
    code, err = run(["build", str(digits_pt2), "--policy", "data", "--calib", str(wrong), "--out", str(out)], capsys)
    assert code == 2 and "calibration data wrong.npz has samples of shape (65,), the model expects (64,)" in err
    assert not out.exists()
