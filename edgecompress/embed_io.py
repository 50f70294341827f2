"""A build's quality output seen as sentence embeddings, for ``--min-cosine`` and ``--distill``.

The quality code (:mod:`edgecompress.lowrank.embedding`, :mod:`edgecompress.lowrank.distill`)
calls a model with a batch of named inputs as keyword arguments and reads the sentence embedding
(or token states) from its output. :class:`NamedInputs` adapts any model the build loaded (a
``.pt2`` program, a factory model, a Hugging Face folder) to that convention: it feeds the inputs
positionally in ``ModelIO`` order and returns the ``--quality-output`` under the keys the quality
code reads. A (batch, dim) output is the embedding itself (L2-normalized); a (batch, tokens, dim)
output is pooled by the masked mean over the attention mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.data import Batch, num_samples, slice_inputs
from edgecompress.errors import InputError
from edgecompress.length_groups import run_grouped
from edgecompress.lowrank.embedding import embed
from edgecompress.spec import ModelIO, as_inputs, flatten_outputs


class NamedInputs(nn.Module):
    """``model`` called with keyword inputs, returning its quality output as ``sentence_embedding``
    (2-D) or ``last_hidden_state`` (3-D token states). The wrapped model's parameters are its own:
    training the adapter trains ``model`` in place."""

    def __init__(self, model: nn.Module, io: ModelIO) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(io.names)
        self.output = io.quality_output
        self.masked = io.mask_name is not None
        self.training_calls = 0  # forward passes with gradients (= distillation steps; evaluation runs without)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.training_calls += int(torch.is_grad_enabled())
        args = [inputs[name] for name in self.names]
        both = getattr(self.model, "pooled_and_tokens", None)  # hf.SentenceEmbedding: its token states too
        if both is not None:
            pooled, tokens = both(*args)
            return {"sentence_embedding": pooled, "last_hidden_state": tokens}
        value = flatten_outputs(self.model(*args))[self.output]
        if value.ndim == 3:
            return {"last_hidden_state": value}
        if value.ndim != 2:
            raise InputError(f"output {self.output!r} has shape {tuple(value.shape)}: the cosine measure needs "
                             "(batch, dim) embeddings or (batch, tokens, dim) token states (pick one with "
                             "--quality-output)")
        # without a mask a (batch, dim) output is also matched value by value (relative MSE in distillation)
        return {"sentence_embedding": value} if self.masked else {"sentence_embedding": value, "last_hidden_state": value}


def check_embeddable(model: nn.Module, io: ModelIO) -> None:
    """Refuse, before any work, a quality output that has no embedding reading (InputError)."""
    NamedInputs(model, io).eval()(**{name: tensor for name, tensor in zip(io.names, io.example())})


def named_batches(x: Batch, io: ModelIO, size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of named inputs (a plain array feeds a one-input model)."""
    return [as_inputs(slice_inputs(x, start, start + size), io) for start in range(0, num_samples(x), size)]


def embeddings(model: nn.Module, x: Batch, io: ModelIO, batch_size: int = 64) -> torch.Tensor:
    """The (N, dim) L2-normalized sentence embeddings of ``model``'s quality output on ``x`` (no grad), in
    the samples' order. Token data runs in length groups of ``batch_size`` with their padding columns
    dropped (:func:`edgecompress.length_groups.run_grouped`, as build's verification passes do)."""
    size = io.static_batch or batch_size
    adapter, mask_key = NamedInputs(model, io).eval(), io.mask_name or "attention_mask"

    def run(batch: Batch) -> dict[str, np.ndarray]:
        return {"embedding": embed(adapter, named_batches(batch, io, size), mask_key=mask_key).numpy()}

    return torch.from_numpy(run_grouped(run, x, io, size)["embedding"])


def keyword_callable(model: nn.Module, batch: dict[str, Any]) -> bool:
    """Whether ``model(**batch)`` binds (the budget's sensitivity table calls models that way)."""
    import inspect

    try:
        inspect.signature(model.forward).bind(**batch)
    except (TypeError, ValueError):
        return False
    return True
