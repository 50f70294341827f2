"""int8 on top of low rank: onnxruntime quantization of an ONNX file (weight-only dynamic by
default, static QDQ with activations when calibration inputs are given) and TFLite dynamic-range
int8 through litert-torch's PT2E quantizer.

Both keep the factor pairs apart: quantization rewrites each weight in place (same shape, int8),
it never multiplies two weights together.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import onnx

from edgecompress.errors import ExportError
from edgecompress.export.tflite import convert_tflite, import_converter, quiet_native
from edgecompress.export.verify import Tolerance

if TYPE_CHECKING:
    from torch import nn

INT8_MIN_AGREEMENT = 0.98
INT8_RTOL = 0.5


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
class Int8Scheme:
    """How an artifact was quantized (serialised into build.json)."""

    mode: str  # "dynamic" or "static"
    tool: str
    weights: str
    activations: str
    calibration_samples: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


def quantize_onnx(source: Path, target: Path, *, calibration: np.ndarray | None = None) -> Int8Scheme:
    """Write an int8 copy of ``source`` to ``target``.

    Without ``calibration``: weight-only dynamic quantization (int8 per-tensor weights,
    activations quantized at run time). With it: static QDQ quantization, weights and activations
    int8, activation ranges from min/max over the calibration inputs.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        with _quiet_ort_quantization():
            if calibration is None:
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=False)
                return Int8Scheme("dynamic", "onnxruntime.quantize_dynamic", "int8 per-tensor",
                                  "float32, quantized at run time")
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


def convert_tflite_int8(model: "nn.Module", input_shape: tuple[int, ...], target: Path, *, batch: int = 1) -> Int8Scheme:
    """Convert ``model`` (in inference mode) to a dynamic-range int8 .tflite (int8 per-channel weights, float
    activations quantized at run time by the kernels) with litert-torch's PT2E quantizer."""
    import_converter()
    import torch

    with quiet_native():
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e

        example = (torch.zeros((batch, *input_shape[1:])),)
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        try:
            prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
            prepared(*example)  # the weight observers must run once, or every scale is a default and the output garbage
            quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        except Exception as exc:  # torch.export / PT2E raise many types
            raise ExportError(f"TFLite int8 preparation failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    convert_tflite(quantized, input_shape, target, batch=batch, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    return Int8Scheme("dynamic", "litert-torch PT2E (dynamic range)", "int8 per-channel",
                      "float32, quantized at run time")
