"""Inspect a ``.pt2`` archive before torch loads it, so that loading cannot run code from the file.

``torch.export.load`` unpickles several archive members: weights and constants whose config entry
says ``use_pickle``, custom/opaque-object constants, and the sample inputs (first with torch's
weights-only unpickler, then, if that fails, with the full one). Old-format archives (torch < 2.8)
go through the same fall-back for their weights, and AOTInductor packages carry native code.

:func:`inspect_pt2` reads only the archive's JSON configs and, for members torch would unpickle
with the fall-back, tries torch's weights-only unpickler first: anything that would need the full
unpickler is refused with :class:`UnsafeLoadError` naming ``--allow-pickle``. :func:`no_pickle`
is a second line of defence around the load itself: inside it ``torch.load`` is weights-only and
the archive module's ``pickle.loads`` raises.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edgecompress.errors import InputError, UnsafeLoadError

PICKLE_FLAG = "--allow-pickle"
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a JSON config larger than this is not a torch.export archive
# archive paths (torch.export.pt2_archive.constants, torch 2.13), inlined so inspection needs no torch import
MODELS_DIR = "models/"
WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
LEGACY_WEIGHTS = "data/weights/{}.pt"
LEGACY_CONSTANTS = "data/constants/{}.pt"
SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
TENSOR_CONSTANT_PREFIX = "tensor_"
NATIVE_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
OLD_FORMAT_MEMBERS = ("version", "serialized_exported_program.json")


@dataclass(frozen=True)
class ArchiveInfo:
    """What inspection found: the programs in the archive and the members checked weights-only."""

    models: tuple[str, ...]
    weights_only_members: tuple[str, ...]


def _refuse(path: Path, what: str) -> UnsafeLoadError:
    return UnsafeLoadError(
        f"{path} {what}; torch would unpickle it, which runs arbitrary code. Re-run with {PICKLE_FLAG} only if "
        "you trust the file, or re-save the model with torch.export.save from plain tensors")


class _Archive:
    """Members of a .pt2 zip by their path below the archive's top folder."""

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path = path
        self.zf = zf
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            _, sep, rest = info.filename.partition("/")
            self.members[rest if sep else info.filename] = info

    def read(self, name: str, limit: int | None = None) -> bytes:
        info = self.members[name]
        if limit is not None and info.file_size > limit:
            raise InputError(f"{self.path}: archive member {name} is implausibly large ({info.file_size:,} bytes)")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise InputError(f"{self.path} is a damaged .pt2 archive (member {name}: {exc})") from exc

    def config(self, name: str) -> dict[str, Any]:
        """A payload config's ``config`` mapping ({} when the member is absent)."""
        if name not in self.members:
            return {}
        try:
            data = json.loads(self.read(name, MAX_CONFIG_BYTES))
            entries = data["config"]
            if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
                raise TypeError("config is not a mapping of entries")
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{self.path} is a damaged .pt2 archive ({name} is not a valid payload config)") from exc
        return entries


def _weights_only_loadable(data: bytes) -> bool:
    """Whether torch's weights-only unpickler accepts ``data`` (an empty member is fine: torch skips it)."""
    if not data:
        return True
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means torch would fall back to the full unpickler
        return False
    return True


def _check_model(archive: _Archive, model: str) -> list[str]:
    """Refuse a program whose members would be unpickled; return the members checked weights-only."""
    path = archive.path
    for fqn, entry in archive.config(WEIGHTS_CONFIG.format(model)).items():
        if entry.get("use_pickle"):
            raise _refuse(path, f"stores weight {fqn!r} as a pickle (use_pickle in its weights config)")
    for fqn, entry in archive.config(CONSTANTS_CONFIG.format(model)).items():
        name = str(entry.get("path_name", ""))
        if not name.startswith(TENSOR_CONSTANT_PREFIX):
            raise _refuse(path, f"holds constant {fqn!r} as a pickled object ({name})")
        if entry.get("use_pickle"):
            raise _refuse(path, f"stores constant {fqn!r} as a pickle (use_pickle in its constants config)")
    checked = []
    for member in (SAMPLE_INPUTS.format(model), LEGACY_WEIGHTS.format(model), LEGACY_CONSTANTS.format(model)):
        if member in archive.members:
            if not _weights_only_loadable(archive.read(member)):
                raise _refuse(path, f"has a member ({member}) that is not plain tensors")
            checked.append(member)
    return checked


def inspect_pt2(path: Path) -> ArchiveInfo:
    """Check that ``torch.export.load(path)`` would unpickle nothing beyond weights-only tensors.

    Raises:
        UnsafeLoadError: a member would go through the full unpickler (or native code would load).
        InputError: the file is not a readable .pt2 archive.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise InputError(f"{path} is not a readable torch.export archive (.pt2 is a zip file; this one is empty, truncated "
                         "or something else)") from exc
    with zf:
        archive = _Archive(path, zf)
        if any(name in archive.members for name in OLD_FORMAT_MEMBERS) and "archive_format" not in archive.members:
            raise _refuse(path, "uses the old torch.export format (torch < 2.8) whose weights are pickled")
        native = sorted(name for name in archive.members if name.startswith(NATIVE_CODE_DIRS))
        if native:
            raise _refuse(path, f"contains compiled code ({native[0]})")
        models = tuple(sorted(name[len(MODELS_DIR):-len(".json")] for name in archive.members
                              if name.startswith(MODELS_DIR) and name.endswith(".json")))
        if not models:
            raise InputError(f"{path} is not a readable torch.export archive (no models/*.json inside)")
        checked = [member for model in models for member in _check_model(archive, model)]
    return ArchiveInfo(models, tuple(checked))


class _NoPickleModule:
    """Stands in for the ``pickle`` module inside torch's archive loader."""

    def __getattr__(self, name: str) -> Any:
        raise UnsafeLoadError(f"the archive asked for pickle.{name}; refused without {PICKLE_FLAG}")


@contextlib.contextmanager
def no_pickle() -> Iterator[None]:
    """Within the block ``torch.load`` is weights-only, torch's .pt2 loader cannot call ``pickle``, and
    torch.export's logger does not print a traceback of a damaged archive (the caller reports it)."""
    import torch
    from torch.export.pt2_archive import _package

    export_log = logging.getLogger("torch.export")
    previous_disabled, export_log.disabled = export_log.disabled, True

    original_load, original_pickle = torch.load, _package.pickle

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    torch.load, _package.pickle = weights_only_load, _NoPickleModule()
    try:
        yield
    finally:
        torch.load, _package.pickle = original_load, original_pickle
        export_log.disabled = previous_disabled
