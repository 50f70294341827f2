"""A sentence-embedding benchmark page's rows and Markdown, from a finished sweep's entry folders.

Quality is what each build measured on its ``eval`` sentences (build.json ``agreement``, inputs
"eval"): the cosine between the compressed and the dense model's sentence embeddings, mean and 5th
percentile (both torch models; the ONNX files are verified against them). Size is the encoder's Linear
parameters (build.json ``totals``); an entry with bench.json adds its ONNX latency next to its dense
export (interleaved in one run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecompress.sweep.task import traced_seq

from page import BUDGET_KEYS


def family(options: Mapping[str, Any]) -> str:
    """The curve an entry belongs to: budget mode or its policy, whitened or plain, refit or not."""
    budget = any(key in options for key in (*BUDGET_KEYS, "min_cosine"))
    policy = str(options.get("policy", "energy"))
    whitened = bool(options.get("whiten")) or policy == "data"  # data: whitened by construction
    name = ("budget" if budget else policy) + (" (whitened)" if whitened else " (SVD)")
    return name + (" + refit" if options.get("sequential_refit") else "")


def setting(options: Mapping[str, Any]) -> str:
    """The entry's own knob, as a reader names it."""
    for key, text in (("min_cosine", "dev cos ≥ {}"), ("target_params", "target-params {}"),
                      ("target_size", "target-size {}"), ("rank", "rank {}"), ("threshold", "τ={}"),
                      ("max_error", "max-error {}")):
        if key in options:
            return text.format(options[key])
    return "defaults"


def _eval_agreement(build: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((a for a in build.get("agreement", []) if a.get("inputs") == "eval"), {})


def _latency_ratio(folder: Path, build: Mapping[str, Any]) -> float | None:
    """p50 latency of the compressed file over its dense export's (None: not benchmarked)."""
    try:
        bench = json.loads((folder / "bench.json").read_text())
    except OSError:
        return None
    p50 = {Path(str(r["model"])).name: (r.get("latency_ms") or {}).get("p50") for r in bench["results"]}
    dense, compressed = (p50.get(build["artifacts"][role]["path"]) for role in ("dense", "compressed"))
    return round(compressed / dense, 4) if dense and compressed else None


def row(entry: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """One finished entry's page row."""
    build = json.loads((folder / "build.json").read_text())
    totals, artifacts = build["totals"], build["artifacts"]
    options = entry.get("options", {})
    agreement = _eval_agreement(build)
    search = build.get("search") or {}
    latency = _latency_ratio(folder, build)
    return {
        "entry": entry["entry"], "family": family(options), "setting": setting(options),
        "options": dict(options),
        "linear_params": totals["linear_params_after"], "dense_linear_params": totals["linear_params_before"],
        "param_ratio": round(totals["linear_params_before"] / totals["linear_params_after"], 3),
        **{key: None if agreement.get(key) is None else round(agreement[key], 6) for key in ("cosine_mean", "cosine_p5")},
        "eval_samples": agreement.get("samples"),
        "dev_cosine": (search.get("result") or {}).get("value") if "min_cosine" in options else None,
        "table_cache": (search.get("table_cache") or {}).get("status"),  # budget mode: "hit" or "stored"
        "build_seconds": entry.get("seconds"), "compress_seconds": build.get("timings_s", {}).get("compress"),
        "onnx_bytes": artifacts["compressed"]["bytes"], "dense_onnx_bytes": artifacts["dense"]["bytes"],
        "latency_p50_ratio": latency, "bench_seq": traced_seq(build) if latency is not None else None,
    }


def rows(result: Mapping[str, Any], out: Path) -> list[dict[str, Any]]:
    """The rows of every finished entry of a sweep (``result``: what ``sweep()`` returned), by family
    then size."""
    found = [row(e, out / e["folder"]) for e in result["entries"] if e.get("status") == "ok"]
    return sorted(found, key=lambda r: (r["family"], -r["linear_params"]))


def _number(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _link(path: str) -> str:
    """A repository file linked from benchmarks/results/ (an outside path as it is)."""
    return f"`{path}`" if Path(path).is_absolute() else f"[{path}](../../{path})"


def table(page_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Markdown table of the rows."""
    lines = ["| entry | policy | setting | Linear params | ratio | mean cos | p5 cos | dev cos | build s "
             "| ONNX bytes | latency vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in page_rows:
        latency = "–" if r["latency_p50_ratio"] is None else f"{r['latency_p50_ratio']:.2f}x (seq {r['bench_seq']})"
        lines.append(f"| {r['entry']} | {r['family']} | {r['setting']} | {r['linear_params']:,} | "
                     f"{r['param_ratio']:.2f}x | {_number(r['cosine_mean'])} | {_number(r['cosine_p5'])} | "
                     f"{_number(r['dev_cosine'])} | {_number(r['build_seconds'], 1)} | {r['onnx_bytes']:,} | {latency} |")
    return lines


def markdown(record: Mapping[str, Any], plot_name: str) -> str:
    """The page: what was measured, on what, how loaded the machine was, the table, the plot."""
    corpus = record["corpus"]
    splits = ", ".join(f"{name} {s['sentences']} sentences (sha256 {s['sha256'][:12]}…)"
                       for name, s in corpus["splits"].items())
    counts = record["sweep"]["counts"]
    lines = [
        f"# {record['title']}",
        "",
        f"Command: `{record['command']}` (config {_link(record['config'])}).",
        "",
        f"Machine: {record['cores']} cores; load (`uptime`) before: {record['uptime']['before']}; "
        f"after: {record['uptime']['after']}. Sweep: {counts.get('total')} entries, {counts.get('done', 0)} built "
        f"in this run, {counts.get('skipped', 0)} reused from an earlier run of the same config (their build "
        f"seconds are that run's), {counts.get('failed', 0)} failed; wall {record['sweep']['wall_s']:.0f} s.",
        "",
        f"Text: {corpus['source']}; {splits}; disjoint. Model: {record['model']}; dense encoder Linear params "
        f"{record['dense_linear_params']:,}.",
        "",
        "Quality: cosine between the compressed and the dense model's sentence embeddings on the test "
        "sentences (mean, 5th percentile); ratio = dense / compressed Linear parameters; dev cos = budget "
        "mode's measure on the dev sentences; build s = the whole entry (load, calibration, search, export "
        "of both files, verification, evaluation); latency = ONNX p50 compressed / dense, batch 1, 1 thread, "
        "interleaved, seeded token ids at the build's traced length.",
        "",
        *table(record["rows"]),
        "",
        f"![mean cosine vs Linear-parameter ratio]({plot_name})",
        "",
        *[f"- {note}" for note in record["notes"]],
        "",
    ]
    return "\n".join(lines)
