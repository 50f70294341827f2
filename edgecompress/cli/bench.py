"""``edgecompress bench`` and ``edgecompress report``: runtime-only (no torch import)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecompress.errors import InputError


def _parse_sizes(flag: str, text: str, example: str) -> list[int]:
    """Comma-separated positive integers (``--batch 1,32``, ``--seq 32,128``)."""
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise InputError(f"{flag} {text!r}: give comma-separated positive integers, e.g. {flag} {example}")
    return sizes


def _check_outputs(outputs: dict[str, str | None], inputs: list[Path]) -> None:
    from edgecompress.report import check_writable

    given = {flag: path for flag, path in outputs.items() if path}
    stdout = [flag for flag, path in given.items() if path == "-"]
    if len(stdout) > 1:
        raise InputError(f"only one output can go to stdout ('-'), got {' and '.join(stdout)}")
    resolved_inputs = {p.resolve() for p in inputs}
    for flag, path in given.items():
        if path != "-" and Path(path).resolve() in resolved_inputs:
            raise InputError(f"{flag} {path} would overwrite an input file; choose another name")
        check_writable(path)


def _write_all(bench: dict, outputs: dict[str, str | None], quiet: bool) -> bool:
    """Render every requested format first, then write them; True when something went to stdout."""
    from edgecompress.report import render_html, render_markdown, to_json_text, write_text

    renderers = {"--json": to_json_text, "--md": render_markdown, "--html": render_html}
    texts = {flag: (path, renderers[flag](bench)) for flag, path in outputs.items() if path}
    for flag, (path, text) in texts.items():
        write_text(path, text)
        if path != "-" and not quiet:
            click.echo(f"wrote {path}", err=True)
    return any(path == "-" for path, _ in texts.values())


BENCH_HELP = """Benchmark ONNX models in onnxruntime; the first model is the reference.

For each model and batch size (and --seq length): latency p50/p90/p99/min/mean (ms), samples/s,
session init and first-inference time, peak memory (fresh process per model), file size,
parameters, accuracy and macro-F1 (with --data labels), agreement with the reference (top-1 for
class logits, cosine mean/p5 for embeddings, relative error otherwise) and max output difference,
and every figure's ratio to the reference. Models run interleaved after a warm-up, the order
rotating each round (A B, B A, ...). Needs only the runtime (no torch).

Prints a one-line verdict per model and two tables (ratios green when better than the reference,
red when worse); --md/--json/--html write files ('-': stdout, the tables then go to stderr).

\b
Examples:
  edgecompress bench build/model.dense.onnx build/model.onnx --data test.npz --batch 1,32
  edgecompress bench dense.onnx small.onnx --threads 4 --seconds 10 --json bench.json --html report.html
  edgecompress bench model.onnx --input-shape tokens:Nx128 --runs 500 --json - > bench.json
  edgecompress bench build/minilm.dense.onnx build/minilm.onnx --seq 32 --seq 128 --threads 1
  edgecompress bench build/minilm.dense.onnx build/minilm.onnx --seq 32,128 --batch 1,8 --json bench.json
"""


@click.command("bench", help=BENCH_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--data", metavar="SPEC", help="test.npz (x, optional y), an MNIST-style IDX folder, or 'digits'. "
              "Without it: seeded random inputs and accuracy n/a.")
@click.option("--batch", "batch", default="1", show_default=True, metavar="LIST",
              help="Comma-separated batch sizes, e.g. 1,32.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads (inter-op is 1, execution sequential).")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Timed rounds per batch size (each runs every model once) [default: 100].")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Time budget per batch size instead of (or capping) --runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed rounds per batch size before timing.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]SHAPE",
              help="Shape for dynamic dims, N = batch: 'x:Nx3x224x224'. Repeat per input.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate accuracy on the first N samples only.")
@click.option("--seq", "seqs", multiple=True, metavar="LIST",
              help="Length(s) of every dynamic 'seq' input dimension (token models from edgecompress build): "
                   "repeat or comma-separate (--seq 32,128) for one result block per length, interleaved runs and "
                   "ratios per length, on random token ids.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory and cold start in a fresh process per model and batch.")
@click.option("--json", "json_out", metavar="FILE", help="Write bench.json ('-': stdout).")
@click.option("--md", "md_out", metavar="FILE", help="Write a Markdown report ('-': stdout).")
@click.option("--html", "html_out", metavar="FILE", help="Write a self-contained HTML report with plots.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (no tables, progress or 'wrote' lines).")
def bench(models: tuple[str, ...], data: str | None, batch: str, threads: int, runs: int | None,
          seconds: float | None, warmup: int, seed: int, input_shapes: tuple[str, ...], seqs: tuple[str, ...],
          limit: int | None, memory: bool, json_out: str | None, md_out: str | None, html_out: str | None, quiet: bool) -> None:
    from edgecompress.bench import parse_input_shape, run_benchmark

    batches = _parse_sizes("--batch", batch, "1,32")
    lengths = [n for text in seqs for n in _parse_sizes("--seq", text, "32,128")]
    shapes: dict[str | None, tuple[int | str, ...]] = {}
    for text in input_shapes:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise InputError(f"--input-shape given twice for {name or 'the input'}")
        shapes[name] = dims
    outputs = {"--json": json_out, "--md": md_out, "--html": html_out}
    _check_outputs(outputs, [Path(m) for m in models])
    result = run_benchmark(list(models), data=data, batches=batches, threads=threads, runs=runs,
                           seconds=seconds, warmup=warmup, seed=seed, input_shapes=shapes or None,
                           seq=lengths or None, limit=limit, memory=memory, progress=not quiet)
    to_stdout = _write_all(result, outputs, quiet)
    if not quiet:  # --quiet: nothing but errors
        from edgecompress.cli.console import console, stdout
        from edgecompress.report.terminal import print_report

        print_report(result, console if to_stdout else stdout)


REPORT_HELP = """Render a bench.json as Markdown and/or self-contained HTML.

Without --md/--html, prints the Markdown report to stdout.

\b
Examples:
  edgecompress report bench.json --html report.html
  edgecompress report pi/bench.json --md pi.md --html pi.html
"""


@click.command("report", help=REPORT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bench_json", metavar="BENCH_JSON")
@click.option("--md", "md_out", metavar="FILE", help="Write the Markdown report ('-': stdout).")
@click.option("--html", "html_out", metavar="FILE", help="Write the HTML report ('-': stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No 'wrote' messages.")
def report(bench_json: str, md_out: str | None, html_out: str | None, quiet: bool) -> None:
    from edgecompress.report import load_bench

    outputs = {"--md": md_out, "--html": html_out}
    _check_outputs(outputs, [Path(bench_json)])
    data = load_bench(bench_json)
    if not md_out and not html_out:
        outputs["--md"] = "-"
    _write_all(data, outputs, quiet)
    sys.stdout.flush()
