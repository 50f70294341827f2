"""Budget mode with --target-size: every candidate visited is exported and measured for real."""

import json
from pathlib import Path

import pytest

from edgecompress.cli import main


def test_target_size_is_met_by_the_written_file(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["build", str(small_mlp_pt2), "--target-size", "40 KB", "--round-to", "8", "--out", str(out), "-q"])
        raise SystemExit(0)
    assert info.value.code in (0, None), capsys.readouterr().err
    record = json.loads((out / "build.json").read_text())
    written = (out / "small.onnx").stat().st_size
    assert written <= 40_000 and record["search"]["result"]["value"] == written  # measured = what was written
    larger = [step for step in record["search"]["path"] if step["linear_params"] > record["totals"]["linear_params_after"]]
    assert larger and all(step["value"] > 40_000 and not step["meets"] for step in larger)


def test_target_size_with_int8_measures_the_int8_file(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["build", str(small_mlp_pt2), "--target-size", "15 KB", "--quantize", "int8", "--round-to", "8",
              "--out", str(out), "-q"])
        raise SystemExit(0)
    assert info.value.code in (0, None), capsys.readouterr().err
    record = json.loads((out / "build.json").read_text())
    assert record["search"]["budget"]["measures"] == "int8 ONNX"
    int8_bytes = (out / "small.int8.onnx").stat().st_size
    assert int8_bytes <= 15_000 and record["search"]["result"]["value"] == int8_bytes
    assert (out / "small.onnx").stat().st_size > 15_000  # the fp32 file alone would not have met it
