"""Render a CheckReport: a rich table for people, Markdown for GitHub's step summary,
JSON for scripts, and ``::error``/``::warning`` workflow commands for GitHub annotations."""

from __future__ import annotations

from typing import IO, Any

from edgecompress.check.evaluate import CheckReport, Finding
from edgecompress.check.facts import display

REPORT_SCHEMA = "edgecompress.check/1"
_STYLES = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def _context(report: CheckReport) -> str:
    config = display(report.config.source) if report.config.source else "(none)"
    baseline = ", ".join(report.baseline_paths) or "none"
    latency = " · latency limits fail" if report.fail_on_latency else ""
    return f"config {config} · baseline {baseline}{latency}"


def print_table(report: CheckReport, file: IO[str] | None = None) -> None:
    """The human report: one row per budget check, ✓/✗/⚠/–, then a one-line verdict."""
    import os

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width = None
    if file is not None and not file.isatty() and "COLUMNS" not in os.environ:
        width = 120  # CI logs are wide; rich would assume 80 columns
    console = Console(file=file, width=width, highlight=False)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name, justify in (("", "center"), ("Artifact", "left"), ("Budget", "left"), ("Value", "right"),
                          ("Limit", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("Note", overflow="fold")  # only the note wraps on a narrow terminal
    previous = None
    for f in report.findings:
        artifact = "" if f.artifact == previous else f.artifact
        previous = f.artifact
        table.add_row(Text(f.symbol, style=_STYLES[f.status]), Text(artifact), Text(f.label),
                      Text(f.value_text), Text(f.limit_text), Text(f.note, style="dim"))
    console.print(Text(f"edgecompress check — {_context(report)}", style="dim"))
    console.print(table)
    if report.unchecked:
        console.print(Text(f"no budget covers: {', '.join(report.unchecked)}", style="dim"))
    console.print(Text(report.headline(), style=_STYLES["pass" if report.passed else "fail"]))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: CheckReport) -> str:
    """A GitHub-flavoured Markdown section (for $GITHUB_STEP_SUMMARY or a PR comment)."""
    symbols = {"pass": "✅", "fail": "❌", "warn": "⚠️", "skip": "➖"}
    lines = [f"### edgecompress check: {_md(report.headline())}", "",
             "| | Artifact | Budget | Value | Limit | Note |", "|:-:|---|---|--:|--:|---|"]
    for f in report.findings:
        lines.append(f"| {symbols[f.status]} | `{_md(f.artifact)}` | {_md(f.label)} | {_md(f.value_text)} "
                     f"| {_md(f.limit_text)} | {_md(f.note)} |")
    lines += ["", f"<sub>{_md(_context(report))}</sub>"]
    if report.unchecked:
        lines += ["", f"<sub>no budget covers: {_md(', '.join(report.unchecked))}</sub>"]
    return "\n".join(lines) + "\n"


def to_json(report: CheckReport, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine-readable report (schema ``edgecompress.check/1``)."""
    return {
        "schema": REPORT_SCHEMA,
        "passed": report.passed,
        "summary": report.headline(),
        "counts": {s: report.count(s) for s in ("pass", "fail", "warn", "skip")},  # type: ignore[arg-type]
        "config": display(report.config.source) if report.config.source else None,
        "baseline": report.baseline_paths,
        "fail_on_latency": report.fail_on_latency,
        "findings": [f.to_dict() for f in report.findings],
        "artifacts": [a.to_dict() for _, a in sorted(report.facts.artifacts.items())],
        "unchecked": report.unchecked,
        "provenance": provenance,
    }


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(report: CheckReport, finding: Finding) -> str:
    """A GitHub Actions workflow command that annotates the budget's line in the config file."""
    level = "error" if finding.status == "fail" else "warning"
    props = ["title=edgecompress check"]
    if report.config.source is not None:
        props.insert(0, f"file={_escape_property(display(report.config.source))}")
        if finding.line:
            props.insert(1, f"line={finding.line}")
    message = f"{finding.artifact}: {finding.label} {finding.value_text} (limit {finding.limit_text})"
    if finding.note:
        message += f" — {finding.note}"
    return f"::{level} {','.join(props)}::{_escape_data(message)}"


def annotations(report: CheckReport) -> list[str]:
    """One workflow command per failed or warning finding."""
    return [annotation(report, f) for f in report.findings if f.status in ("fail", "warn")]
