"""The sensitivity table stored across runs (lowrank.table_cache.stored_table): a second budget search on the same
model, inputs and factors reuses it and finds the same plan without measuring; anything the table depends on
changing measures anew; a damaged file is re-measured; the cache can be turned off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.lowrank import budget as budget_module
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.table_cache import table_cache_dir
from edgecompress.lowrank.policies import PolicyContext, make_policy
from edgecompress.lowrank.spectrum import model_spectra

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tables"
    monkeypatch.setenv("EDGECOMPRESS_TABLE_CACHE", str(folder))
    return folder


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


def inputs(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((64, 32)).astype(np.float32)


def search(model: nn.Module, x: np.ndarray, target: float = 0.5) -> tuple[dict, PolicyContext]:
    """A params budget with measured sensitivity, fresh spectra and context (as a new process would have)."""
    context = PolicyContext()
    result = budget_compress(model, make_policy("energy"), model_spectra(model), Budget(target_params=target),
                             context=context, allocation="sensitivity", inputs=x, measured_ranks=4)
    return result.record, context


def test_second_search_reuses_the_stored_table_and_finds_the_same_plan(cache: Path, monkeypatch) -> None:
    model, x = small_model(), inputs()
    first, _ = search(model, x)
    assert first["table_cache"]["status"] == "stored" and len(list(cache.glob("*.json"))) == 1

    def no_measuring(*args, **kwargs):
        raise AssertionError("the table was measured again")

    monkeypatch.setattr(budget_module, "measure_sensitivity", no_measuring)
    second, _ = search(model, x)
    assert second["table_cache"] == {"status": "hit", "key": first["table_cache"]["key"]}
    assert second["table"] == first["table"] and second["ranks"] == first["ranks"]
    other_target, _ = search(model, x, target=0.3)  # another target: only the search runs
    assert other_target["table_cache"]["status"] == "hit"
    assert other_target["result"]["linear_params"] <= first["result"]["linear_params"]


@pytest.mark.parametrize("change", ["weights", "inputs", "rounding"])
def test_what_the_table_depends_on_changes_the_key(cache: Path, change: str) -> None:
    first, _ = search(small_model(), inputs())
    if change == "rounding":
        context = PolicyContext(round_to=4)
        model = small_model()
        record = budget_compress(model, make_policy("energy"), model_spectra(model), Budget(target_params=0.5),
                                 context=context, allocation="sensitivity", inputs=inputs(), measured_ranks=4).record
    else:
        record, _ = search(small_model(1 if change == "weights" else 0), inputs(1 if change == "inputs" else 0))
    assert record["table_cache"]["status"] == "stored" and record["table_cache"]["key"] != first["table_cache"]["key"]
    assert len(list(cache.glob("*.json"))) == 2


def test_a_damaged_table_is_measured_again(cache: Path) -> None:
    first, _ = search(small_model(), inputs())
    stored = next(cache.glob("*.json"))
    stored.write_text("{not json")
    again, _ = search(small_model(), inputs())
    assert again["table_cache"]["status"] == "stored" and again["table"] == first["table"]


def test_cache_can_be_turned_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_TABLE_CACHE", "off")
    assert table_cache_dir() is None
    record, _ = search(small_model(), inputs())
    assert "table_cache" not in record
    monkeypatch.delenv("EDGECOMPRESS_TABLE_CACHE")
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    assert table_cache_dir() == tmp_path / "sensitivity"
