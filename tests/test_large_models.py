"""Large-model machinery on small matrices: the randomized SVD path, the energy rule on the top
singular values, failing before the SVDs, and the external-data (> 2 GiB) export path end to end
with the threshold forced down so a small model takes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.export import onnx as onnx_export
from edgecompress.lowrank import spectrum as spectrum_module
from edgecompress.lowrank.policies import EnergyPolicy, PolicyContext, UniformPolicy
from edgecompress.lowrank.spectrum import LayerSpectrum, SvdSettings
from edgecompress.onnxinfo import external_data_files, load_model
from edgecompress.pipeline import BuildConfig, build, default_calib_samples

pytestmark = pytest.mark.usefixtures("single_thread")

# randomized on anything wider than 32 (the real threshold, 1024, would need big matrices)
SMALL_EXACT = SvdSettings(exact_max_dim=32, oversample=10, power_iterations=4)
# the randomized truncation error may exceed the optimum by at most this factor (measured ~1.000x
# here; 1.02 is the large-model target of issue 15)
ERROR_BOUND = 1.02


def matrix_with(values: torch.Tensor, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A float32 (rows x cols) matrix whose singular values are ``values`` (seeded orthonormal U, V)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(values), generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, len(values), generator=gen, dtype=torch.float64)).Q
    return ((u * values) @ v.T).float()


def spectrum_of(weight: torch.Tensor, settings: SvdSettings = SMALL_EXACT) -> LayerSpectrum:
    return LayerSpectrum("layer", weight.shape[1], weight.shape[0], False, weight=weight, settings=settings)


def decaying(n: int, power: float = 0.7) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=torch.float64) ** -power


def test_randomized_truncation_error_within_bound_of_exact() -> None:
    values = decaying(300)
    weight = matrix_with(values, 300, 500)
    fast = spectrum_of(weight)
    record = fast.svd_record(24)
    optimum = float((values[24:] ** 2).sum() / (values ** 2).sum()) ** 0.5
    assert record["path"] == "randomized" and record["k"] == 24
    assert optimum <= record["relative_error"] <= ERROR_BOUND * optimum
    # the recorded error is the real one: ||W - first^T second^T|| measured directly
    first, second = fast.factors(24)
    measured = float(torch.linalg.norm(weight.double() - second.double() @ first.double()) / torch.linalg.norm(weight.double()))
    assert measured == pytest.approx(record["relative_error"], rel=1e-3)


def test_randomized_path_is_deterministic_and_exact_path_is_the_full_svd() -> None:
    weight = matrix_with(decaying(120), 120, 200)
    a, b = spectrum_of(weight).factors(16), spectrum_of(weight).factors(16)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    exact = spectrum_of(weight, SvdSettings())  # 120 <= 1024: exact float64, as the project always did
    u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
    root = torch.sqrt(s[:16])
    assert torch.equal(exact.factors(16)[0], (root[:, None] * vh[:16]).float())
    assert exact.svd_record(16)["path"] == "exact"


def test_large_rank_falls_back_to_exact() -> None:
    spectrum = spectrum_of(matrix_with(decaying(100), 100, 160))
    assert spectrum.svd_record(60)["path"] == "exact"  # 60 + oversampling is not well below 100


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.97])
def test_energy_rule_on_top_values_picks_the_exact_rank(threshold: float) -> None:
    # a spectrum with a clear knee, so every threshold falls well between two cumulative energies
    values = torch.cat([torch.linspace(10, 5, 20, dtype=torch.float64), 0.05 * decaying(380, 0.3)])
    values = values.sort(descending=True).values
    weight = matrix_with(values, 400, 600, seed=1)
    fast, exact = spectrum_of(weight), spectrum_of(weight, SvdSettings())
    rank = EnergyPolicy(threshold).rank_for(fast, PolicyContext())
    assert rank == EnergyPolicy(threshold).rank_for(exact, PolicyContext())
    assert not fast.exact  # the top singular values were enough
    assert fast.svd_record(rank)["path"] == "randomized"


def test_uniform_plan_computes_no_full_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = matrix_with(decaying(200), 200, 300)
    monkeypatch.setattr(LayerSpectrum, "_exact", lambda self: pytest.fail("full SVD computed"))
    spectrum = spectrum_of(weight)
    rank = UniformPolicy(8).rank_for(spectrum, PolicyContext())
    assert spectrum.factors(rank)[0].shape == (8, 300)


@pytest.mark.parametrize("max_error", [0.3, 0.1])
def test_data_policy_on_top_components_picks_the_exact_rank(max_error: float) -> None:
    from edgecompress.lowrank.calibration import LayerInputs
    from edgecompress.lowrank.data_policies import data_spectrum

    weight = matrix_with(decaying(300, 1.0), 300, 400, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(800, 400, generator=gen, dtype=torch.float64) * decaying(400, 0.5)
    inputs = LayerInputs("layer", 400, x.T @ x, count=800)
    fast = data_spectrum(spectrum_of(weight), inputs, max_error=max_error)
    exact = data_spectrum(spectrum_of(weight, SvdSettings()), inputs)
    assert fast.max_rank < exact.max_rank  # only the top components were computed
    rank = fast.rank_for_error(max_error)
    assert rank == exact.rank_for_error(max_error)
    assert fast.relative_error(rank) == pytest.approx(exact.relative_error(rank), rel=1e-3)


class Wide(nn.Module):
    """A 2048-input layer (as in issue 15's report) followed by a small head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2048, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_default_calib_samples_follows_the_widest_selected_layer(tmp_path: Path) -> None:
    config = BuildConfig(model=tmp_path / "m.pt", out=tmp_path / "out")
    assert default_calib_samples(Wide(), config) == 2048
    assert default_calib_samples(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 10)), config) == 1024


def test_data_policy_too_few_samples_fails_before_any_svd(small_mlp_pt2: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.lowrank.policies import make_policy

    def no_svd(*args: object, **kwargs: object) -> None:
        raise AssertionError("an SVD ran before the calibration check")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    monkeypatch.setattr(spectrum_module, "randomized_svd", no_svd)
    config = BuildConfig(model=small_mlp_pt2, out=tmp_path / "out", policy=make_policy("data", max_error=0.1),
                         calib_data="digits:train", calib_samples=16)  # the 64-input layers need >= 64 vectors
    with pytest.raises(InputError, match="calib-samples"):
        build(config)
    assert not (tmp_path / "out").exists()


def test_external_data_path_end_to_end(small_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the 2 GiB threshold down to 1 KiB: export with external data, the simplify decision on
    total bytes (skipped, with a note), the refold guard and verification without loading all
    weights into the guard, int8 and bench on the external-data files."""
    from edgecompress.bench import run_benchmark

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1024)
    out = tmp_path / "out"
    result = build(BuildConfig(model=small_mlp_pt2, out=out, policy=UniformPolicy(8), quantize="int8",
                               eval_data="digits:test", eval_samples=64))
    artifacts = result.record["artifacts"]
    for role in ("dense", "compressed"):
        artifact = artifacts[role]
        path = out / artifact["path"]
        assert external_data_files(load_model(path), path), f"{role} has no external data"
        assert artifact["simplified"] is False and "with its external data" in artifact["simplify_note"]
        assert artifact["bytes"] > path.stat().st_size  # the size counts the side file
        assert all(check["passed"] for check in artifact["verification"])
    assert all(check["passed"] for check in artifacts["int8"]["verification"])
    assert [layer["svd"]["path"] for layer in result.record["layers"] if layer["factorized"]] == ["exact", "exact"]
    bench = run_benchmark([out / artifacts[role]["path"] for role in ("dense", "compressed", "int8")],
                          batches=(1,), runs=5, warmup=1, memory=False, progress=False)
    assert len(bench["models"]) == 3


def test_simplify_is_decided_by_total_bytes(small_mlp_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 16 * 1024)
    path = onnx_export.export_onnx(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)), (1, 64),
                                   tmp_path / "m.onnx")
    assert path.stat().st_size < 16 * 1024  # the stub alone would pass a size check on the .onnx file
    assert "2 GiB" in onnx_export.simplify_skip_reason(path)  # its ~70 KB of weights do not
    assert onnx_export.simplify_onnx(path) is False


def test_cli_threads_and_svd_options(small_mlp_pt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgecompress.cli import main

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["build", str(small_mlp_pt2), *args])
            raise SystemExit(0)
        return int(exit_info.value.code or 0), capsys.readouterr().err

    code, err = run("--threads", "0", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--threads must be >= 1" in err and not (tmp_path / "bad").exists()
    code, _ = run("--svd", "exact", "--threads", "1", "--policy", "uniform", "--rank", "8", "--out", str(tmp_path / "ok"), "--quiet")
    record = json.loads((tmp_path / "ok" / "build.json").read_text())
    assert code == 0 and record["options"]["svd"] == "exact" and record["options"]["threads"] == 1
    assert {layer["svd"]["path"] for layer in record["layers"] if layer["factorized"]} == {"exact"}
