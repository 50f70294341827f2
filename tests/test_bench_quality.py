"""bench judges the quality output by its kind, as build does: cosine (mean, 5th percentile) for
embeddings, top-1 agreement for class logits, relative error otherwise; the output is the one the
file's edgecompress.outputs metadata marks, else one named like an embedding, else the first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.bench import run_benchmark
from edgecompress.cli import main
from edgecompress.onnxinfo import OUTPUTS_METADATA
from edgecompress.quality import cosine_rows

FAST = {"runs": 2, "warmup": 0, "memory": False, "progress": False}
D_IN = 6


def two_heads(path: Path, seed: int, outputs: tuple[tuple[str, int], ...], metadata: list[dict] | None) -> Path:
    """x (N, 6) -> one MatMul per output (name, width); ``metadata``: the edgecompress.outputs entries."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    for name, width in outputs:
        inits.append(numpy_helper.from_array(rng.standard_normal((D_IN, width)).astype(np.float32), f"W_{name}"))
        nodes.append(helper.make_node("MatMul", ["x", f"W_{name}"], [name]))
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        helper.set_model_props(model, {OUTPUTS_METADATA: json.dumps(metadata)})
    onnx.save(model, str(path))
    return path


def _weights(path: Path, name: str) -> np.ndarray:
    init = next(i for i in onnx.load(str(path)).graph.initializer if i.name == f"W_{name}")
    return numpy_helper.to_array(init)


def test_marked_embedding_output_is_judged_by_cosine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    heads = (("logits", 3), ("pooled", 5))  # the embedding is not the first output and not named like one
    marks = [{"name": "logits", "kind": "logits", "quality": False}, {"name": "pooled", "kind": "embedding",
                                                                      "quality": True}]
    ref = two_heads(tmp_path / "ref.onnx", 0, heads, marks)
    other = two_heads(tmp_path / "other.onnx", 1, heads, marks)
    x = np.random.default_rng(2).standard_normal((40, D_IN)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    result = run_benchmark([ref, other], data=tmp_path / "data.npz", **FAST)
    assert result["config"]["quality_output"] == {"output": "pooled", "kind": "embedding", "measure": "cosine"}
    cos = cosine_rows(x @ _weights(ref, "pooled"), x @ _weights(other, "pooled"))
    row = result["results"][1]
    assert row["quality_measure"] == "cosine" and row["top1_agreement"] is None and row["relative_error"] is None
    assert row["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert row["cosine_p5"] == pytest.approx(np.percentile(cos, 5), abs=1e-5) and row["cosine_p5"] < row["cosine_mean"]
    assert result["results"][0]["cosine_mean"] == pytest.approx(1.0)
    # the table and the verdict say cosine, bench.json has it
    main(["bench", str(ref), str(other), "--data", str(tmp_path / "data.npz"), "--runs", "2", "--warmup", "0",
          "--no-memory", "--json", str(tmp_path / "bench.json")])
    out = capsys.readouterr().out
    assert f"cosine mean {row['cosine_mean']:.4f}" in out and "top-1 agreement" not in out
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"][1]["cosine_p5"] == pytest.approx(row["cosine_p5"], abs=1e-5)


def test_without_metadata_the_output_is_chosen_and_judged_by_name_and_shape(tmp_path: Path) -> None:
    heads = (("logits", 3), ("sentence_embedding", 5))
    result = run_benchmark([two_heads(tmp_path / "a.onnx", 0, heads, None),
                            two_heads(tmp_path / "b.onnx", 1, heads, None)], **FAST)
    assert result["config"]["quality_output"]["output"] == "sentence_embedding"
    assert result["results"][1]["quality_measure"] == "cosine"
    # only class logits: top-1 agreement; one value per sample: relative error
    logits = run_benchmark([two_heads(tmp_path / "c.onnx", 0, (("out", 3),), None),
                            two_heads(tmp_path / "d.onnx", 1, (("out", 3),), None)], **FAST)
    assert logits["results"][1]["quality_measure"] == "top1_agreement"
    assert 0 <= logits["results"][1]["top1_agreement"] <= 1 and logits["results"][1]["cosine_mean"] is None
    scalar = run_benchmark([two_heads(tmp_path / "e.onnx", 0, (("score", 1),), None),
                            two_heads(tmp_path / "f.onnx", 1, (("score", 1),), None)], **FAST)
    assert scalar["results"][1]["quality_measure"] == "relative_error" and scalar["results"][1]["relative_error"] > 0
    assert scalar["results"][0]["relative_error"] == 0.0
