"""Reports from bench.json: Markdown tables, a self-contained HTML page with plots, strict JSON.

Torch-free (matplotlib optional, only for plots). Every file is written atomically: to a
temporary file in the destination folder, renamed when complete. ``-`` as path means stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress.errors import InputError
from edgecompress.filemode import chmod_like_new_file
from edgecompress.report.html import render_html
from edgecompress.report.markdown import render_markdown

BENCH_SCHEMA_PREFIX = "edgecompress.bench/"

__all__ = ["load_bench", "render_markdown", "render_html", "to_json_text", "write_text", "check_writable",
           "write_json", "write_markdown", "write_html"]


def _finite(value: Any) -> Any:
    """A copy with NaN/inf floats replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json_text(bench: Mapping[str, Any]) -> str:
    """Strict, indented JSON with keys in the order the producer wrote them."""
    return json.dumps(_finite(bench), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def load_bench(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a bench.json; InputError with one line when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"bench result not found: {path} (write one with edgecompress bench --json FILE)") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a bench.json (binary file); give one written by edgecompress bench") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        bench = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path} is not JSON ({exc}); give a bench.json written by edgecompress bench") from exc
    schema = bench.get("schema") if isinstance(bench, dict) else None
    if not isinstance(schema, str) or not schema.startswith(BENCH_SCHEMA_PREFIX):
        raise InputError(f"{path} is not a bench.json (schema {schema!r}, expected {BENCH_SCHEMA_PREFIX}1)")
    missing = [k for k in ("models", "results", "reference") if not isinstance(bench.get(k), (list, str))]
    if missing:
        raise InputError(f"{path} is an incomplete bench.json: missing {', '.join(missing)}")
    _check_entries(path, bench)
    return bench


def _check_entries(path: Path, bench: dict[str, Any]) -> None:
    """Every model has a name, every result names a listed model and a batch, the reference is listed."""
    models, results = bench["models"], bench["results"]
    if not isinstance(models, list) or not isinstance(results, list):
        raise InputError(f"{path} is not a bench.json: 'models' and 'results' must be lists")
    names = [m.get("name") if isinstance(m, dict) else None for m in models]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise InputError(f"{path} is an incomplete bench.json: every entry of 'models' needs a 'name'")
    if bench["reference"] not in names:
        raise InputError(f"{path} is an incomplete bench.json: reference {bench['reference']!r} is not in 'models'")
    for index, result in enumerate(results):
        if not (isinstance(result, dict) and result.get("model") in names and isinstance(result.get("batch"), int)):
            raise InputError(f"{path} is an incomplete bench.json: results[{index}] needs 'model' (one of the "
                             "models) and an integer 'batch'")


def check_writable(path: str | os.PathLike[str]) -> None:
    """InputError now (before a long run) when ``path`` cannot be written later."""
    if str(path) == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file name for the output")
    folder = target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: {existing} is not a writable folder")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename); ``-`` writes to stdout."""
    if str(path) == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    target = Path(path)
    check_writable(target)
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        chmod_like_new_file(tmp)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """bench.json (strict JSON)."""
    write_text(path, to_json_text(bench))


def write_markdown(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """The Markdown report."""
    write_text(path, render_markdown(bench))


def write_html(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """The self-contained HTML report (plots as embedded PNGs when matplotlib is installed)."""
    write_text(path, render_html(bench))
