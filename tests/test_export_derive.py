"""The compressed ONNX file derived from the dense export (export/derive.py): same outputs as the
compressed torch model for MatMul (3-D activations) and Gemm (2-D) layers, refused when other weights differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgecompress.export.derive import derive_compressed
from edgecompress.export.onnx import export_onnx
from edgecompress.lowrank.factorize import LowRankLinear, compress
from edgecompress.lowrank.policies import UniformPolicy
from edgecompress.spec import ModelIO, parse_input


class Tokens(nn.Module):
    """Linear layers on (batch, seq, dim) activations (MatMul) and a 2-D head (Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(16, 48), nn.Linear(48, 16), nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(x))).mean(1))


def _export_pair(tmp_path: Path) -> tuple[nn.Module, nn.Module, onnx.ModelProto, ModelIO]:
    torch.manual_seed(0)
    dense = Tokens().eval()
    io = ModelIO((parse_input("x:batch=2,seq=5,16"),))
    export_onnx(dense, io, tmp_path / "dense.onnx")
    compressed, plan = compress(dense, UniformPolicy(4))
    assert sum(isinstance(m, LowRankLinear) for m in compressed.modules()) == 3
    return dense, compressed.eval(), onnx.load(str(tmp_path / "dense.onnx")), io


def test_derived_file_computes_the_compressed_model(tmp_path: Path) -> None:
    dense, compressed, dense_onnx, _ = _export_pair(tmp_path)
    assert derive_compressed(dense_onnx, dense, compressed, tmp_path / "small.onnx") is None
    model = onnx.load(str(tmp_path / "small.onnx"))
    onnx.checker.check_model(model)
    shapes = sorted(tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2)
    assert (48, 16) not in shapes and (16, 48) not in shapes and (24, 16) not in shapes  # no dense weight left
    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = compressed(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_not_derived_when_other_weights_changed(tmp_path: Path) -> None:
    dense, compressed, dense_onnx, _ = _export_pair(tmp_path)
    with torch.no_grad():
        compressed.head.second.bias.add_(1.0)
    assert derive_compressed(dense_onnx, dense, compressed, tmp_path / "small.onnx") == "head.bias differs from the dense model"
    assert not (tmp_path / "small.onnx").exists()
