"""``edgecompress demo``: an offline end-to-end run on scikit-learn's digits set."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from edgecompress.cli.build_view import emit_build
from edgecompress.cli.console import console, counted_bar, human_bytes, stage_spinner


@click.command(context_settings={"show_default": True})
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("demo-build"), help="Output folder.")
@click.option("--policy", type=click.Choice(["energy", "entropy", "uniform"]), default="uniform", help="Rank policy.")
@click.option("--energy", "threshold", type=float, default=0.9, help="energy: fraction of sum(s^2) to keep.")
@click.option("--rank", type=int, default=16, help="uniform: the rank of every layer.")
@click.option("--epochs", type=int, default=30, help="Training epochs of the digits MLP.")
@click.option("--json", "json_out", default=None, help="Write build.json's content to FILE ('-' for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress, no tables.")
def demo(out: Path, policy: str, threshold: float, rank: int, epochs: int, json_out: str | None, quiet: bool) -> None:
    """Train a small MLP on the bundled digits set, then build, verify and evaluate it.

    Needs no download: scikit-learn ships the 1,797 8x8 digits. Writes digits-mlp.pt2 (the
    trained model), the dense and compressed ONNX files and build.json to --out.

    \b
    Examples:
      edgecompress demo
      edgecompress demo --policy uniform --rank 8 --out /tmp/demo
    """
    import torch

    from edgecompress.data import load_dataset
    from edgecompress.lowrank.policies import make_policy
    from edgecompress.models import digits_mlp, save_exported, train_classifier
    from edgecompress.outdir import OutputFolder
    from edgecompress.pipeline import BuildConfig, build
    from edgecompress.validate import check_positive

    rank_policy = make_policy(policy, threshold=threshold, rank=rank)  # bad values fail before training
    check_positive("--epochs", epochs)
    if json_out:
        from edgecompress.report import check_writable

        check_writable(json_out)
    with OutputFolder(out):  # refuses a file / unwritable --out now; removes it again if it stays empty
        pass
    torch.manual_seed(0)
    with counted_bar("training the digits MLP: epoch", epochs, quiet) as advance:
        model = train_classifier(digits_mlp(), load_dataset("digits", "train"), epochs=epochs, lr=1e-3,
                                 batch_size=64, seed=0,
                                 on_epoch=(lambda _epoch, loss: advance(f"loss {loss:.4f}")) if advance else None)
    with stage_spinner(quiet) as progress:
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        model_path = save_exported(model, (1, 64), out / "digits-mlp.pt2")
        config = BuildConfig(model=model_path, out=out, policy=rank_policy, eval_data="digits:test")
        try:
            result = build(config, progress=progress)
        except BaseException:
            model_path.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):  # only if empty
                    out.rmdir()
            raise
    record = result.record
    emit_build(record, out, json_out, quiet)
    if quiet or json_out == "-":
        return
    dense, compressed = record["artifacts"]["dense"], record["artifacts"]["compressed"]
    drop = 100 * (dense["eval"]["accuracy"] - compressed["eval"]["accuracy"])
    console.print(f"[bold]digits test accuracy[/]: dense {dense['eval']['accuracy']:.2%} → compressed "
                  f"{compressed['eval']['accuracy']:.2%} ({drop:.2f} points lost); file size "
                  f"{human_bytes(dense['bytes'])} → {human_bytes(compressed['bytes'])} "
                  f"({dense['bytes'] / compressed['bytes']:.1f}× smaller)")
