"""Small random models of the kinds people ship to edge devices (tests/test_zoo.py builds each).

Every factory is deterministic (seeded) and tiny, so the zoo stays fast. ``ZOO`` maps a name to
(factory, the ``--input`` flags the model needs or None when its inputs are inferred).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

D, T, VOCAB = 16, 8, 50


def _seeded(cls):
    def make() -> nn.Module:
        torch.manual_seed(0)
        return cls().eval()
    make.__name__ = f"make_{cls.__name__.lower()}"
    return make


class Attention(nn.Module):
    """Self-attention block on float tokens: nn.MultiheadAttention + FFN + mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, 4, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.head = nn.Linear(D, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head((h + self.ffn(h)).mean(1))


class Encoder(nn.Module):
    """nn.TransformerEncoder (2 layers) + head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, 4, dim_feedforward=4 * D, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class Recurrent(nn.Module):
    rnn_type = nn.LSTM

    def __init__(self) -> None:
        super().__init__()
        self.rnn = self.rnn_type(D, 32, batch_first=True)
        self.proj = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x)[0]
        return self.head(torch.relu(self.proj(out[:, -1])))


class LSTMModel(Recurrent):
    rnn_type = nn.LSTM


class GRUModel(Recurrent):
    rnn_type = nn.GRU


class EmbeddingMLP(nn.Module):
    """Recommendation-style: token ids -> embedding bag (mean) -> MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.mlp = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.emb(ids).mean(1))


class TiedLM(nn.Module):
    """Language model whose output projection shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.body = nn.Sequential(nn.Linear(D, 64), nn.GELU(), nn.Linear(64, D))
        self.lm_head = nn.Linear(D, VOCAB, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.body(self.emb(ids)))


class TwoInputs(nn.Module):
    """Features and a mask: forward(x, mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.net(x) * mask.unsqueeze(-1)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1))


class DictOutputs(nn.Module):
    """Returns a dict: class logits and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48))
        self.head = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"logits": self.head(h), "embedding": nn.functional.normalize(h, dim=-1)}


class TupleOutputs(DictOutputs):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return out["logits"], out["embedding"]


class CNN(nn.Module):
    """A CNN whose only Linear is its classifier (like ResNet / EfficientNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class TokenClassifier(nn.Module):
    """Per-token tags: ids -> embedding -> FFN -> (batch, seq, tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.ffn = nn.Sequential(nn.Linear(D, 64), nn.GELU(), nn.Linear(64, D))
        self.classifier = nn.Linear(D, 7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.classifier(h + self.ffn(h))


class ViT(nn.Module):
    """Patch embedding (Conv2d stride 4) + one transformer layer + class head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4)
        self.layer = nn.TransformerEncoderLayer(D, 4, dim_feedforward=4 * D, batch_first=True, dropout=0.0)
        self.head = nn.Linear(D, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.layer(tokens).mean(1))


class Audio(nn.Module):
    """Keyword spotting: Conv1d over a spectrogram, then an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(10, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(4), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(x))


SEQ_FLOAT = [f"--input=x:batch=1,seq={T},{D}"]
IDS = [f"--input=ids:batch=1,seq={T}:int64"]
ZOO = {
    "attention": (_seeded(Attention), SEQ_FLOAT),
    "transformer_encoder": (_seeded(Encoder), SEQ_FLOAT),
    "lstm": (_seeded(LSTMModel), SEQ_FLOAT),
    "gru": (_seeded(GRUModel), SEQ_FLOAT),
    "embedding_mlp": (_seeded(EmbeddingMLP), IDS),
    "tied_lm": (_seeded(TiedLM), IDS),
    "two_inputs": (_seeded(TwoInputs), [f"--input=x:batch=1,seq={T},{D}", f"--input=mask:batch=1,seq={T}"]),
    "dict_outputs": (_seeded(DictOutputs), ["--input-shape=1x32"]),
    "tuple_outputs": (_seeded(TupleOutputs), ["--input-shape=1x32"]),
    "cnn_linear_head": (_seeded(CNN), ["--input-shape=1x3x8x8"]),
    "token_classifier": (_seeded(TokenClassifier), IDS),
    "vit": (_seeded(ViT), ["--input-shape=1x3x16x16"]),
    "conv1d_audio": (_seeded(Audio), ["--input-shape=1x10x20"]),
}
# module-level factories for --factory tests/zoo_models.py:NAME
for _name, (_factory, _) in ZOO.items():
    globals()[f"make_{_name}"] = _factory


class FlatSeq(nn.Module):
    """Flattens its (batch, T, D) activations: it runs at the traced length only (not in ZOO)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(D, 32), nn.Linear(T * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(x)).flatten(1))


make_flat_seq = _seeded(FlatSeq)


WORDS = ("the a cat dog bird sat ran sings on under mat tree house red blue big small fast slow and "
         "near far green old young").split()


def tiny_bert(folder: Path, pooling: bool, tokenizer: bool = False) -> Path:
    """A random 2-layer BERT saved as a Hugging Face folder (no download); ``pooling``: with
    sentence-transformers' modules.json (masked mean + normalize); ``tokenizer``: with a word-level
    BERT tokenizer over :data:`WORDS`, so a text file of sentences is data."""
    import json

    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(folder)
    if pooling:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    if tokenizer:
        vocab = {word: i for i, word in enumerate(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") + tuple(WORDS))}
        transformers.BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    return folder


def bert_with_text(root: Path, texts: dict[str, tuple[int, int]]) -> Path:
    """:func:`tiny_bert` (pooling, tokenizer) in ``root/bert``, plus ``root/NAME.txt`` of ``count``
    sentences (seed) per ``texts`` entry NAME: (count, seed)."""
    folder = tiny_bert(root / "bert", pooling=True, tokenizer=True)
    for name, (count, seed) in texts.items():
        (root / f"{name}.txt").write_text("\n".join(sentences(count, seed)) + "\n")
    return folder


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` seeded random sentences of 2 to 12 words from :data:`WORDS`."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(count)]
