"""Verification: an exported model must compute what the torch model computes.

Runs onnxruntime (or any runner returning numpy) and torch on the same inputs and records max
abs/rel error and top-1 agreement; past tolerance it raises :class:`VerificationError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgecompress.errors import VerificationError
from edgecompress.bench.metrics import is_classifier_output, max_abs_diff, top1_agreement

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """Pass when max|a-b| <= atol + rtol * max|b| and top-1 agreement >= min_agreement."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_agreement: float = 0.999


@dataclass(frozen=True)
class Verification:
    """What one verification measured."""

    artifact: str
    passed: bool
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    samples: int
    inputs: str
    tolerance: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """One ✓/✗ line for the terminal."""
        mark = "✓" if self.passed else "✗"
        agreement = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.2%}"
        return (f"{mark} {self.artifact}: max abs err {self.max_abs_error:.2e}, rel {self.max_rel_error:.2e}, "
                f"top-1 agreement {agreement} on {self.samples} {self.inputs} inputs")


def torch_outputs(model: nn.Module, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Run a torch model on numpy inputs in batches."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunks.append(model(torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size]))).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def ort_runner(path: Path, threads: int = 0) -> Runner:
    """A batched onnxruntime runner for a single-input, single-output model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        outs = [session.run(None, {input_name: np.ascontiguousarray(inputs[i:i + batch_size])})[0]
                for i in range(0, len(inputs), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    return run


def random_inputs(input_shape: tuple[int, ...], samples: int = 256, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs of the model's shape with ``samples`` rows (fixed seed)."""
    return np.random.default_rng(seed).standard_normal((samples, *input_shape[1:])).astype(np.float32)


def verify(artifact: str, runner: Runner, reference: np.ndarray, inputs: np.ndarray, description: str,
           tolerance: Tolerance = Tolerance()) -> Verification:
    """Compare ``runner(inputs)`` with ``reference`` outputs; raise when past tolerance."""
    outputs = runner(inputs)
    if outputs.shape != reference.shape:
        raise VerificationError(f"{artifact}: output shape {outputs.shape} differs from torch's {reference.shape}")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    abs_err = max_abs_diff(outputs, reference)
    rel_err = abs_err / scale if scale > 0 else 0.0
    agreement = top1_agreement(outputs, reference) if is_classifier_output(reference) else None
    bound = tolerance.atol + tolerance.rtol * scale
    passed = bool(np.isfinite(outputs).all() and abs_err <= bound
                  and (agreement is None or agreement >= tolerance.min_agreement))
    result = Verification(artifact, passed, abs_err, rel_err, agreement, len(inputs), description, asdict(tolerance))
    if not passed:
        raise VerificationError(result.line() + f" — exceeds tolerance (max abs err bound {bound:.2e}, "
                                f"min agreement {tolerance.min_agreement:.1%})")
    return result
