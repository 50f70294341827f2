"""The DDLR convex program (ADMM + singular-value thresholding) and the ddlr-convex policy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.cli import main
from edgecompress.errors import InputError
from edgecompress.lowrank.calibration import LayerInputs, calibrate
from edgecompress.lowrank.convex import ThresholdSVD, singular_value_threshold, solve_ddlr
from edgecompress.lowrank.data_policies import data_spectrum
from edgecompress.lowrank.factorize import LowRankLinear, compress
from edgecompress.lowrank.policies import PolicyContext, make_policy
from edgecompress.lowrank.spectrum import layer_spectrum, model_spectra
from edgecompress.models import mlp, save_exported


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def small_layer() -> tuple[nn.Linear, torch.Tensor]:
    """A 14x10 layer with a bias and 80 correlated inputs."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(10, 14)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(14, 10, generator=generator))
        layer.bias.copy_(0.5 * torch.randn(14, generator=generator))
    x = torch.randn(80, 10, generator=generator, dtype=torch.float64) * torch.linspace(2.0, 0.1, 10, dtype=torch.float64)
    return layer, x


def test_singular_value_threshold_is_the_nuclear_norm_prox() -> None:
    matrix = torch.diag(torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64))
    u, s, vh = singular_value_threshold(matrix, 0.5)
    assert s.tolist() == pytest.approx([2.5, 0.5])
    torch.testing.assert_close((u * s) @ vh, torch.diag(torch.tensor([2.5, 0.5, 0.0], dtype=torch.float64)))


def test_linear_program_meets_its_constraint_on_a_small_layer(small_layer) -> None:
    layer, x = small_layer
    w = layer.weight.detach().double()
    result = solve_ddlr(w, x, max_error=0.2, tol=1e-6, max_iter=5000)
    assert result.converged
    fit = float(((result.weight - w) @ x.T).norm() / (w @ x.T).norm())  # measured here, not trusted
    assert fit <= 0.2 * 1.01 and fit == pytest.approx(result.fit_error, rel=1e-6)
    assert float(result.s.sum()) <= float(torch.linalg.svdvals(w).sum())  # W itself is feasible
    # the nuclear norm is a relaxation: it never finds a lower rank than the exact closed-form minimiser
    exact = data_spectrum(layer_spectrum("l", layer), LayerInputs("l", 10, x.T @ x, len(x))).rank_for_error(0.2)
    assert exact <= result.rank < 10


def test_relu_aware_program_meets_both_constraints(small_layer) -> None:
    layer, x = small_layer
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    result = solve_ddlr(w, x, bias=b, relu=True, max_error=0.2, tol=1e-5, max_iter=5000)
    pre, new = w @ x.T + b[:, None], result.weight @ x.T + b[:, None]
    active = pre > 0
    fit = float(((new - pre) * active).norm() / torch.relu(pre).norm())  # relative to the post-activation
    violation = float((new * ~active).clamp_min(0).max()) / float(pre.abs().max())
    assert fit <= 0.2 * 1.01
    assert violation <= 1e-3 and violation == pytest.approx(result.max_violation, abs=1e-9)
    assert result.relu and result.rank < 10
    # what the next layer sees moves by at most the fit on Omega plus the (tiny) violations off it
    drift = float((torch.relu(new) - torch.relu(pre)).norm())
    assert drift <= 0.2 * 1.01 * float(torch.relu(pre).norm()) + float((~active).sum()) ** 0.5 * violation * float(pre.abs().max())


@pytest.mark.parametrize("refit", [False, True])
def test_ddlr_convex_policy_reads_the_rank_off_its_solution(refit: bool) -> None:
    torch.manual_seed(0)
    model = mlp((12, 16, 4)).eval()
    x = (np.random.default_rng(0).standard_normal((64, 12)) * 0.7 ** np.arange(12)).astype(np.float32)
    spectra = model_spectra(model)
    context = PolicyContext(calibration=calibrate(model, x, list(spectra), keep_inputs=64).layers)
    policy = make_policy("ddlr-convex", max_error=0.2, refit=refit)
    compressed, plan = compress(model, policy, context=context, spectra=spectra)
    first = plan.layers[0]
    assert first.factorized and first.rank < 6
    solution = context.extras["ddlr_convex"]["0"]
    assert solution["rank"] == first.rank and solution["relu_aware"] is True and solution["refit"] is refit
    assert solution["fit_error"] <= 0.2 * 1.05
    module = compressed.get_submodule("0")
    assert isinstance(module, LowRankLinear)
    assert not torch.allclose(module.dense_weight(), model[0].weight.detach(), atol=1e-3)  # really compressed
    if refit:  # the closed-form data-aware factors at the convex rank
        first_factor, second_factor = context.extras["data_spectra"]["0"].factors(first.rank)
        torch.testing.assert_close(module.dense_weight(), second_factor @ first_factor)
    else:  # the convex solution itself
        torch.testing.assert_close(module.dense_weight().double(), context.factors["0"].result.weight,
                                   rtol=1e-4, atol=1e-5)


def test_ddlr_convex_without_kept_inputs_is_an_input_error(small_mlp: nn.Sequential) -> None:
    x = np.zeros((100, 64), np.float32)
    context = PolicyContext(calibration=calibrate(small_mlp, x, ["0"]).layers)
    with pytest.raises(InputError, match="input rows"):
        compress(small_mlp, make_policy("ddlr-convex"), exclude="2|4", context=context)


def test_build_with_ddlr_convex_records_each_solution(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = save_exported(mlp((12, 16, 4)).eval(), (1, 12), tmp_path / "tiny.pt2")
    x = (np.random.default_rng(0).standard_normal((64, 12)) * 0.7 ** np.arange(12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["build", str(model), "--policy", "ddlr-convex", "--calib", str(tmp_path / "calib.npz"),
              "--max-error", "0.2", "--no-refit", "--out", str(out), "-q"])
        raise SystemExit(0)
    assert info.value.code in (0, None), capsys.readouterr().err
    record = json.loads((out / "build.json").read_text())
    first = record["layers"][0]["name"]
    assert record["calibration"]["layers"][first] == {"vectors": 64, "in_features": 12, "relu_after": True,
                                                      "kept_inputs": 64}
    solution = record["ddlr_convex"][first]
    assert solution["relu_aware"] and solution["rank"] == record["layers"][0]["rank"] < 6
    assert record["policy"] == {"name": "ddlr-convex", "max_error": 0.2, "max_iter": 1000, "tol": 1e-4,
                                "refit": False}


def test_warm_started_truncated_svd_matches_the_full_one() -> None:
    """On a slowly changing sequence of nearly low-rank matrices, ThresholdSVD switches to the
    truncated SVD and returns the same thresholded matrix as a full SVD."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(120, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 100, generator=generator,
                                                                                         dtype=torch.float64)
    svt = ThresholdSVD()
    for step in range(12):
        matrix = base + 0.01 * torch.randn(120, 100, generator=generator, dtype=torch.float64) * (1 + step % 3)
        u, s, vh = svt(matrix, 1.0)
        ref = singular_value_threshold(matrix, 1.0)
        assert s.numel() == ref[1].numel() == 6
        torch.testing.assert_close((u * s) @ vh, (ref[0] * ref[1]) @ ref[2], rtol=0, atol=1e-8)
    assert svt.full == 1 and svt.truncated == 11  # only the first call had no basis to start from


def test_truncated_and_full_solvers_agree_and_report_progress(small_layer) -> None:
    layer, x = small_layer
    big = torch.block_diag(*[layer.weight.detach().double()] * 5)  # 70x50: rank small enough to truncate
    inputs = torch.cat([x] * 5, dim=1)
    lines: list[str] = []
    fast = solve_ddlr(big, inputs, max_error=0.3, max_iter=60, progress=lines.append)
    full = solve_ddlr(big, inputs, max_error=0.3, max_iter=60, truncate=False)
    assert fast.truncated_svds > 0 and full.truncated_svds == 0 and full.full_svds == full.iterations + 1
    assert fast.rank == full.rank and fast.iterations == full.iterations
    assert fast.fit_error == pytest.approx(full.fit_error, rel=1e-6, abs=1e-9)
    assert lines and lines[0].startswith("iteration 10 (at most 60), rank ") and "left" in lines[0]
