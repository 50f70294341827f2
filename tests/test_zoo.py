"""The zoo: small random models of every kind edge models come in, each through build -> ONNX
(dense + compressed, verified per output) -> int8 -> bench, with named inputs and dynamic axes.

TFLite: only single-float-input models convert (litert-torch through build's one-input path);
multi-input / integer-input models are refused with a clear error (tested below).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgecompress.errors import InputError
from edgecompress.export.verify import Tolerance
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.pipeline import BuildConfig, build
from edgecompress.spec import parse_input

sys.path.insert(0, str(Path(__file__).parent))
import zoo_models  # noqa: E402
from zoo_models import D, T, ZOO  # noqa: E402

FACTORY_FILE = Path(__file__).parent / "zoo_models.py"


def _config(name: str, tmp: Path, **overrides) -> BuildConfig:
    factory, flags = ZOO[name]
    weights = tmp / f"{name}.pt"
    torch.save(factory().state_dict(), weights)
    inputs = tuple(parse_input(f.split("=", 1)[1]) for f in flags if f.startswith("--input="))
    shape = next((tuple(int(d) for d in f.split("=", 1)[1].split("x")) for f in flags
                  if f.startswith("--input-shape=")), None)
    settings = dict(model=weights, out=tmp / "out", factory=f"{FACTORY_FILE}:make_{name}", inputs=inputs,
                    input_shape=shape, policy=UniformPolicy(4), verify_samples=32, quantize="int8",
                    simplify=False, tolerance=Tolerance(atol=1e-4, rtol=1e-3))
    return BuildConfig(**{**settings, **overrides})


def _dims(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


@pytest.mark.slow  # 13 builds: minutes on a shared machine; the tests below build 5 of them in the default run
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_builds_exports_verifies(name: str, tmp_path: Path) -> None:
    result = build(_config(name, tmp_path))
    record = json.loads((tmp_path / "out" / "build.json").read_text())
    assert record == result.record
    assert set(record["artifacts"]) == {"dense", "compressed", "int8"}
    outputs = record["input"]["outputs"]
    for artifact in record["artifacts"].values():
        lines = artifact["verification"]
        assert all(line["passed"] for line in lines)
        assert {line["output"] for line in lines} == ({None} if outputs == ["output"] else set(outputs))
    dims = _dims(tmp_path / "out" / f"{name}.onnx")
    for spec in record["input"]["inputs"]:  # dynamic axes survive in the file
        assert dims[spec["name"]][0] == "batch"
        if "seq" in spec["axes"] and name not in ("gru", "lstm"):  # the exporter may pin a recurrent model's seq
            assert dims[spec["name"]][spec["axes"].index("seq")] == "seq"
    assert record["agreement"] and record["agreement"][0]["measure"] in ("top1_agreement", "cosine", "relative_error")
    assert record["totals"]["layers_factorized"] >= (0 if name == "cnn_linear_head" else 1)


def test_structural_reasons_and_non_linear_weights(tmp_path: Path) -> None:
    record = build(_config("transformer_encoder", tmp_path)).record
    reasons = {layer["name"]: layer["reason"] or "" for layer in record["layers"]}
    assert "reads its .weight" in reasons["encoder.layers.0.self_attn.out_proj"]
    assert "class-logit" in reasons["head"]
    assert {layer["name"] for layer in record["layers"] if layer["factorized"]} == {
        f"encoder.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)}
    assert any("in_proj_weight" in note["name"] for note in record["dense_weights"])


def test_cnn_whose_only_linear_is_the_classifier_keeps_it(tmp_path: Path) -> None:
    record = build(_config("cnn_linear_head", tmp_path)).record
    assert [layer["rank"] for layer in record["layers"]] == [None]
    assert record["agreement"][0]["top1_agreement"] == 1.0


def test_tied_weights_stay_tied_and_dense(tmp_path: Path) -> None:
    result = build(_config("tied_lm", tmp_path))
    head = next(layer for layer in result.record["layers"] if layer["name"] == "lm_head")
    assert head["rank"] is None and "tied" in head["reason"]
    assert result.model.lm_head.weight is result.model.emb.weight


def test_recurrent_model_reports_recurrent_weights_dense(tmp_path: Path) -> None:
    record = build(_config("lstm", tmp_path)).record
    assert [note["name"] for note in record["dense_weights"]] == ["rnn"]
    assert {layer["name"]: layer["rank"] for layer in record["layers"]} == {"proj": 4, "head": None}


def test_multi_input_model_refuses_tflite_before_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tflite handles one float input"):
        build(_config("two_inputs", tmp_path, targets=("onnx", "tflite")))
    assert not (tmp_path / "out").exists()


def test_zoo_onnx_benches_with_token_inputs(tmp_path: Path) -> None:
    from edgecompress.bench import run_benchmark

    build(_config("two_inputs", tmp_path, quantize=None))
    out = tmp_path / "out"
    result = run_benchmark([out / "two_inputs.dense.onnx", out / "two_inputs.onnx"], runs=3, warmup=1, seq=5,
                           memory=False, progress=False)
    assert len(result["models"]) == 2
    assert {i["name"]: i["shape"][1:] for i in result["config"]["inputs"]} == {"x": [5, 16], "mask": [5]}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "named.npz", x=rng.standard_normal((12, 7, 16)).astype(np.float32),
             mask=(np.arange(7) < rng.integers(1, 8, (12, 1))).astype(np.float32))
    result = run_benchmark([out / "two_inputs.dense.onnx", out / "two_inputs.onnx"], data=tmp_path / "named.npz",
                           runs=3, warmup=1, memory=False, progress=False)
    assert result["config"]["eval_samples"] == 12 and result["config"]["data"].endswith("named.npz")
    assert {i["name"]: i["shape"][1:] for i in result["config"]["inputs"]} == {"x": [7, 16], "mask": [7]}
    # check gates the token model's files from build.json + bench.json like any other
    from edgecompress.bench import write_json
    from edgecompress.cli import main
    write_json(result, out / "bench.json")
    (tmp_path / "budgets.toml").write_text('[tool.edgecompress.budgets."out/two_inputs.onnx"]\nmax_size = "1 MB"\n'
                                           'max_params = 100000\nmax_latency_p50_ms = 1000\n')
    main(["check", str(out / "build.json"), str(out / "bench.json"), "--config", str(tmp_path / "budgets.toml"),
          "--json", str(tmp_path / "check.json")])  # returns (exit 0) when every budget is met
    findings = json.loads((tmp_path / "check.json").read_text())["findings"]
    assert {f["budget"] for f in findings} == {"max_size", "max_params", "max_latency_p50_ms"} and all(
        f["status"] == "pass" for f in findings)
    np.savez(tmp_path / "partial.npz", x=rng.standard_normal((4, 7, 16)).astype(np.float32))
    with pytest.raises(InputError, match="lacks array.*mask"):
        run_benchmark([out / "two_inputs.onnx"], data=tmp_path / "partial.npz", runs=1, memory=False, progress=False)


def test_cli_input_flags_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from edgecompress.cli import main

    factory, _ = ZOO["embedding_mlp"]
    weights = tmp_path / "emb.pt"
    torch.save(factory().state_dict(), weights)
    base = ["build", str(weights), "--factory", f"{FACTORY_FILE}:make_embedding_mlp", "--out", str(tmp_path / "o")]
    for extra, needle in ((["--input", "ids:batch=1,seq=8:int64", "--quality-output", "nope"], "not an output"),
                          (["--input", "ids:batch=1,seq=8:float8"], "dtype must be one of"),
                          (["--input", "ids:batch=1,seq=8:int64", "--target", "tflite"], "tflite handles one float"),
                          ([], "--input NAME:SHAPE:DTYPE")):  # an Embedding first: the input is not inferable
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "o").exists()


def test_dynamic_seq_is_verified_at_a_second_length(tmp_path: Path) -> None:
    """Files are verified at half the traced 'seq' too; a model that only runs at its traced length
    is refused instead of being written with a dynamic axis it cannot honour."""
    record = build(_config("gru", tmp_path, quantize=None)).record
    lines = {(v["inputs"], v["passed"]) for v in record["artifacts"]["compressed"]["verification"]}
    assert lines == {("random", True), (f"random, seq={T // 2}", True)}
    torch.save(zoo_models.make_flat_seq().state_dict(), tmp_path / "flat.pt")
    with pytest.raises(InputError, match=f"does not run at seq={T // 2} although .* dynamic 'seq' axis"):
        build(BuildConfig(model=tmp_path / "flat.pt", out=tmp_path / "flat", factory=f"{FACTORY_FILE}:make_flat_seq",
                          inputs=(parse_input(f"x:batch=1,seq={T},{D}"),), policy=UniformPolicy(4), verify_samples=8,
                          simplify=False))
    assert not (tmp_path / "flat").exists() or not any((tmp_path / "flat").iterdir())
