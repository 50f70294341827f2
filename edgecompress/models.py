"""Built-in models: the reference MNIST MLP (shared/DESIGN.md §7), a small digits MLP, and a plain
supervised training loop used by ``demo`` and ``benchmarks/`` to make them reproducibly."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

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


@contextlib.contextmanager
def deterministic_torch(threads: int = 1) -> Iterator[None]:
    """Run torch as reproducibly as it allows: deterministic kernels and a fixed thread count (a float
    sum's order, and so its rounding, depends on how many threads share it). Restores both after."""
    previous_threads = torch.get_num_threads()
    previous_mode = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


def train_classifier(model: nn.Module, data: Dataset, *, epochs: int, lr: float = 1e-3, batch_size: int = 128,
                     seed: int = 0, reinitialize: bool = True, threads: int = 1,
                     on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Adam + cross-entropy on shuffled mini-batches; returns the model in eval mode.

    Reproducible where torch allows: with ``reinitialize`` (the default) every layer is re-initialised
    from ``seed`` first, so the result does not depend on what consumed the global random state before
    the model was built; training runs on ``threads`` threads with deterministic kernels. Results can
    still differ across CPUs (vector-instruction sets round differently) and torch versions.
    """
    if data.y is None:
        raise ValueError("training data needs labels")
    with deterministic_torch(threads):
        torch.manual_seed(seed)
        if reinitialize:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
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
    cached as a state_dict under ``cache`` (keyed by epochs and recipe version).

    Recipe v2 seeds the initialisation and trains on one thread with deterministic kernels; v1 (the
    ``-seed0.pt`` files of earlier versions) left the initialisation to the global random state."""
    path = cache / f"reference-mnist-mlp-e{epochs}-seed0-v2.pt"
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
