"""NNCF 3.4 weight compression (its ONNX backend, what NNCF documents for onnxruntime deployment) of the dense
export and of edgecompress's low-rank export: int8 asymmetric (NNCF's default), int4 symmetric and asymmetric with
the largest group size that divides every layer's input width. Runs in /work/envs/nncf.
Usage: python nncf_worker.py WORK DENSE.onnx LOWRANK.onnx"""

from __future__ import annotations

import sys
from pathlib import Path

import nncf
import onnx

from common import attempt, emit

MODES = (("int8 asym", nncf.CompressWeightsMode.INT8_ASYM, {}),
         ("int4 sym g16", nncf.CompressWeightsMode.INT4_SYM, {"group_size": 16, "ratio": 1.0, "all_layers": True}),
         ("int4 asym g16", nncf.CompressWeightsMode.INT4_ASYM, {"group_size": 16, "ratio": 1.0, "all_layers": True}))


def main() -> None:
    work, sources = Path(sys.argv[1]), {"dense": Path(sys.argv[2]), "low rank (edgecompress)": Path(sys.argv[3])}
    rows = []
    for base, source in sources.items():
        for label, mode, options in MODES:
            target = work / f"nncf-{source.stem}-{label.replace(' ', '-')}.onnx"
            def run(row: dict, source: Path = source, target: Path = target, mode: object = mode,
                    options: dict = options) -> None:
                onnx.save(nncf.compress_weights(onnx.load(str(source)), mode=mode, **options), str(target))
                row["file"] = target.name

            row = attempt({"method": f"NNCF {label} on {base}"}, run)
            rows.append(row)
    emit(rows)


if __name__ == "__main__":
    main()
