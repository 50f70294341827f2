"""Length-grouped passes over token data (edgecompress.length_groups): the same outputs as one padded
pass, in the samples' order, on fewer columns; token-level outputs fall back to the padded pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.length_groups import padded_batches, run_grouped
from edgecompress.spec import ModelIO, outputs_of, parse_input

SEQ, VOCAB = 24, 30


class Pooled(nn.Module):
    """Embedding -> Linear -> masked mean (a sentence embedding), optionally the token states too."""

    def __init__(self, tokens: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.proj, self.tokens = nn.Embedding(VOCAB, 8), nn.Linear(8, 8), tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.proj(self.embed(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return {"sentence_embedding": pooled, "token_embeddings": h} if self.tokens else {"sentence_embedding": pooled}


def _io(tokens: bool) -> ModelIO:
    io = ModelIO((parse_input(f"input_ids:batch=1,seq={SEQ}:int64:<{VOCAB}"),
                  parse_input(f"attention_mask:batch=1,seq={SEQ}:int64")))
    names = ("sentence_embedding", "token_embeddings") if tokens else ("sentence_embedding",)
    return io.with_outputs(names, {n: "embedding" for n in names}, None)


def _text_like(samples: int) -> dict[str, np.ndarray]:
    """Sentences of 2 to 12 tokens and one of SEQ, padded to SEQ (as a text file is padded to its longest line)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 13, samples)
    lengths[samples // 2] = SEQ
    mask = (np.arange(SEQ) < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (samples, SEQ)) * mask, "attention_mask": mask}


def _recording(tokens: bool) -> tuple[Pooled, ModelIO, list[int], Callable[[dict[str, np.ndarray]], dict]]:
    """The model, its io, the widths of the batches it ran on, and its run function."""
    model, io, widths = Pooled(tokens).eval(), _io(tokens), []

    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        widths.append(batch["input_ids"].shape[1])
        return outputs_of(model, batch, io)

    return model, io, widths, run


def test_grouped_pass_equals_the_padded_pass_on_fewer_columns() -> None:
    (model, io, widths, run), x = _recording(False), _text_like(150)
    grouped = run_grouped(run, x, io, size=32)
    padded = outputs_of(model, x, io)
    np.testing.assert_allclose(grouped["sentence_embedding"], padded["sentence_embedding"], atol=1e-5)
    # 5 groups of 32 sorted by length: only the group holding the one long sentence runs at full width
    assert len(widths) == 5 and widths == sorted(widths) and widths[-1] == SEQ and max(widths[:-1]) <= 12
    # distillation's batches come from the same grouping
    batches = padded_batches(x, io, 32, None)
    assert [b["input_ids"].shape[1] for b in batches] == widths


def test_token_level_outputs_and_few_samples_take_the_padded_pass() -> None:
    (model, io, widths, run), x = _recording(True), _text_like(150)
    out = run_grouped(run, x, io, size=32)
    assert out["token_embeddings"].shape == (150, SEQ, 8) and widths[-1] == SEQ and len(widths) == 3
    np.testing.assert_array_equal(out["token_embeddings"], outputs_of(model, x, io)["token_embeddings"])
    widths.clear()
    run_grouped(run, {k: v[:20] for k, v in x.items()}, io, size=32)
    assert widths == [SEQ]


@pytest.mark.parametrize("seed", [None, 3])
def test_padded_batches_keep_every_sample_once(seed: int | None) -> None:
    io, x = _io(False), _text_like(70)
    batches = padded_batches(x, io, 16, seed)
    ids = sorted(tuple(row[row > 0]) for b in batches for row in b["input_ids"])
    assert ids == sorted(tuple(row[row > 0]) for row in x["input_ids"])


def test_embeddings_run_in_length_groups_in_sample_order() -> None:
    """embed_io.embeddings (--min-cosine search, distillation's held-out cosine) groups by length like
    verification does: the padded pass's embeddings, same order, on narrower batches."""
    from edgecompress.embed_io import NamedInputs, embeddings, named_batches
    from edgecompress.lowrank.embedding import embed
    from edgecompress.pipeline import sensitivity_inputs

    model, io, x = Pooled(False).eval(), _io(False), _text_like(150)
    widths: list[int] = []
    model.embed.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
    grouped = embeddings(model, x, io, batch_size=32)
    assert len(widths) == 5 and max(widths[:-1]) <= 12 and widths[-1] == SEQ
    widths.clear()
    padded = embed(NamedInputs(model, io).eval(), named_batches(x, io, 32), mask_key="attention_mask")
    assert widths == [SEQ] * 5
    assert grouped.shape == padded.shape == (150, 8)
    assert float((grouped - padded).abs().max()) < 1e-5
    # the order is the samples': each row is closest to its own padded row
    assert (torch.cdist(grouped, padded).argmin(1) == torch.arange(150)).all()
    # the budget's one-batch sensitivity sample drops its all-padding columns too (first 32 samples, all short)
    sample = sensitivity_inputs(model, x, io)["sample"]
    assert sample["input_ids"].shape == (32, int(x["attention_mask"][:32].sum(1).max()))


def test_calibration_runs_in_length_groups_with_the_same_statistics() -> None:
    """The build's calibration (and refit) inputs of a masked token model are length groups: the layer's
    second moment equals the one from the padded batches (padding is masked out of both) on fewer columns."""
    from edgecompress.data import Dataset
    from edgecompress.lowrank.calibration import calibrate
    from edgecompress.pipeline import CALIB_GROUP, calibration_inputs

    model, io, x = Pooled(False).eval(), _io(False), _text_like(150)
    grouped = calibration_inputs(Dataset(x, None, "text"), io)
    assert isinstance(grouped, list) and sum(len(b["input_ids"]) for b in grouped) == 150
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert max(len(b["input_ids"]) for b in grouped) == CALIB_GROUP and widths == sorted(widths) and widths[0] < SEQ
    padded = calibrate(model, x, ["proj"], batch_size=CALIB_GROUP).layers["proj"]
    by_length = calibrate(model, grouped, ["proj"]).layers["proj"]
    assert by_length.count == padded.count  # real tokens only, in both
    np.testing.assert_allclose(by_length.gram.numpy(), padded.gram.numpy(), rtol=1e-10, atol=1e-12)
    plain = np.zeros((4, 8), np.float32)  # other inputs pass through unchanged
    assert calibration_inputs(Dataset(plain, None, "x"), ModelIO.single_float((1, 8))) is plain
