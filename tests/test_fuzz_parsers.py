"""Property-based fuzzing of every parser of untrusted input: whatever the bytes, a parser returns a
value or raises a typed :class:`EdgeCompressError` (which the CLI prints as one line) -- never another
exception. Derandomized and bounded (examples per test, no deadline), so CI runs are repeatable."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecompress.errors import EdgeCompressError

FUZZ = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                    max_leaves=20)


def only_typed_errors(parse: Callable[[Path], Any], path: Path) -> None:
    """Call ``parse(path)``; any exception but an EdgeCompressError fails the test."""
    try:
        parse(path)
    except EdgeCompressError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at (position, value) pairs, then optionally truncate."""
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer[:cut] if cut is not None else buffer)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)
CUT = st.none() | st.integers(0, 4096)


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        yield Path(folder)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz with fixed member timestamps (np.savez stamps the current time), so mutations repeat."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buffer.getvalue()


VALID_NPZ = _npz_bytes(x=np.zeros((4, 3), np.float32), y=np.arange(4))


# ---- data files ------------------------------------------------------------------------------------

@FUZZ
@given(edits=EDITS, cut=CUT)
def test_npz_mutated(scratch: Path, edits: list[tuple[int, int]], cut: int | None) -> None:
    from edgecompress.data import load_npz

    path = scratch / "d.npz"
    path.write_bytes(mutate(VALID_NPZ, edits, cut))
    only_typed_errors(load_npz, path)


@FUZZ
@given(x=st.sampled_from(["f4", "f8", "i8", "u1", "bool", "U3", "c8"]), shape=st.lists(st.integers(0, 3), max_size=3),
       y=st.none() | st.sampled_from(["i8", "f4", "U2"]), n=st.integers(0, 4))
def test_npz_any_arrays(scratch: Path, x: str, shape: list[int], y: str | None, n: int) -> None:
    from edgecompress.data import load_npz

    arrays = {"x": np.zeros(shape, dtype=x)}
    if y is not None:
        arrays["y"] = np.zeros(n, dtype=y)
    path = scratch / "a.npz"
    path.write_bytes(_npz_bytes(**arrays))
    only_typed_errors(load_npz, path)


@FUZZ
@given(ndim=st.integers(0, 6), dtype=st.sampled_from([0x08, 0x08, 0x0D]), dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 8), max_size=4),
       body=st.binary(max_size=64), gz=st.booleans(), cut=CUT)
def test_idx_headers(scratch: Path, ndim: int, dtype: int, dims: list[int], body: bytes, gz: bool,
                     cut: int | None) -> None:
    from edgecompress.data import read_idx

    raw = (struct.pack(">HBB", 0, dtype, ndim) + b"".join(struct.pack(">I", d) for d in dims) + body)[:cut]
    path = scratch / ("i.idx.gz" if gz else "i.idx")
    path.write_bytes(mutate(gzip.compress(raw), [], cut) if gz else raw)
    only_typed_errors(read_idx, path)


# ---- TOML budgets ----------------------------------------------------------------------------------

KEYS = ["max_size", "max_params", "max_growth", "noise_floor", "min_accuracy", "max_accuracy_drop", "max_latency_ms",
        "batch", "max_ops", "paths", "baseline", "budgets", "unknown"]
VALUES = st.sampled_from(['"100 KiB"', '"5%"', '"20k"', "0.97", "-1", "1e400", '"x"', "[1, 2]", "true", "{a = 1}",
                          '"1 parsec"', "nan", '""', '["a", "b"]', "{Conv = 1}"])


@st.composite
def budget_files(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        header = draw(st.sampled_from(['[tool.edgecompress.budgets."{g}"]', "[tool.edgecompress]",
                                       '[tool.edgecompress.budgets."{g}".max_ops]', "[budgets]", "[[x]]", "[a"]))
        lines.append(header.format(g=draw(st.sampled_from(["*.onnx", "build/**", "", "[", "../*"]))))
        lines += [f"{draw(st.sampled_from(KEYS))} = {draw(VALUES)}" for _ in range(draw(st.integers(0, 4)))]
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\x00", "=", '"']))


@FUZZ
@given(text=budget_files())
def test_toml_budgets(scratch: Path, text: str) -> None:
    from edgecompress.check.config import load_config

    path = scratch / "budget.toml"
    path.write_text(text)
    only_typed_errors(lambda p: load_config(p, cwd=scratch), path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_toml_bytes(scratch: Path, data: bytes) -> None:
    from edgecompress.check.config import load_config

    path = scratch / "raw.toml"
    path.write_bytes(data)
    only_typed_errors(lambda p: load_config(p, cwd=scratch), path)


# ---- bench.json / build.json (report, check) -------------------------------------------------------

@st.composite
def records(draw: st.DrawFn) -> Any:
    """Random JSON, often shaped like a bench.json or build.json with random parts."""
    kind = draw(st.sampled_from(["random", "bench", "build"]))
    if kind == "random":
        return draw(JSON)
    schema = draw(st.sampled_from(["edgecompress.bench/1", "edgecompress.build/1", "other", 3]))
    base: dict[str, Any] = {"schema": schema}
    if kind == "bench":
        base.update(models=draw(st.lists(st.fixed_dictionaries({"name": JSON}, optional={"path": JSON}), max_size=3)
                                | JSON),
                    results=draw(st.lists(st.fixed_dictionaries({"model": JSON, "batch": JSON}), max_size=3) | JSON),
                    reference=draw(JSON))
    else:
        base.update(name=draw(JSON), artifacts=draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3) | JSON),
                    totals=draw(JSON), layers=draw(JSON))
    return base


@FUZZ
@given(record=records())
def test_report_bench_json(scratch: Path, record: Any) -> None:
    from edgecompress.report import load_bench, render_markdown

    path = scratch / "bench.json"
    path.write_text(json.dumps(record))
    only_typed_errors(lambda p: render_markdown(load_bench(p)), path)


@FUZZ
@given(record=records(), name=st.sampled_from(["build.json", "bench.json"]))
def test_check_records(scratch: Path, record: Any, name: str) -> None:
    from edgecompress.check.facts import collect

    path = scratch / "records" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record))
    only_typed_errors(lambda p: collect([str(p)], cwd=scratch), path)


# ---- ONNX files given to bench / check -------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_onnx_for_check(scratch: Path, onnx_bytes: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
    from edgecompress.check.facts import read_artifact

    path = scratch / "m.onnx"
    path.write_bytes(mutate(onnx_bytes, edits, cut))
    only_typed_errors(read_artifact, path)


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_onnx_for_bench(scratch: Path, onnx_bytes: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
    from edgecompress.bench.backends import backend_for

    path = scratch / "b.onnx"
    path.write_bytes(mutate(onnx_bytes, edits, cut))

    def inspect_and_load(p: Path) -> None:
        backend = backend_for(p)
        backend.inspect()
        backend.load()
        backend.close()

    only_typed_errors(inspect_and_load, path)


# ---- .pt2 archives -----------------------------------------------------------------------------------

@FUZZ
@given(config=JSON, sample=st.binary(max_size=64), edits=EDITS)
def test_pt2_inspection(scratch: Path, small_mlp_pt2: Path, config: Any, sample: bytes,
                        edits: list[tuple[int, int]]) -> None:
    from edgecompress.pt2_archive import inspect_pt2
    from hostile_helpers import rewrite_pt2

    def edit(members: dict[str, bytes]) -> None:
        members["data/constants/model_constants_config.json"] = json.dumps(config).encode()
        members["data/sample_inputs/model.pt"] = sample
    path = rewrite_pt2(small_mlp_pt2, scratch / "f.pt2", edit)
    path.write_bytes(mutate(path.read_bytes(), edits, None))
    only_typed_errors(inspect_pt2, path)
