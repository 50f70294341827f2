"""CI budgets for deployed models: size, parameters, growth vs a baseline, accuracy, ops, latency.

Torch-free: it reads build.json / bench.json and, for bare files, ONNX with the ``onnx`` package.

    report = run_check(["build/build.json"], baselines=["main/build.json"])
    if not report.passed: ...

Modules: ``units`` (human sizes/percentages), ``config`` (budget files), ``facts`` (what each
artifact measures), ``evaluate`` (budgets x facts), ``summary`` (table, Markdown, JSON).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from edgecompress.check.config import Budget, CheckConfig, load_config
from edgecompress.check.evaluate import CheckReport, Finding, evaluate
from edgecompress.check.facts import ArtifactFacts, FactSet, collect, discover, display
from edgecompress.check.units import format_size, parse_count, parse_fraction, parse_size
from edgecompress.errors import InputError

__all__ = ["ArtifactFacts", "Budget", "CheckConfig", "CheckReport", "FactSet", "Finding", "collect",
           "evaluate", "format_size", "load_config", "parse_count", "parse_fraction", "parse_size",
           "run_check"]


def run_check(paths: Iterable[str | os.PathLike[str]] = (), *, config: str | os.PathLike[str] | None = None,
              baselines: Iterable[str | os.PathLike[str]] = (), fail_on_latency: bool = False,
              cwd: Path | None = None) -> CheckReport:
    """Load the budgets, collect facts about ``paths`` (and the baselines) and evaluate.

    Args:
        paths: build.json / bench.json files, .onnx / .tflite files, folders or globs. Empty: the
            config's ``paths``, else the artifacts its budget globs match on disk.
        config: a TOML budget file; None searches for pyproject.toml with [tool.edgecompress].
        baselines: build.json / bench.json of the main branch; empty: the config's ``baseline``.
        fail_on_latency: latency limits fail instead of warning.
        cwd: folder relative PATHS are resolved against (default: the current one).

    Raises:
        ConfigError: the budget file is malformed (exit code 2).
        InputError: a PATH or baseline is unreadable or not a known file (exit code 2).
    """
    cwd = Path.cwd() if cwd is None else cwd
    cfg = load_config(config, cwd=cwd)
    paths = [str(p) for p in paths]
    if not paths and cfg.paths:
        paths = [str(cfg.base_dir / p) for p in cfg.paths]
    if not paths:
        paths = [str(p) for p in discover([b.pattern for b in cfg.budgets], cfg.base_dir)]
    facts = collect(paths, cwd=cwd)
    baseline_files = [str(b) for b in baselines] or [str(b) for b in cfg.baselines]
    baseline: FactSet | None = None
    if baseline_files:
        baseline = collect(baseline_files, cwd=cwd)
        if baseline.missing:
            raise InputError(f"baseline {baseline.missing[0]} does not exist (omit --baseline on the "
                             "first run, before the main branch has published one)")
    return evaluate(cfg, facts, baseline, fail_on_latency=fail_on_latency,
                    baseline_paths=[display(Path(os.path.normpath(cwd / b))) for b in baseline_files])
