"""Where and how a result was produced: versions, machine, command, git commit. Torch-free."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("edgecompress", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "numpy",
            "litert-torch", "ai-edge-litert")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, or None when it is absent (never imports it)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """Human CPU name from /proc/cpuinfo on Linux, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":")[0].strip().lower()
            if key in ("model name", "hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_first(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def cpu_governor() -> str | None:
    """Linux cpufreq governor of CPU 0 when readable."""
    return _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def cpu_temperature_c() -> float | None:
    """First thermal zone's temperature in °C when readable (Raspberry Pi: the SoC)."""
    raw = _read_first("/sys/class/thermal/thermal_zone0/temp")
    try:
        return round(int(raw) / 1000.0, 1) if raw else None
    except ValueError:
        return None


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD commit of the git repository around ``cwd``, None outside a repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def command_line() -> str:
    """The command as typed (best effort)."""
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    if prog in ("__main__.py", "-c"):
        prog = "edgecompress"
    return " ".join([prog, *sys.argv[1:]])


def collect(**extra: Any) -> dict[str, Any]:
    """One provenance record: versions, OS, CPU, Python, git commit, UTC timestamp, command."""
    record: dict[str, Any] = {
        "versions": package_versions(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
    }
    record.update(extra)
    return record
