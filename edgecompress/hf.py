"""Hugging Face-style model folders (config.json + safetensors), loaded offline through transformers
(the ``hf`` extra), with sentence-transformers pooling (masked mean, then L2 normalize) when the
folder's modules.json says so. Also: a text file (one sentence per line) tokenized as data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import InputError, MissingExtraError
from edgecompress.spec import InputSpec, ModelIO
from edgecompress.lowrank.embedding import masked_mean

DEFAULT_SEQ = 128
TEXT_SUFFIXES = (".txt", ".text")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never reach the network
    try:
        import transformers
    except ImportError as exc:
        raise MissingExtraError("loading a Hugging Face model folder", "hf") from exc
    transformers.logging.set_verbosity_error()  # e.g. the unused pooler's "UNEXPECTED" weights report
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _pooling(path: Path) -> dict[str, Any] | None:
    """sentence-transformers' pipeline from modules.json: {"mode": "mean"|"cls"|"max", "normalize": bool}."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = [m.get("type", "") for m in modules]
    pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pooling is None:
        return None
    config_file = path / pooling.get("path", "") / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    mode = "cls" if config.get("pooling_mode_cls_token") else "max" if config.get("pooling_mode_max_tokens") else "mean"
    return {"mode": mode, "normalize": any(t.endswith("Normalize") for t in types)}


class SentenceEmbedding(nn.Module):
    """A transformer encoder plus sentence-transformers pooling: ``(input_ids, attention_mask) -> embedding``."""

    def __init__(self, model: nn.Module, mode: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.model, self.mode, self.normalize = model, mode, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.pooled_and_tokens(input_ids, attention_mask)[0]}

    def pooled_and_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentence embedding, token states): distillation also matches the tokens."""
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.mode == "cls":
            pooled = tokens[:, 0]
        elif self.mode == "max":
            pooled = tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = masked_mean(tokens, attention_mask)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled, tokens


class TokenModel(nn.Module):
    """A transformers model called positionally with ``(input_ids, attention_mask)``; its tensor outputs by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "pooler_output"}


def load_hf_folder(path: Path, seq: int = DEFAULT_SEQ) -> tuple[nn.Module, ModelIO]:
    """The folder's model (eager attention, eval mode) and its inputs (input_ids + attention_mask, batch x seq)."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        pooling = _pooling(path)
        loader = transformers.AutoModel if pooling else _auto_class(transformers, config)
        # safetensors only: a pickled pytorch_model.bin could run code; no code from the folder either
        options = {"local_files_only": True, "attn_implementation": "eager", "use_safetensors": True,
                   "trust_remote_code": False}
        if pooling:  # sentence-transformers pools the tokens itself: BERT's pooler would be dead weight
            options["add_pooling_layer"] = False
        try:
            model = loader.from_pretrained(str(path), **options)
        except TypeError:  # an architecture without a pooler option
            options.pop("add_pooling_layer", None)
            model = loader.from_pretrained(str(path), **options)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a loadable Hugging Face model folder (local folders only, no downloads): "
                         f"{first}") from exc
    model.eval()
    wrapped: nn.Module = SentenceEmbedding(model, **pooling) if pooling else TokenModel(model)
    wrapped.eval()
    vocab = int(getattr(config, "vocab_size", 0) or 0) or None
    max_len = int(getattr(config, "max_position_embeddings", seq) or seq)
    seq = min(seq, max_len)
    io = ModelIO((InputSpec("input_ids", (1, seq), ("batch", "seq"), "int64", vocab, "ids"),
                  InputSpec("attention_mask", (1, seq), ("batch", "seq"), "int64", 2, "mask")))
    return wrapped, io


def _auto_class(transformers: Any, config: Any) -> Any:
    """The architecture named in config.json (e.g. BertForSequenceClassification), else AutoModel."""
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def tokenize_text(text_file: Path, folder: Path, max_length: int) -> dict[str, np.ndarray]:
    """One sentence per line -> input_ids / attention_mask (int64), padded to the longest line (<= max_length)."""
    transformers = _transformers()
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{text_file} is not UTF-8 text (byte {exc.start}): text data is one sentence per line") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{text_file} has no non-empty lines (one sentence per line)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"text data needs the model folder's tokenizer; {folder} has none usable") from exc
    batch = tokenizer(lines, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
