import math

import pytest
import torch

from edgecompress.errors import InputError
from edgecompress.lowrank.policies import (POLICIES, EnergyPolicy, EntropyPolicy, PolicyContext, UniformPolicy,
                                           make_policy, spectral_entropy)
from edgecompress.lowrank.spectrum import LayerSpectrum


def spectrum_with(singular_values: list[float], out_features: int = 40, in_features: int = 30) -> LayerSpectrum:
    """A layer spectrum with exactly these singular values (orthonormal U, V from a seeded QR)."""
    k = len(singular_values)
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(out_features, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, k, generator=gen, dtype=torch.float64))
    return LayerSpectrum("layer", in_features, out_features, True, u, torch.tensor(singular_values, dtype=torch.float64), v.T)


CTX = PolicyContext()


def test_energy_picks_smallest_rank_reaching_threshold() -> None:
    spec = spectrum_with([3.0, 2.0, 1.0, 1.0, 0.5])  # energies 9, 4, 1, 1, 0.25 of 15.25
    assert EnergyPolicy(0.5).rank_for(spec, CTX) == 1  # 9/15.25 = 0.59
    assert EnergyPolicy(0.85).rank_for(spec, CTX) == 2  # 13/15.25 = 0.852
    assert EnergyPolicy(0.86).rank_for(spec, CTX) == 3
    assert EnergyPolicy(1.0).rank_for(spec, CTX) == 5


def test_energy_kept_matches_definition() -> None:
    spec = spectrum_with([3.0, 2.0, 1.0])
    assert spec.energy_kept(2) == pytest.approx(13 / 14)


def test_entropy_of_flat_spectrum_keeps_all_and_of_spike_keeps_one() -> None:
    flat = spectrum_with([1.0] * 8)
    assert spectral_entropy(flat) == pytest.approx(math.log(8))
    assert EntropyPolicy().rank_for(flat, CTX) == 8
    spike = spectrum_with([10.0, 1e-6, 1e-6, 1e-6])
    assert EntropyPolicy().rank_for(spike, CTX) == 1


def test_entropy_scale_and_formula() -> None:
    spec = spectrum_with([2.0, 1.0, 1.0])  # p = 4/6, 1/6, 1/6
    p = torch.tensor([4 / 6, 1 / 6, 1 / 6])
    entropy = float(-(p * p.log()).sum())
    assert spectral_entropy(spec) == pytest.approx(entropy)
    assert EntropyPolicy(scale=1.0).rank_for(spec, CTX) == math.ceil(math.exp(entropy))
    assert EntropyPolicy(scale=0.1).rank_for(spec, CTX) == 1


def test_uniform_caps_at_full_rank() -> None:
    spec = spectrum_with([1.0, 1.0, 1.0])
    assert UniformPolicy(2).rank_for(spec, CTX) == 2
    assert UniformPolicy(99).rank_for(spec, CTX) == 3


@pytest.mark.parametrize("name,options", [("energy", {"threshold": 0.0}), ("energy", {"threshold": 1.5}),
                                          ("uniform", {"rank": 0}), ("entropy", {"scale": -1.0})])
def test_invalid_policy_options_are_input_errors(name: str, options: dict) -> None:
    with pytest.raises(InputError):
        make_policy(name, **options)


def test_make_policy_unknown_name_lists_choices() -> None:
    with pytest.raises(InputError, match="uniform"):
        make_policy("nope")


def test_policies_serialise_with_their_name() -> None:
    assert EnergyPolicy(0.9).to_json() == {"name": "energy", "threshold": 0.9}
    assert {"energy", "entropy", "uniform"} <= set(POLICIES)
