"""``edgecompress sweep``: many builds (models x policies x budgets x targets) from one TOML file, run
as Ray tasks (a local instance by default, a cluster with ``address``), resumable, with one results
table (JSON, Markdown, HTML with the accuracy-vs-size Pareto plot).

    from edgecompress.sweep import load_sweep, sweep
    record = sweep(load_sweep("digits.toml"), workers=2)
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgecompress.sweep.config import EntrySpec, SweepConfig, load_sweep
from edgecompress.sweep.results import results_record, write_results
from edgecompress.sweep.runner import Counts, Progress, SweepRun, run_sweep

__all__ = ["Counts", "EntrySpec", "SweepConfig", "SweepRun", "load_sweep", "run_sweep", "sweep"]


def sweep(config: SweepConfig, *, out: Path | None = None, progress: Progress | None = None,
          **options: Any) -> dict[str, Any]:
    """Run ``config`` (see :func:`run_sweep` for ``options``), write results.{json,md,html} into the
    output folder (also when interrupted: what finished is kept) and return the results record."""
    out = out or config.out
    run = run_sweep(config, out=out, progress=progress, **options)
    counts = {"total": run.counts.total, **{k: v for k, v in asdict(run.counts).items() if k != "total"}}
    record = results_record(config.name, str(config.path), run.rows, counts, run.wall_s, run.ray, run.interrupted)
    write_results(record, out)
    return record
