"""Helpers of the hostile-input tests: crafted .pt2 archives, in-process CLI runs, and the checks
every bad input must pass (one ``error:`` line, the right exit code, no traceback, no partial files,
the input unchanged)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest

from test_cli_build import run_cli  # noqa: F401 - re-exported: in-process CLI runs


class MarkerPayload:
    """Unpickling this creates the file ``marker`` (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return open, (self.marker, "w")


def torch_saved(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite_pt2(source: Path, target: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy a .pt2 zip, letting ``edit`` change its members (keyed by path below the top folder)."""
    with zipfile.ZipFile(source) as zf:
        prefix = zf.namelist()[0].split("/", 1)[0]
        members = {info.filename.split("/", 1)[1]: zf.read(info) for info in zf.infolist()}
    edit(members)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), data)  # repeatable bytes
    return target


def _pickled_sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        members["data/sample_inputs/model.pt"] = torch_saved(((MarkerPayload(marker),), {}))
    return edit


def _use_pickle_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        name = "data/weights/model_weights_config.json"
        config = json.loads(members[name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = torch_saved(MarkerPayload(marker))
        members[name] = json.dumps(config).encode()
    return edit


def _constant(prefix: str, payload: Callable[[Path], bytes]) -> Callable[[Path], Callable[[dict[str, bytes]], None]]:
    def vector(marker: Path) -> Callable[[dict[str, bytes]], None]:
        def edit(members: dict[str, bytes]) -> None:
            name = "data/constants/model_constants_config.json"
            config = json.loads(members[name])
            config["config"]["evil"] = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            members[f"data/constants/{prefix}0"] = payload(marker)
            members[name] = json.dumps(config).encode()
        return edit
    return vector


# name -> edit factory; each one makes torch.export.load run MarkerPayload
VECTORS: dict[str, Callable[[Path], Callable[[dict[str, bytes]], None]]] = {
    "sample_inputs": _pickled_sample_inputs,
    "use_pickle_weight": _use_pickle_weight,
    "opaque_constant": _constant("opaque_obj_", lambda marker: pickle.dumps(MarkerPayload(marker))),
    "use_pickle_constant": _constant("tensor_", lambda marker: torch_saved(MarkerPayload(marker))),
}


def assert_one_error(code: int, err: str, expected_code: int = 2, needle: str = "") -> str:
    """Exactly one non-empty stderr line, starting ``error:``, containing ``needle``; no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == expected_code, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], err
    return lines[0]


def digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names + contents)."""
    h = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden ones too), relative; [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def scrub_env() -> dict[str, str]:
    """The environment for a CLI subprocess: this worktree first on PYTHONPATH, one thread."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
