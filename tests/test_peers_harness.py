"""benchmarks/peers.py's harness: the CPU-second cap on a peer's process (load-independent, the reason kept on the
row) and the CPU comparison with AIMET, whose boundaries and ratios come from the rows."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import cpu_summary, run_timed, worker  # noqa: E402


def test_cpu_cap_stops_a_busy_child_and_says_so(tmp_path: Path) -> None:
    proc, _, cpu = run_timed([sys.executable, "-c", "while True: pass"], tmp_path, cpu_cap=1)
    assert proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert "stopped at the 1 CPU-second cap" in proc.stderr and cpu >= 0.9


def test_a_capped_worker_is_a_row_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "spin.py"
    script.write_text("while True:\n    pass\n")
    rows = worker("spinner", Path(sys.executable), str(script), [], tmp_path, label="spin forever", cpu_cap=1)
    assert len(rows) == 1 and rows[0]["method"] == "spin forever"
    assert rows[0]["error"].startswith("exit -") and "CPU-second cap" in rows[0]["error"]


def row(tool: str, method: str, params: int, drop: float, cpu: float, **extra) -> dict:
    return {"tool": tool, "method": method, "linear_params": params, "drop_points": drop, "cpu_s": cpu, **extra}


def test_cpu_summary_compares_like_with_like_within_the_drop() -> None:
    rows = [row("AIMET", "AIMET target 0.1 head out", 400_000, 0.1, 100.0, reused_table=False, process_cpu_s=300),
            row("AIMET", "AIMET target 0.05 head out", 200_000, 0.9, 8.0, reused_table=True),  # misses the drop
            row("AIMET", "AIMET target 0.08 head out", 300_000, 0.3, 10.0, reused_table=True),
            row("edgecompress", "edgecompress budget_compress drop<=0.5 head out (in-process)", 100_000, 0.2, 5.0,
                table_cache="stored", phases_cpu_s={"svd_and_setup": 1, "sensitivity_table": 3,
                                                    "candidate_evaluations": 1}),
            row("edgecompress", "edgecompress budget_compress drop<=0.4 head out (in-process)", 120_000, 0.1, 2.0,
                table_cache="hit"),
            row("edgecompress", "edgecompress build model.pt2 [compressed]", 100_000, 0.2, 12.0)]
    text = "\n".join(cpu_summary(rows))
    assert "300,000 (6.2x) | 100,000 (18.6x) | 3.00x the reduction" in text  # AIMET's best within 0.5 pt
    assert "| 100.0 | 5.0 | **20.0x** |" in text  # first target: table + search on both sides
    assert "| 10.0–10.0 | 2.0–2.0 | **5.0–5.0x** |" in text  # table reused on both sides
    assert "imports, data loading, export and the test-set evaluation excluded for both" in text
    assert "(12.0 CPU s)" in text and "(300 CPU s)" in text


def test_cpu_summary_without_both_sides_says_so() -> None:
    assert "not in this run" in "\n".join(cpu_summary([row("AIMET", "AIMET head out", 1, 0.1, 1.0)]))
