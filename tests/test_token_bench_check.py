"""A tiny sentence-embedding BERT (two int64 inputs, dynamic batch and seq) through build --eval
sentences.txt, then bench (cosine vs the dense file) and check (min_cosine gate), by the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.pipeline import BuildConfig, build

sys.path.insert(0, str(Path(__file__).parent))
from test_check_cli import run as _run  # noqa: E402
from zoo_models import bert_with_text  # noqa: E402

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build folder of a rank-4 tiny BERT evaluated on 48 sentences of 2 to 12 words."""
    root = tmp_path_factory.mktemp("tokens")
    folder = bert_with_text(root, {"test": (48, 3)})
    build(BuildConfig(model=folder, out=root / "out", policy=UniformPolicy(4), seq=16, eval_data=str(root / "test.txt"),
                      verify_samples=8, simplify=False))
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
    assert code == 0 and finding["value"] == pytest.approx(eval_cosine) and "48 eval inputs" in finding["note"], err
    # with bench.json: the files' own outputs decide
    code, out, err = check(round(cosine - 0.01, 4), "out/build.json", "out/bench.json")
    finding = json.loads((built.parent / "check.json").read_text())["findings"][0]
    assert code == 0 and finding["value"] == pytest.approx(cosine) and finding["note"].startswith("bench.json")
    code, out, err = check(1.0, "out/build.json", "out/bench.json")
    assert code == 1 and err.strip().splitlines() == [f"error: 1 budget check failed: out/bert.onnx mean cosine "
                                                      f"{cosine:.4f} (limit ≥ 1.0000)"]
