"""The closed-form data-driven policy: exact error, optimality, rank choice, use by compress()."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.calibration import LayerInputs, calibrate
from edgecompress.lowrank.data_policies import DataPolicy, data_spectrum
from edgecompress.lowrank.factorize import LowRankLinear, compress
from edgecompress.lowrank.policies import PolicyContext, make_policy
from edgecompress.lowrank.spectrum import layer_spectrum, model_spectra


def random_layer(seed: int, out: int, inp: int, n: int, decay: float) -> tuple[nn.Linear, torch.Tensor]:
    """A layer and correlated inputs (n x in) whose covariance decays geometrically."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, inp, generator=generator))
    scales = torch.tensor([decay ** i for i in range(inp)], dtype=torch.float64)
    x = torch.randn(n, inp, generator=generator, dtype=torch.float64) * scales
    return layer, x


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    return float(((weight - approx) @ x.T).norm() / (weight @ x.T).norm())


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), out=st.integers(2, 24), inp=st.integers(2, 24),
       extra=st.integers(0, 40), decay=st.floats(0.3, 1.0))
def test_closed_form_error_equals_the_reported_bound(seed: int, out: int, inp: int, extra: int, decay: float) -> None:
    layer, x = random_layer(seed, out, inp, inp + extra, decay)
    decomposition = data_spectrum(layer_spectrum("l", layer), LayerInputs("l", inp, x.T @ x, len(x)))
    weight = layer.weight.detach().double()
    for rank in range(1, decomposition.max_rank + 1):
        first, second = decomposition.factors(rank)
        measured = relative_output_error(weight, second.double() @ first.double(), x)
        assert measured == pytest.approx(decomposition.relative_error(rank), rel=1e-3, abs=1e-5)


def test_closed_form_beats_truncated_svd_on_the_data() -> None:
    layer, x = random_layer(1, 40, 30, 200, 0.85)
    spectrum = layer_spectrum("l", layer)
    decomposition = data_spectrum(spectrum, LayerInputs("l", 30, x.T @ x, len(x)))
    weight = layer.weight.detach().double()
    better = 0
    for rank in (2, 5, 10, 20):
        first, second = spectrum.factors(rank)
        svd_error = relative_output_error(weight, second.double() @ first.double(), x)
        assert decomposition.relative_error(rank) <= svd_error + 1e-9
        better += decomposition.relative_error(rank) < 0.9 * svd_error
    assert better >= 3  # with correlated inputs it is clearly better, not just equal


def test_singular_second_moment_still_works() -> None:
    """Fewer input directions than inputs (a constant pixel, a dead unit): the ridge keeps it solvable."""
    layer, x = random_layer(2, 12, 10, 50, 1.0)
    x[:, 3] = 0.0
    x[:, 7] = x[:, 6]
    decomposition = data_spectrum(layer_spectrum("l", layer), LayerInputs("l", 10, x.T @ x, len(x)))
    first, second = decomposition.factors(4)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    measured = relative_output_error(layer.weight.detach().double(), second.double() @ first.double(), x)
    assert measured == pytest.approx(decomposition.relative_error(4), rel=1e-3)
    assert decomposition.relative_error(decomposition.max_rank) == pytest.approx(0.0, abs=1e-6)


def test_rank_for_error_is_the_smallest_within_the_bound() -> None:
    layer, x = random_layer(3, 30, 20, 100, 0.8)
    decomposition = data_spectrum(layer_spectrum("l", layer), LayerInputs("l", 20, x.T @ x, len(x)))
    for epsilon in (0.5, 0.2, 0.05, 0.01):
        rank = decomposition.rank_for_error(epsilon)
        assert decomposition.relative_error(rank) <= epsilon
        assert rank == 1 or decomposition.relative_error(rank - 1) > epsilon


def test_data_policy_through_compress_uses_data_aware_factors(small_mlp: nn.Sequential) -> None:
    x = (np.random.default_rng(0).standard_normal((300, 64)) * 0.85 ** np.arange(64)).astype(np.float32)
    spectra = model_spectra(small_mlp)
    context = PolicyContext(calibration=calibrate(small_mlp, x, list(spectra)).layers)
    compressed, plan = compress(small_mlp, make_policy("data", max_error=0.1), context=context, spectra=spectra)
    factorized = [layer for layer in plan.layers if layer.factorized]
    assert factorized and plan.linear_params_after < plan.linear_params_before
    decompositions = context.extras["data_spectra"]
    for layer in factorized:
        module = compressed.get_submodule(layer.name)
        assert isinstance(module, LowRankLinear)
        assert decompositions[layer.name].relative_error(layer.rank) <= 0.1
        first, _ = decompositions[layer.name].factors(layer.rank)
        torch.testing.assert_close(module.first.weight, first)
        # the plain SVD factors would differ: this is not apply_ranks' default path
        assert not torch.allclose(module.first.weight, spectra[layer.name].factors(layer.rank)[0], atol=1e-3)
    # the first layer sees inputs with a fast-decaying spectrum: fewer ranks than the weights alone suggest
    assert plan.layers[0].rank < make_policy("energy", threshold=0.99).rank_for(spectra["0"], context)


def test_rounding_keeps_the_error_within_the_bound(small_mlp: nn.Sequential) -> None:
    x = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    spectra = model_spectra(small_mlp)
    context = PolicyContext(calibration=calibrate(small_mlp, x, list(spectra)).layers, round_to=8)
    _, plan = compress(small_mlp, DataPolicy(max_error=0.2), context=context, spectra=spectra)
    for layer in plan.layers:
        if layer.factorized:
            assert layer.rank % 8 == 0
            assert context.extras["data_spectra"][layer.name].relative_error(layer.rank) <= 0.2


def test_missing_calibration_and_bad_error_are_input_errors(small_mlp: nn.Sequential) -> None:
    with pytest.raises(InputError, match="--calib"):
        compress(small_mlp, DataPolicy(max_error=0.1))
    with pytest.raises(InputError, match="--max-error"):
        DataPolicy(max_error=1.5)
    assert make_policy("data", max_error=0.05).to_json() == {"name": "data", "max_error": 0.05}


def test_energy_kept_of_data_factors_is_their_own() -> None:
    layer, x = random_layer(4, 16, 16, 64, 0.7)
    decomposition = data_spectrum(layer_spectrum("l", layer), LayerInputs("l", 16, x.T @ x, len(x)))
    first, second = decomposition.factors(5)
    kept = float((second.double() @ first.double()).square().sum() / layer.weight.detach().double().square().sum())
    assert decomposition.energy_kept(5) == pytest.approx(kept, rel=1e-4)
    assert decomposition.energy_kept(16) == pytest.approx(1.0)
    assert not math.isclose(decomposition.energy_kept(5), layer_spectrum("l", layer).energy_kept(5), rel_tol=1e-3)
