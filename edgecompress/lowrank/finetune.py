"""Training loop for compressed models: cross-entropy plus distillation from the dense model,
best epoch on a validation split, progress bars, NaN guard, and a checkpoint on Ctrl-C.

``finetune(model, train, val, teacher=dense)`` is the public entry point; :func:`fit` is the loop
that SVD training (``lowrank/training.py``) also runs, with its regularizer added to the loss.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.bench.metrics import accuracy, top1
from edgecompress.data import Dataset
from edgecompress.errors import InputError, TrainingError
from edgecompress.export.verify import torch_outputs
from edgecompress.lowrank.factorize import LowRankLinear


class TrainingInterrupted(TrainingError):
    """Ctrl-C during training; the message says where the best checkpoint so far was saved."""

    exit_code = 130


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and loss settings of one training phase (Adam, cosine learning-rate decay).

    Attributes:
        epochs: passes over the training split.
        lr: peak learning rate (decays to 0 along a cosine over all steps).
        batch_size: samples per step.
        distill_weight: w in ``(1 - w) * CE(labels) + w * T^2 * KL(teacher || student)``.
        temperature: T, the softmax temperature of the distillation term.
        seed: shuffling and initialisation seed.
        keep: ``"best"`` keeps the epoch with the highest validation accuracy, ``"last"`` the last.
        threads: torch threads while training (None: leave torch's setting). One by default: the
            steps of a small factorized model are too short for threads to pay, and on a shared
            machine threads contend (measured 10x slower fine-tuning with 2 threads at load 5).
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    distill_weight: float = 0.5
    temperature: float = 2.0
    seed: int = 0
    keep: str = "best"
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise InputError(f"--distill-weight must be in [0, 1], got {self.distill_weight}")
        if self.temperature <= 0:
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--train-threads must be >= 1, got {self.threads}")
        if self.keep not in ("best", "last"):
            raise InputError(f"keep must be 'best' or 'last', got {self.keep!r}")


def phase_settings(options: Mapping[str, Any], **fixed: Any) -> TrainSettings:
    """Settings from build options: the :class:`TrainSettings` fields in ``options``, overridden by
    ``fixed``; None values keep the defaults."""
    chosen = {key: value for key, value in {**options, **fixed}.items()
              if key in TrainSettings.__dataclass_fields__ and value is not None}
    return TrainSettings(**chosen)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured (epoch 0 is the model before training)."""

    epoch: int
    loss: float | None
    task_loss: float | None
    regularizer: float | None
    val_accuracy: float
    total_rank: int | None
    seconds: float


@dataclass
class TrainingResult:
    """History of one phase and which epoch the model was left at."""

    phase: str
    settings: TrainSettings
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @property
    def best_val_accuracy(self) -> float:
        return self.history[self.best_epoch].val_accuracy

    def to_json(self) -> dict[str, Any]:
        """The phase's entry in build.json's ``training`` section."""
        return {"phase": self.phase, "settings": asdict(self.settings), "best_epoch": self.best_epoch,
                "best_val_accuracy": self.best_val_accuracy, "seconds": round(self.seconds, 2),
                "epochs": [asdict(stats) for stats in self.history]}


@dataclass
class TrainingReport:
    """build.json's ``training`` section: the method, its data, each phase's history, ranks, time."""

    method: str  # "finetune" | "svd-training"
    train: str
    val: str
    train_samples: int
    phases: list[TrainingResult]
    ranks: dict[str, dict[str, int | None]]

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "data": {"train": self.train, "val": self.val,
                                                "train_samples": self.train_samples},
                "phases": [phase.to_json() for phase in self.phases], "ranks": self.ranks,
                "seconds": round(self.seconds, 2)}


def factorized_rank(model: nn.Module) -> int:
    """Sum of the ranks of the model's factor pairs."""
    return sum(module.rank for module in model.modules() if isinstance(module, LowRankLinear))


def check_labelled(model: nn.Module, data: Dataset, what: str = "training data") -> None:
    """Raise a one-line :class:`InputError` unless ``data`` has labels the model's outputs can score."""
    if data.y is None:
        raise InputError(f"{what} {data.name} has no labels (y); fine-tuning and SVD training need labelled data")
    if len(data) == 0:
        raise InputError(f"{what} {data.name} is empty")
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(data.x[:2]))
    if out.ndim != 2:
        raise InputError(f"the model's output has shape {tuple(out.shape)}; training needs (batch, classes) logits")
    low, high = int(data.y.min()), int(data.y.max())
    if low < 0 or high >= out.shape[1]:
        raise InputError(f"the model outputs {out.shape[1]} values per sample but the labels of {data.name} "
                         f"range over {low}..{high}; the labels must be class indices 0..{out.shape[1] - 1}")


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 2048) -> torch.Tensor:
    """Logits of ``model`` (eval mode, no grad) on numpy inputs, batched."""
    model.eval()
    return torch.from_numpy(torch_outputs(model, x, batch_size))


def accuracy_of(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of a torch model on labelled data."""
    assert data.y is not None
    return accuracy(data.y, top1(predict(model, data.x).numpy()))


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                      weight: float, temperature: float) -> torch.Tensor:
    """``(1 - w) * CE(logits, labels) + w * T^2 * KL(softmax(teacher/T) || softmax(logits/T))``."""
    task = F.cross_entropy(logits, labels)
    if teacher is None or weight == 0.0:
        return task
    soft = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - weight) * task + weight * soft


def save_checkpoint(state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> Path:
    """Write ``{"state_dict": ..., "meta": ...}`` atomically (loadable with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, path)
    return path


class _Bar:
    """A rich progress bar (batches of the current epoch) plus one printed line per epoch; silent when off."""

    def __init__(self, enabled: bool, phase: str, epochs: int, steps: int) -> None:
        self._progress: Any = None
        self._task: Any = None
        self.phase, self.epochs, self.steps = phase, epochs, steps
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from edgecompress.cli.console import console  # the CLI's stderr console: nests under its spinner

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      console=console, transient=True)

    def __enter__(self) -> "_Bar":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, epoch: int) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(f"{self.phase} epoch {epoch}/{self.epochs}",
                                                 total=self.steps, status="")

    def step(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=f"loss {loss:.4f}")

    def epoch_done(self, stats: EpochStats) -> None:
        if self._progress is not None:
            self._progress.console.print(describe_epoch(self.phase, self.epochs, stats))


def describe_epoch(phase: str, epochs: int, stats: EpochStats) -> str:
    """One line per epoch: loss, validation accuracy, total rank."""
    parts = [f"{phase} epoch {stats.epoch}/{epochs}"]
    if stats.loss is not None:
        parts.append(f"loss {stats.loss:.4f}")
    parts.append(f"val acc {stats.val_accuracy:.2%}")
    if stats.total_rank is not None:
        parts.append(f"total rank {stats.total_rank}")
    parts.append(f"{stats.seconds:.1f}s")
    return " · ".join(parts)


@contextlib.contextmanager
def _checkpoint_on_interrupt(best: dict[str, Any], checkpoint: Path | None, phase: str) -> Iterator[None]:
    """Turn Ctrl-C into :class:`TrainingInterrupted` after saving the best state so far."""
    try:
        yield
    except KeyboardInterrupt:
        where = ""
        if checkpoint is not None and best.get("state") is not None:
            meta = {"phase": phase, "epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                    "modules": best["modules"]}
            where = f"; best state so far (epoch {best['epoch']}, val acc {best['val_accuracy']:.2%}) " \
                    f"saved to {save_checkpoint(best['state'], meta, checkpoint)}"
        raise TrainingInterrupted(f"{phase} interrupted{where}; no build output was written") from None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: unchanged), restoring the previous setting."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Hooks:
    """What a training phase adds to the plain loop (the defaults add nothing).

    Attributes:
        shrink_every: call :meth:`shrink` every this many steps (0: never).
    """

    shrink_every: int = 0

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term, or None."""
        return None

    def total_rank(self, model: nn.Module) -> int | None:
        """The rank reported per epoch."""
        return factorized_rank(model) or None

    def evaluate(self, model: nn.Module, data: Dataset) -> float:
        """The validation metric (higher is better)."""
        return accuracy_of(model, data)

    def shrink(self, model: nn.Module) -> bool:
        """Remove parameters in place; True when shapes changed (the optimiser is then rebuilt)."""
        return False

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (default: one, at ``lr``)."""
        return [{"params": list(model.parameters()), "lr": lr}]


def _optimizer(model: nn.Module, hooks: Hooks, settings: TrainSettings, total_steps: int,
               done: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a cosine decay to 0 over ``total_steps``, starting ``done`` steps in."""
    optimizer = torch.optim.Adam(hooks.param_groups(model, settings.lr))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * (step + done) / total_steps)))


def _module_ranks(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: {"type": type(m).__name__, "rank": getattr(m, "rank", None)}
            for name, m in model.named_modules() if name}


def fit(model: nn.Module, train: Dataset, val: Dataset, settings: TrainSettings, *,
        teacher_logits: torch.Tensor | None = None, hooks: Hooks | None = None, phase: str = "finetune",
        checkpoint: Path | None = None, progress: bool = False) -> TrainingResult:
    """Train ``model`` in place; afterwards it holds the kept epoch's weights (best or last).

    Args:
        model: the module to train (all its parameters).
        train: labelled training split.
        val: labelled validation split (picks the best epoch; never the test split).
        settings: optimiser and loss settings.
        teacher_logits: the dense model's logits on ``train.x`` (distillation), or None.
        hooks: regularizer, rank, validation metric and shrinking of the phase.
        phase: name in progress lines, errors and the record.
        checkpoint: where Ctrl-C saves the best state so far (None: nowhere).
        progress: show a progress bar.

    Raises:
        InputError: unlabelled data or labels the model cannot score.
        TrainingError: the loss became NaN or infinite.
        TrainingInterrupted: Ctrl-C (after saving ``checkpoint``).
    """
    hooks = hooks or Hooks()
    if hooks.shrink_every and settings.keep != "last":
        raise ValueError("a phase that shrinks the model must keep its last epoch")
    check_labelled(model, train)
    check_labelled(model, val, "validation data")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    steps = math.ceil(len(x) / settings.batch_size)
    optimizer, schedule = _optimizer(model, hooks, settings, steps * settings.epochs, 0)
    result = TrainingResult(phase, settings)
    best: dict[str, Any] = {"state": None, "epoch": 0, "val_accuracy": -1.0}
    regularized = False
    started = time.perf_counter()

    def record(epoch: int, sums: list[float] | None, seconds: float) -> EpochStats:
        means: list[float | None] = [s / len(x) for s in sums] if sums else [None, None, None]
        if sums and not regularized:
            means[2] = None
        stats = EpochStats(epoch, *means, val_accuracy=hooks.evaluate(model, val),
                           total_rank=hooks.total_rank(model), seconds=round(seconds, 2))
        result.history.append(stats)
        if settings.keep == "last" or stats.val_accuracy > best["val_accuracy"]:
            best.update(state=_state_copy(model), epoch=epoch, val_accuracy=stats.val_accuracy,
                        modules=_module_ranks(model))
        return stats

    with _Bar(progress, phase, settings.epochs, steps) as bar, _checkpoint_on_interrupt(best, checkpoint, phase), \
            torch_threads(settings.threads):
        bar.epoch_done(record(0, None, 0.0))
        for epoch in range(1, settings.epochs + 1):
            bar.start_epoch(epoch)
            epoch_start = time.perf_counter()
            order = torch.randperm(len(x), generator=generator)
            sums = [0.0, 0.0, 0.0]
            model.train()
            for step, start in enumerate(range(0, len(x), settings.batch_size)):
                idx = order[start:start + settings.batch_size]
                teacher = teacher_logits[idx] if teacher_logits is not None else None
                task = distillation_loss(model(x[idx]), y[idx], teacher, settings.distill_weight,
                                         settings.temperature)
                extra = hooks.regularizer(model)
                regularized = extra is not None
                loss = task if extra is None else task + extra
                if not torch.isfinite(loss):
                    raise TrainingError(f"{phase} diverged: the loss became {float(loss.detach())} at epoch {epoch}, "
                                        f"step {step + 1}; lower --lr (now {settings.lr:g})"
                                        + (" or the regularizer weights" if extra is not None else ""))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                for i, value in enumerate((loss, task, extra if extra is not None else torch.zeros(()))):
                    sums[i] += float(value.detach()) * len(idx)
                bar.step(float(loss.detach()))
                done = (epoch - 1) * steps + step + 1
                if hooks.shrink_every and done % hooks.shrink_every == 0 and hooks.shrink(model):
                    optimizer, schedule = _optimizer(model, hooks, settings, steps * settings.epochs, done)
            bar.epoch_done(record(epoch, sums, time.perf_counter() - epoch_start))
    if settings.keep == "best":
        model.load_state_dict(best["state"])
    result.best_epoch = best["epoch"]
    result.seconds = time.perf_counter() - started
    return result


def teacher_outputs(teacher: nn.Module | None, data: Dataset) -> torch.Tensor | None:
    """The teacher's logits on the training inputs (computed once, reused every epoch)."""
    return None if teacher is None else predict(teacher, data.x)


def finetune(model: nn.Module, train: Dataset, val: Dataset, *, teacher: nn.Module | None = None,
             settings: TrainSettings | None = None, checkpoint: Path | None = None,
             progress: bool = False) -> TrainingResult:
    """Fine-tune a compressed model in place (factors, biases, dense layers) with cross-entropy
    plus distillation from ``teacher``'s outputs; keeps the epoch with the best validation accuracy.

    Example:
        >>> small, plan = compress(dense, UniformPolicy(16))
        >>> result = finetune(small, load_dataset("digits:train"), load_dataset("digits:val"), teacher=dense)
    """
    settings = settings or TrainSettings()
    with torch_threads(settings.threads):
        return fit(model, train, val, settings, teacher_logits=teacher_outputs(teacher, train),
                   phase="finetune", checkpoint=checkpoint, progress=progress)
