"""``build --distill DATA``: label-free distillation of the compressed model after any policy.

The data (an .npz, a text file of sentences for a model folder with a tokenizer, or any one-input
dataset; labels are ignored) is split into training batches and a held-out split (its last 10%,
at most 256 samples) on which the best state is kept. Training is
:func:`edgecompress.lowrank.distill.distill` on the build's ``--quality-output`` (through
:class:`edgecompress.embed_io.NamedInputs`). Steps and wall time are capped; Ctrl-C stops the
training (distill keeps the best held-out state) and lets the build go on (a second Ctrl-C aborts it).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from torch import nn

from edgecompress.data import Dataset, slice_inputs
from edgecompress.embed_io import NamedInputs, embeddings
from edgecompress.errors import InputError
from edgecompress.length_groups import padded_batches
from edgecompress.lowrank.distill import DistillSettings, distill
from edgecompress.lowrank.embedding import cosine_stats
from edgecompress.spec import ModelIO

HELD_OUT_FRACTION = 0.1
HELD_OUT_MAX = 256


@dataclass(frozen=True)
class DistillOptions:
    """What ``--distill`` and its flags ask for."""

    data: str
    steps: int = DistillSettings.steps
    minutes: float | None = None  # wall-time cap of the training loop
    lr: float = DistillSettings.lr
    batch: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"--distill-steps must be >= 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise InputError(f"--distill-minutes must be positive, got {self.minutes}")
        if self.lr <= 0 or self.batch < 1:
            raise InputError(f"--distill-lr must be > 0 and --distill-batch >= 1 (got {self.lr}, {self.batch})")

    def settings(self, seed: int, threads: int, mask_key: str | None) -> DistillSettings:
        return DistillSettings(steps=self.steps, lr=self.lr, warmup=min(20, max(1, self.steps // 10)),
                               eval_every=max(1, min(50, self.steps // 8)), seed=seed, threads=threads,
                               max_seconds=None if self.minutes is None else 60.0 * self.minutes,
                               mask_key=mask_key or "attention_mask")


def split(data: Dataset) -> tuple[Dataset, Dataset]:
    """(training, held-out): the last 10% (at most 256, at least 1) held out."""
    n = len(data)
    held = min(HELD_OUT_MAX, max(1, round(n * HELD_OUT_FRACTION)))
    if n - held < 1:
        raise InputError(f"--distill data {data.name} has {n} sample(s): too few to hold out a split")
    return (Dataset(slice_inputs(data.x, None, n - held), None, f"{data.name}[:-{held}]"),
            Dataset(slice_inputs(data.x, n - held, None), None, f"{data.name}[-{held}:]"))


def distill_step(student: nn.Module, teacher: nn.Module, data: Dataset, io: ModelIO, options: DistillOptions, *,
                 seed: int = 0, threads: int = 1, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Distill ``student`` (in place) towards ``teacher`` on ``data``; the build.json record."""
    train, held = split(data)
    adapter, teacher_adapter = NamedInputs(student, io), NamedInputs(teacher, io).eval()
    train_batches = padded_batches(train.x, io, options.batch, seed)
    held_batches = padded_batches(held.x, io, 64, None)
    settings = options.settings(seed, threads, io.mask_name)
    reference = embeddings(teacher, held.x, io)
    before = cosine_stats(embeddings(student, held.x, io), reference)
    started = time.perf_counter()
    result = distill(adapter, teacher_adapter, train_batches, held_batches, settings, progress=progress, log=log)
    seconds = time.perf_counter() - started
    student.eval()
    after = cosine_stats(embeddings(student, held.x, io), reference)
    record = {"data": data.name, "output": io.quality_output, "train_samples": len(train),
              "held_out_samples": len(held), "batch": options.batch, "options": asdict(options),
              "interrupted": result.interrupted, "steps": adapter.training_calls, "minutes": round(seconds / 60, 3),
              "held_out_cosine_before": _round(before[0]), "held_out_cosine_p5_before": _round(before[1]),
              "held_out_cosine_after": _round(after[0]), "held_out_cosine_p5_after": _round(after[1])}
    run = result.to_json()
    record.update(best_step=result.best_step, settings=run["settings"], history=run["history"])
    return record


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
