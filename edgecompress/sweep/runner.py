"""Run a sweep's entries as Ray tasks: a local Ray instance by default, an existing cluster with
``address``; finished entries are skipped, a killed worker's entry is retried, Ctrl-C keeps what
finished.

Each task declares ``num_cpus`` and sets torch's thread count to it, so Ray never runs more
threads than the machine (or the cluster node) has cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgecompress.errors import InputError, MissingExtraError
from edgecompress.sweep.config import SweepConfig
from edgecompress.sweep.entries import Entry, resolve_entries
from edgecompress.sweep.task import failed_row, finished_row, run_entry

Progress = Callable[[dict[str, Any], "Counts"], None]
POLL_S = 0.5


@dataclass
class Counts:
    """Entries done (ok), failed and skipped (finished in an earlier run), out of ``total``."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, row: dict[str, Any]) -> None:
        if row.get("skipped"):
            self.skipped += 1
        elif row["status"] == "ok":
            self.done += 1
        else:
            self.failed += 1

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped


@dataclass
class SweepRun:
    """What a sweep produced: one row per entry (in config order), counts, timing and where Ray ran."""

    rows: list[dict[str, Any]]
    counts: Counts
    wall_s: float
    ray: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


def import_ray() -> Any:
    """The ``ray`` module, or a MissingExtraError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError("edgecompress sweep", "sweep") from None
    return ray


def connect(ray: Any, workers: int | None, address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Use the running Ray instance, join ``address``, or start a local one with ``workers`` CPUs.
    Returns whether this call started (and so must stop) Ray."""
    if ray.is_initialized():
        return False
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                              "runtime_env": runtime_env}
    if address:
        if workers is not None:
            raise InputError("--workers sizes a local Ray instance; with --address the cluster's nodes decide")
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = workers
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                         f"{str(exc).splitlines()[0]}") from None
    return True


def _crash_row(entry: Entry, exc: BaseException, retries: int) -> dict[str, Any]:
    reason = type(exc).__name__
    return failed_row(entry, f"the worker running it died ({reason}), also after {retries} "
                             f"{'retry' if retries == 1 else 'retries'}")


def _schedule(ray: Any, todo: list[Entry], cpus: int, retries: int, spread: bool) -> dict[Any, Entry]:
    remote = ray.remote(num_cpus=cpus, max_retries=retries, retry_exceptions=False)(run_entry)
    return {remote.remote(entry, cpus, spread): entry for entry in todo}


def _collect(ray: Any, pending: dict[Any, Entry], retries: int, on_row: Callable[[Entry, dict[str, Any]], None]) -> None:
    """Wait for the tasks, handing each finished entry's row to ``on_row`` as it arrives."""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for ref in ready:
            entry = pending.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as exc:
                row = _crash_row(entry, exc, retries)
            on_row(entry, row)


def _cancel(ray: Any, pending: dict[Any, Entry]) -> None:
    """Stop unfinished tasks and remove what they left (their folders hold no finished result)."""
    import shutil

    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already finished or its worker is gone
            pass
    for entry in pending.values():
        shutil.rmtree(entry.folder, ignore_errors=True)


def run_sweep(sweep: SweepConfig, *, out: Path | None = None, workers: int | None = None, address: str | None = None,
              cpus_per_entry: int | None = None, retries: int = 1, force: bool = False,
              runtime_env: dict[str, Any] | None = None, progress: Progress | None = None,
              sensitivity_on_workers: bool | None = None) -> SweepRun:
    """Run every entry of ``sweep`` that has no finished result yet (all of them with ``force``).

    ``sensitivity_on_workers``: budget-mode entries measure their per-layer sensitivity tables as
    Ray tasks too (default: on a cluster, i.e. with ``address``; on one machine the entries
    already keep every core busy).

    Returns the rows of all entries; on Ctrl-C, unfinished tasks are cancelled, the rows so far are
    returned with ``interrupted`` set (the caller writes them and exits 130).
    """
    out = out or sweep.out
    cpus = cpus_per_entry or sweep.cpus_per_entry
    entries = resolve_entries(sweep, out, cpus)
    rows: dict[str, dict[str, Any]] = {}
    counts = Counts(len(entries))

    def record(entry: Entry, row: dict[str, Any]) -> None:
        rows[entry.label] = row
        counts.add(row)
        if progress:
            progress(row, counts)

    todo = []
    for entry in entries:
        saved = None if force or entry.error else finished_row(entry)
        if entry.error:
            record(entry, failed_row(entry, entry.error))
        elif saved is not None:
            record(entry, {**saved, "skipped": True})
        else:
            todo.append(entry)
    start = time.perf_counter()
    ray_info: dict[str, Any] = {}
    interrupted = False
    if todo:
        ray = import_ray()
        started = connect(ray, workers, address, runtime_env)
        ray_info = {"address": address or "local", "cpus": ray.cluster_resources().get("CPU"),
                    "cpus_per_entry": cpus, "max_retries": retries}
        pending: dict[Any, Entry] = {}
        try:
            spread = bool(address) if sensitivity_on_workers is None else sensitivity_on_workers
            ray_info["sensitivity_on_workers"] = spread
            pending = _schedule(ray, todo, cpus, retries, spread)
            _collect(ray, pending, retries, record)
        except KeyboardInterrupt:
            interrupted = True
            _cancel(ray, pending)
        finally:
            if started:
                ray.shutdown()
    ordered = [rows[entry.label] for entry in entries if entry.label in rows]
    return SweepRun(ordered, counts, round(time.perf_counter() - start, 3), ray_info, interrupted)
