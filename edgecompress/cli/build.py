"""``edgecompress build``: compress, export, simplify, verify (and evaluate) a model."""

from __future__ import annotations

from pathlib import Path

import click

from edgecompress.cli.build_view import emit_build
from edgecompress.cli.console import console, stage_spinner
from edgecompress.cli.help import GroupedCommand
from edgecompress.errors import InputError

POLICY_NAMES = ["energy", "entropy", "uniform", "data", "ddlr-convex", "svd-training"]
TARGETS = ("onnx", "tflite")
INT8_WEIGHTS = ("auto", "per-tensor", "per-channel")  # = export.quantize.INT8_WEIGHTS (no onnx import for --help)
SPARSITY_CHOICES = ("hoyer", "l1")  # = lowrank.training.SPARSITY, repeated so --help needs no torch import
SVD_POLICY_FLAGS = ("sparsity", "lambda_orth", "lambda_sparsity", "prune_energy")  # SvdTrainingPolicy


def parse_targets(text: str) -> tuple[str, ...]:
    """``"onnx,tflite"`` -> ("onnx", "tflite"), rejecting unknown targets."""
    targets = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise InputError(f"--target takes a comma list of {', '.join(TARGETS)}; got {text!r}")
    return targets


def split_training_flags(policy: str, flags: dict[str, float | int | str | None]) -> tuple[dict, dict]:
    """The training flags that were given, as (svd-training policy options, ``BuildConfig.training``);
    refuses svd-training-only flags with another policy."""
    given = {key: value for key, value in flags.items() if value is not None}
    svd_only = [key for key in (*SVD_POLICY_FLAGS, "finetune_epochs") if key in given]
    if svd_only and policy != "svd-training":
        names = ", ".join("--" + key.replace("_", "-") for key in svd_only)
        raise InputError(f"{names} only apply to --policy svd-training (with --train DATA)")
    return {key: given.pop(key) for key in SVD_POLICY_FLAGS if key in given}, given


def precheck(model: Path, out: Path) -> None:
    """Errors found without importing torch: a missing model file, ``--out`` being a file. The
    pipeline checks both again (with the same messages) for library callers."""
    if not model.exists():
        raise InputError(f"model file not found: {model}")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")


def parse_size(text: str | None) -> int | None:
    """``--target-size`` in bytes; accepts units like '2 MB' or '512KiB'."""
    if text is None:
        return None
    units = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgib")
    unit = raw[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise InputError(f"--target-size must be bytes or a size like '2 MB', got {text!r}") from None
    if value <= 0:
        raise InputError(f"--target-size must be positive, got {text!r}")
    return int(value)


DATA_SYNTAX = ("DATA is an .npz (x, y), an MNIST-style IDX folder, 'digits' or 'fashion-mnist'; add "
               ":train, :val or :test to pick a split, e.g. digits:train, ../mnist:val.")
HELP_GROUPS = (
    ("Model and inputs", "", ("--input-shape", "--input", "--seq", "--quality-output", "--factory", "--allow-pickle",
                              "--exclude", "--compress-head")),
    ("Rank policy", "", ("--policy", "--energy", "--rank", "--entropy-scale", "--max-error", "--no-refit",
                         "--round-to", "--whiten", "--sequential-refit", "--svd", "--threads")),
    ("Data", DATA_SYNTAX, ("--eval", "--eval-samples", "--calib", "--calib-samples")),
    ("Budget mode (search the ranks for one target)", "",
     ("--max-accuracy-drop", "--min-cosine", "--eval-split", "--target-params", "--target-size", "--allocation", "--confidence")),
    ("Training (fine-tuning, SVD training)", "",
     ("--finetune", "--train", "--epochs", "--distill-weight", "--val", "--lr", "--train-batch", "--temperature",
      "--train-threads", "--finetune-epochs", "--sparsity", "--lambda-orth", "--lambda-sparsity", "--prune-energy")),
    ("Distillation without labels (after any policy; single- and multi-input models)", "",
     ("--distill", "--distill-steps", "--distill-minutes", "--distill-lr", "--distill-batch")),
    ("Targets and quantization", "", ("--target", "--opset", "--no-simplify", "--quantize", "--int8-agreement",
                                      "--int4-agreement", "--int8-weights", "--batch")),
    ("Verification", "", ("--verify-samples", "--atol", "--rtol", "--seed")),
    ("Output", "", ("--out", "--name", "--json", "--bench", "--quiet", "--help")),
)


@click.command(cls=GroupedCommand, groups=HELP_GROUPS, context_settings={"show_default": True})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "target_text", default="onnx", help="Comma list of targets: onnx, tflite.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("build"), help="Output folder.")
@click.option("--name", default=None, help="Artifact stem (default: the model file's stem).")
@click.option("--input-shape", default=None, help="Input shape, e.g. 1x784 (inferred when the first layer is a Linear).")
@click.option("--input", "input_texts", multiple=True,
              help="A named input NAME:SHAPE[:DTYPE[:<HIGH]], repeatable, in forward-argument order; dims are SIZE or "
                   "NAME=SIZE (dynamic, SIZE for tracing), e.g. input_ids:batch=1,seq=128:int64 (ids < the first "
                   "Embedding's rows unless :<HIGH), attention_mask:batch=1,seq=128:int64 (a *mask gets 0/1 prefixes).")
@click.option("--seq", type=int, default=None, help="Tracing/verification size of every 'seq' axis (e.g. 128).")
@click.option("--quality-output", default=None,
              help="Output that compressed-vs-dense quality is judged on (default: an *embedding* output, else the first).")
@click.option("--factory", default=None, help="'module:function' or 'file.py:function' building the architecture for a state_dict.")
@click.option("--allow-pickle", is_flag=True, help="Allow loading a fully pickled module or a .pt2 with pickled members (runs arbitrary "
                   "code: trusted files only).")
@click.option("--policy", type=click.Choice(POLICY_NAMES), default="energy", help="Rank policy.")
@click.option("--energy", "threshold", type=float, default=0.95, help="energy: fraction of sum(s^2) to keep.")
@click.option("--rank", type=int, default=32, help="uniform: the rank of every layer.")
@click.option("--entropy-scale", "scale", type=float, default=1.0, help="entropy: rank = ceil(scale * exp(H)).")
@click.option("--max-error", type=float, default=0.1, help="data / ddlr-convex: max relative output error per layer.")
@click.option("--no-refit", is_flag=True, help="ddlr-convex: keep the convex solution's own (shrunk) weights instead of "
                                               "the closed-form data-aware factors at its rank.")
@click.option("--exclude", default=None, help="Regex on layer names to keep dense, e.g. 'head|classifier'.")
@click.option("--compress-head", is_flag=True,
              help="Also compress the last Linear layer (the classifier head; kept dense by default: "
                   "a 10-row head saves little and its truncation costs much accuracy).")
@click.option("--opset", type=int, default=18, help="ONNX opset (18 or higher).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--eval", "eval_data", default=None, metavar="DATA", help="Labelled data for accuracy: .npz (x, y), IDX folder, or 'digits'.")
@click.option("--eval-samples", type=int, default=None, help="Use only the first N eval samples.")
@click.option("--verify-samples", type=int, default=256, help="Random inputs used for verification.")
@click.option("--atol", type=float, default=1e-4, help="Verification: absolute tolerance.")
@click.option("--rtol", type=float, default=1e-3, help="Verification: tolerance relative to the largest output.")
@click.option("--calib", "calib_data", default=None, metavar="DATA", help="Calibration data for data-driven ranks / --quantize int8-static.")
@click.option("--calib-samples", type=int, default=None,
              help="Calibration samples.  [default: 1024, or the widest compressed layer's inputs rounded up to 256]")
@click.option("--max-accuracy-drop", type=float, default=None, help="Budget mode: max accuracy drop in points on --eval-split.")
@click.option("--min-cosine", type=float, default=None,
              help="Budget mode: the smallest model whose --quality-output keeps this mean cosine with the dense "
                   "model's on --eval-split (sentence embeddings; token states are mean-pooled over the mask).")
@click.option("--eval-split", default=None, metavar="DATA",
              help="Budget mode: validation data (never the test set; unlabeled is fine for --min-cosine).")
@click.option("--target-params", type=float, default=None, help="Budget mode: fraction of the compressible Linear layers' parameters to keep, e.g. 0.05 = 5% "
                   "(the dense head and --exclude'd layers are not counted).")
@click.option("--target-size", "target_size_text", default=None, help="Budget mode: max compressed ONNX file size (the int4 file with --quantize int4, else the int8 one), e.g. '400 KB'.")
@click.option("--round-to", type=int, default=1, help="Round ranks up to a multiple of K.")
@click.option("--allocation", type=click.Choice(["auto", "threshold", "sensitivity"]), default="auto",
              help="Budget mode: share ranks by one error threshold, or by measured output sensitivity (needs "
                   "--calib or --eval-split); auto picks sensitivity when inputs are given.")
@click.option("--confidence", type=float, default=0.95,
              help="Budget mode: --max-accuracy-drop must hold for the upper bound of the measured drop at this "
                   "one-sided confidence (0 = the measured drop itself).")
@click.option("--finetune", "finetune_data", default=None, metavar="DATA", help="Fine-tune the compressed model on this training data.")
@click.option("--train", "train_data", default=None, metavar="DATA", help="svd-training: training data.")
@click.option("--epochs", type=int, default=None,
              help="Fine-tuning / SVD-training epochs.  [default: 3 fine-tuning, 2 SVD training]")
@click.option("--distill-weight", type=float, default=0.5, help="Weight of distillation from the dense model.")
@click.option("--val", default=None, metavar="DATA", help="Training: validation data for the best epoch (default: the data's val split; "
                                          "an .npz: its last 10%).")
@click.option("--lr", type=float, default=None, help="Training: peak learning rate (Adam, cosine decay).  [default: 1e-3]")
@click.option("--train-batch", "batch_size", type=int, default=None, help="Training: batch size.  [default: 128]")
@click.option("--temperature", type=float, default=None, help="Training: distillation temperature.  [default: 2]")
@click.option("--train-threads", "threads", type=int, default=None, help="Training: torch threads.  [default: 1]")
@click.option("--finetune-epochs", type=int, default=None,
              help="svd-training: fine-tuning epochs after pruning (0: none).  [default: 10]")
@click.option("--sparsity", type=click.Choice(SPARSITY_CHOICES), default=None,
              help="svd-training: singular-value sparsity, Hoyer ||s||1/||s||2 or L1 ||s||1.  [default: hoyer]")
@click.option("--lambda-orth", type=float, default=None, help="svd-training: weight of the orthogonality term.  [default: 1]")
@click.option("--lambda-sparsity", type=float, default=None,
              help="svd-training: weight of the sparsity term.  [default: 0.3]")
@click.option("--prune-energy", type=float, default=None,
              help="svd-training: prune each layer keeping energy >= 1 - e of sum(s^2).  [default: 0.1]")
@click.option("--distill", "distill_data", default=None, metavar="DATA",
              help="Train the compressed model to match the dense model's --quality-output on unlabeled DATA (an "
                   ".npz with one array per input, a text file of sentences for a model folder with a tokenizer, or "
                   "one-input data; labels ignored). The best state on a held-out 10% is kept; Ctrl-C stops early "
                   "and keeps it.")
@click.option("--distill-steps", type=int, default=600, help="Distillation: max training steps (batches).")
@click.option("--distill-minutes", type=float, default=None, help="Distillation: max minutes of training (the learning-rate decay then follows the clock too).")
@click.option("--distill-lr", type=float, default=1e-4, help="Distillation: peak learning rate (Adam, cosine decay).")
@click.option("--distill-batch", type=int, default=16, help="Distillation: samples per step.")
@click.option("--quantize", default=None, metavar="KINDS",
              help="Also write quantized files; one or a list of: int8 (<name>.int8.onnx weight-only dynamic, "
                   "<name>.int8.tflite dynamic range), int8-static (the same names, activations too, needs --calib), "
                   "int4 (<name>.int4.onnx, 4-bit block-wise weights, ONNX only). E.g. --quantize int8,int4.")
@click.option("--int8-agreement", type=float, default=0.98, help="int8: min top-1 agreement (embedding outputs: mean cosine) with the fp32 model on data inputs.")
@click.option("--int4-agreement", type=float, default=0.95, help="int4: min top-1 agreement (embedding outputs: mean cosine) with the fp32 model on data inputs.")
@click.option("--int8-weights", type=click.Choice(INT8_WEIGHTS), default="auto", show_default=True,
              help="int8 ONNX (dynamic): one weight scale per tensor or per output channel (7-bit range); auto: per "
                   "channel when the quality output is an embedding (MiniLM: cosine 0.990 vs 0.958 per tensor), "
                   "per tensor otherwise (smaller files on small-rank factors, same accuracy on MNIST).")
@click.option("--batch", type=int, default=1, help="TFLite: batch size fixed in the .tflite at conversion.")
@click.option("--seed", type=int, default=0, help="Seed for random inputs and training.")
@click.option("--json", "json_out", default=None, help="Write build.json's content to FILE ('-' for stdout).")
@click.option("--bench", "run_bench", is_flag=True,
              help="Benchmark the artifacts against the dense export right after the build (writes bench.json).")
@click.option("--threads", "build_threads", type=int, default=1,
              help="torch and onnxruntime threads for the build (SVD, export, verification); more threads on a "
                   "busy machine cost more CPU than they save.")
@click.option("--svd", "svd_mode", type=click.Choice(["auto", "exact"]), default="auto",
              help="auto: a seeded randomized SVD where the rank is well below a large layer's full rank "
                   "(min(in, out) > 1024), exact float64 elsewhere; exact: always exact (slow on large layers).")
@click.option("--whiten", is_flag=True,
              help="Rank and factor with the activation-whitened spectrum (SVD of W·L, L the Cholesky factor of the "
                   "layer's input second moment, as SVD-LLM) for every policy; needs --calib. On all-MiniLM-L6-v2 "
                   "at 2x fewer Linear parameters: embedding cosine 0.74 instead of 0.39 (docs/transformers.md).")
@click.option("--sequential-refit", is_flag=True,
              help="After the ranks are chosen, refit every factor pair in execution order to its dense layer's "
                   "output on the inputs the compressed prefix feeds it (closed form, with bias correction; for an "
                   "embedding output, errors weighted by a label-free Fisher metric); same ranks, needs --calib. "
                   "On all-MiniLM-L6-v2 at 1.5x: cosine 0.928 instead of 0.892 (docs/transformers.md). With "
                   "--min-cosine or --max-accuracy-drop every candidate the search visits is refit before it is judged "
                   "(about 8 refits: a smaller model meets the target). Slow on large models (minutes per refit).")
@click.option("--quiet", "-q", is_flag=True, help="No progress, no tables.")
def build(model: Path, target_text: str, out: Path, name: str | None, input_shape: str | None,
          input_texts: tuple[str, ...], seq: int | None, quality_output: str | None, factory: str | None,
          allow_pickle: bool, policy: str, threshold: float, rank: int, scale: float, max_error: float, no_refit: bool,
          exclude: str | None, compress_head: bool, opset: int, no_simplify: bool, eval_data: str | None, eval_samples: int | None,
          verify_samples: int, atol: float, rtol: float, calib_data: str | None, calib_samples: int | None,
          build_threads: int, svd_mode: str, whiten: bool, sequential_refit: bool,
          max_accuracy_drop: float | None, min_cosine: float | None, eval_split: str | None, target_params: float | None,
          target_size_text: str | None, round_to: int, allocation: str, confidence: float, finetune_data: str | None, train_data: str | None,
          epochs: int | None, distill_weight: float, quantize: str | None, int8_agreement: float, int4_agreement: float, int8_weights: str,
          batch: int, seed: int, distill_data: str | None, distill_steps: int, distill_minutes: float | None,
          distill_lr: float, distill_batch: int, json_out: str | None, run_bench: bool, quiet: bool, **training_flags: float | int | str | None) -> None:
    """Compress MODEL's Linear layers and export dense + compressed ONNX, verified.

    MODEL is a torch.export program (.pt2), a state_dict (.pt or .safetensors, with --factory), a
    local Hugging Face model folder (config.json + weights; sentence-transformers pooling when it has
    modules.json), or a pickled module (.pt, with --allow-pickle). Writes <name>.onnx, <name>.dense.onnx and build.json
    (--target tflite: <name>.tflite, <name>.dense.tflite; --quantize int8: <name>.int8.onnx/.tflite;
    --quantize int4: <name>.int4.onnx).

    \b
    Examples:
      edgecompress build model.pt2 --target onnx --out build/
      edgecompress build model.pt2 --policy uniform --rank 32 --eval ../shared/datasets/mnist
      edgecompress build weights.pt --factory mymodels:make_mlp --input-shape 1x784
      edgecompress build path/to/all-MiniLM-L6-v2/ --policy energy --seq 128
      edgecompress build bert.pt --factory m:make --input input_ids:batch=1,seq=64:int64 --input mask:batch=1,seq=64:int64
      edgecompress build model.pt2 --policy data --calib train.npz --max-error 0.05
      edgecompress build model.pt2 --policy data --calib mnist:train --max-accuracy-drop 0.5 --eval-split mnist:val
      edgecompress build model.pt2 --target onnx,tflite --quantize int8-static --calib ../shared/datasets/mnist:val
      edgecompress build model.pt2 --quantize int8,int4 --target-size "74 KB" --eval-split mnist:val
      edgecompress build all-MiniLM-L6-v2/ --whiten --calib calib.txt --min-cosine 0.95 --eval-split dev.txt
      edgecompress build all-MiniLM-L6-v2/ --policy uniform --rank 128 --distill sentences.txt --distill-minutes 10
    """
    precheck(model, out)  # before torch loads (tens of seconds on a busy machine)
    from edgecompress.export.verify import Tolerance
    from edgecompress.load import parse_shape
    from edgecompress.spec import parse_input
    from edgecompress.lowrank.policies import make_policy
    from edgecompress.distill_step import DistillOptions
    from edgecompress.pipeline import BuildConfig, build as run_build

    svd_options, training = split_training_flags(policy, training_flags)
    config = BuildConfig(
        model=model, out=out, name=name, targets=parse_targets(target_text),
        input_shape=parse_shape(input_shape) if input_shape else None, factory=factory, allow_pickle=allow_pickle,
        inputs=tuple(parse_input(text) for text in input_texts), seq=seq, quality_output=quality_output,
        policy=make_policy(policy, rank=rank, threshold=threshold, scale=scale, max_error=max_error, refit=not no_refit,
                           **svd_options),
        exclude=exclude, keep_head=not compress_head, opset=opset, simplify=not no_simplify, eval_data=eval_data, eval_samples=eval_samples,
        verify_samples=verify_samples, tolerance=Tolerance(atol=atol, rtol=rtol), seed=seed,
        calib_data=calib_data, calib_samples=calib_samples, max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
        eval_split=eval_split, target_params=target_params, target_size=parse_size(target_size_text),
        round_to=round_to, allocation=allocation, confidence=confidence, finetune_data=finetune_data, train_data=train_data, epochs=epochs,
        distill_weight=distill_weight, training=training, quantize=quantize, int8_min_agreement=int8_agreement,
        int4_min_agreement=int4_agreement, int8_weights=int8_weights, batch=batch,
        threads=build_threads, svd=svd_mode, whiten=whiten, sequential_refit=sequential_refit,
        distill=None if distill_data is None else DistillOptions(distill_data, distill_steps, distill_minutes,
                                                                 distill_lr, distill_batch),
    )
    if policy == "ddlr-convex" and not quiet:
        console.print("[yellow]note[/]: ddlr-convex solves a convex program per layer (ADMM, up to 1,000 "
                      "iterations each): seconds to minutes per layer, progress and an estimate are shown; "
                      "--policy data finds closed-form ranks in seconds", soft_wrap=True)
    if json_out:
        from edgecompress.report import check_writable

        check_writable(json_out)  # fail now, not after the build
    with stage_spinner(quiet) as progress:
        result = run_build(config, progress=progress)
    for warning in result.record.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    emit_build(result.record, out, json_out, quiet)
    if run_bench:
        bench_build(result.record, out, eval_data, quiet)


def bench_build(record: dict, out: Path, eval_data: str | None, quiet: bool) -> None:
    """``build --bench``: benchmark every artifact against the dense export (one thread; batch 1, or the
    batch fixed in the .tflite files)."""
    from edgecompress.bench import run_benchmark, write_json
    from edgecompress.cli.console import stdout
    from edgecompress.report.terminal import print_report

    artifacts = record["artifacts"]
    reference = "dense" if "dense" in artifacts else "dense_tflite"  # --target tflite writes no ONNX
    roles = [reference] + [role for role in artifacts if role != reference]
    paths = [str(out / artifacts[role]["path"]) for role in roles]
    batch = record["options"].get("tflite_batch") or 1
    seqs = [spec["shape"][spec["axes"].index("seq")] for spec in record["input"].get("inputs", []) if "seq" in spec["axes"]]
    result = run_benchmark(paths, data=None if seqs else eval_data, batches=(batch,), threads=1,
                           seq=seqs[0] if seqs else None, progress=not quiet)
    write_json(result, out / "bench.json")
    if not quiet:
        print_report(result, stdout)
        console.print(f"wrote {out}/bench.json")
