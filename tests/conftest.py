"""Shared fixtures: small real models saved in every supported format.

torch is imported inside the fixtures, so the runtime-only tests (bench, report, check) also run
where only onnxruntime is installed (a Raspberry Pi)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
MNIST_DIR = SHARED / "datasets" / "mnist"


@pytest.fixture(scope="session", autouse=True)
def private_table_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Budget searches in tests store their sensitivity tables in a folder of this run (never reuse one another
    run stored in ~/.cache), unless EDGECOMPRESS_TABLE_CACHE is set already; CLI subprocesses inherit it."""
    import os

    if "EDGECOMPRESS_TABLE_CACHE" in os.environ:
        yield os.environ["EDGECOMPRESS_TABLE_CACHE"]
        return
    os.environ["EDGECOMPRESS_TABLE_CACHE"] = str(tmp_path_factory.mktemp("sensitivity-tables"))
    yield os.environ["EDGECOMPRESS_TABLE_CACHE"]
    del os.environ["EDGECOMPRESS_TABLE_CACHE"]


@pytest.fixture(scope="module")
def single_thread() -> Any:
    """torch on one thread for a module of tiny matrices (thousands of small SVDs, a small MLP): on a
    shared 2-core machine the thread pool costs more than it saves. Use with ``pytestmark``."""
    import torch

    previous = torch.get_num_threads()
    yield torch.set_num_threads(1)
    torch.set_num_threads(previous)


def make_small_mlp() -> Any:
    """A 64-96-96-10 MLP with seeded random weights (also used as a --factory in tests)."""
    import torch

    from edgecompress.models import mlp

    torch.manual_seed(0)
    return mlp((64, 96, 96, 10)).eval()


@pytest.fixture(scope="session")
def small_mlp() -> Any:
    return make_small_mlp()


@pytest.fixture(scope="session")
def small_mlp_pt2(tmp_path_factory: pytest.TempPathFactory, small_mlp: Any) -> Path:
    from edgecompress.models import save_exported

    return save_exported(small_mlp, (1, 64), tmp_path_factory.mktemp("models") / "small.pt2")


@pytest.fixture(scope="session")
def small_mlp_state_dict(tmp_path_factory: pytest.TempPathFactory, small_mlp: Any) -> Path:
    import torch

    path = tmp_path_factory.mktemp("models") / "small_sd.pt"
    torch.save(small_mlp.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_mlp_pickle(tmp_path_factory: pytest.TempPathFactory, small_mlp: Any) -> Path:
    import torch

    path = tmp_path_factory.mktemp("models") / "small_full.pt"
    torch.save(small_mlp, path)
    return path


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found at {MNIST_DIR} (shared/ is not beside the project)")
    return MNIST_DIR
