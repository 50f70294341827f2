"""Verification: an exported model must compute what the torch model computes.

Runs onnxruntime (or any runner returning numpy) and torch on the same inputs and records, per
named output, max abs/rel error and top-1 agreement; past tolerance it raises
:class:`VerificationError`. Inputs are an array (one-input models) or named arrays (``spec.Inputs``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from edgecompress.errors import VerificationError
from edgecompress.bench.metrics import is_classifier_output, max_abs_diff, top1_agreement
from edgecompress.quality import agreement_text, cosine_rows
from edgecompress.spec import Batch, ModelIO, num_samples, outputs_of, slice_inputs

Runner = Callable[[Batch], "np.ndarray | dict[str, np.ndarray]"]
FLOP_BUDGET = 2e10  # verification work per artifact (torch forward FLOPs over all samples)
MIN_VERIFY_SAMPLES = 8


@dataclass(frozen=True)
class Tolerance:
    """Pass when max|a-b| <= atol + rtol * max|b| and the agreement >= min_agreement: top-1 agreement for
    class outputs, mean cosine similarity for embedding outputs."""

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
    output: str | None = None  # the output's name when the model has several
    cosine_mean: float | None = None  # embedding outputs: mean cosine similarity to torch's (rows = last axis)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """One ✓/✗ line for the terminal."""
        mark = "✓" if self.passed else "✗"
        where = f" [{self.output}]" if self.output else ""
        return (f"{mark} {self.artifact}{where}: max abs err {self.max_abs_error:.2e}, rel {self.max_rel_error:.2e}, "
                f"{agreement_text(self.to_json())} on {self.samples} {self.inputs} inputs")


def torch_outputs(model: nn.Module, inputs: Batch, batch_size: int = 1024, io: ModelIO | None = None) -> np.ndarray:
    """Run a torch model on numpy inputs in batches; its (first) output."""
    io = io or ModelIO.single_float((1, *inputs.shape[1:])) if isinstance(inputs, np.ndarray) else io
    if io is None:
        raise ValueError("named inputs need the model's ModelIO")
    if num_samples(inputs) == 0:
        return np.zeros((0,), np.float32)
    return next(iter(outputs_of(model, inputs, io, batch_size).values()))


def ort_runner(path: Path, threads: int = 0, *, named: bool = False, static_batch: int | None = None) -> Runner:
    """A batched onnxruntime runner: the first output (default) or every output by name (``named``).

    Takes an array (fed to the first input) or named arrays; ``static_batch`` runs in chunks of exactly that size.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def run(inputs: Batch, batch_size: int = 1024) -> np.ndarray | dict[str, np.ndarray]:
        feeds = inputs if isinstance(inputs, Mapping) else {input_names[0]: inputs}
        step = static_batch or batch_size
        parts: list[list[np.ndarray]] = [[] for _ in output_names]
        for start in range(0, num_samples(feeds), step):
            chunk = slice_inputs(feeds, start, start + step)
            for part, value in zip(parts, session.run(None, {n: np.ascontiguousarray(chunk[n]) for n in input_names})):
                part.append(value)
        outs = {n: np.concatenate(p) if p else np.zeros((0,), np.float32) for n, p in zip(output_names, parts)}
        return outs if named else outs[output_names[0]]

    return run


def random_inputs(input_shape: tuple[int, ...], samples: int = 256, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs of the model's shape with ``samples`` rows (fixed seed)."""
    return np.random.default_rng(seed).standard_normal((samples, *input_shape[1:])).astype(np.float32)


def forward_flops(model: nn.Module, io: ModelIO) -> float:
    """FLOPs of one forward pass per sample (torch's FlopCounterMode on the tracing inputs; 0 if it cannot count)."""
    from torch.utils.flop_counter import FlopCounterMode

    example = io.example()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*example)
    except Exception:  # counting is advisory; the build's own forward passes report real failures
        return 0.0
    return counter.get_total_flops() / max(int(example[0].shape[0]), 1)


def verify_samples(model: nn.Module, io: ModelIO, cap: int) -> int:
    """Samples for verification sized by work: ``FLOP_BUDGET`` of forward FLOPs, between 8 and ``cap``
    (a multiple of a static batch)."""
    flops = forward_flops(model, io)
    samples = cap if flops <= 0 else int(min(cap, max(MIN_VERIFY_SAMPLES, FLOP_BUDGET // flops)))
    batch = io.static_batch
    if batch:
        samples = max(batch, samples - samples % batch)
    return samples


def verify_outputs(artifact: str, runner: Runner, reference: dict[str, np.ndarray], inputs: Batch,
                   description: str, tolerance: Tolerance = Tolerance(),
                   kinds: Mapping[str, str] | None = None) -> list[Verification]:
    """Verify each named output of ``runner(inputs)`` against torch's; raise at the first past tolerance."""
    outputs = runner(inputs)
    if not isinstance(outputs, Mapping):
        outputs = {next(iter(reference)): outputs}
    missing = [name for name in reference if name not in outputs]
    if missing or len(outputs) != len(reference):
        raise VerificationError(f"{artifact}: outputs {sorted(outputs)} differ from torch's {sorted(reference)}")
    named = len(reference) > 1 or next(iter(reference)) != "output"
    return [_compare(artifact, outputs[name], ref, num_samples(inputs), description, tolerance,
                     name if named else None, (kinds or {}).get(name)) for name, ref in reference.items()]


def verify(artifact: str, runner: Runner, reference: np.ndarray, inputs: np.ndarray, description: str,
           tolerance: Tolerance = Tolerance()) -> Verification:
    """Compare ``runner(inputs)`` with ``reference`` outputs; raise when past tolerance."""
    return _compare(artifact, runner(inputs), reference, num_samples(inputs), description, tolerance)


def _compare(artifact: str, outputs: np.ndarray, reference: np.ndarray, samples: int, description: str,
             tolerance: Tolerance, output: str | None = None, kind: str | None = None) -> Verification:
    if outputs.shape != reference.shape:
        raise VerificationError(f"{artifact}: output shape {outputs.shape} differs from torch's {reference.shape}")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    abs_err = max_abs_diff(outputs, reference)
    rel_err = abs_err / scale if scale > 0 else 0.0
    classes = kind == "logits" if kind is not None else is_classifier_output(reference)
    agreement = top1_agreement(outputs, reference) if classes else None
    cosine = float(cosine_rows(outputs, reference).mean()) if kind == "embedding" and reference.size else None
    bound = tolerance.atol + tolerance.rtol * scale
    agrees = [value >= tolerance.min_agreement for value in (agreement, cosine) if value is not None]
    passed = bool(np.isfinite(outputs).all() and abs_err <= bound and all(agrees))
    result = Verification(artifact, passed, abs_err, rel_err, agreement, samples, description, asdict(tolerance),
                          output, cosine)
    if not passed:
        raise VerificationError(result.line() + f" — exceeds tolerance (max abs err bound {bound:.2e}, "
                                + (f"min cosine {tolerance.min_agreement:.4f})" if cosine is not None
                                   else f"min agreement {tolerance.min_agreement:.1%})"))
    return result
