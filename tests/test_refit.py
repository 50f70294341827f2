"""The sequential closed-form refit (lowrank/refit.py): exact on one layer, better than whitened
truncation through depth, bias correction, stages, determinism, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.calibration import calibrate
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.embedding import cosine_stats, embed
from edgecompress.lowrank.factorize import LowRankLinear, compress
from edgecompress.lowrank.policies import EnergyPolicy, PolicyContext, UniformPolicy
from edgecompress.lowrank.output_metric import output_metrics
from edgecompress.lowrank.refit import execution_stages, refit
from edgecompress.lowrank.spectrum import model_spectra
from test_transformer_quality import make_encoder, token_batches

pytestmark = pytest.mark.usefixtures("single_thread")


class Feed(nn.Module):
    """A bare Linear taking its input by name (as the named-input models do)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.layer = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _shifted_inputs(seed: int, count: int = 600, features: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) * torch.logspace(0, -2, features)[:, None]
    return torch.randn(count, features, generator=generator) @ mixing + 3.0  # a large mean: bias matters


def _whitened(model: nn.Module, batches: list[dict[str, torch.Tensor]], rank: int) -> nn.Module:
    names = list(model_spectra(model))
    stats = calibrate(model, batches, names)
    return compress(model, UniformPolicy(rank), context=PolicyContext(calibration=stats.layers, whiten=True))[0]


def test_one_layer_refit_is_the_exact_reduced_rank_regression_with_free_bias() -> None:
    """On one layer (X_c = X) the refit's output error equals the optimum of min ||WX + b - (W_r X + b')||
    over rank-r W_r and any b' (centered data, truncated SVD of the whitened map), and is below the
    uncentered whitened truncation that keeps the old bias."""
    torch.manual_seed(0)
    model = Feed(nn.Linear(24, 16))
    x = _shifted_inputs(1)
    batches = [{"x": x[i:i + 100]} for i in range(0, len(x), 100)]
    with torch.no_grad():
        target = model(x).double()
    rank = 4
    whitened = _whitened(model, batches, rank)
    fitted = copy.deepcopy(whitened)
    records = refit(model, fitted, batches, bias=True)
    with torch.no_grad():
        error = float((fitted(x).double() - target).norm() / target.norm())
        error_whitened = float((whitened(x).double() - target).norm() / target.norm())
    # the optimum, by brute force in float64: center, whiten, truncate
    xd = x.double()
    xc = xd - xd.mean(0)
    tc = target - target.mean(0)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    fitted_outputs = tc.T @ u  # W X in the orthonormal basis of the centered inputs
    uu, ss, vv = torch.linalg.svd(fitted_outputs, full_matrices=False)
    best = float((ss[rank:].square().sum()).sqrt() / target.norm())
    assert error == pytest.approx(best, rel=1e-3)
    assert error < 0.9 * error_whitened
    assert records["layer"].error_after == pytest.approx(error, rel=1e-3)
    assert records["layer"].error_before == pytest.approx(error_whitened, rel=1e-3)


def test_refit_lowers_every_layer_error_and_raises_the_cosine_through_depth() -> None:
    model = make_encoder(layers=3)
    calibration = token_batches(8, 16, seed=1)
    test = token_batches(4, 16, seed=2)
    compressed = _whitened(model, calibration, rank=8)
    before = cosine_stats(embed(compressed, test), embed(model, test))[0]
    records = refit(model, compressed, calibration)
    after = cosine_stats(embed(compressed, test), embed(model, test))[0]
    assert len(records) == 18
    assert all(r.error_after <= r.error_before + 1e-6 for r in records.values())
    assert after > before + 0.005  # held-out sentences, not the calibration ones
    assert all(isinstance(compressed.get_submodule(name), LowRankLinear) and
               compressed.get_submodule(name).rank == 8 for name in records)  # ranks kept


def test_bias_correction_only_changes_biases_and_helps() -> None:
    model = make_encoder(layers=2)
    calibration = token_batches(8, 16, seed=3)
    compressed = _whitened(model, calibration, rank=6)
    plain, corrected = copy.deepcopy(compressed), copy.deepcopy(compressed)
    no_bias = refit(model, plain, calibration, bias=False)
    with_bias = refit(model, corrected, calibration, bias=True)
    name = "blocks.0.query"  # first stage: both see the dense inputs
    torch.testing.assert_close(plain.get_submodule(name).second.bias, model.get_submodule(name).bias)
    assert not torch.allclose(corrected.get_submodule(name).second.bias, model.get_submodule(name).bias)
    assert with_bias[name].error_after <= no_bias[name].error_after + 1e-9


def test_stages_group_layers_reading_the_same_input_in_call_order() -> None:
    model = make_encoder(layers=2)
    stages = execution_stages(model, token_batches(1, 4, seed=4)[0], list(model_spectra(model)))
    assert stages[:4] == [["blocks.0.query", "blocks.0.key", "blocks.0.value"], ["blocks.0.out"], ["blocks.0.up"],
                          ["blocks.0.down"]]
    assert len(stages) == 8


def test_refit_is_deterministic_and_leaves_the_dense_model_alone() -> None:
    model = make_encoder(layers=2)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = token_batches(4, 16, seed=5)
    runs = []
    for _ in range(2):
        compressed = _whitened(model, calibration, rank=4)
        refit(model, compressed, calibration)
        runs.append(torch.cat([p.detach().flatten() for p in compressed.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_refit_refuses_no_data_and_mismatched_models() -> None:
    model = make_encoder()
    compressed = _whitened(model, token_batches(4, 16, seed=6), rank=4)
    with pytest.raises(InputError, match="calibration batches"):
        refit(model, compressed, [])
    with pytest.raises(InputError, match="no Linear layer"):
        refit(nn.Sequential(nn.Linear(2, 2)), compressed, token_batches(1, 4, seed=7))


def test_output_metric_weights_the_fit_towards_what_moves_the_embedding() -> None:
    """The metric is symmetric PSD with trace = out, deterministic for a seed; a refit measured in it
    keeps the held-out embedding closer to the dense one than the plain refit on a 3-block encoder."""
    model = make_encoder(layers=3)
    calibration = token_batches(8, 16, seed=1)
    test = token_batches(4, 16, seed=2)
    names = list(model_spectra(model))
    metrics = output_metrics(model, calibration, names, probes=4, seed=0)
    again = output_metrics(model, calibration, names, probes=4, seed=0)
    assert set(metrics) == set(names)
    for name, metric in metrics.items():
        assert torch.equal(metric, again[name])
        torch.testing.assert_close(metric, metric.T)
        assert float(torch.trace(metric)) == pytest.approx(metric.shape[0])
        assert float(torch.linalg.eigvalsh(metric).min()) > -1e-6  # PSD up to float32 products
    compressed = _whitened(model, calibration, rank=6)
    plain, weighted = copy.deepcopy(compressed), copy.deepcopy(compressed)
    refit(model, plain, calibration)
    refit(model, weighted, calibration, metrics=metrics)
    reference = embed(model, test)
    assert cosine_stats(embed(weighted, test), reference)[0] > cosine_stats(embed(plain, test), reference)[0]


def test_refit_takes_a_plain_array_for_a_single_input_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    x = _shifted_inputs(2, count=800)
    calibration = calibrate(model, x.numpy(), list(model_spectra(model)))
    compressed = compress(model, UniformPolicy(6), context=PolicyContext(calibration=calibration.layers, whiten=True))[0]
    with torch.no_grad():
        reference = model(x)
        before = float((compressed(x) - reference).norm())
    records = refit(model, compressed, x.numpy(), batch_size=200)
    with torch.no_grad():
        after = float((compressed(x) - reference).norm())
    assert list(records) == ["0", "2", "4"]
    # each layer reads a fresh tensor (Python may reuse a freed tensor's id: stages must not merge)
    assert execution_stages(model, x[:4], ["0", "2", "4"]) == [["0"], ["2"], ["4"]]
    assert after < before


def test_policy_context_refit_applies_to_compress_and_to_the_budget_result() -> None:
    """``PolicyContext(refit_data=...)`` refits what ``compress`` returns (same ranks, better held-out
    cosine); a cosine budget judges every candidate refit, so it chooses a smaller plan than without the refit
    (recorded with the validation cosine before and after the refit)."""
    model = make_encoder(layers=2)
    spectra = model_spectra(model)
    calibration_batches = token_batches(8, 16, seed=1)
    validation = token_batches(3, 16, seed=2)
    stats = calibrate(model, calibration_batches, list(spectra))
    plain, plan = compress(model, UniformPolicy(6), context=PolicyContext(calibration=stats.layers, whiten=True))
    context = PolicyContext(calibration=stats.layers, whiten=True, refit_data=calibration_batches, refit_metric=True)
    refitted, refit_plan = compress(model, UniformPolicy(6), context=context)
    assert refit_plan.ranks == plan.ranks
    reference = embed(model, validation)
    assert cosine_stats(embed(refitted, validation), reference)[0] > cosine_stats(embed(plain, validation), reference)[0]
    assert context.extras["refit"]["metric"].startswith("embedding")
    assert set(context.extras["refit"]["layers"]) == set(spectra)

    budget_context = PolicyContext(calibration=stats.layers, whiten=True, refit_data=calibration_batches)
    result = budget_compress(model, EnergyPolicy(), spectra, Budget(min_cosine=0.9), context=budget_context,
                             allocation="threshold", embed=lambda m: embed(m, validation))
    cosines = result.record["refit"]["validation_cosine"]
    assert cosines["after"] >= 0.9 and cosines["after"] > cosines["before"]
    # a quality budget judges each candidate refit: the chosen one's value is its refit cosine, the model
    # returned is that refit model, and the plan is no larger than the search without the refit finds
    assert result.record["refit"]["in_search"] and budget_context.extras["refit"] is result.record["refit"]
    assert result.record["result"]["value"] == pytest.approx(cosines["after"], abs=1e-5)
    assert cosine_stats(embed(result.model, validation), reference)[0] == pytest.approx(cosines["after"], abs=1e-5)
    unrefit = budget_compress(model, EnergyPolicy(), spectra, Budget(min_cosine=0.9),
                              context=PolicyContext(calibration=stats.layers, whiten=True), allocation="threshold",
                              embed=lambda m: embed(m, validation))
    assert result.record["result"]["linear_params"] < unrefit.record["result"]["linear_params"]  # 1728 vs 2112
    assert cosine_stats(embed(result.model, validation), reference)[0] == pytest.approx(cosines["after"], abs=1e-5)
