"""How much each output direction of a layer matters to the sentence embedding (label-free Fisher).

FWSVD weights a layer's truncation by the Fisher information of the task loss; without labels the
loss of a compressed embedding model is its distance to the dense embedding, ``1 - cos(e', e)``,
whose Gauss-Newton matrix at the dense model is ``J^T P J`` (``J``: the Jacobian of the normalized
embedding w.r.t. a layer's output, ``P``: the projection orthogonal to ``e``). Its expectation is
estimated with random probes: for ``v ~ N(0, I)`` in embedding space, ``g = d(v . e)/d y`` has
``E[g g^T] = J^T J``, and ``J`` of a normalized vector already annihilates ``e``. Per layer the
metric is ``G = mean over real tokens and probes of g g^T`` (out x out), so a rank-r fit that
minimises ``tr(E^T G E)`` instead of ``||E||^2`` keeps the output directions the embedding reacts
to (the LayerNorm after a residual ignores some, scales others) and drops the ones it does not.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from edgecompress.lowrank.calibration import MASK_KEY, real_rows
from edgecompress.lowrank.embedding import Batch, embedding_of, forward, mask_of


def output_metrics(model: nn.Module, batches: Sequence[Batch], names: Iterable[str], *, probes: int = 4,
                   seed: int = 0, mask_key: str = MASK_KEY,
                   progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Per named layer, ``G = E[g g^T]`` (float64, out x out, normalized to trace = out) of the
    gradients of random projections of the sentence embedding w.r.t. the layer's output.

    ``model`` is not modified (gradients are taken w.r.t. activations only, never accumulated into
    parameters). Deterministic for a seed.
    """
    names = list(names)
    modules = {name: model.get_submodule(name) for name in names}
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            outputs[name] = output
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(batches):
            if progress:
                progress(f"output metric: batch {index + 1}/{len(batches)}")
            outputs.clear()
            mask = mask_of(batch, mask_key)
            with torch.enable_grad():
                embedding = embedding_of(forward(model, batch), mask)
                seen = [name for name in names if name in outputs and outputs[name].requires_grad]
                for probe in range(probes):
                    direction = torch.randn(embedding.shape, generator=generator, dtype=embedding.dtype)
                    grads = torch.autograd.grad((embedding * direction).sum(), [outputs[n] for n in seen],
                                                retain_graph=probe < probes - 1, allow_unused=True)
                    for name, grad in zip(seen, grads):
                        if grad is None:
                            continue
                        rows = real_rows(grad, mask, grad.shape[-1], torch.float32)
                        product = (rows.T @ rows).double()
                        sums[name] = sums[name] + product if name in sums else product
                        counts[name] += int(rows.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    metrics = {}
    for name, total in sums.items():
        scale = float(torch.trace(total))
        metrics[name] = total * (total.shape[0] / scale) if scale > 0 else torch.eye(total.shape[0], dtype=torch.float64)
    return metrics
