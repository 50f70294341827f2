"""Built-in models: the reference MNIST MLP (shared/DESIGN.md §7), a small digits MLP, and a plain
supervised training loop used by ``demo`` and ``benchmarks/`` to make them reproducibly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgecompress.data import Dataset, load_dataset

CACHE_DIR = Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear/ReLU stack over ``sizes`` (no activation after the last layer)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def reference_mnist_mlp() -> nn.Sequential:
    """784-1024-1024-10, the reference model of shared/DESIGN.md §7."""
    return mlp((784, 1024, 1024, 10))


def digits_mlp() -> nn.Sequential:
    """64-256-256-10 MLP for scikit-learn's 8x8 digits."""
    return mlp((64, 256, 256, 10))


def train_classifier(model: nn.Module, data: Dataset, *, epochs: int, lr: float = 1e-3, batch_size: int = 128,
                     seed: int = 0, on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Adam + cross-entropy, shuffled mini-batches from a fixed seed; returns the model in eval mode."""
    if data.y is None:
        raise ValueError("training data needs labels")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch:
            on_epoch(epoch, total / len(x))
    return model.eval()


def test_accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of a torch model on a labelled dataset (eval mode, batched)."""
    from edgecompress.lowrank.finetune import accuracy_of  # the training loop's own measure

    return accuracy_of(model, data)


def trained_reference_mlp(mnist: str | Path, *, cache: Path = CACHE_DIR, epochs: int = 10) -> nn.Sequential:
    """The reference MNIST MLP trained per §7 (Adam 1e-3, batch 128, seed 0, first 55k images),
    cached as a state_dict under ``cache`` (keyed by epochs)."""
    path = cache / f"reference-mnist-mlp-e{epochs}-seed0.pt"
    model = reference_mnist_mlp()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train_classifier(model, load_dataset(str(mnist), "train"), epochs=epochs, lr=1e-3, batch_size=128, seed=0)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def save_exported(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Save ``model`` as a ``torch.export`` program (.pt2)."""
    program = torch.export.export(model.eval(), (torch.zeros(input_shape),))
    torch.export.save(program, path)
    return path
