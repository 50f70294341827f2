"""A tiny sentence-embedding BERT (two int64 inputs, dynamic batch and seq) through build --eval
sentences.txt, then bench (cosine vs the dense file) and check (min_cosine gate), by the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.pipeline import BuildConfig, build

sys.path.insert(0, str(Path(__file__).parent))
from test_check_cli import run as _run  # noqa: E402
from zoo_models import bert_with_text  # noqa: E402

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build folder of a rank-4 tiny BERT evaluated on 100 sentences of 2 to 12 words, with an int8 file."""
    root = tmp_path_factory.mktemp("tokens")
    folder = bert_with_text(root, {"test": (100, 3)})  # > 64: verified in length groups
    build(BuildConfig(model=folder, out=root / "out", policy=UniformPolicy(4), seq=16, eval_data=str(root / "test.txt"),
                      verify_samples=8, simplify=False, quantize="int8"))
    return root / "out"


def test_bench_then_check_min_cosine_on_a_token_model(built: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(built.parent)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    code, out, err = _run(["bench", "out/bert.dense.onnx", "out/bert.onnx", "--seq", "8", "--runs", "2", "--warmup", "0",
                           "--no-memory", "--json", "out/bench.json"], capsys)
    assert code == 0, err
    bench = json.loads((built / "bench.json").read_text())
    assert bench["config"]["quality_output"] == {"output": "sentence_embedding", "kind": "embedding", "measure": "cosine"}
    cosine = bench["results"][1]["cosine_mean"]
    assert -1 <= bench["results"][1]["cosine_p5"] <= cosine <= 1 and bench["results"][1]["top1_agreement"] is None
    assert "cosine mean" in out
    record = json.loads((built / "build.json").read_text())
    eval_cosine = next(a["cosine_mean"] for a in record["agreement"] if a["inputs"] == "eval")
    budgets = built.parent / "budgets.toml"

    def check(limit: float, *paths: str) -> tuple[int, str, str]:
        budgets.write_text(f'[budgets."out/bert.onnx"]\nmin_cosine = {limit}\n')
        return _run(["check", *paths, "--config", str(budgets), "--json", "check.json"], capsys)

    # build.json alone: the compressed-vs-dense agreement on the eval sentences
    code, out, err = check(round(eval_cosine - 0.01, 4), "out/build.json")
    finding = json.loads((built.parent / "check.json").read_text())["findings"][0]
    assert code == 0 and finding["value"] == pytest.approx(eval_cosine) and "100 eval inputs" in finding["note"], err
    # with bench.json: the files' own outputs decide
    code, out, err = check(round(cosine - 0.01, 4), "out/build.json", "out/bench.json")
    finding = json.loads((built.parent / "check.json").read_text())["findings"][0]
    assert code == 0 and finding["value"] == pytest.approx(cosine) and finding["note"].startswith("bench.json")
    code, out, err = check(1.0, "out/build.json", "out/bench.json")
    assert code == 1 and err.strip().splitlines() == [f"error: 1 budget check failed: out/bert.onnx mean cosine "
                                                      f"{cosine:.4f} (limit ≥ 1.0000)"]


def test_every_compressed_file_reports_its_cosine_to_dense(built: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """build.json records each compressed file's own cosine to the dense torch model (the int8 one too), one
    line per file is printed, int8 of an embedding output is verified by cosine, and check's min_cosine reads
    the int8 file's cosine from build.json alone."""
    from edgecompress.cli.build_view import agreement_lines

    record = json.loads((built / "build.json").read_text())
    artifacts = record["artifacts"]
    assert "agreement" not in artifacts["dense"]
    torch_eval = next(a for a in record["agreement"] if a["inputs"] == "eval")
    evals = {}
    for role in ("compressed", "int8"):  # (int8 leaves out the second-length inputs: the fp32 file proved them)
        rows = {row["inputs"]: row for row in artifacts[role]["agreement"]}
        assert {"random", "eval"} <= set(rows) and rows["eval"]["samples"] == 100
        evals[role] = rows["eval"]
        assert rows["eval"]["measure"] == "cosine" and -1 <= rows["eval"]["cosine_p5"] <= rows["eval"]["cosine_mean"] <= 1
    # the fp32 file computes what the compressed torch model computes
    assert evals["compressed"]["cosine_mean"] == pytest.approx(torch_eval["cosine_mean"], abs=1e-4)
    int8_eval = next(v for v in artifacts["int8"]["verification"] if v["inputs"] == "eval")
    assert int8_eval["top1_agreement"] is None and int8_eval["tolerance"]["min_agreement"] == 0.98
    assert 0.98 <= int8_eval["cosine_mean"] <= 1
    assert artifacts["int8"]["quantization"]["weights"] == "int8 per-channel (7-bit range)"  # auto: embedding
    lines = agreement_lines(record)
    assert [line.split(" vs dense")[0] for line in lines[-2:]] == ["bert.onnx", "bert.int8.onnx"]
    assert "on 100 eval inputs: cosine mean" in lines[-1]
    monkeypatch.chdir(built.parent)
    int8_cosine = evals["int8"]["cosine_mean"]
    budgets = built.parent / "int8.toml"
    budgets.write_text(f'[budgets."out/bert.int8.onnx"]\nmin_cosine = {round(int8_cosine - 0.01, 4)}\n')
    code, out, err = _run(["check", "out/build.json", "--config", str(budgets), "--json", "int8.json"], capsys)
    finding = json.loads((built.parent / "int8.json").read_text())["findings"][0]
    assert code == 0 and finding["value"] == pytest.approx(int8_cosine), err
    assert finding["note"] == "build.json: bert.int8.onnx vs dense torch model, 100 eval inputs"


def test_bench_several_sequence_lengths_in_one_run(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seq 4 --seq 8,4: one block per length (duplicates dropped), ratios against the dense file at the same
    length and batch, quality per length; refused with --data (the data fixes the length)."""
    dense, small = str(built / "bert.dense.onnx"), str(built / "bert.onnx")
    code, out, err = _run(["bench", dense, small, "--seq", "4", "--seq", "8,4", "--batch", "1,2", "--runs", "2",
                           "--warmup", "0", "--no-memory", "--json", str(built / "seqs.json")], capsys)
    assert code == 0, err
    bench = json.loads((built / "seqs.json").read_text())
    assert bench["config"]["seq"] == [4, 8]
    assert {i["name"]: i["shape"] for i in bench["config"]["inputs"]} == {"input_ids": ["N", "seq"],
                                                                         "attention_mask": ["N", "seq"]}
    rows = bench["results"]
    assert [(r["seq"], r["batch"], r["model"]) for r in rows] == [
        (s, b, m) for s in (4, 8) for b in (1, 2) for m in ("bert.dense.onnx", "bert.onnx")]
    for ref, other in zip(rows[::2], rows[1::2]):
        assert other["ratios"]["p50"] == pytest.approx(other["latency_ms"]["p50"] / ref["latency_ms"]["p50"], rel=1e-2)
        assert ref["cosine_mean"] == pytest.approx(1.0) and other["quality_measure"] == "cosine"
    verdict = " ".join(out.split())  # the verdict line wraps on a narrow terminal
    assert "p50 latency (seq 4, batch 1)" in verdict and "p50 latency (seq 8, batch 2)" in verdict
    assert verdict.count("cosine mean") >= 2 and "at seq 4;" in verdict and "at seq 8 vs" in verdict  # one per length
    # check reads the latency of the length the budget names; several measured and none named: it says so
    budgets = built / "seqs.toml"
    budgets.write_text('[budgets."bert.onnx"]\nmax_latency_p50_ms = 10000\nbatch = 2\n')
    code, out, err = _run(["check", str(built / "seqs.json"), "--config", str(budgets), "--json", str(built / "c.json")],
                          capsys)
    finding = json.loads((built / "c.json").read_text())["findings"][0]
    assert finding["status"] == "warn" and "several sequence lengths at batch 2 (4, 8)" in finding["note"]
    budgets.write_text('[budgets."bert.onnx"]\nmax_latency_p50_ms = 10000\nbatch = 2\nseq = 8\n')
    code, out, err = _run(["check", str(built / "seqs.json"), "--config", str(budgets), "--json", str(built / "c.json")],
                          capsys)
    finding = json.loads((built / "c.json").read_text())["findings"][0]
    assert code == 0 and finding["status"] == "pass" and finding["label"] == "latency p50 (batch 2, seq 8)"
    assert finding["value"] == rows[7]["latency_ms"]["p50"]
    np_path = built / "tokens.npz"
    np.savez(np_path, input_ids=np.ones((4, 6), np.int64), attention_mask=np.ones((4, 6), np.int64))
    code, out, err = _run(["bench", dense, "--seq", "4,8", "--data", str(np_path), "--no-memory"], capsys)
    assert code == 2 and "several --seq lengths" in err
    code, out, err = _run(["bench", dense, "--seq", "4,x"], capsys)
    assert code == 2 and "--seq '4,x'" in err
