"""Timing and memory: interleaved timed runs, and a peak-memory probe in a fresh child process.

Timing: every model is warmed up, then the models run interleaved, one run each per round, the
order rotating by one each round (A B, B A, A B ... for two models), so drift of the machine
(frequency, temperature, other load) and any cost of running first or right after another model
hit all of them equally. The garbage collector is paused while timing.

Memory: like TFLite's benchmark_model, each model is loaded and run in a fresh Python process
that first imports only the runtime; the probe reports that process's peak resident set size
(VmHWM, or ru_maxrss where /proc is missing) after load + run, and the increment over the peak
just before loading (= a process that only imported the runtime and holds the input tensors).
The probe also times session creation and the first inference of that cold process.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError

Clock = Callable[[], float]


@dataclass
class Timing:
    """Per function, its timed samples (ms); ``schedule`` lists (phase, index) in execution order."""

    samples_ms: list[list[float]]
    schedule: list[tuple[str, int]] = field(default_factory=list)
    elapsed_s: float = 0.0


def interleave(fns: Sequence[Callable[[], object]], *, runs: int | None = None, seconds: float | None = None,
               warmup: int = 0, clock: Clock = time.perf_counter,
               on_round: Callable[[int, float], None] | None = None) -> Timing:
    """Warm up, then time ``fns`` round-robin until ``runs`` rounds or ``seconds`` elapsed; timed
    round ``k`` starts with function ``k mod len(fns)`` so each takes every position equally often.

    Args:
        fns: one zero-argument callable per model (e.g. ``lambda: backend.run(feeds)``).
        runs: rounds to time (each round runs every function once); at most this many.
        seconds: stop after the first round that ends this long after the timed phase started.
        warmup: untimed rounds before timing (also interleaved).
        clock: seconds as float; injectable for tests.
        on_round: called after each timed round with (rounds done, seconds elapsed).
    """
    if runs is None and seconds is None:
        raise ValueError("interleave needs runs or seconds")
    timing = Timing([[] for _ in fns])
    for _ in range(warmup):
        for i, fn in enumerate(fns):
            fn()
            timing.schedule.append(("warmup", i))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        done = 0
        while runs is None or done < runs:
            for offset in range(len(fns)):
                i = (done + offset) % len(fns)
                t0 = clock()
                fns[i]()
                t1 = clock()
                timing.samples_ms[i].append((t1 - t0) * 1000.0)
                timing.schedule.append(("timed", i))
            done += 1
            elapsed = clock() - start
            if on_round is not None:
                on_round(done, elapsed)
            if seconds is not None and elapsed >= seconds:
                break
        timing.elapsed_s = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return timing


def time_ms(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Wall time of one call in ms."""
    t0 = clock()
    fn()
    return (clock() - t0) * 1000.0


# --- peak memory -----------------------------------------------------------------------------


def peak_rss_kib() -> float | None:
    """This process's peak resident set size in KiB (VmHWM, else ru_maxrss), None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / 1024.0 if sys.platform == "darwin" else peak  # macOS reports bytes


@dataclass(frozen=True)
class ProbeResult:
    """What one fresh process measured for one model and batch."""

    baseline_rss_mib: float | None
    peak_rss_mib: float | None
    rss_increment_mib: float | None
    init_ms: float
    first_inference_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PROBE_CODE = "from edgecompress.bench.runner import probe_main; probe_main()"


def _package_root() -> str:
    import edgecompress

    return str(Path(edgecompress.__file__).resolve().parent.parent)


def probe(format_name: str, path: str | Path, feeds: Mapping[str, np.ndarray], *, threads: int,
          runs: int = 3, timeout_s: float = 900.0) -> ProbeResult:
    """Load and run one model in a fresh Python process and return its peak memory and cold timings.

    Args:
        format_name: key of :data:`edgecompress.bench.backends.BACKENDS` (``"onnx"``).
        path: the model file.
        feeds: the input tensors (written to a temporary .npz the child reads before the baseline).
        threads: intra-op threads, as in the timed runs.
        runs: inferences in the child (the first is timed as ``first_inference_ms``).
        timeout_s: kill the child after this long.
    """
    names = list(feeds)
    with tempfile.TemporaryDirectory(prefix="edgecompress-probe-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, *[np.asarray(feeds[n]) for n in names])
        args = {"format": format_name, "path": str(Path(path).resolve()), "threads": threads,
                "inputs": str(inputs), "names": names, "runs": max(1, runs)}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE_CODE, json.dumps(args)], capture_output=True,
                                  text=True, timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EdgeCompressError(f"memory probe for {Path(path).name} timed out after {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else "no message"
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (out of memory?); {why}"
        raise EdgeCompressError(f"memory probe for {Path(path).name} failed (exit {proc.returncode}): {why}")
    try:
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        return ProbeResult(**record)
    except (ValueError, IndexError, TypeError) as exc:
        raise EdgeCompressError(f"memory probe for {Path(path).name} printed no result: "
                                f"{proc.stdout[-200:]!r}") from exc


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024.0


def probe_main(argv: Sequence[str] | None = None) -> None:
    """Child side of :func:`probe`: import the runtime, read inputs, measure, print one JSON line."""
    from edgecompress.bench.backends import BACKENDS

    args = json.loads((sys.argv[1:] if argv is None else list(argv))[0])
    try:
        cls = BACKENDS[args["format"]]
        cls.import_runtime()
        with np.load(args["inputs"], allow_pickle=False) as archive:
            feeds = {name: archive[f"arr_{i}"] for i, name in enumerate(args["names"])}
        baseline = peak_rss_kib()
        backend = cls(args["path"], threads=int(args["threads"]))
        init_ms = time_ms(backend.load)
        first_ms = time_ms(lambda: backend.run(feeds))
        for _ in range(int(args["runs"]) - 1):
            backend.run(feeds)
        peak = peak_rss_kib()
    except (EdgeCompressError, KeyError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    increment = None if baseline is None or peak is None else max(0.0, peak - baseline)
    result = ProbeResult(_mib(baseline), _mib(peak), _mib(increment), init_ms, first_ms)
    print(json.dumps(result.to_dict()))


__all__ = ["Timing", "interleave", "time_ms", "peak_rss_kib", "ProbeResult", "probe", "probe_main"]
