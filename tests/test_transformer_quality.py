"""Quality on transformer-shaped models: masked calibration, whitened truncation, label-free
distillation and a cosine budget, on tiny random models with named inputs (token ids + mask)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.calibration import calibrate
from edgecompress.lowrank.distill import DistillSettings, distill
from edgecompress.lowrank.embedding import cosine_stats, embed, embedding_of
from edgecompress.lowrank.factorize import compress, count_linear_params
from edgecompress.lowrank.policies import EnergyPolicy, PolicyContext, UniformPolicy
from edgecompress.lowrank.spectrum import model_spectra

pytestmark = pytest.mark.usefixtures("single_thread")
VOCAB, DIM, HEADS = 50, 32, 4


class TinyEncoder(nn.Module):
    """Token embedding + one self-attention block + FFN, returning HF-style ``last_hidden_state``.

    ``poison`` adds a huge value to the token states at padded positions: whatever a model does
    there must not reach calibration statistics.
    """

    def __init__(self, layers: int = 1, poison: float = 0.0) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "query": nn.Linear(DIM, DIM), "key": nn.Linear(DIM, DIM), "value": nn.Linear(DIM, DIM),
            "out": nn.Linear(DIM, DIM), "up": nn.Linear(DIM, 4 * DIM), "down": nn.Linear(4 * DIM, DIM),
            "norm1": nn.LayerNorm(DIM), "norm2": nn.LayerNorm(DIM)}) for _ in range(layers))
        self.poison = poison

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embeddings(input_ids)
        padding = (attention_mask == 0)
        h = h + self.poison * padding[..., None].to(h.dtype)
        b, t, _ = h.shape
        for block in self.blocks:
            def split(x: torch.Tensor) -> torch.Tensor:
                return x.view(b, t, HEADS, DIM // HEADS).transpose(1, 2)
            q, k, v = split(block["query"](h)), split(block["key"](h)), split(block["value"](h))
            scores = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)
            scores = scores.masked_fill(padding[:, None, None, :], -1e9)
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, DIM)
            h = block["norm1"](h + block["out"](attended))
            h = block["norm2"](h + block["down"](torch.relu(block["up"](h))))
        return {"last_hidden_state": h}


def token_batches(count: int, size: int, seed: int, max_len: int = 12) -> list[dict[str, torch.Tensor]]:
    """Random sentences of varying length, right-padded with id 0, with their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(2, max_len + 1, (size,), generator=generator)
        ids = torch.randint(1, VOCAB, (size, max_len), generator=generator)
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


def make_encoder(layers: int = 1, poison: float = 0.0, seed: int = 0) -> TinyEncoder:
    torch.manual_seed(seed)
    return TinyEncoder(layers, poison).eval()


def test_masked_calibration_ignores_padded_positions() -> None:
    """Padding rows are dropped: a batch whose padded positions carry huge values gives exactly the
    statistics of the same sentences run one by one without any padding."""
    model = make_encoder(poison=1e9)
    names = list(model_spectra(model))
    padded = token_batches(2, 5, seed=1)
    unpadded = [{"input_ids": b["input_ids"][i:i + 1, :int(b["attention_mask"][i].sum())],
                 "attention_mask": b["attention_mask"][i:i + 1, :int(b["attention_mask"][i].sum())]}
                for b in padded for i in range(len(b["input_ids"]))]
    with_padding = calibrate(model, padded, names)
    without = calibrate(model, unpadded, names)
    real_tokens = int(sum(b["attention_mask"].sum() for b in padded))
    for name in names:
        assert with_padding.layers[name].count == without.layers[name].count == real_tokens
        torch.testing.assert_close(with_padding.layers[name].gram, without.layers[name].gram, rtol=1e-4, atol=1e-4)  # float32 activations
    assert with_padding.samples == 10


def test_calibration_takes_all_samples_as_one_dict_of_arrays() -> None:
    """The pipeline's form (one dict of numpy arrays, cut into batches) gives the statistics of the
    same samples given batch by batch."""
    model = make_encoder()
    batches = token_batches(3, 4, seed=5)
    arrays = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    whole = calibrate(model, arrays, ["blocks.0.up"], batch_size=5)
    given = calibrate(model, batches, ["blocks.0.up"])
    assert whole.samples == given.samples == 12
    assert whole.layers["blocks.0.up"].count == given.layers["blocks.0.up"].count
    torch.testing.assert_close(whole.layers["blocks.0.up"].gram, given.layers["blocks.0.up"].gram, rtol=1e-4, atol=1e-4)


def test_calibration_without_mask_counts_every_position() -> None:
    model = make_encoder()
    batches = token_batches(1, 4, seed=2)
    calibration = calibrate(model, batches, ["blocks.0.query"], mask_key="no_such_input")
    assert calibration.layers["blocks.0.query"].count == batches[0]["input_ids"].numel()


def test_calibration_reports_inputs_that_do_not_fit() -> None:
    with pytest.raises(InputError, match="input_ids"):
        calibrate(make_encoder(), [{"input_ids": torch.zeros(2, 3, dtype=torch.long)}], ["blocks.0.query"])


def test_whitened_truncation_beats_plain_truncation_on_correlated_inputs() -> None:
    """With strongly correlated inputs, truncating the whitened spectrum (SVD of W L) loses less of
    the layer's OUTPUT than truncating W's own spectrum at the same rank; and the energy rule on the
    whitened spectrum bounds the output error it loses (energy 0.9 -> relative error <= sqrt(0.1))."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40))
    mixing = torch.randn(48, 48) * torch.logspace(0, -3, 48)[:, None]  # a few dominant input directions
    x = torch.randn(4000, 48) @ mixing
    calibration = calibrate(model, x.numpy(), ["0"])
    with torch.no_grad():
        reference = model(x)

    def output_error(policy: object, whiten: bool) -> tuple[float, int | None]:
        context = PolicyContext(calibration=calibration.layers, whiten=whiten)
        compressed, plan = compress(model, policy, context=context)
        with torch.no_grad():
            error = (compressed(x) - reference).norm() / (reference - model[0].bias).norm()
        return float(error), plan.layers[0].rank

    for rank in (2, 6, 12):
        assert output_error(UniformPolicy(rank), whiten=True)[0] < 0.8 * output_error(UniformPolicy(rank), False)[0]
    error, rank = output_error(EnergyPolicy(threshold=0.9), whiten=True)
    assert rank is not None and rank < 20 and error <= math.sqrt(0.1) + 1e-4


def test_embedding_of_reads_tensors_and_model_outputs() -> None:
    tokens = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = embedding_of({"last_hidden_state": tokens}, mask)
    expected = torch.nn.functional.normalize(torch.stack([tokens[0, :2].mean(0), tokens[1, 0]]), dim=-1)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(embedding_of(tokens[:, 0]), torch.nn.functional.normalize(tokens[:, 0], dim=-1))
    with pytest.raises(InputError, match="sentence embedding"):
        embedding_of(("no tensors",))


def test_distillation_raises_held_out_cosine_and_keeps_the_best_state() -> None:
    teacher = make_encoder(layers=2)
    spectra = model_spectra(teacher)
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, _ = compress(teacher, UniformPolicy(rank=3), spectra=spectra)
    held_out = token_batches(4, 16, seed=11)
    before = cosine_stats(embed(student, held_out), embed(teacher, held_out))[0]
    settings = DistillSettings(steps=60, lr=3e-3, warmup=5, eval_every=20, seed=0)
    result = distill(student, teacher, token_batches(8, 16, seed=10), held_out, settings)
    after = cosine_stats(embed(student, held_out), embed(teacher, held_out))[0]
    assert after > before + 0.02
    assert result.history[0]["step"] == 0 and result.steps_done == 60
    assert after == pytest.approx(max(row["held_out_cosine"] for row in result.history), abs=1e-6)
    assert all(torch.equal(v, original[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    torch.testing.assert_close(student.embeddings.weight, teacher.embeddings.weight)  # embeddings frozen


def test_distillation_is_deterministic_for_a_seed() -> None:
    teacher = make_encoder()
    runs = []
    for _ in range(2):
        student, _ = compress(teacher, UniformPolicy(rank=2))
        distill(student, teacher, token_batches(3, 8, seed=3), token_batches(1, 8, seed=4),
                DistillSettings(steps=6, lr=1e-3, warmup=2, eval_every=3))
        runs.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_time_capped_distillation_anneals_by_the_clock() -> None:
    """Under max_seconds the decay follows elapsed time too: a run stopped by the clock ends at the
    final rate, whatever fraction of its steps it reached; without a cap the schedule is by steps."""
    from edgecompress.lowrank.distill import _lr_factor

    capped = DistillSettings(steps=1000, warmup=10, final_lr_fraction=0.1, max_seconds=60.0)
    uncapped = DistillSettings(steps=1000, warmup=10, final_lr_fraction=0.1)
    assert _lr_factor(100, capped, elapsed=60.0) == pytest.approx(0.1)  # 10% of the steps, all of the time
    assert _lr_factor(100, capped, elapsed=30.0) == pytest.approx(0.55)  # half the time: halfway down the cosine
    assert _lr_factor(100, uncapped, elapsed=60.0) == _lr_factor(100, uncapped) > 0.9
    assert _lr_factor(1000, capped, elapsed=1.0) == pytest.approx(0.1)  # the step count still ends it
    assert _lr_factor(4, capped, elapsed=59.0) == pytest.approx(0.5)  # warm-up is by steps


@pytest.mark.parametrize("allocation", ["threshold", "sensitivity"])
def test_cosine_budget_meets_its_target(allocation: str) -> None:
    model = make_encoder(layers=2)
    spectra = model_spectra(model)
    calibration = calibrate(model, token_batches(6, 16, seed=20), list(spectra))
    validation = token_batches(3, 16, seed=21)
    context = PolicyContext(calibration=calibration.layers, whiten=True)

    def embeddings(candidate: nn.Module) -> torch.Tensor:
        return embed(candidate, validation)

    result = budget_compress(model, EnergyPolicy(), spectra,
                             Budget(min_cosine=0.95), context=context, allocation=allocation, embed=embeddings,
                             sample=token_batches(1, 16, seed=22)[0], measured_ranks=4)
    mean, _ = cosine_stats(embeddings(result.model), embeddings(model))
    assert mean >= 0.95
    assert count_linear_params(result.model) < count_linear_params(model)
    assert result.record["result"]["value"] == pytest.approx(mean, abs=1e-5)
    assert "cosine_p5" in result.record["result"]
    if allocation == "sensitivity":
        assert all(any("measured" in row for row in rows) for rows in result.record["table"].values())
        assert result.record["knob"].startswith("Lagrangian")


def test_cosine_budget_needs_embeddings_and_says_when_out_of_reach() -> None:
    model = make_encoder()
    spectra = model_spectra(model)
    with pytest.raises(InputError, match="--min-cosine needs"):
        budget_compress(model, UniformPolicy(), spectra, Budget(min_cosine=0.9), context=PolicyContext())
    with pytest.raises(InputError, match="min-cosine"):
        Budget(min_cosine=1.5)
