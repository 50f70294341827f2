"""Shared terminal helpers: a stderr console, a stage spinner, byte formatting."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


def interactive(quiet: bool = False) -> bool:
    """Progress is shown on a TTY, never with --quiet or in CI."""
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def stage_spinner(quiet: bool = False) -> Iterator[Callable[[str], None] | None]:
    """Yield a ``progress(stage)`` callback that updates a spinner (None when not interactive)."""
    if not interactive(quiet):
        yield None
        return
    with console.status("starting") as status:
        yield lambda stage: status.update(f"[bold]{stage.replace('_', ' ')}[/]…")


def human_bytes(count: float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if count is None:
        return "n/a"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
