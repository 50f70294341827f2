"""Budget files: ``[tool.edgecompress]`` in pyproject.toml or a TOML file given with ``--config``.

Parsing is strict: an unknown key, a bad unit or a wrong type is a
:class:`~edgecompress.errors.ConfigError` (exit code 2) that names the file and the line at fault.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgecompress.check.units import parse_count, parse_fraction, parse_size
from edgecompress.errors import ConfigError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LATENCY_STATS: tuple[str, ...] = ("p50", "p90", "p99", "mean")

# Budget keys, in the order their rows appear in the report, with a one-line description.
BUDGET_KEYS: dict[str, str] = {
    "max_size": 'largest file size, e.g. "2 MB", "512 KiB" (bare numbers are bytes)',
    "max_params": "most parameters, e.g. 200000 or \"200k\"",
    "max_growth": 'largest size growth vs the baseline, "5%" or 0.05',
    "noise_floor": 'size changes smaller than this pass max_growth, e.g. "1 KiB" (default 0)',
    "max_params_growth": 'largest parameter growth vs the baseline, "5%" or 0.05',
    "params_noise_floor": "parameter changes smaller than this pass max_params_growth (default 0)",
    "min_accuracy": 'lowest accuracy, a fraction (0.97) or "97%"',
    "max_accuracy_drop": "largest accuracy drop in points vs the baseline (else the dense reference)",
    "min_cosine": "lowest mean cosine similarity of an embedding output to the dense reference's, e.g. 0.97 "
                  "(bench.json, else build.json's compressed-vs-dense agreement)",
    "min_cosine_p5": "lowest 5th-percentile cosine similarity to the dense reference, e.g. 0.9",
    "max_ops": "most nodes of an op type, e.g. { MatMul = 6 }",
    **{f"max_latency_{s}_ms": f"largest {s} latency in ms (warns unless fail_on_latency)" for s in LATENCY_STATS},
    "max_latency_growth": 'largest p50 latency growth vs the baseline, "10%" (warns unless fail_on_latency)',
    "max_peak_rss": 'largest peak resident memory while benchmarking, e.g. "64 MiB"',
    "batch": "batch size whose bench results latency/memory budgets read (default 1)",
    "seq": "sequence length (bench --seq) whose results latency/memory budgets read (needed when bench "
           "measured several)",
    "fail_on_latency": "latency budgets fail instead of warning (default: the top-level setting)",
    "exclude": "glob(s) of artifacts this budget skips; without a / they match the file name, "
               "e.g. \"*.dense.onnx\"",
}
LIMIT_KEYS: frozenset[str] = frozenset(BUDGET_KEYS) - {"noise_floor", "params_noise_floor", "batch", "seq",
                                                       "fail_on_latency", "exclude"}
TOP_KEYS: dict[str, str] = {
    "budgets": 'one table per artifact glob: [tool.edgecompress.budgets."build/*.onnx"]',
    "fail_on_latency": "latency budgets fail instead of warning (default false)",
    "paths": "default PATHS when none are given on the command line",
    "baseline": "default --baseline file(s)",
}
# Sections other sub-commands may own; `check` leaves them alone.
OTHER_SECTIONS: frozenset[str] = frozenset({"build", "bench", "report", "demo", "analyze"})


@dataclass(frozen=True)
class Budget:
    """The limits declared for one artifact glob. Unset limits are None."""

    pattern: str
    base_dir: Path
    line: int | None = None
    exclude: tuple[str, ...] = ()
    max_size: int | None = None
    max_params: int | None = None
    max_growth: float | None = None
    noise_floor: int = 0
    max_params_growth: float | None = None
    params_noise_floor: int = 0
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    min_cosine_p5: float | None = None
    max_ops: tuple[tuple[str, int], ...] = ()
    max_latency_ms: tuple[tuple[str, float], ...] = ()
    max_latency_growth: float | None = None
    max_peak_rss: int | None = None
    batch: int = 1
    seq: int | None = None
    fail_on_latency: bool | None = None
    binary_keys: frozenset[str] = frozenset()  # size keys written in KiB/MiB/GiB: shown that way
    key_lines: tuple[tuple[str, int], ...] = ()  # config key (max_ops.MatMul ...) -> its line

    def line_of(self, key: str) -> int | None:
        """The line declaring ``key`` (e.g. "max_size", "max_ops.Gemm"), else the table's line."""
        return dict(self.key_lines).get(key, self.line)

    def matches(self, path: Path) -> bool:
        """Whether an artifact path matches this budget's glob (and none of its excludes)."""
        return glob_match(self.pattern, path, self.base_dir) and not any(
            glob_match(p, path, self.base_dir) if "/" in p else glob_regex(p).match(path.name)
            for p in self.exclude)


@dataclass(frozen=True)
class CheckConfig:
    """A parsed budget file."""

    source: Path | None
    base_dir: Path
    budgets: tuple[Budget, ...]
    fail_on_latency: bool = False
    paths: tuple[str, ...] = ()
    baselines: tuple[Path, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------- globs

def glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a path glob: ``*`` and ``?`` stay inside one folder, ``**`` spans folders,
    ``[abc]`` / ``[!abc]`` are character classes."""
    pattern = pattern.replace("\\", "/")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(pattern: str, path: Path, base_dir: Path) -> bool:
    """Match ``path`` against ``pattern``; relative patterns are relative to ``base_dir``."""
    pattern = pattern.replace("\\", "/")
    if os.path.isabs(pattern):
        target = path.as_posix()
        pattern = Path(os.path.normpath(pattern)).as_posix()
    else:
        target = Path(os.path.relpath(path, base_dir)).as_posix()
        pattern = pattern[2:] if pattern.startswith("./") else pattern
    return glob_regex(pattern).match(target) is not None


# --------------------------------------------------------------------------- locating the line

class _Lines:
    """Finds the line of a (dotted) key in TOML text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.index: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, raw in enumerate(self.lines, start=1):
            line = raw.strip()
            if line.startswith("[") and not line.startswith("[["):
                keys = _single_path(line)
                if keys is not None:
                    table = keys
                    self.index.setdefault(table, number)
            elif line and not line.startswith("#") and "=" in line:
                keys = _single_path(line.split("=", 1)[0] + "= 0")
                if keys is not None:
                    self.index.setdefault(table + keys, number)

    def find(self, keys: tuple[str, ...]) -> int | None:
        """Line number (1-based) of ``keys``; falls back to its nearest known ancestor."""
        if keys in self.index:
            return self.index[keys]
        for cut in range(len(keys) - 1, 0, -1):
            start = self.index.get(keys[:cut])
            if start is None:
                continue
            token = re.compile(r"(^|[\s{,.])[\"']?" + re.escape(keys[-1]) + r"[\"']?\s*=")
            for number in range(start, len(self.lines) + 1):
                if token.search(self.lines[number - 1]):
                    return number
            return start
        return None

    def text(self, number: int | None) -> str:
        """The stripped source line, or ''."""
        if number is None or not 1 <= number <= len(self.lines):
            return ""
        return self.lines[number - 1].strip()


def _single_path(fragment: str) -> tuple[str, ...] | None:
    """Parse a header (``[a."b"]``) or ``a.b = 0`` with tomllib and return its key path."""
    try:
        node: Any = tomllib.loads(fragment)
    except tomllib.TOMLDecodeError:
        return None
    keys: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        keys.append(key)
    return tuple(keys) if keys else None


class _Source:
    """A TOML file being validated: raises errors that carry ``file:line``."""

    def __init__(self, path: Path, text: str, prefix: tuple[str, ...]) -> None:
        self.path = path
        self.lines = _Lines(text)
        self.prefix = prefix

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        line = self.lines.find(self.prefix + keys)
        where = f"{_display(self.path)}:{line}" if line else _display(self.path)
        source = self.lines.text(line)
        return ConfigError(f"{where}: {message}" + (f"  [{source}]" if source else ""))

    def line(self, keys: tuple[str, ...]) -> int | None:
        return self.lines.find(self.prefix + keys)


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - other drive on Windows
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def _unknown(key: str, known: list[str], where: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    if hint:
        return f"unknown key {key!r} in {where}; did you mean {hint[0]!r}?"
    return f"unknown key {key!r} in {where} (known: {', '.join(known)})"


# ------------------------------------------------------------------------------------ loading

def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml with a ``[tool.edgecompress]`` table, from ``start`` upwards,
    stopping at the enclosing git repository's root.

    An unreadable or invalid pyproject.toml stops the walk and is returned, so that loading it
    reports ``pyproject.toml:LINE: invalid TOML`` instead of silently using another project's file."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                return candidate
            if isinstance(data.get("tool"), dict) and "edgecompress" in data["tool"]:
                return candidate
        if (folder / ".git").exists():
            break
    return None


def load_config(path: str | os.PathLike[str] | None = None, *, cwd: Path | None = None) -> CheckConfig:
    """Read and validate a budget file; without ``path``, the nearest pyproject.toml."""
    cwd = Path.cwd() if cwd is None else cwd
    if path is None:
        found = find_pyproject(cwd)
        if found is None:
            raise ConfigError('no budgets: add [tool.edgecompress.budgets."build/*.onnx"] to '
                              "pyproject.toml or pass --config FILE (see edgecompress check --help)")
        return _load_file(found, require_tool=True)
    return _load_file(cwd / Path(path), require_tool=None)


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """A TOML file's text and data; ConfigError naming ``file:line`` when it is missing or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {_display(path)} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {_display(path)}: {exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match[1]) if match else None
        where = f"{_display(path)}:{line}" if line else _display(path)
        source = _Lines(text).text(line)
        raise ConfigError(f"{where}: invalid TOML: {exc}" + (f"  [{source}]" if source else "")) from None


def _load_file(path: Path, *, require_tool: bool | None) -> CheckConfig:
    path = path.absolute()
    text, data = read_toml(path)
    tool = data.get("tool")
    has_tool = isinstance(tool, dict) and "edgecompress" in tool
    if require_tool is None:  # --config FILE: pyproject-style or a plain budget file
        require_tool = has_tool or path.name == "pyproject.toml"
    if require_tool:
        if not has_tool:
            raise ConfigError(f"{_display(path)} has no [tool.edgecompress] table")
        section, prefix = tool["edgecompress"], ("tool", "edgecompress")
    else:
        section, prefix = data, ()
    source = _Source(path, text, prefix)
    if not isinstance(section, dict):
        raise source.error((), "[tool.edgecompress] must be a table")
    return _parse_section(section, source, path)


def _parse_section(section: dict[str, Any], src: _Source, path: Path) -> CheckConfig:
    base_dir = path.parent
    for key in section:
        if key not in TOP_KEYS and key not in OTHER_SECTIONS:
            raise src.error((key,), _unknown(key, list(TOP_KEYS), "the check settings"))
    fail_on_latency = section.get("fail_on_latency", False)
    if not isinstance(fail_on_latency, bool):
        raise src.error(("fail_on_latency",), "fail_on_latency must be true or false")
    paths = _string_list(section.get("paths", []), src, ("paths",))
    baselines = tuple(base_dir / p for p in _string_list(section.get("baseline", []), src, ("baseline",)))
    budgets_table = section.get("budgets")
    if budgets_table is None:
        raise src.error((), 'no budgets: add a table such as [tool.edgecompress.budgets."build/*.onnx"] '
                            'with max_size = "2 MB"')
    if not isinstance(budgets_table, dict) or not budgets_table:
        raise src.error(("budgets",), 'budgets must hold one table per glob, e.g. '
                                      '[tool.edgecompress.budgets."build/*.onnx"]')
    budgets = tuple(_parse_budget(pattern, table, src, base_dir) for pattern, table in budgets_table.items())
    return CheckConfig(source=path, base_dir=base_dir, budgets=budgets, fail_on_latency=fail_on_latency,
                       paths=tuple(paths), baselines=baselines)


def _string_list(value: Any, src: _Source, keys: tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise src.error(keys, f"{keys[-1]} must be a string or a list of strings")
    return list(value)


def _parse_budget(pattern: str, table: Any, src: _Source, base_dir: Path) -> Budget:
    where = ("budgets", pattern)
    if not isinstance(table, dict):
        raise src.error(where, f'budget "{pattern}" must be a table of limits, e.g. {{ max_size = "2 MB" }}')
    if not pattern.strip():
        raise src.error(where, "a budget's glob must not be empty")
    for key in table:
        if key not in BUDGET_KEYS:
            raise src.error(where + (key,), _unknown(key, list(BUDGET_KEYS), f'budget "{pattern}"'))
    if not LIMIT_KEYS & set(table):
        raise src.error(where, f'budget "{pattern}" sets no limit (e.g. max_size = "2 MB")')

    def get(key: str, parse: Callable[[Any], Any]) -> Any:
        if key not in table:
            return None
        try:
            return parse(table[key])
        except ConfigError as exc:
            raise src.error(where + (key,), str(exc)) from None

    kwargs: dict[str, Any] = {}
    for key in ("max_size", "noise_floor", "max_peak_rss"):
        kwargs[key] = get(key, lambda v, k=key: parse_size(v, what=k))
    for key in ("max_params", "params_noise_floor"):
        kwargs[key] = get(key, lambda v, k=key: parse_count(v, what=k))
    for key in ("max_growth", "max_params_growth", "max_latency_growth"):
        kwargs[key] = get(key, lambda v, k=key: parse_fraction(v, what=k))
    kwargs["min_accuracy"] = get("min_accuracy", _accuracy)
    kwargs["max_accuracy_drop"] = get("max_accuracy_drop", _points)
    for key in ("min_cosine", "min_cosine_p5"):
        kwargs[key] = get(key, lambda v, k=key: _cosine(v, k))
    kwargs["batch"] = get("batch", lambda v: _positive(v, "batch"))
    kwargs["seq"] = get("seq", lambda v: _positive(v, "seq"))
    kwargs["fail_on_latency"] = get("fail_on_latency", _bool)
    kwargs["exclude"] = tuple(_string_list(table["exclude"], src, where + ("exclude",))) if "exclude" in table else ()
    if "max_ops" in table:
        ops = table["max_ops"]
        if not isinstance(ops, dict) or not ops:
            raise src.error(where + ("max_ops",), "max_ops must be a table of op type = count, "
                                                  "e.g. max_ops = { MatMul = 6 }")
        kwargs["max_ops"] = tuple((op, _op_count(op, n, src, where)) for op, n in ops.items())
    latency = []
    for stat in LATENCY_STATS:
        value = get(f"max_latency_{stat}_ms", _milliseconds)
        if value is not None:
            latency.append((stat, value))
    kwargs["max_latency_ms"] = tuple(latency)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    binary = frozenset(k for k in ("max_size", "noise_floor", "max_peak_rss")
                       if isinstance(table.get(k), str) and "i" in table[k].lower())
    lines = [(key, src.line(where + (key,))) for key in table]
    lines += [(f"max_ops.{op}", src.line(where + ("max_ops", op))) for op, _ in kwargs.get("max_ops", ())]
    return Budget(pattern=pattern, base_dir=base_dir, line=src.line(where), binary_keys=binary,
                  key_lines=tuple((k, n) for k, n in lines if n is not None), **kwargs)


def _op_count(op: str, count: Any, src: _Source, where: tuple[str, ...]) -> int:
    """Validate one ``max_ops`` entry. Op types are case-sensitive: "Matmul" would count 0 nodes
    and always pass, so names outside the ONNX standard (without a ``domain.`` prefix) are refused."""
    if "." not in op:
        known = _onnx_op_types()
        if known and op not in known:
            hint = difflib.get_close_matches(op, sorted(known), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise src.error(where + ("max_ops", op), f"max_ops: {op!r} is not an ONNX op type{suggestion} "
                                                     "(custom ops are written domain.Op)")
    try:
        return parse_count(count, what=f"max_ops.{op}")
    except ConfigError as exc:
        raise src.error(where + ("max_ops", op), str(exc)) from None


def _onnx_op_types() -> frozenset[str]:
    """Names of the standard ONNX op types (empty when onnx is unavailable)."""
    try:
        import onnx.defs
    except ImportError:  # pragma: no cover - onnx is a core dependency
        return frozenset()
    return frozenset(schema.name for schema in onnx.defs.get_all_schemas_with_history())


def _accuracy(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1:
        raise ConfigError(f"min_accuracy {value!r} is a fraction of 1: write {value / 100:g} or \"{value:g}%\"")
    return parse_fraction(value, what="min_accuracy", max_fraction=1.0)


def _cosine(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise ConfigError(f"{key} is a cosine similarity, a number from -1 to 1 (e.g. 0.97), got {value!r}")
    return float(value)


def _points(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise ConfigError(f"max_accuracy_drop must be a non-negative number of points (0.5 = half a "
                          f"percentage point), got {value!r}")
    return float(value)


def _milliseconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(f"latency limits are positive numbers of milliseconds, got {value!r}")
    return float(value)


def _positive(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}")
    return value
