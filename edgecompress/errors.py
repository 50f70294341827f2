"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class of every foreseeable failure. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class InputError(EdgeCompressError):
    """Bad user input: a missing or unreadable file, wrong shape, bad option value."""


class UnsafeLoadError(InputError):
    """Loading the file would execute arbitrary code and the user did not opt in."""


class MissingExtraError(InputError):
    """An optional dependency group is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the optional extra: pip install 'edgecompress[{extra}]'")
        self.extra = extra


class ExportError(EdgeCompressError):
    """The model could not be exported (unsupported op, converter failure)."""


class RefoldError(ExportError):
    """A dense in x out weight reappeared in the exported graph where a factor pair should be."""


class VerificationError(EdgeCompressError):
    """An exported model disagrees with torch past tolerance."""

    exit_code = 1


class BudgetExceeded(EdgeCompressError):
    """A budget (size, accuracy, params ...) is not met or cannot be met."""

    exit_code = 1


class ConfigError(InputError):
    """A budget/config file is malformed (unknown key, bad unit)."""


class TrainingError(EdgeCompressError):
    """Training failed (diverged, bad labels)."""
