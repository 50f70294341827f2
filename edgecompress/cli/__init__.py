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


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _usage_message(exc: click.UsageError) -> str:
    """click's usage error as one line, with where to find the valid usage."""
    command = exc.ctx.command_path if exc.ctx is not None else "edgecompress"
    return f"{exc.format_message()} (see '{command} --help')"


def _unexpected(exc: BaseException) -> tuple[str, int]:
    """Message and exit code of an exception no library module mapped to a typed error."""
    if isinstance(exc, OSError):  # disk full, permission denied, a folder where a file was expected ...
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}", 2
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller model, batch or sample count", 1
    first = _one_line(str(exc))[:300] or "no message"
    return f"unexpected {type(exc).__name__}: {first} (re-run with --debug for the traceback)", 1


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: runs the group and turns every failure into one ``error:`` line.

    Exit codes: typed errors their own (2 bad input, 1 failed check), click usage errors 2, Ctrl-C 130,
    an empty/truncated input read as end-of-file 2, anything unforeseen 1 (``--debug`` re-raises it).
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return cli.main(args=args, prog_name="edgecompress", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns EOFError and KeyboardInterrupt into Abort
        if isinstance(exc.__context__, EOFError):
            if debug:
                raise
            _fail("unexpected end of file while reading an input (an empty or truncated file?)", 2)
        _fail("interrupted (Ctrl-C)", 130)
    except click.UsageError as exc:
        _fail(_usage_message(exc), 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except EdgeCompressError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C)", 130)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line instead of a traceback
        if debug:
            raise
        _fail(*_unexpected(exc))
