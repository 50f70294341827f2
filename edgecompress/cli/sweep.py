"""``edgecompress sweep``: run a TOML grid of builds on Ray and write one results table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgecompress.cli.console import console, interactive


def _progress_printer(quiet: bool) -> Any:
    """Per finished entry: an ``error:`` line when it failed (always), a progress line otherwise
    (on a TTY and not with --quiet)."""
    show = interactive(quiet)

    def report(row: dict[str, Any], counts: Any) -> None:
        if row.get("status") != "ok":
            click.echo(f"error: entry {row['entry']}: {row.get('error')}", err=True)
        if show:
            what = "skipped" if row.get("skipped") else row["status"]
            console.print(f"[{counts.finished}/{counts.total}] {row['entry']}: {what}  "
                          f"(done {counts.done}, failed {counts.failed}, skipped {counts.skipped})")

    return report


@click.command(context_settings={"show_default": True})
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output folder.  [default: [sweep] out, else <config stem>-sweep beside the config]")
@click.option("--workers", type=int, default=None,
              help="CPUs of the local Ray instance (entries run in parallel).  [default: all cores]")
@click.option("--address", default=None, help="Join an existing Ray cluster instead, e.g. 'auto' or 'HOST:6379'.")
@click.option("--cpus-per-entry", type=int, default=None,
              help="CPUs each entry declares; torch uses that many threads.  [default: [sweep] cpus_per_entry, else 1]")
@click.option("--retries", type=int, default=1, help="Retries of an entry whose worker died (killed, out of memory).")
@click.option("--force", is_flag=True, help="Rebuild every entry, even those with a finished matching result.")
@click.option("--ship-code", is_flag=True,
              help="Send this edgecompress package to the workers (Ray runtime_env py_modules); for a cluster "
                   "whose nodes have the dependencies but not edgecompress.")
@click.option("--sensitivity-on-workers/--sensitivity-in-entry", "spread", default=None,
              help="Budget-mode entries measure their per-layer sensitivity tables as Ray tasks on the other "
                   "workers.  [default: on with --address, off on a local instance]")
@click.option("--json", "json_out", default=None, help="Write results.json's content to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress (failed entries still print their error line).")
def sweep(config_path: Path, out: Path | None, workers: int | None, address: str | None, cpus_per_entry: int | None,
          retries: int, force: bool, ship_code: bool, spread: bool | None, json_out: str | None, quiet: bool) -> None:
    """Build every entry of CONFIG.toml (models x policies x budgets x targets) as Ray tasks.

    Each entry writes its own folder (OUT/entries/<entry>/ with build.json); OUT/results.json, .md
    and .html (accuracy-vs-size Pareto plot) list them all. A failing entry prints its error line and
    the others go on; re-running skips entries whose finished result matches (same options, same
    model bytes); Ctrl-C keeps what finished (exit 130). Exit 1 when an entry failed.

    \b
    Examples:
      edgecompress sweep benchmarks/sweeps/ray-digits.toml --workers 2
      edgecompress sweep sweep.toml --out runs/ --json - --quiet
      edgecompress sweep sweep.toml --address auto          # on a node of a running Ray cluster
    See docs/sweep.md for the config format and multi-machine clusters.
    """
    from edgecompress.sweep import load_sweep, sweep as run
    from edgecompress.sweep.runner import import_ray

    config = load_sweep(config_path, out=out)
    import_ray()  # fail fast, before any work, when the extra is missing
    runtime_env = None
    if ship_code:
        import edgecompress

        runtime_env = {"py_modules": [str(Path(edgecompress.__file__).parent)]}
    record = run(config, out=config.out, workers=workers, address=address, cpus_per_entry=cpus_per_entry,
                 retries=retries, force=force, runtime_env=runtime_env, progress=_progress_printer(quiet),
                 sensitivity_on_workers=spread)
    if json_out == "-":
        click.echo(json.dumps(record, indent=2))
    elif json_out:
        Path(json_out).write_text(json.dumps(record, indent=2) + "\n")
    counts = record["counts"]
    if record["interrupted"]:
        click.echo(f"interrupted: kept {counts['done'] + counts['skipped']} finished entries of {counts['total']} "
                   f"in {config.out}; run the same command again to build the rest", err=True)
        raise KeyboardInterrupt
    if not quiet:
        click.echo(f"{counts['total']} entries: {counts['done']} built, {counts['failed']} failed, "
                   f"{counts['skipped']} skipped; wrote {config.out}/results.{{json,md,html}}", err=True)
    if counts["failed"]:
        sys.exit(1)  # like a failed check
