"""Sweep entries -> :class:`~edgecompress.pipeline.BuildConfig` and their identity.

An entry's identity is the SHA-256 of its resolved options (every BuildConfig field with defaults
filled in, the policy with all its parameters, whether it is benchmarked) and of its input model's
bytes: a re-run skips an entry whose folder holds a finished result with the same identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.check.units import parse_size
from edgecompress.data import SPLITS
from edgecompress.errors import ConfigError, EdgeCompressError, InputError
from edgecompress.onnxinfo import sha256
from edgecompress.sweep.config import POLICY_OPTIONS, SweepConfig

DEFAULT_POLICY = "energy"  # as `edgecompress build`
BUILTIN_DATA = ("digits", "fashion-mnist")
DATA_KEYS = ("eval", "calib", "eval_split", "finetune", "train", "val")
TARGETS = ("onnx", "tflite")
# sweep option -> BuildConfig field, where the names differ (the CLI's flag names are the sweep's keys)
RENAMED = {"eval": "eval_data", "calib": "calib_data", "finetune": "finetune_data", "train": "train_data",
           "int8_agreement": "int8_min_agreement", "int4_agreement": "int4_min_agreement"}
TRAINING = {"val": "val", "lr": "lr", "train_batch": "batch_size", "temperature": "temperature",
            "finetune_epochs": "finetune_epochs"}
ENTRIES_DIR = "entries"


@dataclass(frozen=True)
class Entry:
    """A resolved entry: its build config (None when resolving failed: ``error`` says why)."""

    label: str
    folder: Path
    source: str
    options: dict[str, Any]
    config: Any = None  # BuildConfig
    bench: bool = False
    identity: str | None = None
    bench_runs: int | None = None  # timed rounds of the bench (None: edgecompress bench's default)
    error: str | None = None


def resolve_path(text: str, base: Path) -> str:
    """A path relative to the config file's folder (absolute paths stay as they are)."""
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def resolve_data(spec: str, base: Path) -> str:
    """A data spec with its file/folder part made relative to ``base``; built-in names stay."""
    stem, sep, split = spec.rpartition(":")
    if not (sep and split in SPLITS and stem):
        stem, sep, split = spec, "", ""
    if stem in BUILTIN_DATA:
        return spec
    return resolve_path(stem, base) + sep + split


def resolve_factory(spec: str, base: Path) -> str:
    """``file.py:function`` with the file relative to ``base``; ``module:function`` stays."""
    module, sep, attr = spec.rpartition(":")
    return resolve_path(module, base) + sep + attr if module.endswith(".py") else spec


def input_digest(path: Path) -> str:
    """SHA-256 of a model file, or of a model folder's files (names and contents, sorted)."""
    if path.is_file():
        return sha256(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256(item).encode())
        return digest.hexdigest()
    raise InputError(f"model file not found: {path}")


def _policy(options: dict[str, Any], source: str) -> Any:
    from edgecompress.lowrank.policies import POLICIES, make_policy

    name = options.get("policy", DEFAULT_POLICY)
    given = {key: options[key] for key in POLICY_OPTIONS if key in options}
    make_policy(name)  # unknown name -> InputError naming the choices (and loads plugin policies)
    takes = {f.name for f in dataclasses.fields(POLICIES[name])}
    wrong = sorted(set(given) - takes)
    if wrong:
        raise ConfigError(f"{source}: {', '.join(wrong)} {'is not an option' if len(wrong) == 1 else 'are not options'} "
                          f"of policy {name} (it takes: {', '.join(sorted(takes & POLICY_OPTIONS)) or 'none'})")
    return make_policy(name, **given)


def _targets(value: str | list[str]) -> tuple[str, ...]:
    targets = tuple(t.strip().lower() for t in (value.split(",") if isinstance(value, str) else value))
    if not targets or any(t not in TARGETS for t in targets):
        raise InputError(f"targets takes {' and/or '.join(TARGETS)}; got {value!r}")
    return targets


def _shape(value: str | list[int]) -> tuple[int, ...]:
    from edgecompress.load import parse_shape

    return parse_shape(value) if isinstance(value, str) else tuple(int(v) for v in value)


def build_config(options: dict[str, Any], folder: Path, base: Path, cpus: int, source: str) -> Any:
    """The BuildConfig of one entry (``out`` = its folder; training threads = its CPUs)."""
    from edgecompress.export.verify import Tolerance
    from edgecompress.pipeline import BuildConfig

    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    kwargs: dict[str, Any] = {"model": Path(resolve_path(options["model"], base)), "out": folder,
                              "policy": _policy(options, source), "training": {"threads": cpus}}
    for key, value in options.items():
        if key in DATA_KEYS:
            value = resolve_data(value, base)
        if key in TRAINING:
            kwargs["training"][TRAINING[key]] = value
        elif key == "factory":
            kwargs["factory"] = resolve_factory(value, base)
        elif key == "targets":
            kwargs["targets"] = _targets(value)
        elif key == "input_shape":
            kwargs["input_shape"] = _shape(value)
        elif key == "compress_head":
            kwargs["keep_head"] = not value
        elif key == "target_size":
            kwargs["target_size"] = parse_size(value, what="target_size")
        elif RENAMED.get(key, key) in fields and key not in ("model", "policy", "name"):
            kwargs[RENAMED.get(key, key)] = value
    tolerance = {key: options[key] for key in ("atol", "rtol") if key in options}
    if tolerance:
        kwargs["tolerance"] = Tolerance(**tolerance)
    return BuildConfig(**kwargs)


def _plain(value: Any) -> Any:
    """JSON-able form of config values (dataclasses with their class name, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = getattr(value, "name", type(value).__name__)
        return {"class": str(name), **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def identity(config: Any, bench: bool, model_sha256: str, bench_runs: int | None = None) -> str:
    """SHA-256 of the resolved options (all but ``out`` and ``model``) and the model's digest."""
    options = _plain(config)
    options.pop("out", None)
    options.pop("model", None)
    facts: dict[str, Any] = {"options": options, "bench": bench, "model_sha256": model_sha256}
    if bench and bench_runs is not None:
        facts["bench_runs"] = bench_runs
    payload = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def resolve_entries(sweep: SweepConfig, out: Path, cpus: int) -> list[Entry]:
    """Every entry of ``sweep`` with its BuildConfig and identity. A bad option name is a ConfigError
    (the whole sweep is refused); a bad value or a missing model fails only that entry."""
    digests: dict[Path, str] = {}
    entries = []
    for spec in sweep.entries:
        folder = out / ENTRIES_DIR / spec.label
        bench = bool(spec.options.get("bench", False))
        runs = spec.options.get("bench_runs")
        try:
            if runs is not None and runs < 1:
                raise InputError(f"bench_runs must be >= 1, got {runs}")
            config = build_config(spec.options, folder, sweep.base_dir, cpus, spec.source)
            if config.model not in digests:
                digests[config.model] = input_digest(config.model)
            entries.append(Entry(spec.label, folder, spec.source, spec.options, config, bench,
                                 identity(config, bench, digests[config.model], runs), runs))
        except ConfigError:
            raise
        except EdgeCompressError as exc:
            entries.append(Entry(spec.label, folder, spec.source, spec.options, bench=bench, error=str(exc)))
    return entries
