"""Distillation without labels: train a compressed model to reproduce the dense model's outputs.

The teacher (the dense model) runs once over the training batches and its outputs are cached:
the token states (B, T, H) and the sentence embedding (masked mean + L2 normalize, see
:mod:`edgecompress.lowrank.embedding`), and optionally every hidden state. The student (the
compressed model) is trained with Adam on

    token_weight * ||S - T||^2 / ||T||^2   over real tokens (padding excluded)
  + cosine_weight * mean(1 - cos(s, t))     of the sentence embeddings
  + hidden_weight * mean over layers of ||S_l - T_l||^2 / ||T_l||^2   (``output_hidden_states``)

with the embedding tables frozen. Every ``eval_every`` steps the mean cosine between student and
teacher embeddings on a held-out split is measured and the best state is kept (never the last by
default, never an accuracy: there are no labels). Deterministic for a seed and a thread count.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgecompress.errors import InputError, TrainingError
from edgecompress.lowrank.embedding import Batch, cosine_stats, embed, embedding_of, forward, mask_of, token_states
from edgecompress.lowrank.finetune import torch_threads

Log = Callable[[str], None]


@dataclass(frozen=True)
class DistillSettings:
    """Hyper-parameters of :func:`distill` (defaults: what works on all-MiniLM-L6-v2)."""

    steps: int = 600
    lr: float = 1e-4
    warmup: int = 20  # linear warm-up steps, then cosine decay to ``final_lr_fraction * lr`` (see _lr_factor)
    final_lr_fraction: float = 0.1
    token_weight: float = 1.0
    cosine_weight: float = 1.0
    hidden_weight: float = 0.0
    eval_every: int = 50
    seed: int = 0
    threads: int = 1
    max_seconds: float | None = None  # stop early (at a step boundary) after this much training time
    trainable: str = "all-but-embeddings"  # or "factors": only the LowRankLinear factor pairs
    mask_key: str = "attention_mask"
    clip: float = 1.0  # gradient norm clip (0: none)
    dropout: bool = True  # train the student in training mode (dropout on); False: eval mode, no dropout

    def __post_init__(self) -> None:
        if self.steps < 0 or self.eval_every < 1:
            raise InputError("distillation needs steps >= 0 and eval_every >= 1")
        if self.lr <= 0 or min(self.token_weight, self.cosine_weight, self.hidden_weight) < 0:
            raise InputError("distillation needs lr > 0 and non-negative loss weights")
        if self.trainable not in ("all-but-embeddings", "factors"):
            raise InputError(f"trainable must be 'all-but-embeddings' or 'factors', got {self.trainable!r}")


@dataclass
class DistillResult:
    """The trained student (best held-out state loaded) and the record of the run."""

    model: nn.Module
    settings: DistillSettings
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluation
    best_step: int = 0
    steps_done: int = 0
    seconds: float = 0.0  # wall time of the training loop (evaluations included)
    cpu_seconds: float = 0.0  # CPU time of this process meanwhile: ~ wall time on an idle machine
    interrupted: bool = False  # Ctrl-C stopped the training (the best held-out state so far is loaded)
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # copy of the best weights

    @property
    def best(self) -> dict[str, Any]:
        return next(row for row in self.history if row["step"] == self.best_step)

    def to_json(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "best_step": self.best_step, "steps_done": self.steps_done,
                "seconds": round(self.seconds, 1), "cpu_seconds": round(self.cpu_seconds, 1), "best": self.best,
                "history": self.history}


@dataclass(frozen=True)
class _Target:
    """The teacher's cached outputs for one training batch."""

    tokens: torch.Tensor | None
    embedding: torch.Tensor
    hidden: tuple[torch.Tensor, ...] = ()


def _run(model: nn.Module, batch: Batch, hidden: bool) -> Any:
    return forward(model, batch, output_hidden_states=True) if hidden else forward(model, batch)


def _hidden_states(output: Any) -> tuple[torch.Tensor, ...]:
    states = output.get("hidden_states") if hasattr(output, "get") else None
    if not states:
        raise InputError("hidden_weight > 0 needs a model returning hidden_states when called with "
                         "output_hidden_states=True (Hugging Face models do)")
    return tuple(states[1:])  # the embedding output is not trained (embeddings are frozen)


def teacher_targets(teacher: nn.Module, batches: Sequence[Batch], settings: DistillSettings) -> list[_Target]:
    """Run the teacher once over ``batches`` and keep what the losses need."""
    targets = []
    hidden = settings.hidden_weight > 0
    with torch.no_grad():
        for batch in batches:
            output = _run(teacher, batch, hidden)
            mask = mask_of(batch, settings.mask_key)
            targets.append(_Target(token_states(output), embedding_of(output, mask),
                                   _hidden_states(output) if hidden else ()))
    return targets


def masked_relative_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``||S - T||^2 / ||T||^2`` over the real-token positions of (B, T, H) states."""
    if mask is not None:
        keep = mask != 0
        student, teacher = student[keep], teacher[keep]
    return (student - teacher).square().sum() / teacher.square().sum().clamp_min(1e-12)


def distill_loss(output: Any, target: _Target, mask: torch.Tensor | None, settings: DistillSettings) -> torch.Tensor:
    """The weighted loss of one student output against the teacher's cached target."""
    cos = nn.functional.cosine_similarity(embedding_of(output, mask), target.embedding, dim=-1)
    loss = settings.cosine_weight * (1.0 - cos).mean()
    tokens = token_states(output)
    if settings.token_weight > 0 and tokens is not None and target.tokens is not None:
        loss = loss + settings.token_weight * masked_relative_mse(tokens, target.tokens, mask)
    if settings.hidden_weight > 0:
        states = _hidden_states(output)
        terms = [masked_relative_mse(s, t, mask) for s, t in zip(states, target.hidden)]
        loss = loss + settings.hidden_weight * torch.stack(terms).mean()
    return loss


def trainable_parameters(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze what is not trained (embedding tables always) and return the rest."""
    from edgecompress.lowrank.factorize import LowRankLinear

    for parameter in model.parameters():
        parameter.requires_grad_(trainable == "all-but-embeddings")
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.requires_grad_(False)
        elif trainable == "factors" and isinstance(module, LowRankLinear):
            for parameter in module.parameters():
                parameter.requires_grad_(True)
    chosen = [p for p in model.parameters() if p.requires_grad]
    if not chosen:
        raise InputError("nothing to train: the model has no trainable parameters outside its embeddings")
    return chosen


class _Clock:
    """Training time so far (set by the loop), so a time-capped run can anneal by time."""

    def __init__(self) -> None:
        self.elapsed = 0.0


def _lr_factor(step: int, settings: DistillSettings, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over the run.

    The run's progress is the larger of its step fraction and, under ``max_seconds``, its time
    fraction: a run stopped by the clock ends annealed instead of at a barely decayed rate (which
    loses most of what the last steps could give). The time part makes a capped run's schedule
    depend on the machine's speed; without ``max_seconds`` it is purely step-based.
    """
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    span = max(settings.steps - settings.warmup, 1)
    progress = min((step - settings.warmup) / span, 1.0)
    if settings.max_seconds:
        progress = max(progress, min(elapsed / settings.max_seconds, 1.0))
    low = settings.final_lr_fraction
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def distill(student: nn.Module, teacher: nn.Module, train: Sequence[Batch], held_out: Sequence[Batch],
            settings: DistillSettings = DistillSettings(), *, progress: bool = False,
            log: Log | None = None) -> DistillResult:
    """Train ``student`` (in place) to match ``teacher`` on unlabeled ``train`` batches.

    Args:
        student: the compressed model (trained in place; the best held-out state is loaded at the end).
        teacher: the dense model; not modified.
        train: batches of named inputs (``dict[str, Tensor]``, padded, with an attention mask).
        held_out: batches of a split disjoint from ``train``: the best state is chosen on it.
        settings: hyper-parameters.
        progress: show a rich progress bar (only on a terminal).
        log: called with one line per evaluation.

    Raises:
        InputError: empty splits or settings that do not fit the model.
        TrainingError: the loss became NaN or infinite.
    """
    if not train or not held_out:
        raise InputError("distillation needs non-empty training and held-out batches")
    with torch_threads(settings.threads):
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        teacher.eval()
        targets = teacher_targets(teacher, train, settings)
        reference = embed(teacher, list(held_out), mask_key=settings.mask_key)
        parameters = trainable_parameters(student, settings.trainable)
        optimizer = torch.optim.Adam(parameters, lr=settings.lr)
        clock = _Clock()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings, clock.elapsed))
        result = DistillResult(student, settings)
        _evaluate(student, held_out, reference, result, 0, 0.0, settings, log)
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            _train(student, train, targets, held_out, reference, parameters, optimizer, scheduler, clock, generator,
                   result, settings, progress, log)
        except KeyboardInterrupt:  # the step-0 evaluation above always left a best state
            result.interrupted = True
            if log:
                log("distillation interrupted (Ctrl-C): the best held-out state so far is kept")
        result.seconds = time.perf_counter() - started
        result.cpu_seconds = time.process_time() - cpu_started
        if result.best_state is not None:
            student.load_state_dict(result.best_state)
        for parameter in student.parameters():
            parameter.requires_grad_(True)
        student.eval()
        return result


def _train(student: nn.Module, train: Sequence[Batch], targets: list[Any], held_out: Sequence[Batch],
           reference: torch.Tensor, parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any,
           clock: _Clock, generator: torch.Generator, result: DistillResult, settings: DistillSettings, progress: bool,
           log: Log | None) -> None:
    """The training loop of :func:`distill` (each evaluation keeps the best state in ``result``)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    order: list[int] = []
    losses: list[float] = []
    with _bar(progress, settings.steps) as bar:
        for step in range(1, settings.steps + 1):
            if not order:
                order = torch.randperm(len(train), generator=generator).tolist()
            index = order.pop()
            student.train(settings.dropout)
            batch = train[index]
            loss = distill_loss(_run(student, batch, settings.hidden_weight > 0), targets[index],
                                mask_of(batch, settings.mask_key), settings)
            if not torch.isfinite(loss):
                raise TrainingError(f"distillation diverged at step {step} (loss {float(loss)}); lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip > 0:
                nn.utils.clip_grad_norm_(parameters, settings.clip)
            optimizer.step()
            elapsed = clock.elapsed = time.perf_counter() - started
            scheduler.step()
            losses.append(float(loss.detach()))
            result.steps_done = step
            out_of_time = settings.max_seconds is not None and elapsed >= settings.max_seconds
            if step % settings.eval_every == 0 or step == settings.steps or out_of_time:
                mean_loss = sum(losses) / len(losses)
                losses = []
                _evaluate(student, held_out, reference, result, step, mean_loss, settings, log, elapsed,
                          time.process_time() - cpu_started)
            bar(step, losses[-1] if losses else float(loss.detach()), result)
            if out_of_time:
                break


def _evaluate(student: nn.Module, held_out: Sequence[Batch], reference: torch.Tensor, result: DistillResult,
              step: int, loss: float, settings: DistillSettings, log: Log | None, seconds: float = 0.0,
              cpu_seconds: float = 0.0) -> None:
    """Measure the held-out cosine; keep a copy of the state in ``result`` when it is the best so far."""
    student.eval()
    mean, p5 = cosine_stats(embed(student, list(held_out), mask_key=settings.mask_key), reference)
    row = {"step": step, "loss": round(loss, 6) if step else None, "held_out_cosine": round(mean, 6),
           "held_out_cosine_p5": round(p5, 6), "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
    best = not result.history or mean > result.best["held_out_cosine"]
    result.history.append(row)
    if log:
        log(f"distill step {step}/{settings.steps}: held-out cosine {mean:.4f} (p5 {p5:.4f})"
            + (f", loss {loss:.4f}" if step else "") + (" *best*" if best else ""))
    if best:
        result.best_step = step
        result.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}


class _bar:
    """A rich progress bar over the steps, or nothing (not a terminal / not asked)."""

    def __init__(self, enabled: bool, steps: int) -> None:
        from edgecompress.cli.console import interactive

        self._progress: Any = None
        self._task: Any = None
        if enabled and interactive():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            from edgecompress.cli.console import console

            self._progress = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=console, transient=True)
            self._task = self._progress.add_task("distill", total=steps, status="")

    def __enter__(self) -> Callable[[int, float, DistillResult], None]:
        if self._progress is not None:
            self._progress.start()
        return self._update

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _update(self, step: int, loss: float, result: DistillResult) -> None:
        if self._progress is not None:
            best = result.best["held_out_cosine"]
            self._progress.update(self._task, completed=step, status=f"loss {loss:.4f} · best held-out cos {best:.4f}")
