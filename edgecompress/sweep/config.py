"""Sweep config files (TOML): ``[sweep]`` settings, ``[defaults]``, ``[[grid]]`` tables expanded as a
product of their list values, and single ``[[entry]]`` tables.

Parsing is strict and torch-free: an unknown key or a wrong type is a
:class:`~edgecompress.errors.ConfigError` (exit code 2) naming ``file:line``.

    [sweep]
    out = "runs/digits"          # relative to this file; default: <config stem>-sweep beside it

    [defaults]                   # every entry starts from these
    model = "digits.pt2"
    eval = "digits:test"

    [[grid]]                     # 3 entries: every list is an axis of the product
    policy = "uniform"
    rank = [4, 8, 16]

    [[entry]]                    # one entry
    name = "energy-0.9"
    policy = "energy"
    threshold = 0.9
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.check.config import read_toml
from edgecompress.errors import ConfigError

_STR, _INT, _NUM, _BOOL = (str,), (int,), (int, float), (bool,)
# entry option -> allowed value types (a list value is also allowed where list is named)
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "name": _STR, "model": _STR, "factory": _STR, "allow_pickle": _BOOL, "input_shape": (str, list),
    "policy": _STR,
    # policy options (checked against the chosen policy when entries are resolved)
    "rank": _INT, "threshold": _NUM, "scale": _NUM, "max_error": _NUM, "refit": _BOOL, "max_iter": _INT,
    "sparsity": _STR, "lambda_orth": _NUM, "lambda_sparsity": _NUM, "prune_energy": _NUM,
    # build options (names as in `edgecompress build --help`, dashes as underscores)
    "targets": (str, list), "exclude": _STR, "compress_head": _BOOL, "opset": _INT, "simplify": _BOOL,
    "eval": _STR, "eval_samples": _INT, "verify_samples": _INT, "atol": _NUM, "rtol": _NUM, "seed": _INT,
    "calib": _STR, "calib_samples": _INT,
    # budget mode
    "max_accuracy_drop": _NUM, "min_cosine": _NUM, "eval_split": _STR, "target_params": _NUM, "target_size": (str, int),
    "round_to": _INT, "allocation": _STR, "confidence": _NUM,
    # training
    "finetune": _STR, "train": _STR, "epochs": _INT, "distill_weight": _NUM, "val": _STR, "lr": _NUM,
    "train_batch": _INT, "temperature": _NUM, "finetune_epochs": _INT,
    # extra targets
    "quantize": _STR, "batch": _INT, "int8_agreement": _NUM, "int4_agreement": _NUM, "int8_weights": _STR,
    # factorization
    "whiten": _BOOL, "sequential_refit": _BOOL, "svd": _STR,
    # after the build
    "bench": _BOOL, "bench_runs": _INT,
}
POLICY_OPTIONS: frozenset[str] = frozenset({"rank", "threshold", "scale", "max_error", "refit", "max_iter", "sparsity",
                                            "lambda_orth", "lambda_sparsity", "prune_energy"})
SWEEP_KEYS: dict[str, tuple[type, ...]] = {"name": _STR, "out": _STR, "cpus_per_entry": _INT}
SECTIONS = ("sweep", "defaults", "grid", "entry")
_NAME = re.compile(r"[A-Za-z0-9_=,+-][A-Za-z0-9_.=,+-]*")  # an entry's folder under OUT/entries/


@dataclass(frozen=True)
class EntrySpec:
    """One entry's options as written (defaults merged in), where it came from, and a label."""

    label: str
    options: dict[str, Any]
    source: str  # "file:line" of its [[grid]] / [[entry]] table
    own: tuple[str, ...] = ()  # the keys its own table set (they make the label)


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep file."""

    path: Path
    name: str
    out: Path
    entries: tuple[EntrySpec, ...]
    cpus_per_entry: int = 1
    base_dir: Path = field(default=Path("."))


class _Locator:
    """Line numbers of tables (``[sweep]``, the n-th ``[[grid]]``) and of the keys inside them."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_-]+)\s*\]\]?")
    _KEY = re.compile(r"""^\s*["']?([A-Za-z0-9_-]+)["']?\s*=""")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        table: tuple[str, int] | None = None
        for number, raw in enumerate(self.lines, start=1):
            header = self._HEADER.match(raw)
            if header:
                name = header[2]
                index = counts[name] = counts.get(name, -1) + 1 if header[1] == "[[" else 0
                table = (name, index)
                self.tables.setdefault(table, number)
                continue
            key = self._KEY.match(raw)
            if key and table is not None:
                self.keys.setdefault((*table, key[1]), number)

    def line(self, section: str, index: int = 0, key: str | None = None) -> int | None:
        if key is not None and (section, index, key) in self.keys:
            return self.keys[(section, index, key)]
        return self.tables.get((section, index))


class _Source:
    """The file being parsed: builds errors that carry ``file:line`` and the offending line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)

    def where(self, section: str, index: int = 0, key: str | None = None) -> str:
        line = self.locator.line(section, index, key)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, section: str, index: int, key: str | None, message: str) -> ConfigError:
        line = self.locator.line(section, index, key)
        text = self.locator.lines[line - 1].strip() if line else ""
        return ConfigError(f"{self.where(section, index, key)}: {message}" + (f"  [{text}]" if text else ""))


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(src: _Source, section: str, index: int, key: str, value: Any, types: tuple[type, ...],
                 axis: bool) -> None:
    """Type check one value; in a grid a list is an axis whose every item is checked."""
    if axis and isinstance(value, list):
        if not value:
            raise src.error(section, index, key, f"grid axis {key!r} is an empty list")
        for item in value:
            _check_value(src, section, index, key, item, types, axis=False)
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        expected = " or ".join(sorted({t.__name__.replace("str", "string") for t in types}))
        raise src.error(section, index, key, f"{key} must be a {expected}, got {value!r}")


def _options(src: _Source, section: str, index: int, table: Any, axis: bool = False) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise src.error(section, index, None, f"[{section}] must be a table")
    for key, value in table.items():
        if key not in OPTION_TYPES:
            raise src.error(section, index, key, f"unknown option {key!r}{_suggest(key, OPTION_TYPES)}")
        _check_value(src, section, index, key, value, OPTION_TYPES[key], axis)
    if "name" in table and axis and isinstance(table["name"], list):
        raise src.error(section, index, "name", "a [[grid]] cannot list names: labels are made from its axes")
    if "name" in table and not _NAME.fullmatch(str(table["name"])):
        raise src.error(section, index, "name", f"name {table['name']!r} must be a folder name: letters, digits "
                                                "and _ . = , + - (not starting with '.')")
    return dict(table)


def _label(options: dict[str, Any], own: tuple[str, ...]) -> str:
    """``name`` if given, else the policy and the values this entry's own table set."""
    if "name" in options:
        return str(options["name"])
    parts = [str(options.get("policy", "energy"))]
    for key in own:
        if key in ("policy", "name"):
            continue
        value = options[key]
        value = Path(value).stem if key == "model" else ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}{value}")
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", "-".join(parts)).lstrip(".") or "entry"


def _expand(src: _Source, defaults: dict[str, Any], grids: list[Any], singles: list[Any]) -> list[EntrySpec]:
    entries: list[EntrySpec] = []
    for index, grid in enumerate(grids):
        table = _options(src, "grid", index, grid, axis=True)
        axes = [(key, value if isinstance(value, list) else [value]) for key, value in table.items()]
        # labels name the grid's axes (its list values); a table without lists is named by all its keys
        named = tuple(key for key, value in table.items() if isinstance(value, list)) or tuple(table)
        for combo in itertools.product(*(values for _, values in axes)):
            own = dict(zip((key for key, _ in axes), combo))
            options = {**defaults, **own}
            entries.append(EntrySpec(_label(options, named), options, src.where("grid", index), tuple(own)))
    for index, single in enumerate(singles):
        own = _options(src, "entry", index, single)
        options = {**defaults, **own}
        entries.append(EntrySpec(_label(options, tuple(own)), options, src.where("entry", index), tuple(own)))
    for spec in entries:
        if "model" not in spec.options:
            raise ConfigError(f"{spec.source}: entry {spec.label!r} has no model (set it in [defaults] or the table)")
    return _unique_labels(entries)


def _unique_labels(entries: list[EntrySpec]) -> list[EntrySpec]:
    """Labels name output folders: the second of two equal labels gets ``-2`` and so on."""
    seen: dict[str, int] = {}
    unique = []
    for spec in entries:
        count = seen[spec.label] = seen.get(spec.label, 0) + 1
        unique.append(spec if count == 1 else EntrySpec(f"{spec.label}-{count}", spec.options, spec.source, spec.own))
    return unique


def load_sweep(path: str | Path, *, out: str | Path | None = None) -> SweepConfig:
    """Parse and expand a sweep file; ``out`` overrides ``[sweep] out``. Relative paths in it are
    relative to the file's folder (resolved when entries are resolved)."""
    path = Path(path)
    text, data = read_toml(path)
    src = _Source(path, text)
    for section in data:
        if section not in SECTIONS:
            raise src.error(section, 0, None, f"unknown section [{section}]{_suggest(section, SECTIONS)}; "
                                              f"a sweep file has {', '.join(SECTIONS)}")
    settings = data.get("sweep", {})
    if not isinstance(settings, dict):
        raise src.error("sweep", 0, None, "[sweep] must be a table")
    for key, value in settings.items():
        if key not in SWEEP_KEYS:
            raise src.error("sweep", 0, key, f"unknown [sweep] key {key!r}{_suggest(key, SWEEP_KEYS)}")
        _check_value(src, "sweep", 0, key, value, SWEEP_KEYS[key], axis=False)
    for section in ("grid", "entry"):
        if not isinstance(data.get(section, []), list):
            raise src.error(section, 0, None, f"use [[{section}]] (an array of tables), not [{section}]")
    defaults = _options(src, "defaults", 0, data.get("defaults", {}))
    if "name" in defaults:
        raise src.error("defaults", 0, "name", "[defaults] cannot set a name: names label single entries")
    entries = _expand(src, defaults, data.get("grid", []), data.get("entry", []))
    if not entries:
        raise ConfigError(f"{path}: no entries: add a [[grid]] or an [[entry]] table")
    cpus = settings.get("cpus_per_entry", 1)
    if cpus < 1:
        raise src.error("sweep", 0, "cpus_per_entry", f"cpus_per_entry must be >= 1, got {cpus}")
    base = path.resolve().parent
    out_dir = Path(out) if out is not None else (base / settings.get("out", f"{path.stem}-sweep")).resolve()
    return SweepConfig(path=path, name=settings.get("name", path.stem), out=out_dir, entries=tuple(entries),
                       cpus_per_entry=cpus, base_dir=base)
