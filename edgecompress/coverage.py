"""Which Linear layers a build may factorize, and why the others stay dense.

- the classifier head: the Linear whose output is a class-logit output of the model (found by
  running the model once), not whichever Linear comes last;
- ``nn.MultiheadAttention``'s ``out_proj``: torch's attention reads its ``.weight`` directly;
- Linears whose weight is shared (tied) with another module: factorizing would untie them;
and, for the report, weights that are not Linear layers at all (an attention's packed
in-projection, recurrent LSTM/GRU weights), which stay dense.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from edgecompress.lowrank.spectrum import linear_layers

HEAD_REASON = "classifier head (the Linear producing the class-logit output {output!r}) kept dense; --compress-head includes it"
MHA_OUT_REASON = "out_proj of nn.MultiheadAttention: torch's attention reads its .weight directly, so it stays dense"
TIED_REASON = "weight shared with {other} (tied); kept dense so the tie is kept"
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


def classifier_heads(model: nn.Module, run: Callable[[], dict[str, torch.Tensor]], kinds: dict[str, str],
                     exclude: str | None = None) -> dict[str, str]:
    """Layer name -> output name for each Linear whose result IS a class-logit output of the model.

    ``run`` makes one forward pass and returns the named outputs. A Linear counts when its output
    tensor is returned as is, or (softmax/log-softmax after it) when it is the last Linear to run and
    its output has the logit output's shape.
    """
    logits = {name for name, kind in kinds.items() if kind == "logits"}
    if not logits:
        return {}
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [linear.register_forward_hook(lambda _m, _a, out, name=name: seen.append((name, out)))
               for name, linear in linear_layers(model, exclude).items()]
    try:
        with torch.no_grad():
            outputs = run()
    finally:
        for handle in handles:
            handle.remove()
    heads = {}
    for output in logits:
        tensor = outputs[output]
        match = next((name for name, out in seen if out is tensor), None)
        if match is None and seen and seen[-1][1].shape == tensor.shape:
            match = seen[-1][0]
        if match:  # "" is a bare Linear model: the whole model, not a head
            heads[match] = output
    return heads


def shared_weights(model: nn.Module) -> dict[str, str]:
    """Linear name -> the first other module holding the same weight tensor (tied weights)."""
    owners: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and not isinstance(module, nn.Linear):
            owners.setdefault(id(weight), name or "the model")
    tied = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            key = id(module.weight)
            if key in owners and owners[key] != name:
                tied[name] = owners[key]
            else:
                owners.setdefault(key, name)
    return tied


def dense_by_structure(model: nn.Module) -> dict[str, str]:
    """Linears that must stay dense whatever the policy: attention out_proj, tied weights."""
    reasons: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            reasons[f"{name}.out_proj" if name else "out_proj"] = MHA_OUT_REASON
    for name, other in shared_weights(model).items():
        reasons.setdefault(name, TIED_REASON.format(other=other))
    return reasons


def other_weights(model: nn.Module) -> list[dict[str, Any]]:
    """Matrix weights outside any Linear (left dense): attention in-projections, recurrent weights."""
    notes = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            notes.append({"name": f"{name}.in_proj_weight" if name else "in_proj_weight",
                          "shape": list(module.in_proj_weight.shape),
                          "reason": "nn.MultiheadAttention's packed q/k/v in-projection is a raw Parameter, "
                                    "not an nn.Linear: left dense"})
        elif isinstance(module, RECURRENT):
            params = sum(p.numel() for p in module.parameters(recurse=False))
            notes.append({"name": name, "params": params,
                          "reason": f"{type(module).__name__} recurrent weights are not Linear layers: left dense"})
    return notes


def exclude_pattern(names: list[str], exclude: str | None) -> str | None:
    """``exclude`` plus exact matches of ``names``."""
    parts = [f"^{re.escape(name)}$" for name in names] + ([exclude] if exclude else [])
    return "|".join(parts) or None


def count_tied_once(plan: Any, model: nn.Module) -> Any:
    """``plan`` with each tied Linear's shared weight counted once (it is stored once)."""
    from dataclasses import replace

    tied = shared_weights(model)
    layers = []
    for layer in plan.layers:
        if layer.name in tied and layer.rank is None and isinstance(_module(model, tied[layer.name]), nn.Linear):
            shared = layer.in_features * layer.out_features
            layer = replace(layer, params_before=layer.params_before - shared, params_after=layer.params_after - shared)
        layers.append(layer)
    return replace(plan, layers=tuple(layers))


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def keep_eager_paths(model: nn.Module) -> None:
    """Turn off torch's fused TransformerEncoderLayer fast path where a feed-forward Linear was factorized:
    it reads ``linear1.weight``/``linear2.weight`` directly; the eager path calls the layers (same maths)."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and not (
                isinstance(module.linear1, nn.Linear) and isinstance(module.linear2, nn.Linear)):
            module.activation_relu_or_gelu = False  # only gates the fast path (layer and encoder checks)


def non_linear_matrices(model: nn.Module) -> list[tuple[int, ...]]:
    """Shapes of the 2-D parameters outside Linear layers (embedding tables, in-projections), each once."""
    in_linears = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return [tuple(p.shape) for p in model.parameters() if p.dim() == 2 and id(p) not in in_linears]
