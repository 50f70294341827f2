"""SVD training API: regularizer values on known matrices, decomposition, energy pruning, folding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.factorize import LowRankLinear, compress, count_linear_params
from edgecompress.lowrank.training import (SVDLinear, SvdTrainingPolicy, decompose_, prune_singular_values_,
                                           svd_layers, svd_regularizer, to_low_rank, total_rank)
from edgecompress.models import mlp


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))
    return q


def value(term: torch.Tensor) -> float:
    return term.detach().item()


def svd_layer(u: torch.Tensor, s: list[float], v: torch.Tensor, bias: bool = True) -> SVDLinear:
    return SVDLinear(u, torch.tensor(s), v, torch.zeros(u.shape[0]) if bias else None)


def test_orthogonality_is_zero_for_orthonormal_factors_and_known_otherwise() -> None:
    u, v = orthonormal(7, 3, 0), orthonormal(5, 3, 1)
    assert value(svd_layer(u, [3, 2, 1], v).orthogonality()) == pytest.approx(0.0, abs=1e-10)
    # 2U: U^T U - I = 3I -> ||.||_F^2 = 9r; V orthonormal -> 0; divided by r^2 = 9
    assert value(svd_layer(2 * u, [3, 2, 1], v).orthogonality()) == pytest.approx(9 * 3 / 9)
    # both scaled by 2: 2 * 9r / r^2
    assert value(svd_layer(2 * u, [3, 2, 1], 2 * v).orthogonality()) == pytest.approx(2 * 9 * 3 / 9)
    # two equal unit columns: U^T U - I = [[0, 1], [1, 0]] -> 2, over r^2 = 4
    dup = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert value(svd_layer(dup, [1, 1], orthonormal(4, 2, 2)).orthogonality()) == pytest.approx(2 / 4)


def test_sparsity_terms_on_known_singular_values() -> None:
    layer = svd_layer(orthonormal(4, 2, 0), [3.0, -4.0], orthonormal(4, 2, 1))
    assert value(layer.sparsity("l1")) == pytest.approx(7.0)
    assert value(layer.sparsity("hoyer")) == pytest.approx(7.0 / 5.0)
    one_hot = svd_layer(orthonormal(4, 3, 0), [2.0, 0.0, 0.0], orthonormal(4, 3, 1))
    assert value(one_hot.sparsity("hoyer")) == pytest.approx(1.0)  # Hoyer's minimum: a single value
    flat = svd_layer(orthonormal(4, 4, 0), [1.0] * 4, orthonormal(4, 4, 1))
    assert value(flat.sparsity("hoyer")) == pytest.approx(math.sqrt(4))  # its maximum: sqrt(r)
    with pytest.raises(InputError, match="--sparsity"):
        layer.sparsity("l0")


def test_svd_regularizer_weights_and_sums_over_layers() -> None:
    model = nn.Sequential(svd_layer(2 * orthonormal(6, 3, 0), [3.0, 4.0, 0.0], orthonormal(5, 3, 1)),
                          svd_layer(orthonormal(4, 2, 2), [1.0, 1.0], orthonormal(6, 2, 3)))
    orth = 9 * 3 / 9 + 0.0
    l1 = 7.0 + 2.0
    hoyer = 7.0 / 5.0 + 2.0 / math.sqrt(2.0)
    assert value(svd_regularizer(model, lambda_orth=0.5, lambda_sparsity=0.1, sparsity="l1")) == pytest.approx(
        0.5 * orth + 0.1 * l1)
    assert value(svd_regularizer(model, lambda_orth=0.0, lambda_sparsity=2.0)) == pytest.approx(2.0 * hoyer)
    assert value(SvdTrainingPolicy("l1", 0.5, 0.1).regularizer(model)) == pytest.approx(0.5 * orth + 0.1 * l1)


def test_decompose_keeps_outputs_and_gradients_reach_the_factors() -> None:
    torch.manual_seed(0)
    model = mlp((12, 16, 8, 3))
    x = torch.randn(5, 12)
    before = model(x).detach()
    layers = decompose_(model, exclude="^4$")
    assert list(layers) == ["0", "2"] and isinstance(model[4], nn.Linear)
    assert [layer.rank for layer in layers.values()] == [12, 8]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    svd_regularizer(model, lambda_sparsity=0.1).backward()
    assert all(layer.s.grad is not None and layer.u.grad is not None for layer in layers.values())


def test_decompose_refuses_a_model_without_linear_layers() -> None:
    with pytest.raises(InputError, match="no Linear layer"):
        decompose_(nn.Sequential(nn.ReLU()))
    with pytest.raises(InputError, match="bare nn.Linear"):  # in place is impossible on the root itself
        decompose_(nn.Linear(4, 4))


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=24),
       energy=st.floats(0.0, 0.9))
def test_pruning_keeps_the_stated_energy_with_the_fewest_values(values: list[float], energy: float) -> None:
    s = torch.tensor(values)
    if float((s ** 2).sum()) < 1e-6:
        s[0] = 1.0
    r = len(s)
    layer = svd_layer(orthonormal(r + 2, r, 0), s.tolist(), orthonormal(r + 1, r, 1))
    squares = np.sort(s.numpy().astype(np.float64) ** 2)[::-1]
    kept = layer.prune_(energy)
    assert kept == layer.rank == layer.s.numel()
    total = squares.sum()
    assert squares[:kept].sum() >= (1 - energy) * total - 1e-9 * total
    assert kept == 1 or squares[:kept - 1].sum() < (1 - energy) * total + 1e-9 * total  # fewest possible
    assert np.allclose(np.sort(np.abs(layer.s.detach().numpy()))[::-1], np.sqrt(squares[:kept]), rtol=1e-5)


def test_pruning_drops_the_smallest_components_and_keeps_the_function_of_the_rest() -> None:
    u, v = orthonormal(6, 4, 0), orthonormal(5, 4, 1)
    layer = svd_layer(u, [0.1, -5.0, 2.0, 0.01], v)
    x = torch.randn(3, 5)
    kept_part = ((x @ v[:, 1:3]) * torch.tensor([-5.0, 2.0])) @ u[:, 1:3].T
    assert prune_singular_values_(nn.Sequential(layer), 0.01) == {"0": (4, 2)}
    torch.testing.assert_close(layer(x), kept_part)
    assert layer.energy_kept == pytest.approx(29 / (29 + 0.01 + 0.0001))
    with pytest.raises(InputError, match="--prune-energy"):
        prune_singular_values_(nn.Sequential(layer), 1.0)


def test_to_low_rank_folds_into_factor_pairs_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = mlp((40, 48, 48, 6))
    decompose_(model)
    ranks = prune_singular_values_(model, 0.5)
    assert total_rank(model) == sum(after for _, after in ranks.values())
    x = torch.randn(8, 40)
    small, plan = to_low_rank(model)
    torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=1e-4)
    assert isinstance(model[0], SVDLinear), "to_low_rank must not modify its input"
    assert not svd_layers(small)
    for layer in plan.layers:
        module = small.get_submodule(layer.name)
        if layer.factorized:
            assert isinstance(module, LowRankLinear) and module.rank == ranks[layer.name][1] == layer.rank
            assert layer.energy_kept >= 0.5
        else:  # the 48->6 head at its pruned rank does not pay: kept as a dense Linear
            assert isinstance(module, nn.Linear) and "does not pay" in layer.reason
    assert plan.linear_params_after == count_linear_params(small) < count_linear_params(mlp((40, 48, 48, 6)))


def test_to_low_rank_needs_a_decomposed_model() -> None:
    with pytest.raises(InputError, match="decompose_"):
        to_low_rank(mlp((4, 4)))


def test_policy_validates_its_options_and_refuses_plain_compress() -> None:
    for bad in ({"sparsity": "l2"}, {"lambda_orth": -1.0}, {"lambda_sparsity": float("nan")}, {"prune_energy": 1.0}):
        with pytest.raises(InputError):
            SvdTrainingPolicy(**bad)
    assert SvdTrainingPolicy().to_json()["name"] == "svd-training"
    with pytest.raises(InputError, match="--train"):
        compress(mlp((8, 8)), SvdTrainingPolicy())


def test_policy_keeps_the_head_dense_by_excluding_the_last_selected_linear() -> None:
    model = mlp((4, 5, 6, 3))
    assert SvdTrainingPolicy().exclude(model, None) == "^4$"
    assert SvdTrainingPolicy().exclude(model, "^4$") == "^2$|^4$"  # the last one still selected
    assert SvdTrainingPolicy(keep_head=False).exclude(model, "^0$") == "^0$"
    assert SvdTrainingPolicy().exclude(nn.Sequential(nn.ReLU()), None) is None
    assert list(decompose_(model, exclude=SvdTrainingPolicy().exclude(model, None))) == ["0", "2"]
