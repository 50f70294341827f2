"""``edgecompress check`` end to end: exit codes, --json, --markdown, GitHub step summary and
annotations, no torch import, and the shipped GitHub Actions files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecompress.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_build(folder: Path, *, nbytes: int = 40_000, accuracy: float = 0.95) -> Path:
    """A hand-written build.json (docs/formats.md): dense + compressed artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    def entry(path: str, size: int, params: int, acc: float) -> dict[str, Any]:
        return {"path": path, "format": "onnx", "bytes": size, "params": params, "ops": {"Gemm": 3},
                "eval": {"dataset": "digits:test", "samples": 360, "accuracy": acc, "macro_f1": acc}}
    data = {"schema": "edgecompress.build/1", "name": "m",
            "artifacts": {"dense": entry("m.dense.onnx", 340_000, 85_000, 0.99),
                          "compressed": entry("m.onnx", nbytes, 9_000, accuracy)}}
    (folder / "build.json").write_text(json.dumps(data))
    return folder / "build.json"


BUDGETS = '''[budgets."build/m.onnx"]
max_size = "50 kB"
max_growth = "5%"
min_accuracy = 0.9
'''


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with budgets.toml, build/build.json and main/build.json (the baseline)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    (tmp_path / "budgets.toml").write_text(BUDGETS)
    write_build(tmp_path / "build")
    write_build(tmp_path / "main", nbytes=39_000)
    return tmp_path


def test_all_budgets_met_exits_0(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "build/build.json", "--config", "budgets.toml", "--baseline", "main/build.json"],
                         capsys)
    assert code == 0, err
    assert "build/m.onnx" in out and "size growth" in out and "+2.56%" in out
    assert "✓ all 3 budget checks passed" in out
    assert err == ""


def test_exceeded_budget_exits_1(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_build(project / "build", nbytes=45_000)
    code, out, err = run(["check", "build/build.json", "--config", "budgets.toml", "--baseline", "main/build.json"],
                         capsys)
    assert code == 1
    assert "✗ 1 of 3 budget checks failed" in out
    assert "+15.38%" in out
    assert err.startswith("error: 1 budget check failed: build/m.onnx size growth")
    assert "Traceback" not in err


def test_path_matching_nothing_exits_1(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "build/build.json", "build/bench.json", "--config", "budgets.toml"], capsys)
    assert code == 1 and "matched no file" in out


def test_glob_matching_nothing_exits_1(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "budgets.toml").write_text('[budgets."dist/*.onnx"]\nmax_size = "1 MB"\n')
    code, out, _ = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 1 and "no artifact matched" in out


def test_bad_config_exits_2_with_the_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "budgets.toml").write_text('[budgets."build/m.onnx"]\nmax_size = "2 MB"\nmax_sise = "3 MB"\n')
    code, out, err = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: budgets.toml:3: unknown key 'max_sise'")
    assert "Traceback" not in err


def test_bad_unit_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "budgets.toml").write_text('[budgets."build/m.onnx"]\n\nmax_size = "2 MiBs"\n')
    code, _, err = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 2 and "budgets.toml:3:" in err and "unknown unit 'MiBs'" in err


def test_unreadable_build_json_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "build" / "build.json").write_text('{"schema": "edgecompress.build/1",\n "artifacts": }')
    code, _, err = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 2 and "build/build.json:2: invalid JSON" in err


def test_missing_config_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", "build/build.json"], capsys)  # no pyproject.toml anywhere up to /tmp's root
    assert code == 2 and "no budgets" in err


def test_pyproject_is_used_by_default(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "pyproject.toml").write_text("[tool.edgecompress]\n" + BUDGETS.replace("[budgets.", "[tool.edgecompress.budgets."))
    code, out, _ = run(["check", "build/build.json"], capsys)
    assert code == 0 and "config pyproject.toml" in out


def test_json_report_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_build(project / "build", nbytes=60_000)
    code, _, _ = run(["check", "build/build.json", "--config", "budgets.toml", "--baseline", "main/build.json",
                      "--json", "out/report.json"], capsys)
    assert code == 1
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["schema"] == "edgecompress.check/1" and report["passed"] is False
    assert report["counts"] == {"pass": 1, "fail": 2, "warn": 0, "skip": 0}
    size = next(f for f in report["findings"] if f["budget"] == "max_size")
    assert size == {**size, "artifact": "build/m.onnx", "status": "fail", "value": 60_000, "limit": 50_000,
                    "line": 2}
    assert report["baseline"] == ["main/build.json"]
    assert "python" in report["provenance"]
    assert not list((project / "out").glob(".*tmp"))  # atomic write left no temporary file


def test_json_to_stdout_moves_the_table_to_stderr(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "build/build.json", "--config", "budgets.toml", "--json", "-"], capsys)
    assert code == 0
    assert json.loads(out)["passed"] is True
    assert "budget checks passed" in err


def test_report_files_get_the_umask_mode(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json/--markdown files are 0644 under umask 022, like any other output (not mkstemp's 0600)."""
    old = os.umask(0o022)
    try:
        code, _, _ = run(["check", "build/build.json", "--config", "budgets.toml", "--json", "r.json",
                          "--markdown", "r.md"], capsys)
    finally:
        os.umask(old)
    assert code == 0
    assert stat.S_IMODE((project / "r.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((project / "r.md").stat().st_mode) == 0o644


def test_markdown_file_and_stdout_conflict(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["check", "build/build.json", "--config", "budgets.toml", "--markdown", "r.md"], capsys)
    assert code == 0 and (project / "r.md").read_text().startswith("### edgecompress check: ✓")
    code, _, err = run(["check", "build/build.json", "--config", "budgets.toml", "--markdown", "-", "--json", "-"],
                       capsys)
    assert code == 2 and "only one of" in err


def test_github_step_summary_is_appended(project: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    summary = project / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_build(project / "build", nbytes=45_000)
    code, _, _ = run(["check", "build/build.json", "--config", "budgets.toml", "--baseline", "main/build.json"],
                     capsys)
    assert code == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n### edgecompress check: ✗ 1 of 3 budget checks failed")
    assert "| ❌ | `build/m.onnx` | size growth | +15.38% (+6 kB) | ≤ +5% | baseline 39 kB |" in text
    assert "| ✅ | `build/m.onnx` | size | 45 kB | ≤ 50 kB |  |" in text


def test_github_annotations_point_at_the_budget_line(project: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    write_build(project / "build", accuracy=0.5)
    code, out, _ = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 1
    assert "::error file=budgets.toml,line=4,title=edgecompress check::build/m.onnx: accuracy 50%" in out


def test_latency_flag(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "budgets.toml").write_text('[budgets."build/m.onnx"]\nmax_latency_p50_ms = 1\n')
    code, out, _ = run(["check", "build/build.json", "--config", "budgets.toml"], capsys)
    assert code == 0 and "⚠" in out and "1 warning" in out
    code, _, _ = run(["check", "build/build.json", "--config", "budgets.toml", "--fail-on-latency"], capsys)
    assert code == 1


def test_help_has_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "--help"], capsys)
    assert code == 0
    for text in ("--baseline", "--json", "--fail-on-latency", "Examples:", "Exit codes", 'max_size = "2 MB"'):
        assert text in out


def test_check_does_not_import_torch(project: Path) -> None:
    script = ("import sys\nfrom edgecompress.cli import main\n"
              "try:\n    main(['check', 'build/build.json', '--config', 'budgets.toml', '--json', 'r.json'])\n"
              "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "assert 'torch' not in sys.modules, 'torch imported'\n"
              "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------- deploy/github-actions

def test_github_actions_files_are_valid_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    folder = REPO / "deploy" / "github-actions"
    action = yaml.safe_load((folder / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert all("shell" in s for s in steps if "run" in s)  # composite run steps need a shell
    assert any("edgecompress check" in s.get("run", "") for s in steps)
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps)
    workflow = yaml.safe_load((folder / "model-size-gate.yml").read_text())
    job = next(iter(workflow["jobs"].values()))
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "edgecompress build" in runs and "edgecompress check" in runs and "gh run download" in runs
    uses = [s.get("uses", "") for s in job["steps"]]
    assert sum(u.startswith("actions/upload-artifact@") for u in uses) == 2  # report + baseline


def test_min_cosine_reads_build_agreement_and_fails_with_one_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An embedding build: the compressed artifact's cosine is build.json's compressed-vs-dense agreement
    (the eval inputs when present); the dense reference is skipped; below the limit: exit 1, one line."""
    path = write_build(project / "emb")
    data = json.loads(path.read_text())
    data["agreement"] = [{"inputs": "random", "samples": 64, "output": "e", "kind": "embedding", "measure": "cosine",
                          "cosine_mean": 0.99, "cosine_p5": 0.98},
                         {"inputs": "eval", "samples": 500, "output": "e", "kind": "embedding", "measure": "cosine",
                          "cosine_mean": 0.9512, "cosine_p5": 0.9123}]
    path.write_text(json.dumps(data))
    (project / "cos.toml").write_text('[budgets."emb/*.onnx"]\nmin_cosine = 0.95\nmin_cosine_p5 = 0.9\n')
    code, out, err = run(["check", "emb/build.json", "--config", "cos.toml", "--json", "cos.json"], capsys)
    assert code == 0, err
    rows = {(f["artifact"], f["budget"]): f for f in json.loads((project / "cos.json").read_text())["findings"]}
    assert rows[("emb/m.onnx", "min_cosine")]["value"] == 0.9512 and rows[("emb/m.onnx", "min_cosine")]["status"] == "pass"
    assert "500 eval inputs" in rows[("emb/m.onnx", "min_cosine")]["note"]
    assert rows[("emb/m.dense.onnx", "min_cosine_p5")]["status"] == "skip"
    (project / "cos.toml").write_text('[budgets."emb/m.onnx"]\nmin_cosine = 0.97\n')
    code, out, err = run(["check", "emb/build.json", "--config", "cos.toml"], capsys)
    assert code == 1 and err == "error: 1 budget check failed: emb/m.onnx mean cosine 0.9512 (limit ≥ 0.9700)\n"
    # a build without an embedding output has no cosine to check: fails, saying what to pass
    (project / "cos.toml").write_text('[budgets."build/m.onnx"]\nmin_cosine = 0.97\n')
    code, out, err = run(["check", "build/build.json", "--config", "cos.toml"], capsys)
    assert code == 1 and "cosine unknown" in out
    (project / "cos.toml").write_text('[budgets."emb/m.onnx"]\nmin_cosine = 97\n')
    code, out, err = run(["check", "emb/build.json", "--config", "cos.toml"], capsys)
    assert code == 2 and "cos.toml:2" in err and "from -1 to 1" in err
