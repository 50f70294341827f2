"""The build issue's acceptance numbers on the reference MNIST MLP (slow: trains it once, ~3 min,
then caches it under ~/.cache/edgecompress). Run with: python -m pytest -m slow tests/test_reference_mlp.py"""

from pathlib import Path

import pytest
import torch

from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.models import save_exported, trained_reference_mlp
from edgecompress.pipeline import BuildConfig, build

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("saved_as", ["export", "pickle"])
def test_uniform_rank_32_on_reference_mlp(saved_as: str, mnist_dir: Path, tmp_path: Path) -> None:
    model = trained_reference_mlp(mnist_dir)
    if saved_as == "export":
        path = save_exported(model, (1, 784), tmp_path / "mnist-mlp.pt2")
    else:
        path = tmp_path / "mnist-mlp.pt"
        torch.save(model, path)
    record = build(BuildConfig(model=path, out=tmp_path / "out", policy=UniformPolicy(32), eval_data=str(mnist_dir),
                               allow_pickle=saved_as == "pickle")).record
    assert record["totals"]["linear_param_ratio"] >= 10
    dense, compressed = record["artifacts"]["dense"], record["artifacts"]["compressed"]
    eval_check = [c for c in compressed["verification"] if c["inputs"] == "eval"][0]
    assert eval_check["samples"] == 10_000 and eval_check["top1_agreement"] >= 0.999
    assert dense["eval"]["accuracy"] - compressed["eval"]["accuracy"] <= 0.006
    assert compressed["bytes"] <= 1.02 * 4 * compressed["params"]
