"""A held-out text corpus for the MiniLM benchmark, from the Debian ``fortunes`` package (no download).

``apt-get install fortunes`` puts thousands of quotes, jokes and definitions under
/usr/share/games/fortunes (fortune-mod; BSD-licensed program, quotes of many authors; see
/usr/share/doc/fortunes/copyright). The corpus is NOT checked in: it is read from there, cleaned
(one entry = one line of text, 24-240 characters, mostly letters, no ASCII art), de-duplicated,
shuffled by a seeded hash and cut into disjoint splits. ``splits()`` records a digest of every split
so results name the exact text they were measured on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SKIP = {"art", "ascii-art", "translate-me"}  # drawings, and non-English text
MIN_CHARS, MAX_CHARS = 24, 240


def entries(folder: Path = FORTUNES) -> list[str]:
    """Every clean, distinct entry of the fortune files, in a seeded-hash order."""
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found: install the text corpus with "
                         "`apt-get update && apt-get install -y fortunes`")
    seen: dict[str, None] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in SKIP or not path.is_file():
            continue
        for raw in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(raw.split())
            letters = sum(c.isalpha() for c in text)
            if MIN_CHARS <= len(text) <= MAX_CHARS and letters >= 0.7 * len(text) and not re.search(r"(.)\1{4}", text):
                seen.setdefault(text, None)
    return sorted(seen, key=lambda t: hashlib.sha256(b"minilm-corpus:" + t.encode()).hexdigest())


def splits(train: int, dev: int, test: int, folder: Path = FORTUNES) -> dict[str, list[str]]:
    """Disjoint ``train`` (calibration + distillation), ``dev`` (best-state selection) and ``test`` (reported)."""
    texts = entries(folder)
    if train + dev + test > len(texts):
        raise SystemExit(f"error: the corpus has {len(texts)} entries, {train + dev + test} asked")
    return {"test": texts[:test], "dev": texts[test:test + dev], "train": texts[test + dev:test + dev + train]}


def digest(texts: list[str]) -> str:
    """sha256 of the split's text (one entry per line)."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()
