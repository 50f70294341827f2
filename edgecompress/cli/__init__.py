"""The ``edgecompress`` command line: a thin click group that maps typed errors to exit codes.

Sub-commands live in their own modules and are imported lazily, so ``bench``, ``report`` and
``check`` start without importing torch (a Raspberry Pi has onnxruntime, not torch).
Exit codes: 0 success, 1 a check or verification failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgecompress.errors import EdgeCompressError

# command name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "build": "edgecompress.cli.build:build",
    "demo": "edgecompress.cli.demo:demo",
    "analyze": "edgecompress.cli.analyze:analyze",
    "bench": "edgecompress.cli.bench:bench",
    "report": "edgecompress.cli.bench:report",
    "check": "edgecompress.cli.check:check",
    "sweep": "edgecompress.cli.sweep:sweep",
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when used (or listed by --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgecompress")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compress a trained PyTorch model's Linear layers, export, verify and benchmark it.

    \b
    Examples:
      edgecompress demo                                  # offline end-to-end run on sklearn digits
      edgecompress build model.pt2 --target onnx --out build/
      edgecompress bench build/model.dense.onnx build/model.onnx --batch 1,32 --threads 1
      edgecompress check --baseline main/build.json build/build.json
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: runs the group and turns typed errors into exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return cli.main(args=args, prog_name="edgecompress", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except EdgeCompressError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
