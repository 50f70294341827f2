"""Facts about artifacts (size, parameters, ops, accuracy, latency) from build.json, bench.json
and bare .onnx / .tflite files. Torch-free; ``onnx`` is imported only for bare .onnx files
(through ``edgecompress.onnxinfo``, so the counts match build.json's).

Facts from several sources about the same file are merged: build.json first, then bench.json,
then what is read from the file itself, each filling only what is still unknown.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgecompress.errors import InputError
from edgecompress.quality import preferred_agreement

ARTIFACT_FORMATS: dict[str, str] = {".onnx": "onnx", ".tflite": "tflite"}
BUILD_SCHEMA = "edgecompress.build/1"
BENCH_SCHEMA = "edgecompress.bench/1"
_GLOB_CHARS = set("*?[")
BENCH_COSINE = "bench.json: the file's outputs vs its reference file's"


Block = tuple[int, "int | None"]
"""A bench result block: (batch size, sequence length or None without bench --seq)."""


def block_key(block: Block) -> str:
    """``"1"``, or ``"1,seq=128"`` for a block measured at a sequence length."""
    return str(block[0]) if block[1] is None else f"{block[0]},seq={block[1]}"


def block_order(block: Block) -> tuple[int, int]:
    """Sort key of a block: by batch, then by length (no length first)."""
    return block[0], -1 if block[1] is None else block[1]


@dataclass
class ArtifactFacts:
    """What is known about one model file. None means unknown."""

    path: Path                      # absolute
    format: str
    role: str | None = None         # build.json role: dense, compressed, int8, tflite ...
    bytes: int | None = None
    params: int | None = None
    ops: dict[str, int] | None = None
    accuracy: float | None = None
    cosine_mean: float | None = None  # embedding output vs the dense reference's (mean over samples)
    cosine_p5: float | None = None    # ... and its 5th percentile
    cosine_from: str | None = None    # where the cosine was measured, for the report's note
    reference: Path | None = None   # the dense reference this artifact is compared with
    latency_ms: dict[Block, dict[str, float]] = field(default_factory=dict)  # (batch, seq) -> p50, p90 ...
    peak_rss_mib: dict[Block, float] = field(default_factory=dict)            # (batch, seq) -> MiB
    sources: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def merge(self, other: ArtifactFacts) -> None:
        """Fill what is unknown here from ``other`` (same file, a later source)."""
        for attr in ("role", "bytes", "params", "ops", "accuracy", "reference"):
            if getattr(self, attr) is None:
                setattr(self, attr, getattr(other, attr))
        if other.cosine_mean is not None and (self.cosine_mean is None or other.cosine_from == BENCH_COSINE):
            # the file's own outputs (bench) beat the torch models' (build.json's agreement)
            self.cosine_mean, self.cosine_p5, self.cosine_from = other.cosine_mean, other.cosine_p5, other.cosine_from
        for batch, stats in other.latency_ms.items():
            self.latency_ms.setdefault(batch, stats)
        for batch, rss in other.peak_rss_mib.items():
            self.peak_rss_mib.setdefault(batch, rss)
        self.sources.extend(s for s in other.sources if s not in self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"path": display(self.path), "format": self.format, "role": self.role, "bytes": self.bytes,
                "params": self.params, "ops": self.ops, "accuracy": self.accuracy,
                "cosine_mean": self.cosine_mean, "cosine_p5": self.cosine_p5,
                "reference": display(self.reference) if self.reference else None,
                "latency_ms": {block_key(b): s for b, s in sorted(self.latency_ms.items(), key=lambda kv: block_order(kv[0]))},
                "peak_rss_mib": {block_key(b): v for b, v in sorted(self.peak_rss_mib.items(), key=lambda kv: block_order(kv[0]))},
                "sources": self.sources}


@dataclass
class FactSet:
    """Artifacts collected from the PATHS of one run (or from its baselines)."""

    artifacts: dict[Path, ArtifactFacts] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # PATHS that matched no file

    def add(self, facts: ArtifactFacts, *, by_name: bool = False) -> ArtifactFacts:
        """Add or merge facts. ``by_name``: an unknown path merges into the one known artifact
        with the same file name (bench.json paths are as typed wherever bench ran, e.g. a
        downloaded baseline's bench.json still says build/model.onnx)."""
        known = self.artifacts.get(facts.path)
        if known is None and by_name:
            same = [a for a in self.artifacts.values() if a.name == facts.name]
            known = same[0] if len(same) == 1 else None
            if known is not None and facts.reference is not None:
                facts.reference = self._same_name(facts.reference)
        if known is None:
            self.artifacts[facts.path] = facts
            return facts
        known.merge(facts)
        return known

    def _same_name(self, path: Path) -> Path:
        if path in self.artifacts:
            return path
        same = [p for p in self.artifacts if p.name == path.name]
        return same[0] if len(same) == 1 else path

    def get(self, path: Path | None) -> ArtifactFacts | None:
        return None if path is None else self.artifacts.get(path)

    def counterpart(self, facts: ArtifactFacts) -> ArtifactFacts | None:
        """The artifact with the same file name (and, if several, the same role) — how a pull
        request's build/model.onnx finds the main branch's baseline/model.onnx."""
        same = sorted((a for a in self.artifacts.values() if a.name == facts.name), key=lambda a: str(a.path))
        if len(same) > 1 and facts.role is not None:
            same = [a for a in same if a.role == facts.role] or same
        return same[0] if same else None


def display(path: Path) -> str:
    """A path relative to the current folder when below it, else absolute (POSIX slashes)."""
    try:
        rel = Path(os.path.relpath(path))
    except ValueError:  # pragma: no cover - other drive on Windows
        return path.as_posix()
    return path.as_posix() if rel.as_posix().startswith("../") else rel.as_posix()


def collect(paths: Iterable[str | os.PathLike[str]], *, cwd: Path | None = None) -> FactSet:
    """Facts from build.json / bench.json files, artifact files, folders and globs.

    A folder means its build.json, bench.json, *.onnx and *.tflite; a glob or path that matches
    nothing is recorded in ``missing``. Unreadable or malformed files raise InputError.
    """
    cwd = Path.cwd() if cwd is None else cwd
    facts = FactSet()
    files: list[Path] = []
    for raw in paths:
        found = _expand(str(raw), cwd)
        if not found:
            facts.missing.append(str(raw))
        files.extend(f for f in found if f not in files)
    builds, benches, bare = [], [], []
    for path in files:
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            schema = str(data.get("schema", ""))
            if schema == BUILD_SCHEMA:
                builds.append((path, data))
            elif schema == BENCH_SCHEMA:
                benches.append((path, data))
            else:
                raise InputError(f"{display(path)} is neither a build.json ({BUILD_SCHEMA}) nor a bench.json "
                                 f"({BENCH_SCHEMA}): schema is {data.get('schema')!r}")
        elif path.suffix.lower() in ARTIFACT_FORMATS:
            bare.append(path)
        else:
            raise InputError(f"{display(path)}: check reads build.json, bench.json, .onnx and .tflite files")
    for path, data in builds:
        facts.sources.append(path)
        for item in _from_build(path, data):
            facts.add(item)
    for path, data in benches:
        facts.sources.append(path)
        for item in _from_bench(path, data, cwd):
            facts.add(item, by_name=True)
    for path in bare:
        facts.sources.append(path)
        known = facts.artifacts.get(path)
        if known is None or known.bytes is None or known.params is None or known.ops is None:
            facts.add(read_artifact(path))
    return facts


def _expand(raw: str, cwd: Path) -> list[Path]:
    """Files a PATH argument stands for (absolute, normalised, sorted)."""
    pattern = raw if os.path.isabs(raw) else str(cwd / raw)
    if _GLOB_CHARS & set(raw):
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    else:
        hits = [Path(pattern)] if os.path.exists(pattern) else []
    files: list[Path] = []
    for hit in hits:
        hit = Path(os.path.normpath(hit))
        if hit.is_dir():
            files.extend(p for p in (hit / "build.json", hit / "bench.json") if p.is_file())
            files.extend(sorted(p for p in hit.iterdir() if p.suffix.lower() in ARTIFACT_FORMATS and p.is_file()))
        else:
            files.append(hit)
    return files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {display(path)}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{display(path)}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InputError(f"{display(path)}: expected a JSON object with a 'schema' key")
    return data


def _num(value: Any) -> float | None:
    """A finite number or None (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return value


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _ops(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): int(v) for k, v in value.items() if _num(v) is not None}


def _from_build(path: Path, data: dict[str, Any]) -> list[ArtifactFacts]:
    """One ArtifactFacts per entry of build.json's "artifacts" (paths relative to its folder)."""
    folder = path.parent
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, dict):
        raise InputError(f"{display(path)}: build.json has no 'artifacts' object")
    top_eval = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    resolved: dict[str, Path] = {}
    for role, entry in artifacts.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InputError(f"{display(path)}: artifact {role!r} has no 'path'")
        resolved[role] = Path(os.path.normpath(folder / entry["path"]))
    cosine = _build_cosine(data.get("agreement"), "compressed vs dense torch model")
    out = []
    for role, entry in artifacts.items():
        target = resolved[role]
        fmt = str(entry.get("format") or ARTIFACT_FORMATS.get(target.suffix.lower(), "onnx"))
        evaluation = entry.get("eval") if isinstance(entry.get("eval"), dict) else top_eval.get(role)
        accuracy = _num(evaluation.get("accuracy")) if isinstance(evaluation, dict) else None
        ref_role = "dense_tflite" if fmt == "tflite" and "dense_tflite" in resolved else "dense"
        reference = resolved.get(ref_role)
        out.append(ArtifactFacts(
            path=target, format=fmt, role=str(role), bytes=_int(entry.get("bytes")),
            params=_int(entry.get("params")), ops=_ops(entry.get("ops")), accuracy=accuracy,
            reference=reference if reference != target else None, sources=[display(path)],
            **(_build_cosine(entry.get("agreement"), f"{entry['path']} vs dense torch model")
               or (cosine if role == "compressed" else {}))))
    return out


def _build_cosine(agreement: Any, what: str) -> dict[str, Any]:
    """A cosine to the dense model from a build.json "agreement" list: the top-level one (compressed vs
    dense torch outputs) or an artifact's (the file's own outputs, e.g. int8); on the --eval data when it
    was given, else on the first (random) inputs."""
    rows = [a for a in agreement if isinstance(a, dict) and _num(a.get("cosine_mean")) is not None] \
        if isinstance(agreement, list) else []
    row = preferred_agreement(rows)
    if row is None:
        return {}
    return {"cosine_mean": float(row["cosine_mean"]), "cosine_p5": _num(row.get("cosine_p5")),
            "cosine_from": f"build.json: {what}, {row.get('samples')} {row.get('inputs')} inputs"}


def _bench_path(raw: str, bench_dir: Path, cwd: Path) -> Path:
    """bench.json model paths are as typed when bench ran: try its folder, then the cwd."""
    if os.path.isabs(raw):
        return Path(os.path.normpath(raw))
    for base in (bench_dir, cwd):
        candidate = Path(os.path.normpath(base / raw))
        if candidate.exists():
            return candidate
    return Path(os.path.normpath(cwd / raw))


def _from_bench(path: Path, data: dict[str, Any], cwd: Path) -> list[ArtifactFacts]:
    """One ArtifactFacts per model of bench.json, with latency and peak RSS per batch."""
    models = data.get("models")
    results = data.get("results")
    if not isinstance(models, list) or not isinstance(results, list):
        raise InputError(f"{display(path)}: bench.json needs 'models' and 'results' lists")
    by_name: dict[str, ArtifactFacts] = {}
    for entry in models:
        if not isinstance(entry, dict) or not isinstance(entry.get("path") or entry.get("name"), str):
            raise InputError(f"{display(path)}: a model entry has no 'path'")
        target = _bench_path(entry.get("path") or entry["name"], path.parent, cwd)
        name = str(entry.get("name") or target.name)
        fmt = str(entry.get("format") or ARTIFACT_FORMATS.get(target.suffix.lower(), "onnx"))
        by_name[name] = ArtifactFacts(path=target, format=fmt, bytes=_int(entry.get("bytes")),
                                      params=_int(entry.get("params")), ops=_ops(entry.get("ops")),
                                      sources=[display(path)])
    reference = by_name.get(str(data.get("reference")))
    for facts in by_name.values():
        if reference is not None and facts is not reference:
            facts.reference = reference.path
    for result in results:
        if not isinstance(result, dict):
            continue
        facts = by_name.get(str(result.get("model")))
        batch = _int(result.get("batch"))
        if facts is None or batch is None:
            continue
        block = (batch, _int(result.get("seq")))
        latency = result.get("latency_ms")
        if isinstance(latency, dict):
            stats = {k: float(v) for k, v in latency.items() if _num(v) is not None}
            if stats:
                facts.latency_ms.setdefault(block, stats)
        rss = _num(result.get("peak_rss_mib"))
        if rss is not None:
            facts.peak_rss_mib.setdefault(block, float(rss))
        accuracy = _num(result.get("accuracy"))
        if accuracy is not None and facts.accuracy is None:
            facts.accuracy = float(accuracy)
        cosine = _num(result.get("cosine_mean"))
        if cosine is not None and facts.cosine_mean is None:
            facts.cosine_mean, facts.cosine_p5, facts.cosine_from = float(cosine), _num(result.get("cosine_p5")), BENCH_COSINE
    return list(by_name.values())


def read_artifact(path: Path) -> ArtifactFacts:
    """Facts read from a model file: size always; parameters and ops for ONNX."""
    fmt = ARTIFACT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{display(path)}: not a .onnx or .tflite file")
    if fmt == "onnx":
        from edgecompress import onnxinfo  # imports onnx, only needed for bare .onnx paths

        model = onnxinfo.load_model(path)
        return ArtifactFacts(path=path, format=fmt, bytes=onnxinfo.file_bytes(model, path),
                             params=onnxinfo.count_params(model), ops=onnxinfo.ops_by_type(model),
                             sources=[display(path)])
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {display(path)}: {exc}") from None
    return ArtifactFacts(path=path, format=fmt, bytes=size, sources=[display(path)])


def discover(patterns: Sequence[str], base_dir: Path) -> list[Path]:
    """Artifact files on disk matching budget globs, plus build.json / bench.json beside them
    (used when no PATHS are given, so ``edgecompress check`` alone works from pyproject.toml)."""
    found: list[Path] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
        for hit in sorted(glob.glob(full, recursive=True)):
            path = Path(os.path.normpath(hit))
            if path.suffix.lower() in ARTIFACT_FORMATS and path.is_file() and path not in found:
                found.append(path)
    extra = []
    for folder in dict.fromkeys(p.parent for p in found):
        extra.extend(p for p in (folder / "build.json", folder / "bench.json") if p.is_file())
    return extra + found
