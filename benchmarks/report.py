"""Results of one setup as JSON and Markdown: the full table, a key table (each method at its
smallest size within 1 point of dense on the validation split), and one verdict per paper claim
from paired comparisons at equal size on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FAMILY_ORDER = ("dense", "uniform", "energy", "entropy", "data", "ddlr-convex", "budget", "magnitude", "truncate",
                "finetune", "svd-training", "int8", "lowrank-int8")
KEY_MAX_DROP = 1.0  # points on the validation split
Z95 = 1.96


@dataclass(frozen=True)
class Pair:
    """One paired comparison on the test split: ``method`` minus ``baseline``, in accuracy points."""

    method: str
    baseline: str
    method_params: int
    baseline_params: int
    difference: float  # points
    half_width: float  # 95% interval of the paired difference, points

    @property
    def significant(self) -> int:
        """+1 a significant win, -1 a significant loss, 0 within noise."""
        if abs(self.difference) <= self.half_width:
            return 0
        return 1 if self.difference > 0 else -1

    def text(self) -> str:
        return (f"{self.method} ({self.method_params:,} params) vs {self.baseline} ({self.baseline_params:,}): "
                f"{self.difference:+.2f} ± {self.half_width:.2f}")


def paired(method: dict[str, Any], baseline: dict[str, Any], predictions: dict[str, np.ndarray],
           labels: np.ndarray) -> Pair:
    """Accuracy difference of two rows on the same test samples, with a 95% normal interval
    from the discordant pairs (McNemar's variance)."""
    a = predictions[method["label"]] == labels
    b = predictions[baseline["label"]] == labels
    n = len(labels)
    wins, losses = float(np.sum(a & ~b)), float(np.sum(~a & b))
    variance = max(wins + losses - (wins - losses) ** 2 / n, 0.0) / n ** 2
    return Pair(method["label"], baseline["label"], method["linear_params"], baseline["linear_params"],
                100.0 * (wins - losses) / n, 100.0 * Z95 * math.sqrt(variance))


def matched_to(rows: Sequence[dict[str, Any]], method: str, target: str) -> dict[str, Any] | None:
    """The ``method`` row matched to the anchor or sweep target named ``target``."""
    return next((r for r in rows if r["method"] == method and target in r["meta"].get("targets", [])), None)


def verdict(pairs: Sequence[Pair]) -> str:
    """holds / does not hold / no measurable difference / mixed, from the significant pairs."""
    if not pairs:
        return "not measured"
    wins = sum(p.significant > 0 for p in pairs)
    losses = sum(p.significant < 0 for p in pairs)
    mean = sum(p.difference for p in pairs) / len(pairs)
    if wins > losses and mean > 0:
        return "holds"
    if losses > wins and mean < 0:
        return "does not hold"
    return "no measurable difference" if wins == losses == 0 else "mixed"


def claim(name: str, statement: str, pairs: list[Pair], note: str = "") -> dict[str, Any]:
    """One claim's verdict, its sentence (with the largest gap) and the pairs behind it."""
    result = verdict(pairs)
    if pairs:
        wins = sum(p.significant > 0 for p in pairs)
        losses = sum(p.significant < 0 for p in pairs)
        mean = sum(p.difference for p in pairs) / len(pairs)
        largest = max(pairs, key=lambda p: abs(p.difference))
        sentence = (f"{statement}: **{result}** here — mean {mean:+.2f} test-accuracy points over {len(pairs)} "
                    f"equal-size pair(s), {wins} significant win(s) and {losses} loss(es) at 95%; largest gap: "
                    f"{largest.text()} points." + (f" {note}." if note else ""))
    else:
        sentence = f"{statement}: not measured (a method it needs did not run)."
    return {"claim": name, "verdict": result, "sentence": sentence, "pairs": [asdict(p) for p in pairs]}


def claims(rows: Sequence[dict[str, Any]], predictions: dict[str, np.ndarray], labels: np.ndarray) -> list[dict[str, Any]]:
    """The three papers' claims, each judged on equal-size pairs."""
    def pairs(methods: Iterable[str], baseline_of: Callable[[dict[str, Any]], Iterable[dict[str, Any] | None]]
              ) -> list[Pair]:
        found: dict[tuple[str, str], Pair] = {}  # a row matched to two equal targets is compared once
        for r in rows:
            if r["method"] in methods:
                for b in baseline_of(r):
                    if b is not None:
                        found.setdefault((r["label"], b["label"]), paired(r, b, predictions, labels))
        return list(found.values())

    def baseline(method: str) -> Callable[[dict[str, Any]], list[dict[str, Any] | None]]:
        """The ``method`` row matched to this anchor row, or to each target this matched row had."""
        return lambda r: [matched_to(rows, method, t) for t in r["meta"].get("targets", [r["label"]])]

    methods = {r["method"] for r in rows}
    file_note = ""
    if "magnitude" in methods:
        file_note = ("Pruned weights stay in a dense ONNX file (zeros take as many bytes): the magnitude rows keep "
                     "the dense file size; stored sparse (CSR) they would take the size in brackets in the tables")

    def made_from(method: str) -> Callable[[dict[str, Any]], list[dict[str, Any] | None]]:
        """The ``method`` row made at this row's ranks."""
        return lambda r: [next((t for t in rows if t["method"] == method and t["meta"].get("source") == r["label"]),
                               None)]

    return [
        claim("arsvd", "ARSVD — adaptive rank (energy τ, entropy) beats a fixed (uniform) rank at equal size",
              pairs(("energy", "entropy"), baseline("uniform"))),
        claim("ddlr", "DDLR — data-driven low rank beats sparsity-based pruning (global magnitude, Net-Trim-style) "
              "at the same number of non-zeros", pairs(("data", "ddlr-convex"), baseline("magnitude")), file_note),
        claim("svd-training", "SVD training beats post-hoc truncation at the same size (same per-layer ranks; "
              "uniform rank)", pairs(("svd-training",), lambda r: [*made_from("truncate")(r),
                                                                   matched_to(rows, "uniform", r["label"])])),
        claim("data-vs-uniform", "(not a paper claim) data-aware low rank (data ε, budget mode, DDLR convex) beats a "
              "uniform rank at equal size", pairs(("data", "budget", "ddlr-convex"), baseline("uniform"))),
        claim("svd-vs-finetune", "(not a paper claim) SVD training beats truncation + fine-tuning with distillation "
              "for the same number of epochs, same ranks", pairs(("svd-training",), made_from("finetune"))),
    ]


def key_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, its smallest row within KEY_MAX_DROP points of dense on validation (else its most
    accurate on validation): selection on val, figures on test."""
    dense_val = next(r["val_accuracy"] for r in rows if r["method"] == "dense")
    chosen = []
    for family in FAMILY_ORDER:
        members = [r for r in rows if r["method"] == family]
        good = [r for r in members if r["val_accuracy"] >= dense_val - KEY_MAX_DROP / 100]
        if good:
            chosen.append(min(good, key=lambda r: (r["linear_params"], r["onnx_bytes"])))
        elif members:
            chosen.append(max(members, key=lambda r: r["val_accuracy"]))
    return chosen


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 1024:.0f} KiB"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


HEADER = ("| method | Linear params (% of dense) | ONNX file | test acc | macro-F1 | p50 latency ×dense "
          "| peak RSS MiB (Δ) | build s |\n|---|---:|---:|---:|---:|---:|---:|---:|")


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of rows (pruned rows also show their CSR size)."""
    lines = [HEADER]
    for r in rows:
        size = _mib(r["onnx_bytes"]) + (f" (CSR {_mib(r['csr_bytes'])})" if r.get("csr_bytes") else "")
        memory = f"{_num(r['peak_rss_mib'], '.1f')} ({_num(r['rss_increment_mib'], '+.1f')})"
        lines.append(f"| {r['label']} | {r['linear_params']:,} ({100 * r['linear_param_fraction']:.1f}%) | {size} "
                     f"| {_num(r['accuracy'] and 100 * r['accuracy'], '.2f')}% | {_num(r['macro_f1'], '.4f')} "
                     f"| {_num(r['latency_p50_ratio'], '.2f')} | {memory} | {r['build_seconds']:.1f} |")
    return "\n".join(lines)


def ordered(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by method family, then largest first."""
    rank = {family: i for i, family in enumerate(FAMILY_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["method"], len(rank)), -r["linear_params"], r["label"]))


def _sweep_text(sweep: dict[str, Any]) -> str:
    counts, ray = sweep["counts"], sweep.get("ray") or {}
    where = f" on Ray ({ray.get('cpus'):g} CPUs)" if ray.get("cpus") else ""
    return (f"{counts['total']} entries, {counts['done']} built, {counts['skipped']} reused from an earlier run, "
            f"{counts['failed']} failed, {sweep['wall_s']:.0f} s{where}")


def markdown(record: dict[str, Any], plot_file: str | None) -> str:
    """The results page of one setup."""
    setup, prov, bench = record["setup"], record["provenance"], record["bench"]
    rows = ordered(record["rows"])
    dense = next(r for r in rows if r["method"] == "dense")
    parts = [
        f"# {setup['model_name']} — compression methods at equal size{' (SMOKE RUN)' if record['smoke'] else ''}",
        f"Data `{setup['data']}`: trained on `train`, selections on `val` ({record['val_samples']:,} samples), "
        f"figures on `test` ({record['test_samples']:,} samples). Dense: {100 * dense['accuracy']:.2f}% test "
        f"accuracy, {dense['linear_params']:,} Linear parameters, {_mib(dense['onnx_bytes'])}, "
        f"{dense['latency_p50_ms']:.3f} ms p50 at batch 1.",
        f"Machine: {prov['cpu']}, {record['cores']} core(s) available, {prov['os']}; onnxruntime "
        f"{prov['versions'].get('onnxruntime')}, torch {prov['versions'].get('torch')}; commit "
        f"`{(prov.get('git_commit') or 'unknown')[:12]}`, {prov['timestamp']}. Command: `{record['command']}`. "
        f"Machine load (`uptime`) before: `{record['uptime']['before']}`; after: `{record['uptime']['after']}`.",
        f"What is measured: `{record['config']}` (sweep: {_sweep_text(record['sweep'])}), then the baseline step "
        f"({', '.join(record['settings']['baselines']) or 'none'}: the methods that are not builds).",
        f"Latency: batch 1, 1 intra-op thread; {bench['latency']} ({bench['runs']} timed rounds after "
        f"{bench['warmup']} warm-up), p50 divided by dense's p50 from the same run; dense against a second session "
        f"of itself gives {_num(bench['aa_ratio'], '.3f')} (the noise floor). Peak RSS: each model loaded and run in "
        "a fresh process that imported only onnxruntime (Δ = over that process before loading). Build s: the "
        "method (SVDs, calibration, training) + ONNX export, onnxsim, refold guard, verification; the machine is "
        "shared, so seconds and latencies carry noise.",
    ]
    if plot_file:
        parts.append(f"![accuracy vs size]({plot_file})")
    parts += ["## Key table", "Each method at its smallest size within 1 point of dense on the validation split "
              "(else its most accurate); all figures on the test split.", table(key_rows(rows)),
              "## Paper claims", "Method minus baseline in test-accuracy points, ± the 95% interval of the paired "
              "difference (McNemar variance on the same test samples).",
              *[f"- {c['sentence']}" + "".join(f"\n  - {Pair(**p).text()}" for p in c["pairs"])
                for c in record["claims"]],
              "## All rows", table(rows), "## Notes", *[f"- {n}" for n in record["notes"]]]
    return "\n\n".join(parts) + "\n"
