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

from edgecompress import outdir, provenance, validate
from edgecompress.data import Dataset, hold_out, load_dataset, validation_spec
from edgecompress.errors import InputError
from edgecompress.export import onnx as onnx_export
from edgecompress.export import quantize as int8_export
from edgecompress.export import tflite as tflite_export
from edgecompress.export.verify import Tolerance, ort_runner, random_inputs, torch_outputs, verify
from edgecompress.load import LoadedModel, check_input_shape, infer_input_shape, load_model
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.calibration import Calibration, calibrate, require_samples
from edgecompress.lowrank.data_policies import data_errors
from edgecompress.lowrank.factorize import CompressionPlan, compress, excluded_reason, with_unplanned_layers
from edgecompress.lowrank.finetune import TrainingReport, finetune, phase_settings, torch_threads
from edgecompress.lowrank.policies import PolicyContext, RankPolicy, UniformPolicy
from edgecompress.lowrank.spectrum import HEAD_KEPT_REASON, exclude_head, linear_layers, model_spectra, svd_settings
from edgecompress.lowrank.training import FINETUNE_EPOCHS, SVD_EPOCHS, SvdTrainingPolicy, svd_train
from edgecompress.models import CACHE_DIR
from edgecompress.bench.metrics import accuracy, macro_f1, top1

Progress = Callable[[str], None]
DEFAULT_CALIB_SAMPLES = 1024


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build`` needs; the CLI fills it from flags."""

    model: Path
    out: Path
    policy: RankPolicy = field(default_factory=UniformPolicy)
    name: str | None = None
    targets: tuple[str, ...] = ("onnx",)
    input_shape: tuple[int, ...] | None = None
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
    # extra targets (export/tflite.py, export/quantize.py)
    quantize: str | None = None
    batch: int = 1
    int8_min_agreement: float = int8_export.INT8_MIN_AGREEMENT
    threads: int = 1  # torch and onnxruntime threads of the build (SVD, export, verification)
    svd: str = "auto"  # auto: randomized where the rank is well below a large layer's full rank; exact: always exact

    @property
    def stem(self) -> str:
        return self.name or self.model.stem

    @property
    def budget(self) -> Budget | None:
        """The budget-mode target, or None for a policy's own ranks."""
        targets = (self.max_accuracy_drop, self.target_params, self.target_size)
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


def output_classes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The size of the model's last output dimension (the number of classes of a classifier)."""
    return int(check_input_shape(model, input_shape).shape[-1])


def resolve_input_shape(loaded: LoadedModel, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """--input-shape, else the shape recorded in an exported program, else (1, in) of a leading Linear."""
    shape = given or loaded.example_shape or infer_input_shape(loaded.module)
    check_input_shape(loaded.module, shape)
    return shape


def _model_dataset(spec: str, default_split: str, samples: int | None, input_shape: tuple[int, ...],
                   what: str) -> Dataset:
    """Load data and reshape its samples to the model's input (flat or not); InputError on a mismatch."""
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


def _eval_dataset(config: BuildConfig, input_shape: tuple[int, ...]) -> Dataset | None:
    if config.eval_data is None:
        return None
    return _model_dataset(config.eval_data, "test", config.eval_samples, input_shape, "eval")


def _validation_split(config: BuildConfig, input_shape: tuple[int, ...]) -> Dataset | None:
    """--eval-split: labelled validation data for budget search (refuses a test split)."""
    if config.eval_split is None:
        return None
    if config.eval_split.endswith(":test") or config.eval_split == config.eval_data:
        what = "a test split" if config.eval_split.endswith(":test") else "also the --eval data"
        raise InputError(f"--eval-split {config.eval_split} is {what}: search on a validation split "
                         "(e.g. mnist:val, digits:val) and keep the test split for --eval")
    data = _model_dataset(config.eval_split, "val", None, input_shape, "--eval-split")
    if data.y is None:
        raise InputError(f"--eval-split data {data.name} has no labels (an .npz needs a 'y' array)")
    return data


def size_measure(config: BuildConfig, input_shape: tuple[int, ...],
                 calibration: np.ndarray | None) -> Callable[[nn.Module], int]:
    """What ``--target-size`` is about: bytes of a candidate exported (and simplified) as the build
    writes it, quantized the build's way with ``--quantize int8`` (static with ``calibration``)."""
    quantize = config.quantize == "int8"

    def size_of(model: nn.Module) -> int:
        with tempfile.TemporaryDirectory(prefix="edgecompress-size-") as folder:
            path = Path(folder) / "candidate.onnx"
            onnx_export.export_onnx(model, input_shape, path, opset=config.opset)
            if config.simplify:
                onnx_export.simplify_onnx(path)
            if quantize:
                quantized = Path(folder) / "candidate.int8.onnx"
                int8_export.quantize_onnx(path, quantized, calibration=calibration)
                path = quantized
            return path.stat().st_size

    return size_of


def layer_statistics(model: nn.Module, data: Dataset, names: list[str], *, keep_inputs: int = 0,
                     progress: Progress | None = None) -> Calibration:
    """Each named layer's streamed input statistics on ``data``; refuses too few samples."""
    calibration = calibrate(model, data.x, names, dataset=data.name, keep_inputs=keep_inputs, progress=progress)
    require_samples(calibration, names)
    return calibration


def calibration_data(spec: str, samples: int, input_shape: tuple[int, ...]) -> Dataset:
    """--calib data (default split ``train``), the first ``samples`` of it, shaped for the model."""
    return _model_dataset(spec, "train", samples, input_shape, "calibration")


def whole_model_plan(plan: CompressionPlan, model: nn.Module, config: BuildConfig) -> CompressionPlan:
    """``plan`` (of the selected layers) plus the kept-dense head and the ``--exclude``'d layers."""
    plan = with_unplanned_layers(plan, model, HEAD_KEPT_REASON, exclude=config.exclude)
    return with_unplanned_layers(plan, model, excluded_reason(config.exclude))


def _check_calibration(config: BuildConfig) -> None:
    """--calib is given exactly when something uses it (a data policy, budget mode, static int8)."""
    if config.policy.needs_calibration and config.calib_data is None:
        raise InputError(f"--policy {config.policy.name} needs calibration data: add --calib DATA "
                         "(an .npz, an MNIST-style folder such as mnist:train, or digits:train)")
    if config.calib_data is not None and not (config.policy.needs_calibration or config.budget or config.quantize):
        raise InputError(f"--calib is not used by --policy {config.policy.name}: it feeds --policy data/ddlr-convex, "
                         "budget mode and --quantize int8; drop it or use one of those")


def _compress_stage(config: BuildConfig, model: nn.Module, input_shape: tuple[int, ...], calib: Dataset | None,
                    progress: Progress | None) -> tuple[nn.Module, CompressionPlan, dict[str, Any]]:
    """Spectra, calibration (data policies), then the policy's ranks or the budget search.

    Returns the compressed model, its plan, and extra build.json sections (``calibration``,
    ``search``, ``ddlr_convex``).
    """
    spectra = model_spectra(model, _selection(model, config), settings=svd_settings(config.svd),
                            on_progress=progress)  # decomposed lazily, one layer at a time
    context = PolicyContext(progress=progress is not None, on_progress=progress, round_to=config.round_to)
    record: dict[str, Any] = {}
    budget = config.budget
    validation = _validation_split(config, input_shape)
    if validation is not None:
        validate.check_labels(validation.y, output_classes(model, input_shape), validation.name, "--eval-split")
    if config.policy.needs_calibration:
        keep = len(calib) if getattr(config.policy, "needs_inputs", False) else 0
        calibration = layer_statistics(model, calib, list(spectra), keep_inputs=keep, progress=progress)
        context.calibration = calibration.layers
        record["calibration"] = calibration.to_json()
    if budget is None:
        compressed, plan = compress(model, config.policy, context=context, spectra=spectra)
    else:
        inputs = validation.x if validation is not None else calib.x if calib is not None else None
        result = budget_compress(
            model, config.policy, spectra, budget, context=context, allocation=config.allocation,
            confidence=config.confidence, inputs=inputs,
            evaluate=None if validation is None else (lambda m: torch_outputs(m, validation.x).argmax(-1) == validation.y),
            size_of=size_measure(config, input_shape, None if calib is None else calib.x))
        compressed, plan = result.model, result.plan
        record["search"] = result.record
        if budget.target_size is not None:
            record["search"]["budget"]["measures"] = "int8 ONNX" if config.quantize == "int8" else "ONNX"
    if "calibration" in record:
        record["calibration"]["relative_error"] = data_errors(context, plan.ranks)
    if "ddlr_convex" in context.extras:
        record["ddlr_convex"] = context.extras["ddlr_convex"]
    return compressed, whole_model_plan(plan, model, config), record


def evaluate_runner(runner: Callable[[np.ndarray], np.ndarray], data: Dataset) -> dict[str, Any]:
    """Accuracy and macro-F1 of a runner on labelled data (None without labels)."""
    outputs = runner(data.x)
    if data.y is None:
        return {"dataset": data.name, "samples": len(data), "accuracy": None, "macro_f1": None}
    predictions = top1(outputs)
    return {"dataset": data.name, "samples": len(data), "accuracy": accuracy(data.y, predictions),
            "macro_f1": macro_f1(data.y, predictions)}


def _runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """onnxruntime for .onnx (the build's torch thread count), LiteRT for .tflite."""
    return tflite_export.litert_runner(path) if path.suffix == ".tflite" else ort_runner(path, torch.get_num_threads())


def _verifications(path: Path, model: nn.Module, checks: list[tuple[np.ndarray, str, Tolerance]]) -> list[dict[str, Any]]:
    """Verify one artifact against its torch model on each (inputs, description, tolerance)."""
    runner = _runner(path)
    return [verify(path.name, runner, _reference_outputs(model, inputs, description), inputs, description,
                   tolerance).to_json()
            for inputs, description, tolerance in checks]


def _reference_outputs(model: nn.Module, inputs: np.ndarray, description: str) -> np.ndarray:
    """torch's outputs on verification inputs; InputError when the model itself fails on them (e.g. a
    runtime check an exported program recorded for data-dependent control flow)."""
    try:
        return torch_outputs(model, inputs)
    except Exception as exc:  # the model's own code (or its exported guards) rejected these inputs
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InputError(f"the model fails on its {description} verification inputs ({len(inputs)} samples): "
                         f"{message}; a program exported with data-dependent control flow may only accept inputs "
                         "like its example (try --verify-samples 1 or re-export it)") from exc


def _export_verified(model: nn.Module, role: str, path: Path, config: BuildConfig, input_shape: tuple[int, ...],
                     plan: CompressionPlan | None, checks: list[tuple[np.ndarray, str]],
                     timings: _Timings, progress: Progress | None) -> dict[str, Any]:
    """Export one model, simplify it, guard its factors, verify it; return its artifact record."""
    with timings.stage(f"export_{role}", progress):
        onnx_export.export_onnx(model, input_shape, path, opset=config.opset)
        validate.check_written_opset(path, config.opset)
        if plan is not None:
            onnx_export.check_factors_kept(path, plan, where=f"{path.name} (export)")
    simplified, skipped = False, onnx_export.simplify_skip_reason(path) if config.simplify else None
    if config.simplify and skipped is None:
        with timings.stage(f"simplify_{role}", progress):
            simplified = onnx_export.simplify_onnx(path)
            if plan is not None:
                onnx_export.check_factors_kept(path, plan, where=f"{path.name} (onnxsim)")
    with timings.stage(f"verify_{role}", progress):
        verifications = _verifications(path, model, [(x, description, config.tolerance) for x, description in checks])
    note = {"simplify_note": skipped} if skipped else {}
    return {"path": path.name, "format": "onnx", "simplified": simplified, **note, **onnx_export.onnx_facts(path),
            "verification": verifications}


def _int8_onnx(compressed: nn.Module, plan: CompressionPlan, config: BuildConfig, calibration: np.ndarray | None,
               staging: Path, checks: list[tuple[np.ndarray, str]], timings: _Timings,
               progress: Progress | None) -> dict[str, Any]:
    """--quantize int8 of the compressed ONNX (static QDQ with --calib), guarded and verified against fp32 torch."""
    path = staging / f"{config.stem}.int8.onnx"
    with timings.stage("quantize_int8", progress):
        scheme = int8_export.quantize_onnx(staging / f"{config.stem}.onnx", path, calibration=calibration)
        onnx_export.check_factors_kept(path, plan, where=f"{path.name} (int8)")
    with timings.stage("verify_int8", progress):
        verifications = _verifications(path, compressed, int8_export.int8_checks(
            checks, calibration, config.int8_min_agreement, config.verify_samples))
    return {"path": path.name, "format": "onnx", "quantization": scheme.to_json(), **onnx_export.onnx_facts(path),
            "verification": verifications}


def _tflite_artifacts(dense: nn.Module, compressed: nn.Module, plan: CompressionPlan, config: BuildConfig,
                      input_shape: tuple[int, ...], staging: Path, checks: list[tuple[np.ndarray, str]],
                      timings: _Timings, progress: Progress | None) -> dict[str, Any]:
    """--target tflite: dense and compressed .tflite (and int8 with --quantize), batch fixed at --batch."""
    jobs = [("dense_tflite", dense, f"{config.stem}.dense.tflite", None),
            ("tflite", compressed, f"{config.stem}.tflite", plan)]
    if config.quantize == "int8":
        jobs.append(("int8_tflite", compressed, f"{config.stem}.int8.tflite", plan))
    artifacts: dict[str, Any] = {}
    for role, model, filename, model_plan in jobs:
        path, extra = staging / filename, {}
        with timings.stage(f"convert_{role}", progress):
            if role == "int8_tflite":
                extra["quantization"] = int8_export.convert_tflite_int8(model, input_shape, path,
                                                                        batch=config.batch).to_json()
            else:
                tflite_export.convert_tflite(model, input_shape, path, batch=config.batch)
            if model_plan is not None:
                tflite_export.check_tflite_factors(path, model_plan, where=f"{filename} (litert-torch)")
        with timings.stage(f"verify_{role}", progress):
            role_checks = (int8_export.int8_checks(checks, None, config.int8_min_agreement, config.verify_samples)
                           if role == "int8_tflite" else [(x, description, config.tolerance) for x, description in checks])
            verifications = _verifications(path, model, role_checks)
        artifacts[role] = {"path": filename, "format": "tflite", "fixed_batch": True, **extra,
                           **tflite_export.tflite_facts(path), "verification": verifications}
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


def _training_data(config: BuildConfig, input_shape: tuple[int, ...]) -> tuple[Dataset, Dataset]:
    """The --train/--finetune data's train split, and --val, its val split, or (one file) its last 10%."""
    spec = config.train_data or config.finetune_data
    train = _model_dataset(spec, "train", None, input_shape, "training")
    val = config.training.get("val") or validation_spec(spec)
    return hold_out(train) if val is None else (train, _model_dataset(val, "val", None, input_shape, "validation"))


def _train_stage(config: BuildConfig, dense: nn.Module, input_shape: tuple[int, ...], progress: bool,
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


def _check_targets(config: BuildConfig) -> None:
    """Fail fast (before any work) on a missing extra, a bad --batch, or an artifact that would overwrite the input."""
    if "tflite" in config.targets:
        tflite_export.require_converter()
        if config.batch < 1:
            raise InputError(f"--batch must be at least 1, got {config.batch}")
    if not 0.0 <= config.int8_min_agreement <= 1.0:
        raise InputError(f"--int8-agreement must be between 0 and 1, got {config.int8_min_agreement}")
    outdir.refuse_input_overwrite(config.out, outdir.check_stem(config.stem), config.model)


def _selection(model: nn.Module, config: BuildConfig) -> str | None:
    """The ``exclude`` pattern of the layers the policy sees (the head too unless --compress-head)."""
    return exclude_head(model, config.exclude) if config.keep_head else config.exclude


def default_calib_samples(model: nn.Module, config: BuildConfig) -> int:
    """--calib-samples, else 1024 or, when larger, the widest selected layer's inputs rounded up to
    256 (data-driven ranks need at least as many input vectors as a layer has inputs)."""
    if config.calib_samples is not None:
        if config.calib_samples < 1:
            raise InputError(f"--calib-samples must be >= 1, got {config.calib_samples}")
        return config.calib_samples
    widest = max((layer.in_features for layer in linear_layers(model, _selection(model, config)).values()), default=0)
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
        input_shape = resolve_input_shape(loaded, config.input_shape)
        control_flow = validate.control_flow_linears(loaded.module)
        _reference_outputs(loaded.module, random_inputs(input_shape, config.verify_samples, config.seed),
                           "random")  # a model that cannot run its verification inputs fails now, not after export
        eval_data = _eval_dataset(config, input_shape)
        if eval_data is not None:
            validate.check_labels(eval_data.y, output_classes(loaded.module, input_shape), eval_data.name, "eval")
        calib = (None if config.calib_data is None
                 else calibration_data(config.calib_data, default_calib_samples(loaded.module, config), input_shape))
    compressed, plan, ranks_record = None, None, {}
    if config.train_data is None:  # svd-training (--train) finds its ranks by training instead
        with timings.stage("compress", progress):
            compressed, plan, ranks_record = _compress_stage(config, loaded.module, input_shape, calib, progress)
    if config.train_data is not None or config.finetune_data is not None:
        with timings.stage("train", progress):
            compressed, plan, ranks_record["training"] = _train_stage(config, loaded.module, input_shape,
                                                                      progress is not None, compressed, plan)
    checks = [(random_inputs(input_shape, config.verify_samples, config.seed), "random")]
    if eval_data is not None:
        checks.append((eval_data.x, "eval"))
    stem = config.stem
    artifacts: dict[str, Any] = {}
    with folder.staging() as staging:
        onnx_roles = (("dense", loaded.module, f"{stem}.dense.onnx", None), ("compressed", compressed, f"{stem}.onnx", plan))
        for role, model, filename, model_plan in onnx_roles if "onnx" in config.targets else ():
            artifacts[role] = _export_verified(model, role, staging / filename, config, input_shape,
                                               model_plan, checks, timings, progress)
        if config.quantize == "int8" and "onnx" in config.targets:
            artifacts["int8"] = _int8_onnx(compressed, plan, config, None if calib is None else calib.x, staging,
                                           checks, timings, progress)
        if "tflite" in config.targets:
            artifacts.update(_tflite_artifacts(loaded.module, compressed, plan, config, input_shape, staging, checks,
                                               timings, progress))
        if eval_data is not None:
            with timings.stage("eval", progress):
                for role in artifacts:
                    artifacts[role]["eval"] = evaluate_runner(_runner(staging / artifacts[role]["path"]), eval_data)
        record = {
            "schema": "edgecompress.build/1",
            "name": stem,
            "provenance": provenance.collect(),
            "input": {"path": str(config.model), "sha256": loaded.sha256, "format": loaded.format,
                      "input_shape": list(input_shape)},
            **plan.to_json(),
            **ranks_record,
            "options": {"targets": list(config.targets), "opset": config.opset, "exclude": config.exclude,
                        "keep_head": config.keep_head,
                        "simplify": config.simplify, "seed": config.seed, "quantize": config.quantize,
                        "svd": config.svd, "threads": config.threads,
                        "tflite_batch": config.batch if "tflite" in config.targets else None},
            "artifacts": artifacts,
            "timings_s": dict(timings),
        }
        if control_flow:
            record["warnings"] = ["Linear layers inside control-flow branches (torch.cond / while_loop) stay dense: "
                                  + ", ".join(control_flow)]
        (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return BuildResult(record, config.out, compressed, plan)
