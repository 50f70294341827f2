"""Sentence embeddings from a model's outputs, and how close two sets of embeddings are.

The convention every quality measure of the project uses for embedding models (the one
sentence-transformers uses for all-MiniLM-L6-v2 and most of its models): the sentence embedding is
the mean of the token states over the real tokens (``attention_mask`` 1), L2-normalized.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from edgecompress.errors import InputError
from edgecompress.quality import cosine_rows  # the one cosine (build agreement uses it too)

Batch = Mapping[str, Any]  # named inputs: name -> torch.Tensor or np.ndarray, dim 0 = samples
EMBEDDING_KEYS = ("sentence_embedding", "embedding", "pooled_embedding")
TOKEN_KEYS = ("last_hidden_state", "token_embeddings")


def as_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """A batch of named inputs with numpy arrays turned into tensors (tensors are kept as they are)."""
    return {name: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for name, v in batch.items()}


def forward(model: torch.nn.Module, batch: Batch, **options: Any) -> Any:
    """Run ``model`` on one batch of named inputs: the ONE place the quality code calls a model
    with named inputs (keyword arguments; ``options`` such as ``output_hidden_states`` are passed on)."""
    return model(**as_tensors(batch), **options)


def mask_of(batch: Batch, mask_key: str = "attention_mask") -> torch.Tensor | None:
    """The batch's attention mask (B, T) as a tensor, or None."""
    mask = batch.get(mask_key)
    return torch.from_numpy(mask) if isinstance(mask, np.ndarray) else mask


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``tokens`` (B, T, H) over the positions where ``mask`` (B, T) is nonzero."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = (mask != 0).to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def token_states(output: Any) -> torch.Tensor | None:
    """The (B, T, H) token states of a model output, when it has them."""
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 3 else None
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        for key in TOKEN_KEYS:
            if key in output and output[key] is not None:
                return output[key]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) and output[0].ndim == 3:
        return output[0]
    return None


def embedding_of(output: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The L2-normalized sentence embedding (B, H) of a model output.

    A (B, H) tensor or an output with a ``sentence_embedding``/``embedding`` entry is taken as it is;
    token states (a (B, T, H) tensor, ``last_hidden_state``, or the first element of a tuple) are
    mean-pooled over ``mask``.

    Raises:
        InputError: the output holds neither.
    """
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return torch.nn.functional.normalize(output, dim=-1)
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        for key in EMBEDDING_KEYS:
            if key in output and output[key] is not None:
                return torch.nn.functional.normalize(output[key], dim=-1)
    tokens = token_states(output)
    if tokens is None:
        raise InputError(f"cannot read a sentence embedding from a model output of type {type(output).__name__}: "
                         "expected a (batch, dim) tensor, (batch, tokens, dim) token states, or a dict/ModelOutput "
                         f"with one of {', '.join(EMBEDDING_KEYS + TOKEN_KEYS)}")
    return torch.nn.functional.normalize(masked_mean(tokens, mask), dim=-1)


def embed(model: torch.nn.Module, batches: list[Batch], *, mask_key: str = "attention_mask") -> torch.Tensor:
    """Sentence embeddings (N, H) of ``model`` over ``batches`` of named inputs, in order (no grad)."""
    with torch.no_grad():
        return torch.cat([embedding_of(forward(model, batch), mask_of(batch, mask_key)) for batch in batches])


def cosine_stats(embeddings: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean, 5th percentile) of the row-wise cosine similarity between two (N, H) sets."""
    cos = cosine_rows(embeddings.detach().double().numpy(), reference.detach().double().numpy())
    return float(cos.mean()), float(np.percentile(cos, 5))
