"""ModelIO / InputSpec: --input parsing, seeded inputs per role, output naming, quality measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.errors import InputError
from edgecompress.quality import agreement, cosine_rows, output_kind
from edgecompress.spec import InputSpec, ModelIO, flatten_outputs, parse_input


def test_parse_input_symbolic_dims_dtype_and_roles() -> None:
    ids = parse_input("input_ids:batch=1,seq=128:int64:<30522")
    assert (ids.shape, ids.axes, ids.dtype, ids.high, ids.role) == ((1, 128), ("batch", "seq"), "int64", 30522, "ids")
    mask = parse_input("attention_mask:batch=1,seq=128:int64")
    assert mask.role == "mask" and mask.high == 2
    feats = parse_input("x:batch=2x10x3")
    assert feats.shape == (2, 10, 3) and feats.axes == ("batch", None, None) and feats.dtype == "float32"


@pytest.mark.parametrize("text", ["x", "x:batch=0", "x:1,2:float8", "x:b-1=2", "x:1:int64:30"])
def test_parse_input_rejects_bad_specs(text: str) -> None:
    with pytest.raises(InputError):
        parse_input(text)


def test_random_inputs_respect_value_ranges_and_mask_prefixes() -> None:
    io = ModelIO((parse_input("ids:batch=1,seq=16:int64:<7"), parse_input("mask:batch=1,seq=16:int64")))
    x = io.random(64, seed=3)
    assert x["ids"].dtype == np.int64 and x["ids"].min() >= 0 and x["ids"].max() < 7
    mask = x["mask"]
    assert mask[:, 0].all() and (np.diff(mask, axis=1) <= 0).all()  # ones then zeros, length >= 1
    assert len({int(row.sum()) for row in mask}) > 1
    assert np.array_equal(io.random(64, seed=3)["ids"], x["ids"])


def test_dynamic_batch_traces_at_two_and_static_batch_is_kept() -> None:
    dynamic = ModelIO.single_float((1, 4))
    assert dynamic.example()[0].shape == (2, 4) and dynamic.static_batch is None
    static = ModelIO((InputSpec("x", (1, 4), (None, None)),))
    assert static.example()[0].shape == (1, 4) and static.static_batch == 1


def test_flatten_outputs_names_tuples_dicts() -> None:
    t = torch.zeros(2, 3)
    assert list(flatten_outputs(t)) == ["output"]
    assert list(flatten_outputs((t, t))) == ["output_0", "output_1"]
    assert list(flatten_outputs({"logits": t, "last.hidden": t, "n": 3})) == ["logits", "last_hidden"]
    with pytest.raises(InputError):
        flatten_outputs(3)


def test_quality_measure_fits_the_output() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((100, 5))
    assert output_kind("output", logits) == "logits"
    assert output_kind("sentence_embedding", logits) == "embedding"
    assert output_kind("output", rng.standard_normal((10, 4, 3))) == "values"
    assert agreement(logits, logits, "logits")["top1_agreement"] == 1.0
    cos = agreement(logits, -logits, "embedding")
    assert cos["cosine_mean"] == pytest.approx(-1.0) and cos["cosine_p5"] == pytest.approx(-1.0)
    assert agreement(logits, logits * 1.1, "values")["relative_error"] == pytest.approx(0.1)
    assert cosine_rows(np.zeros((2, 3)), np.ones((2, 3))).tolist() == [1.0, 1.0]
