"""``build``: load -> compress -> export (dense + compressed) -> simplify -> guard -> verify -> eval
-> build.json. Each step calls one module; this file only orders them and stages the outputs so a
failed build leaves no partial files behind."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from edgecompress import coverage, embed_io, hf, outdir, provenance, quality, validate
from edgecompress.data import Dataset, hold_out, load_dataset, load_named_npz, num_samples, validation_spec
from edgecompress.distill_step import DistillOptions, distill_step, split as distill_split
from edgecompress.errors import InputError
from edgecompress.export import onnx as onnx_export
from edgecompress.export.derive import derive_compressed
from edgecompress.export import quantize as int8_export
from edgecompress.export import tflite as tflite_export
from edgecompress.export.verify import (Tolerance, ort_runner, random_inputs, torch_outputs, verify_outputs,
                                        verify_samples)
from edgecompress.length_groups import groupable, grouped_runner, padded_batches, run_grouped, trim
from edgecompress.load import LoadedModel, infer_input_shape, load_model
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.calibration import Calibration, calibrate, require_samples
from edgecompress.lowrank.data_policies import data_errors
from edgecompress.lowrank.factorize import CompressionPlan, compress, excluded_reason, with_unplanned_layers
from edgecompress.lowrank.finetune import TrainingReport, finetune, phase_settings, torch_threads
from edgecompress.lowrank.policies import PolicyContext, RankPolicy, UniformPolicy
from edgecompress.lowrank.spectrum import HEAD_KEPT_REASON, linear_layers, model_spectra, svd_settings
from edgecompress.spec import Batch, InputSpec, ModelIO, outputs_of, run_model
from edgecompress.lowrank.training import FINETUNE_EPOCHS, SVD_EPOCHS, SvdTrainingPolicy, svd_train
from edgecompress.models import CACHE_DIR
from edgecompress.bench.metrics import accuracy, macro_f1, top1

Progress = Callable[[str], None]
DEFAULT_CALIB_SAMPLES = 1024
SENSITIVITY_BATCH = 32  # named-input samples in the budget's per-layer sensitivity measurement
CALIB_GROUP = 64  # token-model samples per length group in calibration and the refit (calibration_inputs)


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build`` needs; the CLI fills it from flags."""

    model: Path
    out: Path
    policy: RankPolicy = field(default_factory=UniformPolicy)
    name: str | None = None
    targets: tuple[str, ...] = ("onnx",)
    input_shape: tuple[int, ...] | None = None
    inputs: tuple[InputSpec, ...] = ()  # --input NAME:SHAPE:DTYPE (several named inputs, dynamic axes)
    quality_output: str | None = None  # the output compressed-vs-dense quality is judged on
    seq: int | None = None  # tracing/verification size of every "seq" axis
    factory: str | None = None
    allow_pickle: bool = False
    exclude: str | None = None
    keep_head: bool = True  # every policy (svd-training too) leaves the last selected Linear dense; --compress-head
    opset: int = onnx_export.DEFAULT_OPSET
    simplify: bool = True
    eval_data: str | None = None
    eval_samples: int | None = None
    verify_samples: int = 256
    tolerance: Tolerance = field(default_factory=Tolerance)
    seed: int = 0
    # data-driven ranks and budget mode (lowrank/calibration.py, lowrank/budget.py)
    calib_data: str | None = None
    calib_samples: int | None = None  # None: default_calib_samples (1024, or the widest selected layer's inputs)
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None  # budget mode: mean cosine of the quality output's embeddings on --eval-split
    eval_split: str | None = None
    target_params: float | None = None
    target_size: int | None = None
    round_to: int = 1
    allocation: str = "auto"  # budget mode: auto | threshold | sensitivity (lowrank/budget.py)
    confidence: float = 0.95  # budget mode: one-sided confidence of the accuracy-drop bound
    # fine-tuning and SVD training (lowrank/training.py)
    train_data: str | None = None
    finetune_data: str | None = None
    epochs: int | None = None  # None: the method's default (fine-tuning 3, SVD training 2)
    distill_weight: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)  # lr, batch_size, temperature, threads, finetune_epochs, val
    distill: DistillOptions | None = None  # label-free distillation after compression (distill_step.py)
    # extra targets (export/tflite.py, export/quantize.py)
    quantize: str | None = None
    batch: int = 1
    int8_min_agreement: float = int8_export.INT8_MIN_AGREEMENT
    int4_min_agreement: float = int8_export.INT4_MIN_AGREEMENT
    int8_weights: str = "auto"  # dynamic int8: per-tensor | per-channel | auto (per channel for embeddings)
    threads: int = 1  # torch and onnxruntime threads of the build (SVD, export, verification)
    whiten: bool = False  # every policy ranks/factors the activation-whitened spectrum (needs --calib)
    sequential_refit: bool = False  # refit the chosen factors in order on the compressed prefix (needs --calib)
    svd: str = "auto"  # auto: randomized where the rank is well below a large layer's full rank; exact: always exact

    @property
    def stem(self) -> str:
        return self.name or self.model.stem

    @property
    def budget(self) -> Budget | None:
        """The budget-mode target, or None for a policy's own ranks."""
        targets = (self.max_accuracy_drop, self.target_params, self.target_size, self.min_cosine)
        return Budget(*targets) if any(target is not None for target in targets) else None


@dataclass
class BuildResult:
    """The build.json record and where the artifacts are."""

    record: dict[str, Any]
    out: Path
    model: nn.Module = field(repr=False)
    plan: CompressionPlan = field(repr=False)

    def artifact(self, role: str) -> Path:
        return self.out / self.record["artifacts"][role]["path"]


class _Timings(dict):
    @contextlib.contextmanager
    def stage(self, name: str, progress: Progress | None) -> Iterator[None]:
        if progress:
            progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 4)


def output_classes(model: nn.Module, io: ModelIO) -> int:
    """The size of the quality output's last dimension (the number of classes of a classifier)."""
    outputs = _reference_outputs(model, random_batch(io, io.static_batch or 2, 0), io, "random")
    return int(outputs[io.quality_output or next(iter(outputs))].shape[-1])


def resolve_io(loaded: LoadedModel, *, inputs: tuple[InputSpec, ...] = (), input_shape: tuple[int, ...] | None = None,
               seq: int | None = None, quality_output: str | None = None, seed: int = 0) -> ModelIO:
    """The model's inputs (--input, else --input-shape, else what the file records, else (1, in) of a
    leading Linear) and outputs (names and kinds, from one forward pass)."""
    if inputs:
        io = ModelIO(tuple(_with_vocab(spec, loaded.module) for spec in inputs))
    elif input_shape:
        io = ModelIO.single_float(input_shape)
    else:
        io = loaded.io or ModelIO.single_float(infer_input_shape(loaded.module))
    if seq is not None:
        io = _with_seq(io, seq)
    example = io.random(io.static_batch or 2, seed=seed)
    try:
        with torch.no_grad():
            outputs = run_model(loaded.module, example, io)
    except InputError:
        raise
    except Exception as exc:  # any failure means these inputs do not fit the model
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        described = ", ".join(spec.describe() for spec in io.inputs)
        subject = f"input {described} does" if len(io.inputs) == 1 else f"inputs {described} do"
        raise InputError(f"{subject} not fit the model: {message}"
                         + ("" if inputs else " (give them with --input NAME:SHAPE:DTYPE)")) from exc
    kinds = {name: quality.output_kind(name, value.detach().numpy()) for name, value in outputs.items()}
    return io.with_outputs(tuple(outputs), kinds, quality_output)


def resolve_input_shape(loaded: LoadedModel, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The first input's tracing shape (see :func:`resolve_io`), for one-input tools such as ``analyze``."""
    return resolve_io(loaded, input_shape=given).input_shape


def _with_vocab(spec: InputSpec, module: nn.Module) -> InputSpec:
    """Token ids without a value bound draw from the first nn.Embedding's rows."""
    if spec.role != "ids" or spec.high is not None:
        return spec
    embedding = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
    return replace(spec, high=embedding.num_embeddings if embedding is not None else 2)


def _with_seq(io: ModelIO, seq: int) -> ModelIO:
    """Every axis named "seq" traced at ``seq``."""
    if seq < 1:
        raise InputError(f"--seq must be at least 1, got {seq}")
    if not any("seq" in spec.axes for spec in io.inputs):
        raise InputError("--seq applies to models with a 'seq' axis (e.g. --input input_ids:batch=1,seq=128:int64)")
    return replace(io, inputs=tuple(replace(spec, shape=tuple(seq if a == "seq" else d for a, d in zip(spec.axes, spec.shape)))
                                    for spec in io.inputs))


def _model_dataset(spec: str, default_split: str, samples: int | None, io: ModelIO | tuple[int, ...],
                   what: str, folder: Path | None = None) -> Dataset:
    """Load data and fit it to the model's inputs: reshape a one-input model's samples (flat or not),
    or take one array per input name from an .npz / tokenize a text file; InputError on a mismatch."""
    if not isinstance(io, ModelIO):
        io = ModelIO.single_float(io)
    if not io.single:
        return _named_dataset(spec, samples, io, what, folder)
    input_shape = io.input_shape
    data = load_dataset(spec, default_split=default_split).take(samples)
    expected = input_shape[1:]
    if data.x.shape[1:] != expected:
        if int(np.prod(data.x.shape[1:])) == int(np.prod(expected)):
            data = Dataset(data.x.reshape(len(data), *expected), data.y, data.name)
        else:
            raise InputError(f"{what} data {data.name} has samples of shape {data.x.shape[1:]}, "
                             f"the model expects {expected}")
    validate.check_samples(data.x, data.y, data.name, what)
    return data


def _named_dataset(spec: str, samples: int | None, io: ModelIO, what: str, folder: Path | None) -> Dataset:
    """Multi-input data: an .npz with one array per input name, or (model folder with a tokenizer) a text file."""
    path = Path(spec)
    if path.suffix in hf.TEXT_SUFFIXES and path.is_file():
        if folder is None or not folder.is_dir():
            raise InputError(f"{what} data {spec} is text: text needs a model folder with a tokenizer")
        seq = max(s.shape[1] for s in io.inputs if len(s.shape) > 1)
        data = Dataset(hf.tokenize_text(path, folder, seq), None, path.name)
    elif path.suffix == ".npz" and path.is_file():
        data = load_named_npz(path, io.names)
    else:
        raise InputError(f"{what} data {spec}: a model with inputs {', '.join(io.names)} takes an .npz with one "
                         "array per input name" + (" or a text file (one sentence per line)" if folder else ""))
    data = data.take(samples)
    for name in io.names:
        want, got = io.spec(name), data.x[name]
        if got.ndim != len(want.shape) or any(a is None and g != w for a, g, w in zip(want.axes, got.shape, want.shape)):
            raise InputError(f"{what} data {data.name}: array {name!r} has shape {got.shape}, the model expects "
                             f"{want.describe()}")
        data.x[name] = got.astype(want.dtype, copy=False)
    return data


def _eval_dataset(config: BuildConfig, io: ModelIO) -> Dataset | None:
    if config.eval_data is None:
        return None
    return _model_dataset(config.eval_data, "test", config.eval_samples, io, "eval", config.model)


def _validation_split(config: BuildConfig, io: ModelIO) -> Dataset | None:
    """--eval-split: validation data for budget search, labelled for --max-accuracy-drop (refuses a test split)."""
    if config.eval_split is None:
        return None
    if config.eval_split.endswith(":test") or config.eval_split == config.eval_data:
        what = "a test split" if config.eval_split.endswith(":test") else "also the --eval data"
        raise InputError(f"--eval-split {config.eval_split} is {what}: search on a validation split "
                         "(e.g. mnist:val, digits:val) and keep the test split for --eval")
    data = _model_dataset(config.eval_split, "val", None, io, "--eval-split", config.model)
    if data.y is None and config.max_accuracy_drop is not None:
        raise InputError(f"--eval-split data {data.name} has no labels (an .npz needs a 'y' array); "
                         "--max-accuracy-drop measures accuracy")
    return data


def size_measured_kind(config: BuildConfig) -> str | None:
    """Which file ``--target-size`` measures: the int4 one with --quantize int4, else the int8 one, else fp32."""
    kinds = int8_export.quantize_kinds(config.quantize)
    return next((kind for kind in ("int4", "int8", "int8-static") if kind in kinds), None)


def size_measure(config: BuildConfig, io: ModelIO | tuple[int, ...], calibration: Batch | None,
                 dense: nn.Module | None = None) -> Callable[[nn.Module], int]:
    """What ``--target-size`` is about: bytes of a candidate exported (and simplified) as the build
    writes it (derived from ``dense``'s export, traced once, when given), quantized the build's way
    (:func:`size_measured_kind`; int8-static with ``calibration``)."""
    kind = size_measured_kind(config)
    io = io if isinstance(io, ModelIO) else ModelIO.single_float(io)
    dense_export: list[Any] = []

    def derive_source() -> tuple[Any, nn.Module] | None:
        if dense is None:
            return None
        if not dense_export:
            with tempfile.TemporaryDirectory(prefix="edgecompress-size-") as folder:
                path = Path(folder) / "dense.onnx"
                onnx_export.export_onnx(dense, io, path, opset=config.opset)
                dense_export.append(onnx_export.onnx.load(str(path)))
        return dense_export[0], dense

    def size_of(model: nn.Module) -> int:
        with tempfile.TemporaryDirectory(prefix="edgecompress-size-") as folder:
            path = Path(folder) / "candidate.onnx"
            _write_onnx(model, io, path, config, derive_source())
            if config.simplify:
                onnx_export.simplify_onnx(path)
            if kind is not None:
                quantized = Path(folder) / f"candidate.{kind}.onnx"
                quantize_file(kind, path, quantized, calibration, per_channel_int8(config, io))
                path = quantized
            return path.stat().st_size

    return size_of


def quantize_file(kind: str, source: Path, target: Path, calibration: Batch | None,
                  per_channel: bool = False) -> int8_export.QuantScheme:
    """One --quantize kind of an fp32 ONNX file: int4 (MatMulNBits), int8 (dynamic, weight scales per tensor
    or ``per_channel``) or int8-static (QDQ)."""
    if kind == "int4":
        return int8_export.quantize_onnx_int4(source, target)
    return int8_export.quantize_onnx(source, target, calibration=calibration if kind == "int8-static" else None,
                                     per_channel=per_channel)


def per_channel_int8(config: BuildConfig, io: ModelIO) -> bool:
    """--int8-weights for this model (auto: per channel when the quality output is an embedding)."""
    return int8_export.int8_per_channel(config.int8_weights, io.output_kinds.get(io.quality_output or ""))


def layer_statistics(model: nn.Module, data: Dataset, names: list[str], *, keep_inputs: int = 0,
                     progress: Progress | None = None, inputs: Batch | list[Batch] | None = None) -> Calibration:
    """Each named layer's streamed input statistics on ``data`` (fed as ``inputs`` when given, e.g. the
    length groups of :func:`calibration_inputs`); refuses too few samples."""
    inputs = data.x if inputs is None else inputs
    calibration = calibrate(model, inputs, names, dataset=data.name, keep_inputs=keep_inputs, progress=progress)
    require_samples(calibration, names)
    return calibration


def calibration_inputs(data: Dataset, io: ModelIO) -> Batch | list[Batch]:
    """``data.x`` for calibration and the refit: for a token model with an attention mask, batches of
    :data:`CALIB_GROUP` samples of similar length with their all-padding columns cut (the statistics skip
    padding anyway; this skips computing it: the same sums up to float order, at the cost of the real tokens)."""
    if isinstance(data.x, dict) and groupable(io):
        return padded_batches(data.x, io, CALIB_GROUP, seed=None)
    return data.x


def calibration_data(spec: str, samples: int, io: ModelIO | tuple[int, ...], folder: Path | None = None) -> Dataset:
    """--calib data (default split ``train``), the first ``samples`` of it, shaped for the model."""
    return _model_dataset(spec, "train", samples, io, "calibration", folder)


def whole_model_plan(plan: CompressionPlan, model: nn.Module, config: BuildConfig,
                     reasons: dict[str, str] | None = None) -> CompressionPlan:
    """``plan`` (of the selected layers) plus the kept-dense layers (head, attention out_proj, tied
    weights: ``reasons``) and the ``--exclude``'d layers; tied weights counted once."""
    for name, reason in (reasons or {}).items():
        plan = with_unplanned_layers(plan, model, reason, exclude=coverage.exclude_pattern(
            [n for n in reasons if n != name], config.exclude))
    plan = with_unplanned_layers(plan, model, HEAD_KEPT_REASON, exclude=config.exclude)
    plan = with_unplanned_layers(plan, model, excluded_reason(config.exclude))
    return coverage.count_tied_once(plan, model)


def kept_dense(model: nn.Module, io: ModelIO, config: BuildConfig) -> dict[str, str]:
    """Layer -> reason for the Linears this build leaves dense before any policy runs."""
    reasons = coverage.dense_by_structure(model)
    if config.keep_head:
        example = io.random(io.static_batch or 2, seed=config.seed)
        heads = coverage.classifier_heads(model, lambda: run_model(model, example, io), dict(io.output_kinds),
                                          config.exclude)
        for name, output in heads.items():
            reasons.setdefault(name, coverage.HEAD_REASON.format(output=output))
    return reasons


def _check_calibration(config: BuildConfig) -> None:
    """--calib is given exactly when something uses it (a data policy, budget mode, static int8)."""
    static = "int8-static" in int8_export.quantize_kinds(config.quantize)
    budget = config.budget  # refuses several targets or out-of-range values before any work
    if (config.policy.needs_calibration or static) and config.calib_data is None:
        needs = "--quantize int8-static" if static else f"--policy {config.policy.name}"
        raise InputError(f"{needs} needs calibration data: add --calib DATA "
                         "(an .npz, an MNIST-style folder such as mnist:train, or digits:train)")
    if config.min_cosine is not None and config.eval_split is None:
        raise InputError("--min-cosine needs --eval-split DATA: the validation inputs whose embeddings are compared "
                         "with the dense model's (labels not needed; never the test set)")
    if config.whiten and config.calib_data is None:
        raise InputError("--whiten needs calibration data: add --calib DATA (the layer inputs it whitens)")
    if config.sequential_refit and config.calib_data is None:
        raise InputError("--sequential-refit needs calibration data: add --calib DATA (the inputs the factors are "
                         "refitted on)")
    if config.calib_data is not None and not (config.policy.needs_calibration or budget or static
                                              or config.whiten or config.sequential_refit):
        raise InputError(f"--calib is not used by --policy {config.policy.name}: it feeds --policy data/ddlr-convex, "
                         "--whiten, --sequential-refit, budget mode and --quantize int8-static; drop it or use one "
                         "of those")


def _compress_stage(config: BuildConfig, model: nn.Module, io: ModelIO, calib: Dataset | None,
                    progress: Progress | None) -> tuple[nn.Module, CompressionPlan, dict[str, Any]]:
    """Spectra, calibration (data policies), then the policy's ranks or the budget search.

    Returns the compressed model, its plan, and extra build.json sections (``calibration``,
    ``search``, ``ddlr_convex``).
    """
    reasons = kept_dense(model, io, config)
    spectra = model_spectra(model, coverage.exclude_pattern(list(reasons), config.exclude),
                            settings=svd_settings(config.svd), on_progress=progress)  # decomposed lazily, one layer at a time
    context = PolicyContext(progress=progress is not None, on_progress=progress, round_to=config.round_to,
                            whiten=config.whiten)
    calib_inputs = None if calib is None else calibration_inputs(calib, io)
    if config.sequential_refit:
        context.refit_data = calib_inputs
        context.refit_metric = io.output_kinds.get(io.quality_output or "") == "embedding"  # label-free Fisher weights
    record: dict[str, Any] = {}
    budget = config.budget
    validation = _validation_split(config, io)
    if validation is not None:
        validate.check_labels(validation.y, output_classes(model, io), validation.name, "--eval-split")
    if config.policy.needs_calibration or config.whiten:
        keep = len(calib) if getattr(config.policy, "needs_inputs", False) else 0
        calibration = layer_statistics(model, calib, list(spectra), keep_inputs=keep, progress=progress, inputs=calib_inputs)
        context.calibration = calibration.layers
        record["calibration"] = calibration.to_json()
    if budget is None:
        compressed, plan = compress(model, config.policy, context=context, spectra=spectra)
    else:
        inputs = validation.x if validation is not None else calib.x if calib is not None else None
        result = budget_compress(
            model, config.policy, spectra, budget, context=context, allocation=config.allocation,
            confidence=config.confidence, **sensitivity_inputs(model, inputs, io),
            evaluate=None if validation is None or validation.y is None
            else (lambda m: torch_outputs(m, validation.x, io=io).argmax(-1) == validation.y),
            embed=None if validation is None else (lambda m: embed_io.embeddings(m, validation.x, io)),
            size_of=size_measure(config, io, None if calib is None else calib.x, model))
        compressed, plan = result.model, result.plan
        record["search"] = result.record
        if budget.target_size is not None:
            kind = size_measured_kind(config)
            record["search"]["budget"]["measures"] = "ONNX" if kind is None else f"{kind} ONNX"
        if budget.min_cosine is not None:
            record["search"]["budget"].update(output=io.quality_output, split=validation.name,
                                              measures="mean cosine of sentence embeddings vs dense")
    if "calibration" in record:
        record["calibration"]["relative_error"] = data_errors(context, plan.ranks)
    if "ddlr_convex" in context.extras:
        record["ddlr_convex"] = context.extras["ddlr_convex"]
    if "refit" in context.extras:
        record["refit"] = context.extras["refit"]
    return compressed, whole_model_plan(plan, model, config, reasons), record


def sensitivity_inputs(model: nn.Module, inputs: Batch | None, io: ModelIO) -> dict[str, Any]:
    """budget_compress's inputs for the sensitivity table: an array (one-input models) or one batch of
    named inputs (``sample``, its all-padding columns dropped) when the model takes them as keyword
    arguments; none otherwise (the threshold allocation then orders the plans)."""
    if inputs is None or isinstance(inputs, np.ndarray):
        return {"inputs": inputs}
    sample = embed_io.named_batches(inputs, io, SENSITIVITY_BATCH)[0]
    sample = trim(sample, io) if groupable(io) else sample
    return {"sample": sample} if embed_io.keyword_callable(model, sample) else {}


def evaluate_runner(runner: Callable[[Batch], Any], data: Dataset) -> dict[str, Any]:
    """Accuracy and macro-F1 of a runner on labelled data (None without labels: the runner is not run,
    verification already compared the files' outputs on these inputs)."""
    if data.y is None:
        return {"dataset": data.name, "samples": len(data), "accuracy": None, "macro_f1": None}
    outputs = runner(data.x)
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    predictions = top1(outputs)
    return {"dataset": data.name, "samples": len(data), "accuracy": accuracy(data.y, predictions),
            "macro_f1": macro_f1(data.y, predictions)}


def _runner(path: Path, io: ModelIO | None = None) -> Callable[[Batch], Any]:
    """onnxruntime for .onnx (every output by name, the build's torch thread count), LiteRT for .tflite."""
    if path.suffix == ".tflite":
        return tflite_export.litert_runner(path)
    return ort_runner(path, torch.get_num_threads(), named=True, static_batch=None if io is None else io.static_batch)


@dataclass(frozen=True)
class Check:
    """One set of verification inputs, and the torch outputs of the dense and compressed models on them."""

    inputs: Batch
    description: str
    references: dict[str, dict[str, np.ndarray]]  # role ("dense"/"compressed") -> output name -> array


def _checks(sets: list[tuple[Batch, str]], models: dict[str, nn.Module], io: ModelIO,
            known: dict[tuple[str, str], dict[str, np.ndarray]] | None = None) -> list[Check]:
    """Torch outputs of every model on every input set; ``known``: (description, role) -> outputs already computed."""
    known = known or {}
    return [Check(x, description, {role: known.get((description, role)) or _reference_outputs(model, x, io, description)
                                   for role, model in models.items()})
            for x, description in sets]


def _reference_outputs(model: nn.Module, inputs: Batch, io: ModelIO, description: str) -> dict[str, np.ndarray]:
    """torch's outputs on verification inputs; InputError when the model itself fails on them (e.g. a
    runtime check an exported program recorded for data-dependent control flow)."""
    try:
        return run_grouped(lambda x: outputs_of(model, x, io), inputs, io)
    except Exception as exc:  # the model's own code (or its exported guards) rejected these inputs
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        if description.startswith(OTHER_SEQ):
            raise InputError(f"the model does not run at {description.removeprefix('random, ')} although its inputs "
                             f"name a dynamic 'seq' axis: {message}; give the inputs a static length instead "
                             "(e.g. --input x:batch=1,8,16)") from exc
        raise InputError(f"the model fails on its {description} verification inputs ({num_samples(inputs)} samples): "
                         f"{message}; a program exported with data-dependent control flow may only accept inputs "
                         "like its example (try --verify-samples 1 or re-export it)") from exc


OTHER_SEQ = "random, seq="  # description of the verification inputs at a second sequence length
OTHER_SEQ_SAMPLES = 4


def other_seq_inputs(io: ModelIO, samples: int, seed: int) -> list[tuple[Batch, str]]:
    """A few random inputs at a second length of the dynamic "seq" axes (half the traced one, or 2):
    a file that pinned the traced length (some exporters do, e.g. for recurrent layers) fails
    verification instead of claiming a dynamic sequence."""
    traced = {spec.shape[i] for spec in io.inputs for i, axis in enumerate(spec.axes) if axis == "seq"}
    if len(traced) != 1:
        return []
    seq = next(iter(traced))
    other = seq // 2 if seq > 2 else seq + 1
    return [(_with_seq(io, other).random(min(samples, OTHER_SEQ_SAMPLES), seed + 1), f"{OTHER_SEQ}{other}")]


def random_batch(io: ModelIO, samples: int, seed: int) -> Batch:
    """Seeded random inputs of the model's kinds: normal floats, token ids below the vocabulary, 0/1 masks."""
    return random_inputs(io.input_shape, samples, seed) if io.single else io.random(samples, seed)


def _verifications(path: Path, role: str, checks: list[Check], tolerances: list[Tolerance],
                   io: ModelIO) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Verify one artifact against its torch model's outputs on each check: one record per output; and,
    for a file of the compressed model, its agreement with the dense torch model (:func:`agreement`)."""
    runner = grouped_runner(_runner(path, io), io)  # the torch references' length groups (_reference_outputs)
    records, outputs = [], []
    for check, tolerance in zip(checks, tolerances):
        out = runner(check.inputs)
        outputs.append(out if isinstance(out, dict) else {next(iter(check.references[role])): out})
        records += [record.to_json() for record in verify_outputs(
            path.name, lambda _x: out, check.references[role], check.inputs, check.description, tolerance,
            dict(io.output_kinds))]
    return records, [] if role == "dense" else agreement(checks, io, outputs)


def agreement(checks: list[Check], io: ModelIO, outputs: list[dict[str, np.ndarray]] | None = None
              ) -> list[dict[str, Any]]:
    """Compressed vs dense torch outputs on each check, by the quality output's kind (top-1, cosine, rel. error);
    ``outputs``: one file's outputs on each check instead of the compressed torch model's (checks without
    dense outputs, e.g. static int8's calibration inputs, are left out)."""
    name = io.quality_output or next(iter(checks[0].references["compressed"]))
    kind = io.output_kinds.get(name, "values")
    candidates = outputs or [check.references["compressed"] for check in checks]
    return [{"inputs": check.description, "samples": len(check.references["dense"][name]), "output": name,
             "kind": kind, **quality.agreement(check.references["dense"][name], candidate[name], kind)}
            for check, candidate in zip(checks, candidates) if "dense" in check.references]


def _export_verified(model: nn.Module, role: str, path: Path, config: BuildConfig, io: ModelIO,
                     plan: CompressionPlan | None, checks: list[Check], timings: _Timings, progress: Progress | None,
                     *, keep_raw: bool = False, derive_from: tuple[Any, nn.Module] | None = None
                     ) -> tuple[dict[str, Any], Any]:
    """Export one model (or derive it from the dense export: ``derive_from`` = (its unsimplified
    ONNX, the dense model)), simplify it, guard its factors, verify it; return its artifact record
    and, with ``keep_raw``, the unsimplified ONNX model."""
    with timings.stage(f"export_{role}", progress):
        exported = _write_onnx(model, io, path, config, derive_from)
        # the unsimplified dense graph the compressed file is derived from (not with external data: those
        # files are exported as such, derive.py writes one self-contained file)
        external = onnx_export.parameter_bytes(model) > onnx_export.EXTERNAL_DATA_THRESHOLD
        raw = onnx_export.onnx.load(str(path)) if keep_raw and not external else None
        validate.check_written_opset(path, config.opset)
        other = coverage.non_linear_matrices(model)
        if plan is not None:
            onnx_export.check_factors_kept(path, plan, where=f"{path.name} (export)", other=other)
    simplified, skipped = False, onnx_export.simplify_skip_reason(path) if config.simplify else None
    if config.simplify and skipped is None:
        with timings.stage(f"simplify_{role}", progress):
            simplified = onnx_export.simplify_onnx(path)
            if plan is not None:
                onnx_export.check_factors_kept(path, plan, where=f"{path.name} (onnxsim)", other=other)
    with timings.stage(f"verify_{role}", progress):
        verifications, agrees = _verifications(path, role, checks, [config.tolerance] * len(checks), io)
    note = {"simplify_note": skipped} if skipped else {}
    return {"path": path.name, "format": "onnx", "exported": exported, "simplified": simplified, **note,
            **onnx_export.onnx_facts(path), "verification": verifications, **_agreement_entry(agrees)}, raw


def _agreement_entry(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An artifact record's "agreement" (the file's outputs vs the dense torch model), when measured."""
    return {"agreement": rows} if rows else {}


def _write_onnx(model: nn.Module, io: ModelIO, path: Path, config: BuildConfig,
                derive_from: tuple[Any, nn.Module] | None) -> str:
    """Export ``model``, or derive it from the dense export when only factorized layers differ
    (export/derive.py: no second trace); says which."""
    reason = None
    if derive_from is not None and derive_from[0] is not None:  # None: the dense file was not kept (external data)
        reason = derive_compressed(derive_from[0], derive_from[1], model, path)
        if reason is None:
            return "derived from the dense export (factorized layers substituted)"
    onnx_export.export_onnx(model, io, path, opset=config.opset)
    return "torch.onnx.export (dynamo)" + (f"; not derived: {reason}" if reason else "")


def _int8_checks(checks: list[Check], calibration: Batch | None, config: BuildConfig, io: ModelIO,
                 compressed: nn.Module, agreement: float | None = None) -> tuple[list[Check], list[Tolerance]]:
    """int8's (and int4's) inputs and bounds (export/quantize.py's rules), with the fp32 compressed model's outputs;
    ``calibration`` only for static int8, ``agreement`` (default --int8-agreement) on data inputs. The
    second-sequence-length inputs are left out: the fp32 file proved the dynamic axis, quantization keeps shapes."""
    checks = [check for check in checks if not check.description.startswith(OTHER_SEQ)]
    plain = int8_export.int8_checks([(c.inputs, c.description) for c in checks],
                                    calibration if io.single else None,
                                    config.int8_min_agreement if agreement is None else agreement,
                                    min(config.verify_samples, num_samples(checks[0].inputs)))
    known = {id(c.inputs): c for c in checks}
    result = [known[id(x)] if id(x) in known else _checks([(x, d)], {"compressed": compressed}, io)[0]
              for x, d, _ in plain]
    return result, [tolerance for _, _, tolerance in plain]


def _quantized_onnx(kind: str, compressed: nn.Module, plan: CompressionPlan, config: BuildConfig,
                    calibration: Batch | None, staging: Path, checks: list[Check], io: ModelIO, timings: _Timings,
                    progress: Progress | None) -> dict[str, Any]:
    """--quantize int8 / int8-static / int4 of the compressed ONNX, guarded and verified against fp32 torch
    (top-1 agreement >= --int8-agreement / --int4-agreement on data inputs)."""
    bits = "int4" if kind == "int4" else "int8"
    path = staging / f"{config.stem}.{bits}.onnx"
    static = calibration if kind == "int8-static" and io.single else None
    with timings.stage(f"quantize_{bits}", progress):
        scheme = quantize_file(kind, staging / f"{config.stem}.onnx", path, static, per_channel_int8(config, io))
        int8_export.check_quantized_factors(path, plan, where=f"{path.name} ({kind})",
                                            other=coverage.non_linear_matrices(compressed))
    agreement = config.int4_min_agreement if kind == "int4" else config.int8_min_agreement
    with timings.stage(f"verify_{bits}", progress):
        int8_checks, tolerances = _int8_checks(checks, static, config, io, compressed, agreement)
        verifications, agrees = _verifications(path, "compressed", int8_checks, tolerances, io)
    return {"path": path.name, "format": "onnx", "quantization": scheme.to_json(), **onnx_export.onnx_facts(path),
            "verification": verifications, **_agreement_entry(agrees)}


def _tflite_artifacts(dense: nn.Module, compressed: nn.Module, plan: CompressionPlan, config: BuildConfig,
                      io: ModelIO, staging: Path, checks: list[Check], calibration: Batch | None,
                      timings: _Timings, progress: Progress | None) -> dict[str, Any]:
    """--target tflite: dense and compressed .tflite (and int8 with --quantize int8 / int8-static, the latter
    full-integer from ``calibration``), batch fixed at --batch. int4 is ONNX-only."""
    input_shape = io.input_shape
    jobs = [("dense_tflite", "dense", dense, f"{config.stem}.dense.tflite", None),
            ("tflite", "compressed", compressed, f"{config.stem}.tflite", plan)]
    int8_kind = next((kind for kind in int8_export.quantize_kinds(config.quantize) if kind.startswith("int8")), None)
    static = calibration if int8_kind == "int8-static" else None
    if int8_kind is not None:
        jobs.append(("int8_tflite", "compressed", compressed, f"{config.stem}.int8.tflite", plan))
    artifacts: dict[str, Any] = {}
    for role, source, model, filename, model_plan in jobs:
        path, extra = staging / filename, {}
        with timings.stage(f"convert_{role}", progress):
            if role == "int8_tflite":
                extra["quantization"] = int8_export.convert_tflite_int8(model, input_shape, path, batch=config.batch,
                                                                        calibration=static).to_json()
            else:
                tflite_export.convert_tflite(model, input_shape, path, batch=config.batch)
            if model_plan is not None:
                tflite_export.check_tflite_factors(path, model_plan, where=f"{filename} (litert-torch)")
        with timings.stage(f"verify_{role}", progress):
            if role == "int8_tflite":
                role_checks, tolerances = _int8_checks(checks, static, config, io, compressed)
            else:
                role_checks = [check for check in checks if not check.description.startswith(OTHER_SEQ)]  # fixed shapes
                tolerances = [config.tolerance] * len(role_checks)
            verifications, agrees = _verifications(path, source, role_checks, tolerances, io)
        artifacts[role] = {"path": filename, "format": "tflite", "fixed_batch": True, **extra,
                           **tflite_export.tflite_facts(path), "verification": verifications,
                           **_agreement_entry(agrees)}
    return artifacts


def _check_training(config: BuildConfig) -> None:
    """--train goes with --policy svd-training (and needs it); --finetune with any other policy."""
    svd = isinstance(config.policy, SvdTrainingPolicy)
    if svd and config.train_data is None:
        raise InputError("--policy svd-training needs --train DATA (labelled training data, e.g. mnist or digits)")
    if config.train_data is not None and not svd:
        raise InputError(f"--train is for --policy svd-training; to fine-tune after --policy {config.policy.name}, "
                         "use --finetune DATA")
    if svd and config.finetune_data is not None:
        raise InputError("--policy svd-training already fine-tunes on its --train data after pruning "
                         "(--finetune-epochs); drop --finetune")
    val = config.training.get("val")
    if val is not None and (str(val).endswith(":test") or val == config.eval_data):
        raise InputError(f"--val {val} is the test data: pick the best epoch on a validation split "
                         "(e.g. mnist:val, digits:val) and keep the test split for --eval")


def _training_data(config: BuildConfig, input_shape: ModelIO) -> tuple[Dataset, Dataset]:
    """The --train/--finetune data's train split, and --val, its val split, or (one file) its last 10%."""
    spec = config.train_data or config.finetune_data
    train = _model_dataset(spec, "train", None, input_shape, "training")
    val = config.training.get("val") or validation_spec(spec)
    return hold_out(train) if val is None else (train, _model_dataset(val, "val", None, input_shape, "validation"))


def _train_stage(config: BuildConfig, dense: nn.Module, input_shape: ModelIO, progress: bool,
                 compressed: nn.Module | None, plan: CompressionPlan | None
                 ) -> tuple[nn.Module, CompressionPlan, dict[str, Any]]:
    """SVD training (--train, instead of truncation) or fine-tuning (--finetune, after it).

    Ctrl-C saves the best state so far under ~/.cache/edgecompress/checkpoints/<name>/ (never in --out).
    """
    train, val = _training_data(config, input_shape)
    svd = isinstance(config.policy, SvdTrainingPolicy)
    settings = phase_settings(config.training, epochs=SVD_EPOCHS if svd and config.epochs is None else config.epochs,
                              distill_weight=config.distill_weight, seed=config.seed)
    checkpoints = CACHE_DIR / "checkpoints" / config.stem
    if svd:
        finetune_epochs = config.training.get("finetune_epochs", FINETUNE_EPOCHS)
        small, plan, report = svd_train(
            dense, train, val, replace(config.policy, keep_head=config.keep_head), settings=settings, exclude=config.exclude, checkpoints=checkpoints,
            finetune_settings=replace(settings, epochs=finetune_epochs) if finetune_epochs else None, progress=progress)
        return small, whole_model_plan(plan, dense, config), report.to_json()
    assert compressed is not None and plan is not None
    result = finetune(compressed, train, val, teacher=dense, settings=settings,
                      checkpoint=checkpoints / "finetune-best.pt", progress=progress)
    return compressed, plan, TrainingReport("finetune", train.name, val.name, len(train), [result],
                                            {"final": plan.ranks}).to_json()


def _check_io_targets(config: BuildConfig, io: ModelIO) -> None:
    """Refuse, before any work, what the model's inputs cannot do yet."""
    if not io.single and "tflite" in config.targets:
        raise InputError(f"--target tflite handles one float input; this model takes {', '.join(io.names)} "
                         "(use --target onnx)")
    if not io.single and (config.train_data or config.finetune_data):
        raise InputError("--finetune/--train handle one-input models with labels; this model takes "
                         f"{', '.join(io.names)} (--distill DATA trains it without labels)")


def _check_targets(config: BuildConfig) -> None:
    """Fail fast (before any work) on a missing extra, a bad --batch, or an artifact that would overwrite the input."""
    if "tflite" in config.targets:
        tflite_export.require_converter()
        if config.batch < 1:
            raise InputError(f"--batch must be at least 1, got {config.batch}")
    for flag, value in (("--int8-agreement", config.int8_min_agreement), ("--int4-agreement", config.int4_min_agreement)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{flag} must be between 0 and 1, got {value}")
    int8_export.quantize_kinds(config.quantize)
    int8_export.check_int8_weights(config.int8_weights)
    outdir.refuse_input_overwrite(config.out, outdir.check_stem(config.stem), config.model)


def default_calib_samples(model: nn.Module, config: BuildConfig) -> int:
    """--calib-samples, else 1024 or, when larger, the widest selected layer's inputs rounded up to
    256 (data-driven ranks need at least as many input vectors as a layer has inputs)."""
    if config.calib_samples is not None:
        if config.calib_samples < 1:
            raise InputError(f"--calib-samples must be >= 1, got {config.calib_samples}")
        return config.calib_samples
    widest = max((layer.in_features for layer in linear_layers(model, config.exclude).values()), default=0)
    return max(DEFAULT_CALIB_SAMPLES, 256 * -(-widest // 256))


def build(config: BuildConfig, progress: Progress | None = None) -> BuildResult:
    """Run the whole build; artifacts and build.json land in ``config.out`` only if every step passed
    (replacing an earlier build there as a whole). The folder is locked for the whole run."""
    if config.threads < 1:
        raise InputError(f"--threads must be >= 1, got {config.threads}")
    with torch_threads(config.threads):
        return _locked_build(config, progress)


def _locked_build(config: BuildConfig, progress: Progress | None) -> BuildResult:
    _check_training(config)
    _check_calibration(config)
    _check_targets(config)
    validate.check_build_options(config)
    with outdir.OutputFolder(config.out, protect=[config.model]) as folder:
        return _build(config, folder, progress)


def _build(config: BuildConfig, folder: outdir.OutputFolder, progress: Progress | None) -> BuildResult:
    timings = _Timings()
    with timings.stage("load", progress):
        loaded = load_model(config.model, factory=config.factory, allow_pickle=config.allow_pickle)
        io = resolve_io(loaded, inputs=config.inputs, input_shape=config.input_shape, seq=config.seq,
                        quality_output=config.quality_output, seed=config.seed)
        _check_io_targets(config, io)
        if config.min_cosine is not None or config.distill is not None:
            embed_io.check_embeddable(loaded.module, io)
        distill_data = None
        if config.distill is not None:
            distill_data = _model_dataset(config.distill.data, "train", None, io, "--distill", config.model)
            distill_split(distill_data)  # enough samples for a held-out split, refused before any work
        control_flow = validate.control_flow_linears(loaded.module)
        samples = verify_samples(loaded.module, io, config.verify_samples)
        random = random_batch(io, samples, config.seed)
        # a model that cannot run its verification inputs fails now, not after export (outputs kept for verification)
        dense_random = _reference_outputs(loaded.module, random, io, "random")
        eval_data = _eval_dataset(config, io)
        if eval_data is not None:
            validate.check_labels(eval_data.y, output_classes(loaded.module, io), eval_data.name, "eval")
        calib = (None if config.calib_data is None
                 else calibration_data(config.calib_data, default_calib_samples(loaded.module, config), io,
                                       config.model))
    compressed, plan, ranks_record = None, None, {}
    if config.train_data is None:  # svd-training (--train) finds its ranks by training instead
        with timings.stage("compress", progress):
            compressed, plan, ranks_record = _compress_stage(config, loaded.module, io, calib, progress)
    if config.train_data is not None or config.finetune_data is not None:
        with timings.stage("train", progress):
            compressed, plan, ranks_record["training"] = _train_stage(config, loaded.module, io,
                                                                      progress is not None, compressed, plan)
    if distill_data is not None:
        with timings.stage("distill", progress):
            ranks_record["distillation"] = distill_step(compressed, loaded.module, distill_data, io, config.distill,
                                                        seed=config.seed, threads=config.threads,
                                                        progress=progress is not None, log=progress)
    with timings.stage("reference", progress):
        sets = [(random, "random")] + other_seq_inputs(io, samples, config.seed) \
            + ([] if eval_data is None else [(eval_data.x, "eval")])
        checks = _checks(sets, {"dense": loaded.module, "compressed": compressed}, io,
                         known={("random", "dense"): dense_random})
        agreements = agreement(checks, io)
    if progress is not None:
        for line in agreements:
            progress(f"compressed vs dense on {line['samples']} {line['inputs']} inputs: {quality.describe(line)}")
    stem = config.stem
    artifacts: dict[str, Any] = {}
    with folder.staging() as staging:
        if "onnx" in config.targets:
            artifacts["dense"], raw_dense = _export_verified(loaded.module, "dense", staging / f"{stem}.dense.onnx",
                                                             config, io, None, checks, timings, progress, keep_raw=True)
            artifacts["compressed"], _ = _export_verified(compressed, "compressed", staging / f"{stem}.onnx", config,
                                                          io, plan, checks, timings, progress,
                                                          derive_from=(raw_dense, loaded.module))
        for kind in int8_export.quantize_kinds(config.quantize) if "onnx" in config.targets else ():
            artifacts["int4" if kind == "int4" else "int8"] = _quantized_onnx(
                kind, compressed, plan, config, None if calib is None else calib.x, staging, checks, io, timings,
                progress)
        if "tflite" in config.targets:
            artifacts.update(_tflite_artifacts(loaded.module, compressed, plan, config, io, staging, checks,
                                               None if calib is None else calib.x, timings, progress))
        if eval_data is not None:
            with timings.stage("eval", progress):
                for role in artifacts:  # the runtime session is made only when there are labels to score
                    path = staging / artifacts[role]["path"]
                    artifacts[role]["eval"] = evaluate_runner(
                        lambda x, path=path: run_grouped(_runner(path, io), x, io), eval_data)
        record = {
            "schema": "edgecompress.build/1",
            "name": stem,
            "provenance": provenance.collect(),
            "input": {"path": str(config.model), "sha256": loaded.sha256, "format": loaded.format,
                      "input_shape": list(io.input_shape), **io.to_json()},
            **plan.to_json(),
            "dense_weights": coverage.other_weights(loaded.module),
            **ranks_record,
            "agreement": agreements,
            "options": {"targets": list(config.targets), "opset": config.opset, "exclude": config.exclude,
                        "keep_head": config.keep_head,
                        "simplify": config.simplify, "seed": config.seed, "quantize": config.quantize,
                        "svd": config.svd, "threads": config.threads, "whiten": config.whiten, "sequential_refit": config.sequential_refit,
                        "tflite_batch": config.batch if "tflite" in config.targets else None,
                        "verify_samples": samples, "quality_output": io.quality_output},
            "artifacts": artifacts,
            "timings_s": dict(timings),
        }
        if control_flow:
            record["warnings"] = ["Linear layers inside control-flow branches (torch.cond / while_loop) stay dense: "
                                  + ", ".join(control_flow)]
        (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return BuildResult(record, config.out, compressed, plan)
