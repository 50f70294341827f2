"""Quantization on top of low rank: onnxruntime int8 of an ONNX file (weight-only dynamic, or static
QDQ with activations from calibration inputs), 4-bit weight-only ONNX (MatMulNBits, see
:mod:`edgecompress.export.int4`), and TFLite int8 through litert-torch's PT2E quantizer (dynamic range,
or full-integer static with calibration).

All keep the factor pairs apart: quantization rewrites each weight on its own, it never multiplies
two weights together.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import onnx

from edgecompress.errors import ExportError, InputError
from edgecompress.export.int4 import ACCURACY_LEVELS, DEFAULT_ACCURACY_LEVEL, DEFAULT_MAX_BLOCK, matmulnbits_shapes, quantize_model_int4
from edgecompress.export.onnx import check_weight_shapes, initializer_shapes
from edgecompress.export.tflite import convert_tflite, import_converter, quiet_native
from edgecompress.export.verify import Tolerance

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgecompress.lowrank.factorize import CompressionPlan

INT8_MIN_AGREEMENT = 0.98
INT4_MIN_AGREEMENT = 0.95
INT8_RTOL = 0.5
QUANTIZE_KINDS = ("int8", "int8-static", "int4")
INT8_WEIGHTS = ("auto", "per-tensor", "per-channel")  # --int8-weights: one weight scale per tensor or per column


def int8_per_channel(choice: str, quality_kind: str | None) -> bool:
    """Whether dynamic int8 gets one weight scale per output channel: ``choice`` (--int8-weights), where "auto"
    means per channel for an embedding quality output and per tensor otherwise. Measured: per tensor moves
    MiniLM's embeddings to cosine 0.958 (dense) / 0.966 (whitened rank 192), per channel to 0.990 / 0.980
    (benchmarks/results/int8-schemes_*); on the factorized MNIST MLP per tensor keeps the accuracy and
    the scales of small-rank factors cost size per channel (rank 32: 3.69x vs 3.44x smaller than fp32)."""
    choice = check_int8_weights(choice)
    return choice == "per-channel" or (choice == "auto" and quality_kind == "embedding")


def check_int8_weights(choice: str) -> str:
    """``choice`` when it is one of :data:`INT8_WEIGHTS`, else InputError."""
    if choice not in INT8_WEIGHTS:
        raise InputError(f"--int8-weights must be one of {', '.join(INT8_WEIGHTS)}, got {choice!r}")
    return choice


def quantize_kinds(text: str | None) -> tuple[str, ...]:
    """``--quantize`` as a tuple: ``None`` -> (), ``"int8,int4"`` -> ("int8", "int4"); InputError on an
    unknown kind or on int8 together with int8-static (both would be <name>.int8.onnx)."""
    if not text:
        return ()
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in QUANTIZE_KINDS]
    if unknown:
        raise InputError(f"--quantize {unknown[0]!r} is not one of {', '.join(QUANTIZE_KINDS)} "
                         "(give one or a comma-separated list, e.g. int8,int4)")
    if "int8" in kinds and "int8-static" in kinds:
        raise InputError("--quantize int8 and int8-static both write <name>.int8.onnx: pick one")
    return kinds


def int8_tolerance(min_agreement: float = INT8_MIN_AGREEMENT) -> Tolerance:
    """Verification bounds for an int8 artifact against the fp32 model it was quantized from:
    top-1 agreement >= ``min_agreement`` and max|error| <= 0.5 * max|fp32 output| (a gross-error
    guard: a wrong scale or zero point breaks it; int8 rounding and clipping stay well inside)."""
    return Tolerance(atol=0.0, rtol=INT8_RTOL, min_agreement=min_agreement)


def int8_checks(checks: list[tuple[np.ndarray, str]], calibration: np.ndarray | None, min_agreement: float,
                samples: int) -> list[tuple[np.ndarray, str, Tolerance]]:
    """The verification inputs and bounds of an int8 artifact, from the fp32 ones ``(inputs, description)``.

    Agreement is enforced on data ("eval", "calib"), not on "random" inputs: random inputs sit
    near decision boundaries, where int8 rounding flips arg-maxes without anything being wrong
    (the gross-error bound still applies). A statically quantized model is verified on its first
    ``samples`` calibration inputs instead of random ones, whose range it was not calibrated for.
    """
    bounded = int8_tolerance(min_agreement)
    result = []
    for inputs, description in checks:
        if description == "random" and calibration is not None:
            result.append((calibration[:samples], "calib", bounded))
        else:
            result.append((inputs, description, int8_tolerance(0.0) if description == "random" else bounded))
    return result


@dataclass(frozen=True)
class QuantScheme:
    """How an artifact was quantized (serialised into build.json)."""

    mode: str  # "dynamic", "static" or "weight-only"
    tool: str
    weights: str
    activations: str
    calibration_samples: int | None = None
    bits: int = 8
    layers: list[dict[str, Any]] | None = None  # int4: per-layer K, N and block size

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Int8Scheme = QuantScheme


@contextlib.contextmanager
def _quiet_ort_quantization() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing hint and per-node notes at INFO/WARNING."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _ArrayReader:
    """A CalibrationDataReader (duck-typed: onnxruntime only calls ``get_next``) over an array, one sample per batch."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._feeds = iter([{input_name: np.ascontiguousarray(inputs[i:i + 1], dtype=np.float32)}
                            for i in range(len(inputs))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(source: Path, target: Path, *, calibration: np.ndarray | None = None,
                  per_channel: bool = False) -> Int8Scheme:
    """Write an int8 copy of ``source`` to ``target``.

    Without ``calibration``: dynamic quantization, int8 weights with one scale per tensor (``per_channel``:
    one per output column), activations quantized at run time. With it: static QDQ
    quantization, weights and activations int8 per tensor, activation ranges from min/max over the
    calibration inputs.

    Per-channel weights use the 7-bit range (onnxruntime's ``reduce_range``): on CPUs without VNNI the
    dynamic kernels multiply uint8 activations by int8 weights and add pairs of products in int16, which
    saturates once both use their full range, and per channel every column does. Measured on an AVX2
    machine, whitened rank-192 MiniLM, 512 held-out sentences
    (benchmarks/results/int8-schemes_minilm-whiten-r192_cpu-2core): mean cosine to the fp32 file 0.966
    per tensor, 0.045 per channel at the full range, 0.980 per channel with the 7-bit range.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        with _quiet_ort_quantization():
            if calibration is None:
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                                 reduce_range=per_channel)
                weights = "int8 per-channel (7-bit range)" if per_channel else "int8 per-tensor"
                return Int8Scheme("dynamic", "onnxruntime.quantize_dynamic", weights, "float32, quantized at run time")
            if len(calibration) == 0:
                raise ExportError("static int8 quantization needs at least one calibration sample")
            input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
            quantize_static(source, target, _ArrayReader(input_name, calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False)
            return Int8Scheme("static", "onnxruntime.quantize_static (QDQ, MinMax)", "int8 per-tensor",
                              "int8 per-tensor (calibrated)", len(calibration))
    except ExportError:
        target.unlink(missing_ok=True)
        raise
    except Exception as exc:  # onnxruntime raises plain exceptions for unsupported graphs
        target.unlink(missing_ok=True)
        raise ExportError(f"int8 quantization of {source.name} failed: {str(exc).strip().splitlines()[0][:300]}") from exc


def convert_tflite_int8(model: "nn.Module", input_shape: tuple[int, ...], target: Path, *, batch: int = 1,
                        calibration: np.ndarray | None = None) -> QuantScheme:
    """Convert ``model`` (in inference mode) to an int8 .tflite with litert-torch's PT2E quantizer.

    Without ``calibration``: dynamic range (int8 per-channel weights, float activations quantized at run
    time by the kernels). With it: static (weights int8 per channel, activations int8 with ranges observed
    on the calibration inputs, fed ``batch`` rows at a time); the file takes and gives int8 (its input and output carry scales; :func:`edgecompress.export.tflite.to_tensor`
    and bench quantize float feeds with them).
    """
    import_converter()
    import torch

    if calibration is not None and len(calibration) == 0:
        raise ExportError("static int8 quantization needs at least one calibration sample")
    with quiet_native():
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e

        example = (torch.zeros((batch, *input_shape[1:])),)
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=calibration is None))
        try:
            prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
            # the observers must run (weights at least once), or every scale is a default and the output garbage
            for rows in [example[0]] if calibration is None else _batches(calibration, batch):
                prepared(rows)
            quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        except Exception as exc:  # torch.export / PT2E raise many types
            raise ExportError(f"TFLite int8 preparation failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    convert_tflite(quantized, input_shape, target, batch=batch, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    if calibration is None:
        return QuantScheme("dynamic", "litert-torch PT2E (dynamic range)", "int8 per-channel",
                           "float32, quantized at run time")
    return QuantScheme("static", "litert-torch PT2E (static, min/max observers)", "int8 per-channel",
                       "int8 per-tensor (calibrated); int8 graph input/output (runners quantize with its scale)",
                       len(calibration))


def _batches(inputs: np.ndarray, batch: int) -> Iterator["torch.Tensor"]:
    """Whole ``batch``-row torch tensors over ``inputs`` (the converted graph's batch is fixed; a ragged
    tail is dropped unless it is all there is)."""
    import torch

    stop = max(batch, len(inputs) - len(inputs) % batch)
    for start in range(0, stop, batch):
        rows = np.asarray(inputs[start:start + batch], dtype=np.float32)
        if len(rows) < batch:  # fewer samples than one batch: repeat them
            rows = np.resize(rows, (batch, *rows.shape[1:]))
        yield torch.from_numpy(rows)


def quantize_onnx_int4(source: Path, target: Path, *, max_block: int = DEFAULT_MAX_BLOCK, symmetric: bool = True,
                       accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> QuantScheme:
    """Write a 4-bit weight-only copy of ``source`` to ``target``: each constant-weight Gemm/MatMul (factors
    and kept-dense layers alike) becomes a MatMulNBits with per-layer block sizes (see
    :func:`edgecompress.export.int4.block_size_for`); biases and other ops stay fp32, activations are
    quantized per block to int8 inside MatMulNBits at ``accuracy_level`` 4 (0: fp32 compute)."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise InputError(f"MatMulNBits accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level}")
    try:
        model, layers = quantize_model_int4(onnx.load(str(source)), max_block=max_block, symmetric=symmetric,
                                            accuracy_level=accuracy_level)
    except Exception as exc:  # malformed or unusual graphs: onnx/numpy raise plain exceptions
        raise ExportError(f"int4 quantization of {source.name} failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    if not layers:
        raise ExportError(f"int4 quantization of {source.name}: no Gemm/MatMul with a constant 2-D fp32 weight to quantize")
    tmp = target.with_name(target.name + ".tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    blocks = sorted({int(layer["block_size"]) for layer in layers})
    kind = "symmetric" if symmetric else "asymmetric"
    return QuantScheme("weight-only", "edgecompress MatMulNBits (onnxruntime com.microsoft)",
                       f"int4 {kind} block-wise (block {'/'.join(map(str, blocks))} along K), fp32 scales, "
                       f"MatMulNBits accuracy_level {accuracy_level}",
                       "float32 (int8 per block inside MatMulNBits)" if accuracy_level == 4 else "float32",
                       bits=4, layers=layers)


def quantized_weight_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Every constant's shape, with each MatMulNBits weight at its logical [N, K] (its packed tensor is 3-D):
    what the refold guard counts in a quantized file."""
    return initializer_shapes(model) + list(matmulnbits_shapes(model))


def check_quantized_factors(path: Path, plan: CompressionPlan, *, where: str,
                            other: Iterable[tuple[int, ...]] = ()) -> None:
    """The refold guard on a quantized ONNX file (int8 or int4); ``other`` as in
    :func:`edgecompress.export.onnx.check_weight_shapes`."""
    model = onnx.load(str(path), load_external_data=False)
    check_weight_shapes(quantized_weight_shapes(model), plan, where=where, other=other)
