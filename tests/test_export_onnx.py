from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.errors import ExportError, RefoldError, VerificationError
from edgecompress.export.onnx import check_factors_kept, export_onnx, onnx_facts, simplify_onnx
from edgecompress.export.verify import Tolerance, ort_runner, random_inputs, torch_outputs, verify
from edgecompress.lowrank.factorize import compress
from edgecompress.lowrank.policies import UniformPolicy


@pytest.fixture(scope="module")
def compressed_export(tmp_path_factory: pytest.TempPathFactory, small_mlp: nn.Module):
    model, plan = compress(small_mlp, UniformPolicy(8))
    path = export_onnx(model, (1, 64), tmp_path_factory.mktemp("onnx") / "small.onnx")
    return model, plan, path


def test_export_has_dynamic_batch_and_matches_torch(compressed_export) -> None:
    model, _, path = compressed_export
    run = ort_runner(path)
    for batch in (1, 7):
        x = random_inputs((1, 64), batch, seed=batch)
        assert np.allclose(run(x), torch_outputs(model, x), atol=1e-5)


def test_factor_pairs_survive_export_and_onnxsim(compressed_export, tmp_path: Path) -> None:
    _, plan, path = compressed_export
    check_factors_kept(onnx.load(str(path)), plan, where="export")
    simplified = tmp_path / "simplified.onnx"
    simplified.write_bytes(path.read_bytes())
    simplify_onnx(simplified)
    check_factors_kept(onnx.load(str(simplified)), plan, where="onnxsim")  # onnxsim must not refold
    assert onnx_facts(simplified)["params"] == plan.linear_params_after


def test_refold_guard_catches_a_dense_weight(small_mlp: nn.Module, compressed_export, tmp_path: Path) -> None:
    _, plan, _ = compressed_export
    dense_path = export_onnx(small_mlp, (1, 64), tmp_path / "dense.onnx")
    with pytest.raises(RefoldError, match="dense 96x64"):
        check_factors_kept(onnx.load(str(dense_path)), plan, where="dense export")


def test_refold_guard_catches_factors_multiplied_back(compressed_export, tmp_path: Path) -> None:
    """Fold each factor pair into one matrix, as an over-eager constant folder would."""
    model, plan, _ = compressed_export
    folded = nn.Sequential(*[nn.Linear(m.in_features, m.out_features) if hasattr(m, "rank") else m for m in model])
    with torch.no_grad():
        for src, dst in zip(model, folded):
            if hasattr(src, "rank"):
                dst.weight.copy_(src.dense_weight())
                dst.bias.copy_(src.second.bias)
    path = export_onnx(folded, (1, 64), tmp_path / "folded.onnx")
    assert np.allclose(ort_runner(path)(random_inputs((1, 64), 4)), torch_outputs(model, random_inputs((1, 64), 4)),
                       atol=1e-4)  # same function ...
    with pytest.raises(RefoldError):  # ... but the factor pairs are gone
        check_factors_kept(onnx.load(str(path)), plan, where="folded")


def test_verification_fails_past_tolerance(compressed_export, small_mlp: nn.Module) -> None:
    model, _, path = compressed_export
    inputs = random_inputs((1, 64), 64)
    ok = verify("small.onnx", ort_runner(path), torch_outputs(model, inputs), inputs, "random")
    assert ok.passed and ok.max_abs_error < 1e-4 and ok.top1_agreement >= 0.98  # a near-tie may flip one argmax
    with pytest.raises(VerificationError, match="exceeds tolerance"):
        verify("small.onnx", ort_runner(path), torch_outputs(small_mlp, inputs), inputs, "random",
               Tolerance(atol=1e-6, rtol=1e-6))


def test_unsupported_model_is_an_export_error(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x.sum(dim=1) > 0].nonzero().float() @ self.fc.weight[:2]

    with pytest.raises(ExportError, match="ONNX export failed"):
        export_onnx(DataDependent(), (2, 4), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_export_is_byte_identical(small_mlp: nn.Module, tmp_path: Path) -> None:
    model, _ = compress(small_mlp, UniformPolicy(8))
    first = export_onnx(model, (1, 64), tmp_path / "a.onnx")
    second = export_onnx(compress(small_mlp, UniformPolicy(8))[0], (1, 64), tmp_path / "b.onnx")
    simplify_onnx(first), simplify_onnx(second)
    assert first.read_bytes() == second.read_bytes()


def test_refold_guard_counts_shapes_instead_of_matching_them() -> None:
    """A factor (or a dense layer) that merely has another layer's dense shape is no refold."""
    from edgecompress.export.onnx import check_weight_shapes
    from edgecompress.lowrank.factorize import CompressionPlan, LayerPlan

    def layer(name: str, out_f: int, in_f: int, rank: int | None) -> LayerPlan:
        return LayerPlan(name, in_f, out_f, rank, 1.0, out_f * in_f, 0)

    # hidden 1024x1024 at rank 10 -> second factor 1024x10, the head's dense shape (10x1024) transposed
    plan = CompressionPlan({"name": "test"}, (layer("hidden", 1024, 1024, 10), layer("head", 10, 1024, 4)))
    file_shapes = [(10, 1024), (1024, 10), (4, 1024), (10, 4)]
    check_weight_shapes(file_shapes, plan, where="ok")
    with pytest.raises(RefoldError, match="head"):  # one more 10x1024 matrix than the model has
        check_weight_shapes(file_shapes + [(1024, 10)], plan, where="refolded")
    # a kept-dense layer with a factorized layer's dense shape (q factorized, k kept dense)
    plan = CompressionPlan({"name": "test"}, (layer("q", 48, 48, 8), layer("k", 48, 48, None)))
    model_shapes = [(8, 48), (48, 8), (48, 48)]
    check_weight_shapes(model_shapes, plan, where="ok")
    with pytest.raises(RefoldError):  # a plan that leaves k out cannot tell k's weight from a refold
        check_weight_shapes(model_shapes, CompressionPlan({"name": "test"}, plan.layers[:1]), where="k not in plan")
