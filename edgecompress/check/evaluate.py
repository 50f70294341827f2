"""Budgets x artifact facts -> one finding per (artifact, limit): value, limit, pass/fail/warn/skip.

Rules:
- a glob or PATH that matches nothing fails (CI must not pass because the build produced nothing);
- a hard limit whose fact is unknown fails (a budget nobody can verify is not met);
- latency limits warn unless ``fail_on_latency`` (CI machines are noisy); an unknown latency warns;
- growth limits need a baseline counterpart; without one they are skipped, and say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edgecompress.check.config import Budget, CheckConfig
from edgecompress.check.facts import ArtifactFacts, Block, FactSet, block_key, block_order, display
from edgecompress.check.units import format_count, format_size

Status = Literal["pass", "fail", "warn", "skip"]
SYMBOLS: dict[str, str] = {"pass": "✓", "fail": "✗", "warn": "⚠", "skip": "–"}
_EPS = 1e-9


@dataclass(frozen=True)
class Finding:
    """One row of the report."""

    artifact: str                 # display path (the glob itself for "matched nothing")
    pattern: str                  # the budget's glob ("" for a PATH argument)
    key: str                      # config key: max_size, max_ops.MatMul, match ...
    label: str                    # human name: size, ops MatMul, latency p50 (batch 1) ...
    status: Status
    value: float | None = None    # in the key's unit: bytes, count, fraction, points, ms
    limit: float | None = None
    baseline: float | None = None
    value_text: str = "n/a"
    limit_text: str = ""
    note: str = ""
    line: int | None = None       # line of the limit (else its budget table) in the config file

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "pattern": self.pattern, "budget": self.key, "label": self.label,
                "status": self.status, "value": _json_number(self.value), "limit": _json_number(self.limit),
                "baseline": _json_number(self.baseline), "value_text": self.value_text,
                "limit_text": self.limit_text, "note": self.note, "line": self.line}


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


@dataclass
class CheckReport:
    """The outcome of one ``check`` run."""

    config: CheckConfig
    facts: FactSet
    baseline: FactSet | None
    baseline_paths: list[str]
    fail_on_latency: bool
    findings: list[Finding] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def passed(self) -> bool:
        """True when no finding failed (warnings and skips do not fail a run)."""
        return self.count("fail") == 0

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def unchecked(self) -> list[str]:
        """Artifacts no budget matched (often a glob that is too narrow)."""
        covered = {f.artifact for f in self.findings}
        return [display(p) for p in sorted(self.facts.artifacts) if display(p) not in covered]

    def headline(self) -> str:
        """``✓ 12 budgets met (1 warning)`` / ``✗ 2 of 14 budgets exceeded``."""
        checked = [f for f in self.findings if f.status != "skip"]
        warn = self.count("warn")
        extra = []
        if warn:
            extra.append(f"{warn} warning{'s' if warn != 1 else ''}")
        if self.count("skip"):
            extra.append(f"{self.count('skip')} skipped")
        tail = f" ({', '.join(extra)})" if extra else ""
        if self.passed:
            return f"✓ all {len(checked)} budget checks passed{tail}"
        return f"✗ {self.count('fail')} of {len(checked)} budget checks failed{tail}"


def evaluate(config: CheckConfig, facts: FactSet, baseline: FactSet | None = None, *,
             fail_on_latency: bool = False, baseline_paths: list[str] | None = None) -> CheckReport:
    """Check every budget of ``config`` against the artifacts in ``facts``.

    Args:
        config: parsed budgets.
        facts: the artifacts under test.
        baseline: the main branch's artifacts, for growth and accuracy-drop limits.
        fail_on_latency: latency limits fail instead of warning (overrides the config).
        baseline_paths: shown in reports.
    """
    report = CheckReport(config=config, facts=facts, baseline=baseline, baseline_paths=baseline_paths or [],
                         fail_on_latency=fail_on_latency or config.fail_on_latency)
    for raw in facts.missing:
        report.findings.append(Finding(artifact=raw, pattern="", key="path", label="path", status="fail",
                                       value=0, limit=1, value_text="0 files", limit_text="≥ 1",
                                       note="matched no file"))
    for budget in config.budgets:
        matched = [a for p, a in sorted(facts.artifacts.items()) if budget.matches(p)]
        if not matched:
            report.findings.append(Finding(
                artifact=budget.pattern, pattern=budget.pattern, key="match", label="matches",
                status="fail", value=0, limit=1, value_text="0 artifacts", limit_text="≥ 1",
                note=f"no artifact matched (globs are relative to {display(budget.base_dir) or '.'})",
                line=budget.line))
        # --fail-on-latency forces failing; else the budget's own setting, else the top-level one
        own = budget.fail_on_latency
        latency_fails = fail_on_latency or (own if own is not None else config.fail_on_latency)
        for artifact in matched:
            base = baseline.counterpart(artifact) if baseline is not None else None
            reference = facts.get(artifact.reference)
            report.findings.extend(_BudgetRows(budget, artifact, base, reference, baseline is not None,
                                               latency_fails).rows())
    return report


class _BudgetRows:
    """The findings of one budget for one artifact."""

    def __init__(self, budget: Budget, artifact: ArtifactFacts, base: ArtifactFacts | None,
                 reference: ArtifactFacts | None, has_baseline: bool, latency_fails: bool) -> None:
        self.b = budget
        self.a = artifact
        self.base = base
        self.reference = reference
        self.has_baseline = has_baseline
        self.latency_fails = latency_fails

    def finding(self, key: str, label: str, status: Status, **kw: Any) -> Finding:
        return Finding(artifact=display(self.a.path), pattern=self.b.pattern, key=key, label=label,
                       status=status, line=self.b.line_of(key), **kw)

    @property
    def at_batch(self) -> str:
        """Label suffix naming the bench batch size when not the default 1, and the sequence length if any."""
        block = self.block
        seq = None if block is None else block[1]
        parts = ([] if self.b.batch == 1 else [f"batch {self.b.batch}"]) + ([] if seq is None else [f"seq {seq}"])
        return f" ({', '.join(parts)})" if parts else ""

    @property
    def block(self) -> Block | None:
        """The bench block the latency/memory limits read: the budget's batch and seq; without seq, the one
        length bench measured at that batch (None when it measured several: the budget must say which)."""
        if self.b.seq is not None:
            return self.b.batch, self.b.seq
        seqs = sorted({s for b, s in (*self.a.latency_ms, *self.a.peak_rss_mib) if b == self.b.batch},
                      key=lambda s: -1 if s is None else s)
        return (self.b.batch, seqs[0] if seqs else None) if len(seqs) <= 1 else None

    def size(self, n: float, key: str = "max_size") -> str:
        """A size in the unit family (kB or KiB) the budget's ``key`` was written in."""
        return format_size(n, binary=key in self.b.binary_keys)

    def rows(self) -> list[Finding]:
        b, out = self.b, []
        if b.max_size is not None:
            out.append(self.upper("max_size", "size", self.a.bytes, b.max_size, self.size_pair))
        if b.max_params is not None:
            out.append(self.upper("max_params", "params", self.a.params, b.max_params,
                                  lambda v, l: (format_count(v), format_count(l))))
        if b.max_growth is not None:
            family = "noise_floor" if "noise_floor" in b.binary_keys or b.max_size is None else "max_size"
            out.append(self.growth("max_growth", "size growth", "bytes", b.max_growth, b.noise_floor,
                                   lambda n: self.size(n, family)))
        if b.max_params_growth is not None:
            out.append(self.growth("max_params_growth", "params growth", "params", b.max_params_growth,
                                   b.params_noise_floor, format_count))
        if b.min_accuracy is not None:
            out.append(self.min_accuracy(b.min_accuracy))
        if b.max_accuracy_drop is not None:
            out.append(self.accuracy_drop(b.max_accuracy_drop))
        if b.min_cosine is not None:
            out.append(self.min_cosine("min_cosine", "mean cosine", self.a.cosine_mean, b.min_cosine))
        if b.min_cosine_p5 is not None:
            out.append(self.min_cosine("min_cosine_p5", "cosine p5", self.a.cosine_p5, b.min_cosine_p5))
        for op, limit in b.max_ops:
            count = None if self.a.ops is None else self.a.ops.get(op, 0)
            out.append(self.upper(f"max_ops.{op}", f"ops {op}", count, limit,
                                  lambda v, l: (format_count(v), format_count(l))))
        for stat, limit in b.max_latency_ms:
            out.append(self.latency(stat, limit))
        if b.max_latency_growth is not None:
            out.append(self.latency_growth(b.max_latency_growth))
        if b.max_peak_rss is not None:
            rss = self.a.peak_rss_mib.get(self.block) if self.block else None
            value = None if rss is None else rss * 2**20
            row = self.upper("max_peak_rss", f"peak RSS{self.at_batch}", value, b.max_peak_rss,
                             lambda v, l: self.size_pair(v, l, "max_peak_rss"))
            if value is None:
                row = replace(row, note=self.bench_note())
            out.append(row)
        return out

    # ---------------------------------------------------------------------------------- kinds

    def size_pair(self, value: float, limit: float, key: str = "max_size") -> tuple[str, str]:
        """Human sizes; exact byte counts when rounding would make them look equal."""
        v, l = self.size(value, key), self.size(limit, key)
        if v == l and value != limit:
            v, l = f"{value:,.0f} B", f"{limit:,.0f} B"
        return v, l

    def upper(self, key: str, label: str, value: float | None, limit: float,
              fmt: Any) -> Finding:
        """value ≤ limit; an unknown value fails."""
        if value is None:
            return self.finding(key, label, "fail", limit=limit, limit_text=f"≤ {fmt(limit, limit)[1]}",
                                note=self.unknown_note(label))
        v, l = fmt(value, limit)
        status: Status = "pass" if value <= limit else "fail"
        return self.finding(key, label, status, value=value, limit=limit, value_text=v, limit_text=f"≤ {l}")

    def unknown_note(self, label: str) -> str:
        if self.a.format == "tflite" and self.a.sources == [display(self.a.path)]:
            return f"{label} unknown: only the size of a bare .tflite is read; pass its build.json"
        if label.startswith("accuracy"):
            return "accuracy unknown: pass a build.json with eval results or a bench.json with labels"
        return f"{label} unknown: pass the build.json that lists this artifact"

    def growth(self, key: str, label: str, attr: str, limit: float, floor: int, fmt: Any) -> Finding:
        """(value - baseline) / baseline ≤ limit, unless |value - baseline| < floor."""
        current = getattr(self.a, attr)
        limit_text = f"≤ +{_percent(limit)}"
        if current is None:
            return self.finding(key, label, "fail", limit=limit, limit_text=limit_text, note=self.unknown_note(attr))
        skip = self.baseline_missing(getattr(self.base, attr, None) if self.base else None, attr)
        if skip:
            return self.finding(key, label, "skip", limit=limit, limit_text=limit_text, note=skip)
        assert self.base is not None
        before = getattr(self.base, attr)
        delta = current - before
        ratio = delta / before if before else (0.0 if delta == 0 else math.inf)
        sign = "+" if delta >= 0 else "-"
        value_text = f"{_signed_percent(ratio)} ({sign}{fmt(abs(delta))})"
        note = f"baseline {fmt(before)}"
        if ratio <= limit + _EPS:
            status: Status = "pass"
        elif abs(delta) < floor:
            status, note = "pass", f"{note}; change below noise floor {fmt(floor)}"
        else:
            status = "fail"
        return self.finding(key, label, status, value=ratio, limit=limit, baseline=before,
                            value_text=value_text, limit_text=limit_text, note=note)

    def baseline_missing(self, before: float | None, attr: str) -> str:
        """Why a baseline comparison is impossible ('' when it is possible)."""
        if not self.has_baseline:
            return "no --baseline given"
        if self.base is None:
            return f"no {self.a.name} in the baseline (new artifact?)"
        if before is None:
            return f"the baseline has no {attr} for {self.a.name}"
        return ""

    def min_accuracy(self, limit: float) -> Finding:
        value = self.a.accuracy
        limit_text = f"≥ {_percent(limit, 2)}"
        if value is None:
            return self.finding("min_accuracy", "accuracy", "fail", limit=limit, limit_text=limit_text,
                                note=self.unknown_note("accuracy"))
        status: Status = "pass" if value >= limit - _EPS else "fail"
        return self.finding("min_accuracy", "accuracy", status, value=value, limit=limit,
                            value_text=_percent(value, 2), limit_text=limit_text)

    def min_cosine(self, key: str, label: str, value: float | None, limit: float) -> Finding:
        """value ≥ limit; unknown fails, except for the dense reference itself (nothing to compare with)."""
        limit_text = f"≥ {limit:.4f}"
        if value is None:
            if self.a.role == "dense":
                return self.finding(key, label, "skip", limit=limit, limit_text=limit_text,
                                    note="this is the dense reference")
            return self.finding(key, label, "fail", limit=limit, limit_text=limit_text,
                                note="cosine unknown: pass a bench.json of this file with its dense reference first "
                                     "(an embedding output), or the build.json of an embedding build")
        status: Status = "pass" if value >= limit - _EPS else "fail"
        return self.finding(key, label, status, value=value, limit=limit, value_text=f"{value:.4f}",
                            limit_text=limit_text, note=self.a.cosine_from or "")

    def accuracy_drop(self, limit: float) -> Finding:
        """Points lost vs the baseline's counterpart, else vs the dense reference."""
        key, label, limit_text = "max_accuracy_drop", "accuracy drop", f"≤ {limit:.2f} pt"
        if self.a.accuracy is None:
            return self.finding(key, label, "fail", limit=limit, limit_text=limit_text,
                                note=self.unknown_note("accuracy"))
        if self.base is not None and self.base.accuracy is not None:
            before, note = self.base.accuracy, f"vs baseline {_percent(self.base.accuracy, 2)}"
        elif self.reference is not None and self.reference.accuracy is not None:
            before = self.reference.accuracy
            note = f"vs dense reference {self.reference.name} {_percent(before, 2)}"
        else:
            why = "this is the dense reference" if self.a.role == "dense" else "no baseline or dense reference accuracy"
            return self.finding(key, label, "skip", limit=limit, limit_text=limit_text, note=why)
        drop = (before - self.a.accuracy) * 100
        status: Status = "pass" if drop <= limit + _EPS else "fail"
        return self.finding(key, label, status, value=drop, limit=limit, baseline=before,
                            value_text=f"{drop:.2f} pt", limit_text=limit_text, note=note)

    def bench_note(self) -> str:
        blocks = sorted(set(self.a.latency_ms) | set(self.a.peak_rss_mib), key=block_order)
        if blocks and self.block is None:
            have = ", ".join(str(s) for b, s in blocks if b == self.b.batch)
            return f"bench measured several sequence lengths at batch {self.b.batch} ({have}); set seq = in the budget"
        if blocks:
            have = ", ".join(block_key(b).replace(",", " ") for b in blocks)
            wanted = block_key((self.b.batch, self.b.seq)).replace(",", " ")
            return f"no bench result at batch {wanted} (measured: {have}); set batch = (and seq =) in the budget"
        return "not benchmarked: pass a bench.json that measured this artifact"

    def latency(self, stat: str, limit: float) -> Finding:
        key, label = f"max_latency_{stat}_ms", f"latency {stat}{self.at_batch}"
        value = self.a.latency_ms.get(self.block, {}).get(stat) if self.block else None
        soft: Status = "fail" if self.latency_fails else "warn"
        if value is None:
            return self.finding(key, label, soft, limit=limit, limit_text=f"≤ {limit:g} ms", note=self.bench_note())
        if value <= limit:
            return self.finding(key, label, "pass", value=value, limit=limit, value_text=f"{value:.3g} ms",
                                limit_text=f"≤ {limit:g} ms")
        note = "" if self.latency_fails else "warning only: add --fail-on-latency to fail"
        return self.finding(key, label, soft, value=value, limit=limit, value_text=f"{value:.3g} ms",
                            limit_text=f"≤ {limit:g} ms", note=note)

    def latency_growth(self, limit: float) -> Finding:
        key, label, limit_text = "max_latency_growth", f"latency p50 growth{self.at_batch}", f"≤ +{_percent(limit)}"
        soft: Status = "fail" if self.latency_fails else "warn"
        value = self.a.latency_ms.get(self.block, {}).get("p50") if self.block else None
        if value is None:
            return self.finding(key, label, soft, limit=limit, limit_text=limit_text, note=self.bench_note())
        before = self.base.latency_ms.get(self.block, {}).get("p50") if self.base and self.block else None
        skip = self.baseline_missing(before, f"p50 latency at batch {block_key(self.block or (self.b.batch, None))}")
        if skip:
            return self.finding(key, label, "skip", limit=limit, limit_text=limit_text, note=skip)
        assert before is not None
        ratio = (value - before) / before if before else (0.0 if value == before else math.inf)
        status: Status = "pass" if ratio <= limit + _EPS else soft
        note = f"baseline {before:.3g} ms"
        if status == "warn":
            note += "; warning only: add --fail-on-latency to fail"
        return self.finding(key, label, status, value=ratio, limit=limit, baseline=before,
                            value_text=f"{_signed_percent(ratio)} ({value:.3g} ms)", limit_text=limit_text, note=note)


def _percent(fraction: float, digits: int = 1) -> str:
    text = f"{fraction * 100:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{fraction * 100:.0f}"
    return f"{text}%"


def _signed_percent(fraction: float) -> str:
    if math.isinf(fraction):
        return "+∞%"
    return f"{fraction * 100:+.2f}%"
