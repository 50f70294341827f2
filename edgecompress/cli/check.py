"""``edgecompress check``: fail CI when a deployed model exceeds its size/accuracy/latency budgets."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from edgecompress.errors import BudgetExceeded, InputError
from edgecompress.filemode import chmod_like_new_file

EPILOG = """\b
Budgets live in pyproject.toml (or --config FILE), one table per artifact glob,
relative to the config file's folder:
\b
  [tool.edgecompress.budgets."build/model.onnx"]
  max_size = "2 MB"              # B, kB/MB/GB (1000), KiB/MiB/GiB (1024)
  max_params = 200000            # or "200k"
  max_growth = "5%"              # vs --baseline; noise_floor = "1 KiB"
  min_accuracy = 0.97            # or "97%"
  max_accuracy_drop = 0.5        # points vs baseline (else the dense reference)
  min_cosine = 0.97              # embeddings: mean cosine to the dense reference
  min_cosine_p5 = 0.9            # ... its 5th percentile (bench.json or build.json)
  max_ops = { MatMul = 6 }
  max_latency_p50_ms = 1.0       # warns unless --fail-on-latency
\b
Examples:
  edgecompress check build/build.json
  edgecompress check build/build.json build/bench.json --baseline main/build.json
  edgecompress check build/model.onnx --config ci/budgets.toml --json report.json
  edgecompress check                 # PATHS from the budget globs in pyproject.toml
\b
Exit codes: 0 every budget met (warnings allowed), 1 a budget exceeded or a
path/glob matched nothing, 2 a bad config or an unreadable file.
With GITHUB_STEP_SUMMARY set, a Markdown table is appended to it."""


def _write_atomic(target: str, text: str) -> None:
    """Write ``text`` to ``target`` via a temporary file in the same folder, then rename."""
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        chmod_like_new_file(tmp)  # mkstemp's 0600 would stay after the rename
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc}") from None


@click.command("check", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, metavar="[PATHS]...")
@click.option("--config", "config", metavar="FILE", default=None,
              help="TOML budget file (default: nearest pyproject.toml with [tool.edgecompress]).")
@click.option("--baseline", "baselines", multiple=True, metavar="FILE",
              help="The main branch's build.json / bench.json, for growth and accuracy drop. Repeatable.")
@click.option("--json", "json_out", metavar="FILE|-", default=None,
              help="Write the JSON report to FILE ('-': stdout; the table then goes to stderr).")
@click.option("--markdown", "markdown_out", metavar="FILE|-", default=None,
              help="Write the Markdown report to FILE ('-': stdout), e.g. for a PR comment.")
@click.option("--fail-on-latency", is_flag=True,
              help="Latency limits fail the check instead of warning.")
def check(paths: tuple[str, ...], config: str | None, baselines: tuple[str, ...], json_out: str | None,
          markdown_out: str | None, fail_on_latency: bool) -> None:
    """Check build/bench results against size, accuracy and latency budgets.

    PATHS are build.json / bench.json files, .onnx / .tflite files, folders or globs.
    """
    from edgecompress.check import run_check
    from edgecompress.check.summary import annotations, print_table, to_json, to_markdown

    if json_out == "-" and markdown_out == "-":
        raise click.UsageError("only one of --json and --markdown can write to stdout")
    report = run_check(paths, config=config, baselines=baselines, fail_on_latency=fail_on_latency)

    table_to = sys.stderr if "-" in (json_out, markdown_out) else sys.stdout
    print_table(report, file=table_to)
    if json_out is not None:
        from edgecompress.provenance import collect

        text = json.dumps(to_json(report, collect()), indent=2, ensure_ascii=False) + "\n"
        if json_out == "-":
            click.echo(text, nl=False)
        else:
            _write_atomic(json_out, text)
    markdown = to_markdown(report)
    if markdown_out == "-":
        click.echo(markdown, nl=False)
    elif markdown_out is not None:
        _write_atomic(markdown_out, markdown)
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        except OSError as exc:
            click.echo(f"warning: cannot append to GITHUB_STEP_SUMMARY ({summary_path}): {exc}", err=True)
    if os.environ.get("GITHUB_ACTIONS") == "true":  # annotate the budget lines in the PR diff
        for line in annotations(report):
            click.echo(line, err=table_to is sys.stderr)
    if not report.passed:
        failed = report.failures
        names = ", ".join(f"{f.artifact} {f.label} {f.value_text} (limit {f.limit_text})" for f in failed[:3]) \
            + (" ..." if len(failed) > 3 else "")
        raise BudgetExceeded(f"{len(failed)} budget check{'s' if len(failed) != 1 else ''} failed: {names}")
