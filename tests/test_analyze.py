"""``edgecompress analyze``: spectra, energy and data error per rank, suggested ranks, JSON, plot."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edgecompress.cli import main
from edgecompress.load import load_model
from edgecompress.lowrank.policies import EnergyPolicy, PolicyContext
from edgecompress.lowrank.spectrum import model_spectra


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI."""
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return (int(info.value.code or 0), *capsys.readouterr())


def test_json_without_calibration(small_mlp_pt2: Path, capsys) -> None:
    code, out, _ = run(["analyze", str(small_mlp_pt2), "--energy", "0.9", "--json", "-", "--quiet"], capsys)
    assert code == 0
    record = json.loads(out)
    assert record["schema"] == "edgecompress.analyze/1" and record["calibration"] is None
    spectra = model_spectra(load_model(small_mlp_pt2).module)
    assert [layer["name"] for layer in record["layers"]] == list(spectra)
    for layer, spectrum in zip(record["layers"], spectra.values()):
        kept = [row["energy_kept"] for row in layer["rows"]]
        assert kept == sorted(kept) and all("data_error" not in row for row in layer["rows"])
        assert layer["suggested"]["energy"] == EnergyPolicy(0.9).rank_for(spectrum, PolicyContext())
        assert "data" not in layer["suggested"] and layer["break_even_rank"] == spectrum.break_even_rank
        assert len(layer["singular_values"]) == spectrum.max_rank
    assert [layer["head"] for layer in record["layers"]] == [False] * (len(spectra) - 1) + [True]


def test_data_error_and_suggested_data_rank(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "analysis.json"
    code, out, _ = run(["analyze", str(small_mlp_pt2), "--calib", "digits:train", "--max-error", "0.2",
                        "--json", str(json_path)], capsys)
    assert code == 0 and "suggested ranks" in out and "data ε=0.2" in out
    record = json.loads(json_path.read_text())
    assert record["calibration"]["samples"] == 1024
    for layer in record["layers"]:
        curve = layer["data_error_curve"]
        assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-6)
        assert all(a >= b - 1e-9 for a, b in zip(curve, curve[1:]))
        rank = layer["suggested"]["data"]
        assert curve[rank] <= 0.2 and (rank == 1 or curve[rank - 1] > 0.2)
        assert all(row["data_error"] == pytest.approx(curve[row["rank"]], abs=1e-6) for row in layer["rows"])


def test_ranks_option_and_rounding(small_mlp_pt2: Path, capsys) -> None:
    code, out, _ = run(["analyze", str(small_mlp_pt2), "--ranks", "4,8", "--round-to", "8", "--json", "-", "-q"], capsys)
    assert code == 0
    for layer in json.loads(out)["layers"]:
        assert [row["rank"] for row in layer["rows"]] == [4, 8]
        assert all(rank is None or rank % 8 == 0 or rank == layer["max_rank"] for rank in layer["suggested"].values())


def test_plot_writes_a_png(small_mlp_pt2: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "spectra.png"
    old = os.umask(0o022)
    try:
        code, _, err = run(["analyze", str(small_mlp_pt2), "--calib", "digits", "--plot", str(png), "-q"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(png.stat().st_mode) == 0o644  # like any other output, not mkstemp's 0600
    assert [p.name for p in png.parent.iterdir()] == ["spectra.png"]  # no temporary file left behind


@pytest.mark.parametrize("args, needle", [
    (["--plot", "out.jpg"], "ending in .png"),
    (["--ranks", "a,b"], "--ranks takes a comma list"),
    (["--calib", "digits:train", "--calib-samples", "50"], "--calib-samples"),
    (["--calib", "WRONG"], "the model expects (64,)"),
])
def test_bad_input_is_one_line_exit_2(small_mlp_pt2: Path, tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    if "WRONG" in args:
        wrong = tmp_path / "wrong.npz"
        np.savez(wrong, x=np.zeros((500, 10), np.float32))
        args = [str(wrong) if a == "WRONG" else a for a in args]
    code, _, err = run(["analyze", str(small_mlp_pt2), *args], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
