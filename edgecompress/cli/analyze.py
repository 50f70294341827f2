"""``edgecompress analyze``: each Linear layer's spectrum, energy and data error per rank, and the
ranks each policy would pick, without exporting anything."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgecompress.cli.console import stage_spinner, stdout
from edgecompress.errors import InputError, MissingExtraError
from edgecompress.filemode import chmod_like_new_file


def default_ranks(max_rank: int, break_even: int, extra: list[int]) -> list[int]:
    """Powers of two up to the full rank, the break-even rank, and ``extra`` ranks; ascending."""
    ranks = {1 << k for k in range(max_rank.bit_length()) if 1 << k <= max_rank}
    ranks.update(r for r in (break_even, *extra) if 1 <= r <= max_rank)
    return sorted(ranks)


def parse_ranks(text: str | None) -> list[int] | None:
    """``"8,16,32"`` -> [8, 16, 32]."""
    if not text:
        return None
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--ranks takes a comma list of positive integers, got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise InputError(f"--ranks takes a comma list of positive integers, got {text!r}")
    return ranks


def analysis(model_path: Path, *, factory: str | None, allow_pickle: bool, input_shape: str | None,
             exclude: str | None, calib: str | None, calib_samples: int, threshold: float, scale: float,
             max_error: float, round_to: int, ranks: list[int] | None, progress: Any = None) -> dict[str, Any]:
    """The analyze record: per layer the spectrum, energy kept and data error per rank, suggested ranks."""
    from edgecompress.load import load_model, parse_shape
    from edgecompress.lowrank.budget import weight_error
    from edgecompress.lowrank.data_policies import DataPolicy, data_spectra
    from edgecompress.lowrank.factorize import round_ranks
    from edgecompress.lowrank.policies import EnergyPolicy, EntropyPolicy, PolicyContext
    from edgecompress.lowrank.spectrum import head_name, model_spectra
    from edgecompress.pipeline import calibration_data, layer_statistics, resolve_input_shape
    from edgecompress.validate import check_regex

    check_regex(exclude)
    loaded = load_model(model_path, factory=factory, allow_pickle=allow_pickle)
    shape = resolve_input_shape(loaded, parse_shape(input_shape) if input_shape else None)
    if progress:
        progress("computing spectra")
    spectra = model_spectra(loaded.module, exclude)
    if not spectra:
        raise InputError(f"{model_path} has no Linear layer to analyze" + (f" outside --exclude {exclude!r}" if exclude else ""))
    context = PolicyContext(on_progress=progress, round_to=round_to)
    suggested: dict[str, dict[str, int | None]] = {
        "energy": EnergyPolicy(threshold).plan(spectra, context),
        "entropy": EntropyPolicy(scale).plan(spectra, context),
    }
    calibration = None
    decompositions = {}
    if calib is not None:
        data = calibration_data(calib, calib_samples, shape)
        calibration = layer_statistics(loaded.module, data, list(spectra), progress=progress)
        context.calibration = calibration.layers
        decompositions = data_spectra(spectra, context)
        suggested["data"] = DataPolicy(max_error).plan(spectra, context)
    suggested = {policy: round_ranks(plan, spectra, round_to) for policy, plan in suggested.items()}
    head = head_name(loaded.module, exclude)
    layers = []
    for name, spectrum in spectra.items():
        picks = {policy: plan[name] for policy, plan in suggested.items()}
        rows = []
        for rank in ranks or default_ranks(spectrum.max_rank, spectrum.break_even_rank, [r for r in picks.values() if r]):
            if rank > spectrum.max_rank:
                continue
            row = {"rank": rank, "params": spectrum.factored_params(rank), "pays": spectrum.pays(rank),
                   "energy_kept": round(spectrum.energy_kept(rank), 6), "weight_error": round(weight_error(spectrum, rank), 6)}
            if name in decompositions:
                row["data_error"] = round(decompositions[name].relative_error(rank), 6)
            rows.append(row)
        layers.append({
            "name": name, "in_features": spectrum.in_features, "out_features": spectrum.out_features,
            "dense_params": spectrum.dense_params, "max_rank": spectrum.max_rank,
            "break_even_rank": spectrum.break_even_rank,
            "singular_values": [float(f"{v:.6g}") for v in spectrum.s.tolist()],
            "data_singular_values": ([float(f"{v:.6g}") for v in decompositions[name].s.tolist()]
                                     if name in decompositions else None),
            "data_error_curve": ([round(v, 6) for v in decompositions[name].error_curve().tolist()]
                                 if name in decompositions else None),
            "suggested": picks, "rows": rows, "head": name == head,
        })
    return {
        "schema": "edgecompress.analyze/1", "model": str(model_path), "input_shape": list(shape),
        "options": {"energy": threshold, "entropy_scale": scale, "max_error": max_error if calib else None,
                    "round_to": round_to, "exclude": exclude},
        "calibration": calibration.to_json() if calibration else None,
        "layers": layers,
    }


def layer_table(layer: dict[str, Any]) -> Table:
    """One table per layer: rank, params, energy kept, weight error, data error."""
    title = (f"{layer['name'] or '(root)'}: {layer['out_features']}×{layer['in_features']}, "
             f"break-even rank {layer['break_even_rank']}"
             + (" — the classifier head: build keeps it dense unless --compress-head" if layer.get("head") else ""))
    table = Table(title=title, title_justify="left")
    columns = ["rank", "params", "energy kept", "weight error"]
    has_data = layer["data_error_curve"] is not None
    if has_data:
        columns.append("data error")
    for column in columns:
        table.add_column(column, justify="right")
    for row in layer["rows"]:
        cells = [str(row["rank"]) + ("" if row["pays"] else " ✗"), f"{row['params']:,}",
                 f"{row['energy_kept']:.3f}", f"{row['weight_error']:.3f}"]
        if has_data:
            cells.append(f"{row['data_error']:.3f}")
        table.add_row(*cells)
    return table


def suggestion_table(record: dict[str, Any]) -> Table:
    """Suggested rank per layer and policy, with the resulting Linear parameters."""
    policies = list(record["layers"][0]["suggested"]) if record["layers"] else []
    options = record["options"]
    labels = {"energy": f"energy τ={options['energy']}", "entropy": f"entropy ×{options['entropy_scale']}",
              "data": f"data ε={options['max_error']}"}
    table = Table(title="suggested ranks (✗ = does not pay, layer stays dense)", title_justify="left")
    table.add_column("layer")
    for policy in policies:
        table.add_column(labels[policy], justify="right")
    totals = dict.fromkeys(policies, 0)
    for layer in record["layers"]:
        cells = []
        for policy in policies:
            rank = layer["suggested"][policy]
            pays = rank is not None and rank <= layer["break_even_rank"]
            totals[policy] += rank * (layer["in_features"] + layer["out_features"]) + layer["out_features"] if pays \
                else layer["dense_params"]
            cells.append("dense" if rank is None else f"{rank}{'' if pays else ' ✗'}")
        table.add_row(layer["name"] or "(root)", *cells)
    dense = sum(layer["dense_params"] for layer in record["layers"])
    table.add_section()
    table.add_row("Linear params", *(f"{totals[p]:,} ({dense / totals[p]:.1f}×)" for p in policies))
    return table


def plot(record: dict[str, Any], path: Path) -> None:
    """One panel per layer: energy kept, weight error and data error against rank; suggested ranks marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("--plot", "plot") from exc
    layers = record["layers"]
    figure, axes = plt.subplots(len(layers), 1, figsize=(7, 3 * len(layers)), squeeze=False)
    for axis, layer in zip(axes[:, 0], layers):
        s2 = [v * v for v in layer["singular_values"]]
        total = sum(s2) or 1.0
        kept, running = [], 0.0
        for value in s2:
            running += value
            kept.append(running / total)
        ranks = list(range(1, len(kept) + 1))
        axis.plot(ranks, kept, label="energy kept")
        axis.plot(ranks, [max(0.0, 1 - k) ** 0.5 for k in kept], label="weight error")
        if layer["data_error_curve"]:
            axis.plot(ranks, layer["data_error_curve"][1:], label="data error")
        axis.axvline(layer["break_even_rank"], color="grey", linestyle=":", label="break-even")
        for policy, rank in layer["suggested"].items():
            if rank:
                axis.axvline(rank, linestyle="--", linewidth=0.8, label=f"{policy} rank",
                             color={"energy": "C0", "entropy": "C4", "data": "C2"}[policy])
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{layer['name'] or '(root)'} ({layer['out_features']}×{layer['in_features']})", fontsize=9)
        axis.set_xlabel("rank")
        axis.legend(fontsize=7, loc="center right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(tmp, dpi=110)
        chmod_like_new_file(tmp)  # mkstemp's 0600 would stay after the rename
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.unlink(tmp)


@click.command(context_settings={"show_default": True})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--factory", default=None, help="'module:function' or 'file.py:function' building the architecture for a state_dict.")
@click.option("--allow-pickle", is_flag=True, help="Allow loading a fully pickled module or a .pt2 with pickled members "
              "(runs arbitrary code: trusted files only).")
@click.option("--input-shape", default=None, help="Input shape, e.g. 1x784 (inferred when the first layer is a Linear).")
@click.option("--exclude", default=None, help="Regex on layer names to leave out.")
@click.option("--calib", "calib_data", default=None, help="Calibration data for the data error: .npz, IDX folder (default split train), 'digits'.")
@click.option("--calib-samples", type=int, default=1024, help="Calibration samples.")
@click.option("--energy", "threshold", type=float, default=0.95, help="Energy threshold for the suggested energy rank.")
@click.option("--entropy-scale", "scale", type=float, default=1.0, help="Scale for the suggested entropy rank.")
@click.option("--max-error", type=float, default=0.1, help="Max relative output error for the suggested data rank.")
@click.option("--round-to", type=int, default=1, help="Round suggested ranks up to a multiple of K.")
@click.option("--ranks", "ranks_text", default=None, help="Ranks to tabulate, e.g. 8,16,32 (default: powers of two, break-even, suggestions).")
@click.option("--json", "json_out", default=None, help="Write the analysis as JSON to FILE ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG of the curves.")
@click.option("--quiet", "-q", is_flag=True, help="No progress, no tables.")
def analyze(model: Path, factory: str | None, allow_pickle: bool, input_shape: str | None, exclude: str | None,
            calib_data: str | None, calib_samples: int, threshold: float, scale: float, max_error: float,
            round_to: int, ranks_text: str | None, json_out: str | None, plot_path: Path | None, quiet: bool) -> None:
    """Show each Linear layer's spectrum: energy kept and data error at each rank, and the ranks
    the energy, entropy and data policies would choose. Exports nothing.

    \b
    Examples:
      edgecompress analyze model.pt2
      edgecompress analyze model.pt2 --calib ../shared/datasets/mnist:train --max-error 0.05
      edgecompress analyze model.pt2 --ranks 8,16,32,64 --json - --quiet
      edgecompress analyze model.pt2 --calib digits:train --plot spectra.png --round-to 8
    """
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise InputError(f"--plot writes a PNG; give a path ending in .png, got {plot_path}")
    if calib_samples < 1:
        raise InputError(f"--calib-samples must be >= 1, got {calib_samples}")
    with stage_spinner(quiet) as progress:
        record = analysis(model, factory=factory, allow_pickle=allow_pickle, input_shape=input_shape, exclude=exclude,
                          calib=calib_data, calib_samples=calib_samples, threshold=threshold, scale=scale,
                          max_error=max_error, round_to=round_to, ranks=parse_ranks(ranks_text), progress=progress)
        if plot_path is not None:
            plot(record, plot_path)
    if json_out == "-":
        stdout.print_json(json.dumps(record))
    elif json_out:
        Path(json_out).write_text(json.dumps(record, indent=2) + "\n")
    if not quiet and json_out != "-":
        for layer in record["layers"]:
            stdout.print(layer_table(layer))
        stdout.print(suggestion_table(record))
        if plot_path is not None:
            stdout.print(f"wrote {plot_path}")
