"""edgecompress budget mode in-process, with the same boundaries as aimet_worker.py: the reference MLP from the
same state_dict, the head left dense (AIMET "head out"), validation accuracy as the evaluation; per target the CPU
seconds of the compression call alone (SVDs, sensitivity table, candidate evaluations, the final model), split into
phases from the progress messages. Each target starts from fresh spectra and a fresh context, as a second
`edgecompress build` would: only the sensitivity table on disk (lowrank.table_cache.table_cache_dir, here a folder in
WORK that starts empty) carries over, as AIMET's saved_eval_scores_dict does. Runs in the project venv.
Usage: python edgecompress_search.py WORK DROP[,DROP...] [CONFIDENCE]"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import torch

from common import accuracy, emit, linear_params, reference_mlp, split


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def search(work: Path, drop: float, confidence: float) -> dict:
    from edgecompress.coverage import exclude_pattern
    from edgecompress.lowrank.budget import Budget, budget_compress
    from edgecompress.lowrank.policies import PolicyContext, make_policy
    from edgecompress.lowrank.spectrum import model_spectra

    model = reference_mlp(work / "reference.pt")
    val_x, val_y = split(work, "val")
    marks: dict[str, float] = {}

    def progress(message: str) -> None:
        phase = message.split(":")[0]
        marks.setdefault(phase, cpu_s())

    start_wall, start = time.perf_counter(), cpu_s()
    spectra = model_spectra(model, exclude_pattern(["4"], None))
    result = budget_compress(model, make_policy("energy"), spectra, Budget(max_accuracy_drop=drop),
                             context=PolicyContext(on_progress=progress), confidence=confidence,
                             inputs=val_x.numpy(), evaluate=lambda m: (m(val_x).argmax(1) == val_y).numpy())
    end = cpu_s()
    table_start = marks.get("sensitivity", marks.get("budget search", end))
    search_start = marks.get("budget search", end)
    return {"model": result.model, "wall_s": round(time.perf_counter() - start_wall, 2), "cpu_s": round(end - start, 2),
            "phases_cpu_s": {"svd_and_setup": round(table_start - start, 2),
                             "sensitivity_table": round(search_start - table_start, 2),
                             "candidate_evaluations": round(end - search_start, 2)},
            "candidates_evaluated": len(result.record["path"]),
            "table_cache": result.record.get("table_cache", {}).get("status", "in-process")}


def main() -> None:
    work, drops = Path(sys.argv[1]), [float(d) for d in sys.argv[2].split(",")]
    confidence = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    os.environ["EDGECOMPRESS_TABLE_CACHE"] = str(work / "edgecompress-table-cache")
    torch.set_num_threads(1)
    test_x, test_y = split(work, "test")
    rows = []
    for drop in drops:
        from edgecompress.export.onnx import export_onnx

        row = search(work, drop, confidence)
        model = row.pop("model")
        path = work / f"ec-search-drop-{drop}-c{confidence}.onnx"
        export_onnx(model, (1, 784), path)
        rows.append({"method": f"edgecompress budget_compress drop<={drop} confidence {confidence} head out (in-process)",
                     "linear_params": linear_params(model), "torch_accuracy": accuracy(model, test_x, test_y),
                     "file": path.name, "user_writes": "~12 lines of library calls (the CLI's search, no export/verify)",
                     **row})
    emit(rows)


if __name__ == "__main__":
    main()
