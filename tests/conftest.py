"""Shared fixtures: small real models saved in every supported format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.models import mlp, save_exported

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
MNIST_DIR = SHARED / "datasets" / "mnist"


def make_small_mlp() -> nn.Sequential:
    """A 64-96-96-10 MLP with seeded random weights (used as a factory in tests)."""
    torch.manual_seed(0)
    return mlp((64, 96, 96, 10)).eval()


@pytest.fixture(scope="session")
def small_mlp() -> nn.Sequential:
    return make_small_mlp()


@pytest.fixture(scope="session")
def small_mlp_pt2(tmp_path_factory: pytest.TempPathFactory, small_mlp: nn.Sequential) -> Path:
    return save_exported(small_mlp, (1, 64), tmp_path_factory.mktemp("models") / "small.pt2")


@pytest.fixture(scope="session")
def small_mlp_state_dict(tmp_path_factory: pytest.TempPathFactory, small_mlp: nn.Sequential) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_sd.pt"
    torch.save(small_mlp.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_mlp_pickle(tmp_path_factory: pytest.TempPathFactory, small_mlp: nn.Sequential) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_full.pt"
    torch.save(small_mlp, path)
    return path


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found at {MNIST_DIR} (shared/ is not beside the project)")
    return MNIST_DIR
