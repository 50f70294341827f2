"""AIMET 2.42 weight SVD, auto mode (greedy per-layer compression-ratio selection, memory cost) on the reference MLP,
the classifier head compressible ("head in", AIMET's default: first target only) or ignored ("head out", every target);
AIMET_CANDIDATES (default 10) compression-ratio candidates per layer; AIMET_HEADS (default "in,out") which head
settings to run. The greedy search's per-layer
evaluation table is computed once per head setting and reused across targets (AIMET's saved_eval_scores_dict), as a
user would. Runs in /work/envs/aimet (aimet-torch imports torchvision; a stub package stands in for it there, see
peers.py: a real torchvision wheel would replace torch with a CUDA build).
Usage: python aimet_worker.py WORK TARGET[,TARGET...]  (targets: AIMET's target_comp_ratio, e.g. 0.077)"""

from __future__ import annotations

import os
import resource
import sys
import time
from decimal import Decimal
from pathlib import Path

import torch

from common import accuracy, attempt, emit, export, linear_params, reference_mlp, split


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compress(work: Path, target: float, head_in: bool, candidates: int, table: Path) -> tuple[torch.nn.Module, object]:
    from aimet_common.defs import CompressionScheme, CostMetric, GreedySelectionParameters, RankSelectScheme
    from aimet_torch.compress import ModelCompressor
    from aimet_torch.defs import WeightSvdParameters

    model = reference_mlp(work / "reference.pt")
    val_x, val_y = split(work, "val")

    def evaluate(candidate: torch.nn.Module, iterations: int, use_cuda: bool = False) -> float:
        return accuracy(candidate.eval(), val_x, val_y)

    greedy = GreedySelectionParameters(target_comp_ratio=Decimal(str(target)), num_comp_ratio_candidates=candidates,
                                       saved_eval_scores_dict=str(table) if table.exists() else None)
    ignore = [] if head_in else [model[4]]
    params = WeightSvdParameters(WeightSvdParameters.Mode.auto,
                                 WeightSvdParameters.AutoModeParams(RankSelectScheme.greedy, greedy,
                                                                    modules_to_ignore=ignore))
    return ModelCompressor.compress_model(model, eval_callback=evaluate, eval_iterations=1, input_shape=(1, 784),
                                          compress_scheme=CompressionScheme.weight_svd, cost_metric=CostMetric.memory,
                                          parameters=params)


def main() -> None:
    work, targets = Path(sys.argv[1]), [float(t) for t in sys.argv[2].split(",")]
    candidates = int(os.environ.get("AIMET_CANDIDATES", "10"))
    test_x, test_y = split(work, "test")
    rows = []
    for head_in in [head == "in" for head in os.environ.get("AIMET_HEADS", "in,out").split(",")]:
        table = work / f"aimet-eval-table-head-{'in' if head_in else 'out'}.pkl"
        for target in targets if not head_in else targets[:1]:  # head in: AIMET's default, at the first target
            label = f"AIMET weight SVD greedy target {target} head {'in' if head_in else 'out'}"

            def run(row: dict, target: float = target, head_in: bool = head_in, table: Path = table) -> None:
                start, cpu = time.perf_counter(), cpu_s()
                had_table = table.exists()
                compressed, _ = compress(work, target, head_in, candidates, table)
                row["wall_s"], row["cpu_s"] = round(time.perf_counter() - start, 1), round(cpu_s() - cpu, 1)
                row["reused_table"] = had_table
                saved = Path("./data/greedy_selection_eval_scores_dict.pkl")  # where AIMET pickles its table
                if saved.exists():  # keep it per head setting (the tables differ), out of the next run's way
                    saved.replace(table) if not table.exists() else saved.unlink()
                row["linear_params"] = linear_params(compressed)
                row["torch_accuracy"] = accuracy(compressed, test_x, test_y)
                row["file"] = export(compressed, work / f"aimet-{target}-head-{'in' if head_in else 'out'}.onnx").name

            row = attempt({"method": label, "candidates": candidates}, run)
            rows.append(row)
    emit(rows)


if __name__ == "__main__":
    main()
