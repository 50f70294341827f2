"""The before/after table of a build, rendered from its build.json record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from edgecompress.cli.console import console, human_bytes, stdout
from edgecompress.quality import agreement_text, preferred_agreement


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def layer_table(record: dict[str, Any]) -> Table:
    """One row per Linear layer: shape, rank, energy kept, parameters before/after; totals."""
    table = Table(title=f"{record['name']}: policy {record['policy']['name']}", title_justify="left")
    for column in ("layer", "shape (out×in)", "rank", "energy kept", "params before", "params after"):
        table.add_column(column, justify="left" if column in ("layer", "shape (out×in)") else "right")
    for layer in record["layers"]:
        rank = str(layer["rank"]) if layer["factorized"] else "dense"
        table.add_row(layer["name"] or "(root)", f"{layer['out_features']}×{layer['in_features']}", rank,
                      f"{layer['energy_kept']:.3f}", f"{layer['params_before']:,}", f"{layer['params_after']:,}")
    totals = record["totals"]
    ratio = totals["linear_param_ratio"]
    table.add_section()
    table.add_row("total", f"{totals['layers_factorized']}/{totals['layers_total']} factorized", "", "",
                  f"{totals['linear_params_before']:,}", f"{totals['linear_params_after']:,}")
    if ratio:
        table.caption = f"{ratio:.2f}x fewer Linear parameters"
    return table


def artifact_table(record: dict[str, Any]) -> Table:
    """One row per artifact: file, size, parameters, ops, accuracy, macro-F1."""
    table = Table(title="artifacts", title_justify="left")
    for column in ("role", "file", "size", "params", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column in ("role", "file") else "right")
    for role, artifact in record["artifacts"].items():
        evaluation = artifact.get("eval") or {}
        table.add_row(role, artifact["path"], human_bytes(artifact.get("bytes")),
                      f"{artifact['params']:,}" if artifact.get("params") is not None else "n/a",
                      _pct(evaluation.get("accuracy")), _pct(evaluation.get("macro_f1")))
    return table


def verification_lines(record: dict[str, Any]) -> list[str]:
    """The ✓/✗ lines of every verification in the record."""
    lines = []
    for artifact in record["artifacts"].values():
        for check in artifact.get("verification", []):
            where = f" [{check['output']}]" if check.get("output") else ""
            lines.append(f"{'✓' if check['passed'] else '✗'} {check['artifact']}{where}: max abs err "
                         f"{check['max_abs_error']:.2e}, {agreement_text(check)} "
                         f"({check['samples']} {check['inputs']} inputs)")
    return lines


def agreement_lines(record: dict[str, Any]) -> list[str]:
    """Compressed vs dense torch outputs: what compression did (verification only proves the export); then
    one line per written file of the compressed model (its own outputs vs the dense torch model's, on the
    eval inputs when given, else its first verification inputs)."""
    from edgecompress.quality import describe

    lines = [f"compressed vs dense [{line['output']}] on {line['samples']} {line['inputs']} inputs: {describe(line)}"
             for line in record.get("agreement", [])]
    for artifact in record["artifacts"].values():
        row = preferred_agreement(artifact.get("agreement") or [])
        if row is not None:
            lines.append(f"{artifact['path']} vs dense [{row['output']}] on {row['samples']} {row['inputs']} inputs: "
                         f"{describe(row)}")
    return lines


def dense_weight_notes(record: dict[str, Any]) -> list[str]:
    """Weights outside any Linear that stayed dense (attention in-projections, recurrent weights)."""
    return [f"left dense: {note['name']} — {note['reason']}" for note in record.get("dense_weights", [])]


def artifact_notes(record: dict[str, Any]) -> list[str]:
    """How int8 / int4 artifacts were quantized, and the batch fixed in .tflite files."""
    notes = []
    for artifact in record["artifacts"].values():
        if artifact.get("simplify_note"):
            notes.append(f"{artifact['path']}: {artifact['simplify_note']}")
        scheme = artifact.get("quantization")
        if scheme:
            notes.append(f"{artifact['path']}: {scheme['mode']} int{scheme.get('bits', 8)} — weights {scheme['weights']}, "
                         f"activations {scheme['activations']}")
    batches = sorted({a["batch"] for a in record["artifacts"].values() if a.get("format") == "tflite" and a.get("batch")})
    if batches:
        notes.append(f"the .tflite files have a fixed batch of {', '.join(map(str, batches))} (set at conversion "
                     "with --batch; feed exactly that many rows, or resize the input tensor at run time)")
    return notes


def training_lines(record: dict[str, Any]) -> list[str]:
    """One line per training phase (epochs, validation accuracy before → kept epoch, time) and, for
    SVD training, the total rank at each step."""
    training = record.get("training")
    if not training:
        return []
    lines = [f"training ({training['method']}) on {training['data']['train']} "
             f"({training['data']['train_samples']:,} samples), validation {training['data']['val']}:"]
    for phase in training["phases"]:
        epochs = phase["epochs"]
        lines.append(f"  {phase['phase']}: {len(epochs) - 1} epoch(s), val accuracy {_pct(epochs[0]['val_accuracy'])} "
                     f"→ {_pct(phase['best_val_accuracy'])} (epoch {phase['best_epoch']} kept), "
                     f"{phase['seconds']:.{1 if phase['seconds'] >= 1 else 2}f} s")
    ranks = training.get("ranks", {})
    steps = [(label, ranks[key]) for key, label in (("decomposed", "decomposed"), ("before_pruning", "before pruning"),
                                                   ("after_pruning", "after pruning")) if key in ranks]
    if steps:
        lines.append("  total rank: " + " → ".join(f"{sum(r or 0 for r in step.values()):,} {label}"
                                                  for label, step in steps))
    return lines


def budget_lines(record: dict[str, Any]) -> list[str]:
    """Budget mode: the target, what the chosen candidate measured, and whether it met the target."""
    search = record.get("search")
    if not search or "result" not in search:
        return []
    budget, result = search["budget"], search["result"]
    value, bound = result.get("value"), result.get("bound")
    if budget["kind"] == "accuracy":
        target = f"accuracy drop ≤ {budget['max_accuracy_drop']:g} pt on the validation data"
        measured = f"measured drop {value:+.2f} pt"
        if bound is not None:
            confidence = (search.get("baseline") or {}).get("confidence")
            level = f" at {confidence:.0%} confidence" if confidence else ""
            measured += f", upper bound {bound:+.2f} pt{level} (the figure checked)"
    elif budget["kind"] == "cosine":
        target = (f"mean cosine ≥ {budget['min_cosine']:g} of {budget.get('output', 'the output')} "
                  f"with the dense model on {budget.get('split', 'the validation data')}")
        measured = f"measured {value:.4f} (p5 {result.get('cosine_p5', float('nan')):.4f})"
    elif budget["kind"] == "params":
        target = (f"keep ≤ {budget['target_params']:.2%} of the compressible Linear parameters "
                  "(the dense head and --exclude'd layers not counted)")
        measured = f"kept {value:.2%} ({result['linear_params']:,} params)"
    else:
        target = f"{budget.get('measures', 'ONNX')} file ≤ {human_bytes(budget['target_size'])}"
        measured = f"measured {human_bytes(value)}"
    verdict = "[green]met[/]" if result.get("meets") else "[red]not met[/]"
    return [f"budget: {target}: {measured} — {verdict} "
            f"(candidate {result['candidate'] + 1} of {search.get('candidates', '?')}, "
            f"{len(search.get('path', []))} evaluated)"]


def distill_lines(record: dict[str, Any]) -> list[str]:
    """--distill: steps, time, held-out cosine before -> after."""
    run = record.get("distillation")
    if not run:
        return []
    stopped = " (stopped by Ctrl-C, best state kept)" if run["interrupted"] else ""
    return [f"distillation on {run['data']} ({run['train_samples']:,} samples, {run['held_out_samples']:,} held out): "
            f"{run['steps']} steps in {run['minutes']:.1f} min{stopped}; held-out cosine of {run['output']} "
            f"{run['held_out_cosine_before']:.4f} → {run['held_out_cosine_after']:.4f} "
            f"(p5 {run['held_out_cosine_p5_before']:.4f} → {run['held_out_cosine_p5_after']:.4f})"]


def print_build(record: dict[str, Any]) -> None:
    """Print the layer table, verification lines and artifact table to stdout."""
    stdout.print(layer_table(record))
    for line in budget_lines(record):
        stdout.print(line, highlight=False)
    for line in training_lines(record) + distill_lines(record):
        stdout.print(line, highlight=False)
    for line in verification_lines(record):
        stdout.print(line, markup=False)  # "[output_name]" is not rich markup
    for line in agreement_lines(record) + dense_weight_notes(record):
        stdout.print(line, highlight=False, markup=False)
    stdout.print(artifact_table(record))
    for note in artifact_notes(record):
        stdout.print(f"note: {note}")
    timings = record.get("timings_s") or {}
    if timings:
        stdout.print("timings: " + ", ".join(f"{stage.replace('_', ' ')} {seconds:.1f} s"
                                             for stage, seconds in timings.items()), highlight=False)
    if not any(layer["factorized"] for layer in record["layers"]):
        stdout.print("[yellow]nothing was compressed[/]: "
                     + ("the model has no Linear layer" if not record["layers"]
                        else "no layer's chosen rank pays off (r·(in+out) ≥ in·out)")
                     + "; the dense export was built and verified")


def emit_build(record: dict[str, Any], out: Path, json_out: str | None, quiet: bool) -> None:
    """After a build: write ``--json`` (file or '-' = stdout) and print the tables unless quiet."""
    if json_out == "-":
        stdout.print_json(json.dumps(record))
    elif json_out:
        Path(json_out).write_text(json.dumps(record, indent=2) + "\n")
    if quiet or json_out == "-":
        return
    print_build(record)
    console.print(f"wrote {', '.join(a['path'] for a in record['artifacts'].values())} and build.json to {out}/")
