"""``edgecompress sweep``: config parsing, entry identity, and a real sweep on a local 2-worker Ray
instance (a failing entry, a worker killed mid-sweep, a resumed re-run, Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgecompress.errors import ConfigError
from edgecompress.sweep import load_sweep, sweep
from edgecompress.sweep.entries import resolve_entries

FACTORY = '''
import os, time
from pathlib import Path
from edgecompress.models import mlp

HERE = Path(__file__).parent

def make():
    return mlp((64, 32, 10))

def make_killable():
    """Records its worker's pid; the first attempt waits (to be killed), the retry goes on."""
    marks = HERE / "killable.pids"
    first = not marks.exists()
    with marks.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    if first:
        time.sleep(600)
    return make()

def make_sleepy():
    (HERE / "sleepy.started").write_text(str(os.getpid()))
    time.sleep(600)
    return make()
'''


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------ config


def test_grid_and_entries_expand_with_labels(tmp_path: Path) -> None:
    config = load_sweep(write(tmp_path / "s.toml", """
        [defaults]
        model = "m.pt2"
        [[grid]]
        policy = "uniform"
        rank = [4, 8]
        quantize = ["int8", "int8"]
        [[entry]]
        name = "mine"
        policy = "energy"
        threshold = 0.9
        """))
    labels = [e.label for e in config.entries]
    assert labels == ["uniform-rank4-quantizeint8", "uniform-rank4-quantizeint8-2", "uniform-rank8-quantizeint8",
                      "uniform-rank8-quantizeint8-2", "mine"]
    assert config.entries[2].options == {"model": "m.pt2", "policy": "uniform", "rank": 8, "quantize": "int8"}
    assert config.out == tmp_path / "s-sweep"
    assert config.entries[4].source == f"{tmp_path / 's.toml'}:8"


@pytest.mark.parametrize(("text", "expected"), [
    ("[defaults]\nmodel = 'a.pt2'\n[[grid]]\npolicy = 'uniform'\nrnak = [4, 8]\n", r"s\.toml:5: unknown option 'rnak' \(did you mean 'rank'\?\)"),
    ("[defaults]\nmodel = 'a.pt2'\n[[entry]]\nrank = '8'\n", r"s\.toml:4: rank must be a int, got '8'"),
    ("[[grid]]\nmodel = 'a.pt2'\nrank = []\n", r"s\.toml:3: grid axis 'rank' is an empty list"),
    ("[sweeep]\n", r"s\.toml:1: unknown section \[sweeep\] \(did you mean 'sweep'\?\)"),
    ("[[entry]]\npolicy = 'uniform'\n", r"s\.toml:1: entry 'uniform' has no model"),
    ("[sweep]\nout = 'x'\n", r"no entries"),
    ("[[entry]\n", r"s\.toml:1: invalid TOML"),
    ("[[entry]]\nmodel = 'a.pt2'\nname = '../../etc'\n", r"s\.toml:3: name '\.\./\.\./etc' must be a folder name"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_sweep(write(tmp_path / "s.toml", text))


def test_policy_option_of_another_policy_is_a_config_error(tmp_path: Path, small_mlp_pt2: Path) -> None:
    config = load_sweep(write(tmp_path / "s.toml", f"""
        [[entry]]
        model = "{small_mlp_pt2}"
        policy = "energy"
        rank = 8
        """))
    with pytest.raises(ConfigError, match=r"s\.toml:2: rank is not an option of policy energy \(it takes: threshold\)"):
        resolve_entries(config, tmp_path / "out", 1)


def test_identity_follows_resolved_options_and_model_bytes(tmp_path: Path, small_mlp_pt2: Path) -> None:
    model = tmp_path / "m.pt2"
    model.write_bytes(small_mlp_pt2.read_bytes())
    path = write(tmp_path / "s.toml", """
        [defaults]
        model = "m.pt2"
        [[entry]]
        name = "implicit"
        policy = "uniform"
        [[entry]]
        name = "explicit"
        policy = "uniform"
        rank = 32
        [[entry]]
        name = "other"
        policy = "uniform"
        rank = 16
        [[entry]]
        name = "missing"
        model = "nope.pt2"
        [[entry]]
        name = "benched"
        policy = "uniform"
        bench = true
        [[entry]]
        name = "benched-2000"
        policy = "uniform"
        bench = true
        bench_runs = 2000
        [[entry]]
        name = "exact"
        policy = "uniform"
        svd = "exact"
        int4_agreement = 0.9
        sequential_refit = true
        calib = "digits:train"
        """)
    first = resolve_entries(load_sweep(path), tmp_path / "out", 1)
    implicit, explicit, other, missing, benched, longer, exact = first
    assert implicit.identity == explicit.identity  # rank 32 is uniform's default
    assert len({implicit.identity, benched.identity, longer.identity, exact.identity}) == 4
    assert longer.bench_runs == 2000 and exact.config.svd == "exact" and exact.config.int4_min_agreement == 0.9
    assert exact.config.sequential_refit is True
    assert other.identity != implicit.identity
    assert missing.identity is None and "model file not found" in str(missing.error)
    assert implicit.config.eval_data is None and implicit.folder == tmp_path / "out" / "entries" / "implicit"
    model.write_bytes(model.read_bytes() + b"\0")  # another model (the zip ignores the trailing byte)
    assert resolve_entries(load_sweep(path), tmp_path / "out", 1)[0].identity != implicit.identity


def test_missing_ray_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from edgecompress.cli import main

    path = write(tmp_path / "s.toml", "[[entry]]\nmodel = 'm.pt2'\n")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: edgecompress sweep needs the optional extra: pip install 'edgecompress[sweep]'"]
    assert not (tmp_path / "s-sweep").exists()


def test_results_table_marks_the_pareto_front_and_renders(tmp_path: Path) -> None:
    from edgecompress.sweep.results import pareto_front, results_record, write_results

    def row(label: str, size: int, acc: float) -> dict[str, Any]:
        return {"entry": label, "status": "ok", "bytes": size, "accuracy": acc, "dense_bytes": 900,
                "dense_accuracy": 0.95, "linear_params": size, "linear_params_dense": 900, "seconds": 1.0}

    rows = [row("small", 100, 0.80), row("mid", 200, 0.93), row("dominated", 300, 0.90), row("big", 400, 0.95),
            {"entry": "bad", "status": "failed", "error": "dataset not found: x.npz"}]
    assert pareto_front(rows) == {"small", "mid", "big"}
    counts = {"total": 5, "done": 4, "failed": 1, "skipped": 0}
    record = results_record("t", "t.toml", rows, counts, 1.0, {}, False)
    paths = write_results(record, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "results.html"]
    markdown = (tmp_path / "results.md").read_text()
    assert "| mid ★" in markdown and "| dominated " in markdown and "dataset not found: x.npz" in markdown
    assert "<img" in (tmp_path / "results.html").read_text()


def test_embedding_sweep_table_shows_cosine_and_its_pareto_front(tmp_path: Path) -> None:
    """Entries of an embedding model without labels: the table shows each file's mean / p5 cosine to the dense
    model (not "n/a"), the Pareto front and the plot use it; summarize reads it from build.json."""
    from edgecompress.sweep.results import pareto_front, results_record, write_results
    from edgecompress.sweep.task import summarize

    def record(size: int, cosine: float) -> dict[str, Any]:
        agreement = [{"inputs": "random", "measure": "cosine", "cosine_mean": 0.5, "cosine_p5": 0.4},
                     {"inputs": "eval", "measure": "cosine", "cosine_mean": cosine, "cosine_p5": cosine - 0.05}]
        return {"artifacts": {"dense": {"bytes": 900}, "compressed": {"bytes": size, "agreement": agreement}}}

    rows = [{"entry": label, "status": "ok", "seconds": 1.0, **summarize(record(size, cosine))}
            for label, size, cosine in (("r64", 100, 0.74), ("r128", 200, 0.91), ("worse", 300, 0.90))]
    assert rows[1]["cosine"] == 0.91 and rows[1]["cosine_p5"] == pytest.approx(0.86) and rows[1]["accuracy"] is None
    assert pareto_front(rows) == {"r64", "r128"}
    counts = {"total": 3, "done": 3, "failed": 0, "skipped": 0}
    write_results(results_record("e", "e.toml", rows, counts, 1.0, {}, False), tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "cos 0.9100" in markdown and "p5 0.8600" in markdown and "| r128 ★" in markdown
    assert "<img" in (tmp_path / "results.html").read_text()


def test_help_and_package_import_neither_torch_nor_ray() -> None:
    code = ("import sys\nfrom edgecompress.cli import main\nimport edgecompress.sweep\n"
            "try:\n    main(['sweep', '--help'])\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Examples:" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------ on Ray


@pytest.fixture(scope="module")
def ray_local() -> Any:
    """One local Ray instance with 2 CPUs for the module (sweeps use it instead of starting their own)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 64-32-10 digits MLP (a state_dict) and the factory module that builds it."""
    import torch

    from edgecompress.data import load_digits
    from edgecompress.models import mlp, train_classifier

    folder = tmp_path_factory.mktemp("sweep-model")
    (folder / "factory.py").write_text(FACTORY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = train_classifier(mlp((64, 32, 10)), load_digits("train"), epochs=10, lr=3e-3)
    torch.set_num_threads(threads)
    torch.save(model.state_dict(), folder / "tiny.pt")
    return folder


def _sweep_config(folder: Path) -> Path:
    return write(folder / "digits.toml", """
        [sweep]
        out = "out"
        [defaults]
        model = "tiny.pt"
        factory = "factory.py:make"
        eval = "digits:test"
        verify_samples = 32
        simplify = false
        [[grid]]
        policy = "uniform"
        rank = [2, 4, 8]
        [[entry]]
        name = "killed-once"
        factory = "factory.py:make_killable"
        policy = "energy"
        threshold = 0.9
        [[entry]]
        name = "broken"
        eval = "missing.npz"
        [[entry]]
        name = "uniform-16"
        policy = "uniform"
        rank = 16
        bench = true
        """)


def _kill_first_attempt(marks: Path, stop: threading.Event) -> None:
    """Kill (SIGKILL) the worker that runs the killable entry's first attempt."""
    while not stop.is_set():
        if marks.exists() and marks.read_text().strip():
            os.kill(int(marks.read_text().split()[0]), signal.SIGKILL)
            return
        time.sleep(0.2)


def test_sweep_on_two_workers_survives_failure_and_kill_then_resumes(ray_local: Any, digits_model: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _sweep_config(digits_model)
    marks = digits_model / "killable.pids"
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_attempt, args=(marks, stop), daemon=True)
    killer.start()
    seen: list[str] = []
    try:
        record = sweep(load_sweep(config_path), progress=lambda row, counts: seen.append(row["entry"]))
    finally:
        stop.set()
        killer.join()
    out = digits_model / "out"
    rows = {row["entry"]: row for row in record["entries"]}
    assert list(rows) == ["uniform-rank2", "uniform-rank4", "uniform-rank8", "killed-once", "broken", "uniform-16"]
    assert sorted(seen) == sorted(rows)
    assert record["counts"] == {"total": 6, "done": 5, "failed": 1, "skipped": 0}
    assert record["ray"]["cpus"] == 2 and record["ray"]["max_retries"] == 1
    # the failing entry: its one-line error, no folder; the others were not stopped by it
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"].startswith("dataset not found")
    assert not (out / "entries" / "broken").exists()
    # the killed worker's entry ran twice, in two processes, and finished
    pids = marks.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]
    assert rows["killed-once"]["status"] == "ok" and rows["killed-once"]["policy"] == "energy"
    for label in ("uniform-rank2", "uniform-rank4", "uniform-rank8", "uniform-16", "killed-once"):
        row = rows[label]
        assert row["status"] == "ok" and 0 < row["bytes"] < row["dense_bytes"]
        assert 0.0 <= row["accuracy"] <= 1.0
        build = json.loads((out / "entries" / label / "build.json").read_text())
        assert build["artifacts"]["compressed"]["bytes"] == row["bytes"]
    bench = json.loads((out / "entries" / "uniform-16" / "bench.json").read_text())
    assert len(bench["results"]) == 2 and rows["uniform-16"]["compressed_p50_ms"] > 0
    assert "bench.json" not in {p.name for p in (out / "entries" / "uniform-rank8").iterdir()}
    assert rows["uniform-rank4"]["linear_params"] < rows["uniform-rank8"]["linear_params"] < rows["uniform-16"]["linear_params"]
    # the table: the Pareto front is non-empty and not dominated; every entry in every format
    front = {label for label, row in rows.items() if row["pareto"]}
    assert front and "broken" not in front
    assert json.loads((out / "results.json").read_text())["entries"] == record["entries"]
    markdown = (out / "results.md").read_text()
    page = (out / "results.html").read_text()
    for label in rows:
        assert label in markdown and label in page
    assert "dataset not found" in markdown and "<img" in page and "p50 ms" in markdown
    # re-running the same config (through the CLI, joining this Ray instance) skips every finished entry;
    # the failed one runs again and prints its error line; exit 1 because an entry failed
    from edgecompress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(config_path), "--json", "-", "--quiet"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "error: entry broken: dataset not found: " in captured.err
    again = json.loads(captured.out)
    assert again["counts"] == {"total": 6, "done": 0, "failed": 1, "skipped": 5}
    assert len(marks.read_text().split()) == 2
    for row in again["entries"]:
        assert row.get("skipped") is (True if row["entry"] != "broken" else None)
        assert (row["bytes"] if row["status"] == "ok" else None) == (rows[row["entry"]].get("bytes"))


def test_ctrl_c_cancels_running_entries_and_keeps_what_finished(ray_local: Any, digits_model: Path) -> None:
    config_path = write(digits_model / "interrupt.toml", """
        [sweep]
        out = "interrupted"
        [defaults]
        model = "tiny.pt"
        eval = "digits:test"
        [[entry]]
        name = "sleepy"
        factory = "factory.py:make_sleepy"
        [[entry]]
        name = "broken"
        factory = "factory.py:make"
        eval = "missing.npz"
        """)

    def interrupt(row: dict[str, Any], counts: Any) -> None:
        while not (digits_model / "sleepy.started").exists():
            time.sleep(0.1)
        raise KeyboardInterrupt

    record = sweep(load_sweep(config_path), progress=interrupt)
    assert record["interrupted"] is True
    assert [row["entry"] for row in record["entries"]] == ["broken"]
    out = digits_model / "interrupted"
    assert json.loads((out / "results.json").read_text())["interrupted"] is True
    assert not (out / "entries" / "sleepy").exists()
    pid = int((digits_model / "sleepy.started").read_text())
    for _ in range(300):  # the cancelled entry's worker is killed (not left sleeping for 600 s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the worker of the cancelled entry (pid {pid}) is still running")


@pytest.mark.slow
def test_cli_ctrl_c_exits_130_and_keeps_results(digits_model: Path) -> None:
    """A real SIGINT to the command's process group (as a terminal's Ctrl-C) while entries run."""
    config_path = write(digits_model / "cli-interrupt.toml", """
        [sweep]
        out = "cli-interrupted"
        [defaults]
        model = "tiny.pt"
        factory = "factory.py:make"
        [[grid]]
        policy = "uniform"
        rank = [2, 4, 8, 16]
        """)
    out = digits_model / "cli-interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress", "sweep", str(config_path), "--workers", "2"],
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (out / "entries").is_dir():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted: kept" in err and "Traceback" not in err
    record = json.loads((out / "results.json").read_text())
    assert record["interrupted"] is True
    finished = {row["entry"] for row in record["entries"] if row["status"] == "ok"}
    assert {p.name for p in (out / "entries").iterdir()} == finished  # no unfinished folder is left


def test_sensitivity_table_on_ray_workers_equals_the_serial_table(ray_local: Any) -> None:
    """Budget mode's per-layer sensitivity evaluations run as Ray tasks (other processes) through the
    executor hook, and give the same table and candidate plans as the serial loop."""
    import numpy as np
    import torch

    from edgecompress.data import load_digits
    from edgecompress.lowrank.budget import Budget, lagrangian_plans, layer_curve, measure_sensitivity, sample_outputs
    from edgecompress.lowrank.spectrum import model_spectra
    from edgecompress.models import mlp
    from edgecompress.sweep.workers import ray_map, sensitivity_on_workers

    assert os.getpid() not in ray_map(lambda _: os.getpid(), [0, 1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mlp((64, 48, 32, 10)).eval()
    spectra = model_spectra(model)
    curves = {name: layer_curve(s, s, 1) for name, s in spectra.items()}
    outputs = sample_outputs(Budget(max_accuracy_drop=1.0), load_digits("train").x[:256], None)
    serial = measure_sensitivity(model, spectra, curves, {}, *outputs, measured_ranks=6)
    with sensitivity_on_workers():
        spread = measure_sensitivity(model, spectra, curves, {}, *outputs, measured_ranks=6)
    assert list(spread) == list(serial) and len(serial) == 3
    for name, curve in serial.items():
        assert sorted(spread[name].measured) == sorted(curve.measured) and len(curve.measured) > 1
        assert np.allclose(list(spread[name].measured.values()), list(curve.measured.values()), rtol=1e-6, atol=0)
    assert lagrangian_plans(spread) == lagrangian_plans(serial)


def test_budget_entry_measures_its_sensitivity_on_the_workers(ray_local: Any, digits_model: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget-mode entry run with sensitivity_on_workers (nested tasks on the 2-worker instance)
    finds the same ranks as the same entry built directly in this process (both measure their table:
    the first stores it in the test session's table cache, the direct build does not read it)."""
    from edgecompress.sweep.task import run_entry

    config_path = write(digits_model / "budget.toml", """
        [sweep]
        out = "budget-spread"
        [defaults]
        model = "tiny.pt"
        factory = "factory.py:make"
        [[entry]]
        name = "budget"
        policy = "data"
        calib = "digits:train"
        max_accuracy_drop = 2.0
        eval_split = "digits:val"
        allocation = "sensitivity"
        """)
    config = load_sweep(config_path)
    record = sweep(config, sensitivity_on_workers=True)
    assert record["ray"]["sensitivity_on_workers"] is True
    [row] = record["entries"]
    assert row["status"] == "ok", row.get("error")
    search = json.loads((digits_model / "budget-spread" / "entries" / "budget" / "build.json").read_text())["search"]
    assert search["table_cache"]["status"] == "stored"  # measured (on the workers), not reused
    monkeypatch.setenv("EDGECOMPRESS_TABLE_CACHE", "off")  # the direct build measures it serially again
    [direct] = resolve_entries(config, digits_model / "budget-direct", 1)
    assert run_entry(direct)["ranks"] == row["ranks"]
    assert "table_cache" not in json.loads((digits_model / "budget-direct" / "entries" / "budget" / "build.json")
                                           .read_text())["search"]
