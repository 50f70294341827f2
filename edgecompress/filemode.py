"""Files written through a temporary file get the mode a plain ``open(path, "w")`` would give.

``tempfile.mkstemp`` creates files with mode 0600; renamed into place they would stay private
(0600) while every other output is 0644 under the usual umask 022.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_new_file(path: str | os.PathLike[str]) -> None:
    """Give ``path`` mode 0666 minus the umask, like a file created with ``open(path, "w")``."""
    os.chmod(path, 0o666 & ~current_umask())
