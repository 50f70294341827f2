"""Benchmark setups: which MLP on which data, trained reproducibly and cached outside the repo.

A :class:`Setup` names a dataset, the MLP's layer sizes and its training recipe. ``trained_model``
trains it once (single thread, seed 0) and caches the state_dict under ``~/.cache/edgecompress``
(``EDGECOMPRESS_CACHE`` moves it); the MNIST setup is the reference MLP of shared/DESIGN.md §7 and
reuses :func:`edgecompress.models.trained_reference_mlp` and its cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from edgecompress.data import FASHION_MNIST_DIR, Dataset, load_dataset
from edgecompress.models import CACHE_DIR, mlp, train_classifier, trained_reference_mlp

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@dataclass(frozen=True)
class Setup:
    """One dataset + MLP + training recipe (Adam, cross-entropy, seed 0)."""

    name: str
    data: str  # dataset spec without the split: "digits", an IDX folder, "fashion-mnist"
    sizes: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float = 1e-3

    @property
    def model_name(self) -> str:
        """E.g. ``mnist-mlp-784-1024-1024-10`` (result files start with it)."""
        return f"{self.name}-mlp-{'-'.join(map(str, self.sizes))}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.sizes[0])

    def missing(self) -> str | None:
        """Why this setup cannot run here (its data is absent), or None."""
        if self.data == "digits":
            return None
        folder = FASHION_MNIST_DIR if self.data == "fashion-mnist" else Path(self.data)
        return None if folder.is_dir() else f"{folder} not found"

    def split(self, split: str) -> Dataset:
        """The train (fit), val (selection) or test (report) split."""
        return load_dataset(f"{self.data}:{split}")


def setups(mnist_dir: Path = MNIST_DIR) -> dict[str, Setup]:
    """The three benchmark setups by name."""
    return {
        "digits": Setup("digits", "digits", (64, 256, 256, 10), epochs=30, batch_size=64),
        "mnist": Setup("mnist", str(mnist_dir), (784, 1024, 1024, 10), epochs=10, batch_size=128),
        "fashion-mnist": Setup("fashion-mnist", "fashion-mnist", (784, 1024, 1024, 10), epochs=10, batch_size=128),
    }


def smoke(setup: Setup) -> Setup:
    """The same setup trained for 5 epochs (CI smoke runs)."""
    return replace(setup, epochs=5)


def _is_reference(setup: Setup, mnist_dir: Path) -> bool:
    return setup.name == "mnist" and Path(setup.data) == mnist_dir and setup.sizes == (784, 1024, 1024, 10)


def model_file(setup: Setup, *, cache: Path = CACHE_DIR, mnist_dir: Path = MNIST_DIR) -> Path:
    """Where the trained dense model's state_dict is cached (what the sweep configs' entries load)."""
    if _is_reference(setup, mnist_dir) and setup.batch_size == 128 and setup.lr == 1e-3:
        return cache / f"reference-mnist-mlp-e{setup.epochs}-seed0-v2.pt"  # models.trained_reference_mlp's cache
    return cache / "benchmarks" / f"{setup.model_name}-e{setup.epochs}-b{setup.batch_size}-seed0.pt"


def trained_model(setup: Setup, *, cache: Path = CACHE_DIR, mnist_dir: Path = MNIST_DIR) -> nn.Module:
    """The trained dense model (from the cache when it was trained before), in eval mode."""
    if _is_reference(setup, mnist_dir) and setup.batch_size == 128 and setup.lr == 1e-3:
        model = trained_reference_mlp(mnist_dir, cache=cache, epochs=setup.epochs)
    else:
        path = model_file(setup, cache=cache, mnist_dir=mnist_dir)
        model = mlp(setup.sizes)
        if path.is_file():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            train_classifier(model, setup.split("train"), epochs=setup.epochs, lr=setup.lr,
                             batch_size=setup.batch_size, seed=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
    return model.eval()
