"""benchmarks/run.py's embedding pages (the all-MiniLM-L6-v2 post-training curve): the prepare step
writes the sentence files and the model link the sweep config names, the sweep runs, and the page's
rows, table and cosine-vs-ratio plot come from the entries' build.json / bench.json. Here on a tiny
random BERT folder and a fake fortunes corpus (2 entries, one benchmarked); the real config is checked
for its entries and its paths into the prepared folder."""

from __future__ import annotations

import json
import os
import sys
import types
from functools import partial
from pathlib import Path

import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.sweep import load_sweep
from edgecompress.sweep.entries import DATA_KEYS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(Path(__file__).parent))
from zoo_models import sentences, tiny_bert  # noqa: E402

CONFIG = """
[sweep]
name = "tiny"
out = "sweep"

[defaults]
model = "sweep/data/model"
eval = "sweep/data/test.txt"

[[entry]]
name = "svd-rank4"
policy = "uniform"
rank = 4
bench = true
bench_runs = 5

[[entry]]
name = "whiten-rank4"
policy = "uniform"
rank = 4
whiten = true
calib = "sweep/data/train.txt"
"""
SIZES = {"train": 40, "dev": 16, "test": 24}


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import minilm_setup

    return minilm_setup


def fake_fortunes(folder: Path) -> Path:
    """A fortunes-like folder: one file of '%'-separated entries the corpus cleaner keeps."""
    folder.mkdir()
    texts = [t for t in sentences(400, seed=7) if len(t) >= 24]
    (folder / "fake").write_text("\n%\n".join(texts) + "\n%\n")
    return folder


def test_prepare_writes_the_same_splits_and_links_the_model(benchmarks: types.ModuleType, tmp_path: Path) -> None:
    fortunes, model = fake_fortunes(tmp_path / "fortunes"), tmp_path / "model"
    model.mkdir()
    first = benchmarks.prepare(tmp_path / "data", fortunes=fortunes, model=model, sizes=SIZES)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.txt")}
    again = benchmarks.prepare(tmp_path / "data", fortunes=fortunes, model=model, sizes=SIZES)
    assert first == again and {k: v["sentences"] for k, v in first["splits"].items()} == SIZES
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.txt")} == stamps  # untouched
    lines = {name: (tmp_path / "data" / f"{name}.txt").read_text().splitlines() for name in SIZES}
    assert not set(lines["test"]) & (set(lines["dev"]) | set(lines["train"]))
    assert (tmp_path / "data" / "model").resolve() == model.resolve()
    (tmp_path / "data" / "model").unlink()
    (tmp_path / "data" / "model").mkdir()  # a real folder where the link goes: refused, not replaced
    with pytest.raises(EdgeCompressError, match="exists and is not a link"):
        benchmarks.prepare(tmp_path / "data", fortunes=fortunes, model=model, sizes=SIZES)


def test_minilm_config_reads_only_the_prepared_folder() -> None:
    """Every entry of benchmarks/sweeps/minilm.toml takes its model and text from <out>/data (what
    the prepare step writes), evaluates on the test split and searches budgets on the dev split."""
    config = load_sweep(BENCHMARKS / "sweeps" / "minilm.toml")
    data = config.out / "data"
    assert config.name == "minilm" and 6 <= len(config.entries) <= 12
    for entry in config.entries:
        paths = {k: Path(os.path.normpath(config.base_dir / v)) for k, v in entry.options.items()
                 if k in (*DATA_KEYS, "model")}
        assert paths["model"] == data / "model" and paths["eval"] == data / "test.txt", entry.label
        assert all(p.parent == data for p in paths.values()), entry.label
        if "min_cosine" in entry.options or "target_params" in entry.options:
            assert paths["eval_split"] == data / "dev.txt" and paths["calib"] == data / "train.txt"


def test_all_skips_minilm_with_its_reason(benchmarks: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import run

    monkeypatch.setattr(benchmarks, "missing", lambda: "the weights package is not installed")
    paths = run.page_paths("all", tmp_path / "no-mnist")
    assert BENCHMARKS / "sweeps" / "minilm.toml" not in paths
    assert "[minilm] skipped: the weights package is not installed" in capsys.readouterr().err


def test_page_rows_and_plot_come_from_the_sweep(benchmarks: types.ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("transformers")
    import run

    tiny_bert(tmp_path / "bert", pooling=True, tokenizer=True)
    (tmp_path / "page.toml").write_text(CONFIG)
    setup = types.SimpleNamespace(TITLE="tiny BERT", missing=lambda: None,
                                  prepare=partial(benchmarks.prepare, fortunes=fake_fortunes(tmp_path / "fortunes"),
                                                  model=tmp_path / "bert", sizes=SIZES))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pages"
    assert run.run_embedding_page(tmp_path / "page.toml", out, workers=1, force=False, setup=setup)
    stem = f"tiny-sweep_cpu-{run.cores()}core"
    record = json.loads((out / f"{stem}.json").read_text())
    rows = {r["entry"]: r for r in record["rows"]}
    assert set(rows) == {"svd-rank4", "whiten-rank4"}
    assert rows["svd-rank4"]["family"] == "uniform (SVD)" and rows["whiten-rank4"]["family"] == "uniform (whitened)"
    for r in rows.values():
        assert r["linear_params"] == rows["svd-rank4"]["linear_params"] < r["dense_linear_params"]
        assert r["param_ratio"] > 1 and r["eval_samples"] == SIZES["test"]
        assert -1 <= r["cosine_p5"] <= r["cosine_mean"] <= 1 + 1e-6
        assert 0 < r["onnx_bytes"] < r["dense_onnx_bytes"] and r["build_seconds"] > 0
    assert rows["svd-rank4"]["latency_p50_ratio"] > 0 and rows["whiten-rank4"]["latency_p50_ratio"] is None
    built = json.loads((tmp_path / "sweep" / "entries" / "svd-rank4" / "build.json").read_text())
    assert rows["svd-rank4"]["bench_seq"] == built["input"]["input_shape"][1]  # benched at the traced length
    assert record["corpus"]["splits"]["test"]["sentences"] == SIZES["test"]
    assert record["sweep"]["counts"]["done"] == 2 and not record["sweep"]["failed"]
    markdown = (out / f"{stem}.md").read_text()
    assert "| svd-rank4 | uniform (SVD) | rank 4 |" in markdown and "| whiten-rank4 | uniform (whitened) |" in markdown
    assert record["corpus"]["splits"]["test"]["sha256"][:12] in markdown and f"![mean cosine" in markdown
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
