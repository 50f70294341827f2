"""Output folders that concurrent, failed or killed builds cannot corrupt.

A build holds an exclusive lock on its output folder (``fcntl.flock`` on the folder itself, so no
lock file is left behind) for its whole run; a second build into the same folder fails fast with one
line instead of waiting. Files are written into a staging folder of this run
(``.edgecompress-staging-<pid>-<random>``) and moved into place only when everything passed. The
move replaces an earlier build in that folder as a whole: every file its build.json lists, the known
artifact names of its stem and of the new stem, and its bench.json are removed, so the folder never
mixes two builds. A failed run removes only its own staging folder (and the output folder if this
run created it and it is empty again). Staging folders of killed runs are removed by the next run
that takes the lock (they cannot belong to a live run: every run stages under the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from edgecompress.errors import InputError

STAGING_PREFIX = ".edgecompress-"  # older releases used .edgecompress-XXXX too: those are cleaned up as well
ARTIFACT_SUFFIXES = (".onnx", ".dense.onnx", ".int8.onnx", ".int4.onnx", ".tflite", ".dense.tflite", ".int8.tflite")
RECORD_FILES = ("build.json", "bench.json")


class OutputBusyError(InputError):
    """Another edgecompress run holds the output folder."""


def check_stem(stem: str) -> str:
    """An artifact stem (``--name``) must be a plain file name: no folders, no ``..``, not hidden."""
    if not stem or stem != stem.strip() or "/" in stem or "\\" in stem or "\0" in stem or stem.startswith("."):
        raise InputError(f"--name must be a plain file name (no '/', '\\', '..' or leading '.'), got {stem!r}")
    return stem


def artifact_names(stem: str) -> list[str]:
    """File names a build of ``stem`` may write (ONNX external-data side files included)."""
    names = [stem + suffix for suffix in ARTIFACT_SUFFIXES]
    return names + [name + ".data" for name in names if name.endswith(".onnx")] + list(RECORD_FILES)


def refuse_input_overwrite(out: Path, stem: str, model: Path) -> None:
    """InputError when an artifact of ``stem`` in ``out`` would be the input model itself."""
    target = model.resolve()
    for name in artifact_names(stem):
        if (out / name).resolve() == target:
            raise InputError(f"refusing to overwrite the input model {model} with {name}; choose another --out "
                             "or --name")


def previous_build_files(out: Path) -> set[str]:
    """Names of the files an earlier build in ``out`` wrote (from its build.json; plain names only)."""
    record_path = out / "build.json"
    names = set(RECORD_FILES)
    try:
        record = json.loads(record_path.read_text())
        stem = record.get("name")
        artifacts = record.get("artifacts") or {}
        listed = [entry.get("path") for entry in artifacts.values() if isinstance(entry, dict)]
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return names  # no (readable) earlier build.json: only the record files are its
    if isinstance(stem, str) and stem and "/" not in stem and not stem.startswith("."):
        names.update(artifact_names(stem))
    names.update(name for name in listed if isinstance(name, str) and name and Path(name).name == name)
    return names


class OutputFolder:
    """A locked output folder; use as a context manager, then :meth:`staging` for one build's files."""

    def __init__(self, out: Path, *, protect: Iterable[Path] = ()) -> None:
        self.out = Path(out)
        self.protect = [Path(p) for p in protect]  # files never removed or replaced (the input model)
        self.created = False
        self._fd: int | None = None
        self.cleaned: list[str] = []  # stale staging folders removed on entry

    def __enter__(self) -> "OutputFolder":
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"output path {self.out} exists and is not a folder")
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._check_writable()
        except OSError as exc:
            self._release()
            raise InputError(f"cannot write into output folder {self.out}: {exc.strerror or exc}") from exc
        except BaseException:
            self._release()
            raise
        self.cleaned = self._remove_stale_staging()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def _lock(self) -> None:
        while True:
            fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(f"another edgecompress run is writing into {self.out}; wait for it to "
                                      "finish or choose another --out") from None
            self._fd = fd
            try:  # the folder may have been removed (and re-made) by a failing run between open and lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.out))
            except FileNotFoundError:
                same = False
            if same:
                return
            self._release(remove_created=False)
            self.out.mkdir(parents=True, exist_ok=True)

    def _check_writable(self) -> None:
        if not os.access(self.out, os.W_OK | os.X_OK):
            raise InputError(f"output folder {self.out} is not writable; choose another --out")

    def _release(self, remove_created: bool = True) -> None:
        if remove_created and self.created:
            with contextlib.suppress(OSError):  # only when empty: never another run's or the user's files
                self.out.rmdir()
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def _remove_stale_staging(self) -> list[str]:
        stale = [p for p in self.out.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir()
                 and not p.is_symlink()]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return sorted(p.name for p in stale)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging folder; on success its files replace the folder's earlier build."""
        if self._fd is None:
            raise RuntimeError("OutputFolder.staging() outside its with-block")
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}staging-{os.getpid()}-", dir=self.out))
        try:
            yield staging
            self._commit(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _is_protected(self, path: Path) -> bool:
        return any(path.exists() and p.exists() and os.path.samefile(path, p) for p in self.protect)

    def _commit(self, staging: Path) -> None:
        new = sorted(item.name for item in staging.iterdir())
        for name in new:
            if self._is_protected(self.out / name):
                raise InputError(f"refusing to overwrite the input model {self.out / name}; choose another --out")
        old = previous_build_files(self.out) - set(new)
        for name in new:
            os.replace(staging / name, self.out / name)
        for name in sorted(old):
            path = self.out / name
            if path.is_file() and not path.is_symlink() and not self._is_protected(path):
                path.unlink()
