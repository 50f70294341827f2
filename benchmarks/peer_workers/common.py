"""Shared by the peer workers (each runs in its peer's own venv: torch + the peer, no edgecompress):
the reference MLP as plain torch, the data the orchestrator saved, a torch.onnx export, and the result line."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)


def reference_mlp(state: Path) -> nn.Sequential:
    """784-1024-1024-10 (shared/DESIGN.md §7) with the orchestrator's trained weights."""
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    model.load_state_dict(torch.load(state, weights_only=True))
    return model.eval()


def split(work: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(work / f"{name}.npz")
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def linear_params(model: nn.Module) -> int:
    """Weights and biases of every nn.Linear (factor layers included)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))


def export(model: nn.Module, path: Path) -> Path:
    """torch.onnx.export (dynamo, opset 18, weights inside the file), input named ``input``, dynamic batch."""
    torch.onnx.export(model.eval(), (torch.zeros(1, 784),), str(path), input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False, opset_version=18)
    return path


def emit(rows: list[dict]) -> None:
    """The worker's result: one JSON line on stdout."""
    sys.stdout.write("RESULT " + json.dumps(rows) + "\n")


def attempt(row: dict[str, Any], action: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run ``action(row)`` (it fills the row); on failure record why on the row and keep going."""
    try:
        action(row)
    except Exception as exc:  # a peer failing is a finding, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        traceback.print_exc()
    return row
