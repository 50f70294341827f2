"""Checks of build options and of data that must pass before any work starts (or before data is used).

Each check raises :class:`InputError` with one line naming the option and what would be valid, so a
bad value fails in a second instead of after minutes of work (or worse, is silently accepted).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ExportError, InputError

MIN_OPSET = 18  # torch 2.13's dynamo exporter ignores lower opsets


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= max_opset():
        raise InputError(f"--opset must be between {MIN_OPSET} and {max_opset()} (the installed onnx's newest), "
                         f"got {opset}")


def check_written_opset(path: Path, opset: int) -> None:
    """ExportError when the exporter wrote another opset than asked for (build.json would record a wrong one)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    written = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if written and written[0] != opset:
        raise ExportError(f"torch's ONNX exporter wrote opset {written[0]} although --opset {opset} was asked for; "
                          f"use --opset {written[0]}")


def check_regex(pattern: str | None, option: str = "--exclude") -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InputError(f"{option} is not a valid regular expression ({exc}): {pattern!r}") from None


def check_positive(option: str, value: int | float | None) -> None:
    """``value`` is None (not given) or a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{option} must be positive, got {value}")


def check_non_negative(option: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise InputError(f"{option} must be a finite number >= 0, got {value}")


def check_build_options(config: Any) -> None:
    """Options of a ``BuildConfig`` that no later stage validates before doing work (training options
    are checked by ``lowrank.finetune.phase_settings``)."""
    check_opset(config.opset)
    check_regex(config.exclude)
    check_positive("--verify-samples", config.verify_samples)
    check_positive("--eval-samples", config.eval_samples)
    check_positive("--calib-samples", config.calib_samples)
    check_non_negative("--atol", config.tolerance.atol)
    check_non_negative("--rtol", config.tolerance.rtol)


def check_samples(x: np.ndarray, y: np.ndarray | None, name: str, what: str) -> None:
    """Data that a build uses must have samples, finite values and non-negative integer labels."""
    if len(x) == 0:
        raise InputError(f"{what} data {name} has no samples")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise InputError(f"{what} data {name} contains NaN or Inf values")
    if y is not None and len(y) and int(y.min()) < 0:
        raise InputError(f"{what} data {name} has negative labels (min {int(y.min())}); labels are class indices")


def check_labels(y: np.ndarray | None, classes: int, name: str, what: str) -> None:
    """Labels must be class indices of a model with ``classes`` outputs."""
    if y is not None and len(y) and int(y.max()) >= classes:
        raise InputError(f"{what} data {name} has label {int(y.max())} but the model has {classes} outputs "
                         f"(labels must be 0..{classes - 1})")


def control_flow_linears(module: Any) -> list[str]:
    """Sub-graphs (``torch.cond`` / ``while_loop`` branches of an exported program) that call linear
    layers: edgecompress compresses only the top-level graph's Linear layers, so these stay dense."""
    import torch

    linear_ops = (torch.ops.aten.linear.default, torch.nn.functional.linear)
    found = []
    for name, sub in module.named_modules():
        if name and isinstance(sub, torch.fx.GraphModule):
            calls = sum(1 for node in sub.graph.nodes if node.op == "call_function" and node.target in linear_ops)
            if calls:
                found.append(f"{name} ({calls} linear call{'s' if calls > 1 else ''})")
    return found
