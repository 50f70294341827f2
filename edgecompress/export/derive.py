"""The compressed ONNX file derived from the dense export, without tracing the model a second time.

torch's exporter spends seconds tracing and decomposing a transformer (7-10 s for all-MiniLM-L6-v2,
nearly all of it independent of the weights); the compressed model differs from the dense one only
in its factorized Linear layers. When nothing else differs (no training changed other weights),
each factorized layer's weight initializer in the dense graph (found by value: the exporter renames
and pre-transposes weights) is replaced by the factor pair: ``MatMul(x, Wᵀ)`` becomes
``MatMul(MatMul(x, Aᵀ), Bᵀ)`` and ``Gemm(x, W, b)`` becomes ``Gemm(MatMul(x, Aᵀ), B, b)``. The
result goes through the same checks as an exported file (opset, factors kept, onnxsim, verification
against the compressed torch model). Anything unexpected returns a reason and the build exports
the compressed model the usual way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgecompress.lowrank.factorize import LowRankLinear


def derive_compressed(dense_onnx: onnx.ModelProto, dense: nn.Module, compressed: nn.Module, path: Path) -> str | None:
    """Write the compressed model's ONNX file to ``path`` from the dense export ``dense_onnx``.

    Returns None when written, else why it cannot be derived (nothing is written then).
    """
    pairs = {name: module for name, module in compressed.named_modules() if isinstance(module, LowRankLinear)}
    if not pairs:
        return "no factorized layer"
    reason = _other_weights_differ(dense, compressed, pairs)
    if reason:
        return reason
    graph = onnx.ModelProto()
    graph.CopyFrom(dense_onnx)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer):
        return "weights stored as external data"
    located = _locate(graph.graph, {name: dense.get_submodule(name).weight for name in pairs})
    if isinstance(located, str):
        return located
    for name, init_name in located.items():
        reason = _substitute(graph.graph, init_name, name, pairs[name], dense.get_submodule(name).weight)
        if reason:
            return reason
    used = {i for node in graph.graph.node for i in node.input} | {i.name for i in graph.graph.input}
    kept = [init for init in graph.graph.initializer if init.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    onnx.save(graph, str(path))
    return None


def _other_weights_differ(dense: nn.Module, compressed: nn.Module, pairs: dict[str, LowRankLinear]) -> str | None:
    """A reason when any weight outside the factor pairs (biases included) is not the dense model's."""
    dense_state = dense.state_dict()
    factors = {f"{name}.{key}" for name in pairs for key in ("first.weight", "second.weight", "second.bias")}
    for key, value in compressed.state_dict().items():
        if key in factors:
            continue
        if key not in dense_state or not torch.equal(dense_state[key], value):
            return f"{key} differs from the dense model"
    for name, pair in pairs.items():
        bias = dense.get_submodule(name).bias
        if (bias is None) != (pair.second.bias is None) or bias is not None and not torch.equal(bias, pair.second.bias):
            return f"{name}.bias differs from the dense model"
    return None


def _locate(graph: onnx.GraphProto, weights: dict[str, torch.Tensor]) -> dict[str, str] | str:
    """Layer name -> the float initializer holding its weight (W or Wᵀ, compared byte for byte)."""
    by_value: dict[tuple[tuple[int, ...], bytes], list[str]] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            array = numpy_helper.to_array(init)
            by_value.setdefault((array.shape, hashlib.sha1(array.tobytes()).digest()), []).append(init.name)
    found: dict[str, str] = {}
    for name, weight in weights.items():
        w = np.ascontiguousarray(weight.detach().numpy(), dtype=np.float32)
        hits = {init for array in (w, np.ascontiguousarray(w.T))
                for init in by_value.get((array.shape, hashlib.sha1(array.tobytes()).digest()), [])}
        if len(hits) != 1:
            return f"the weight of {name} is in {len(hits)} initializers of the dense graph"
        found[name] = hits.pop()
    if len(set(found.values())) != len(found):
        return "two factorized layers share one weight initializer"
    return found


def _substitute(graph: onnx.GraphProto, init_name: str, layer: str, pair: LowRankLinear,
                dense_weight: torch.Tensor) -> str | None:
    """Replace every node using ``init_name`` as its weight by the factor pair (in place)."""
    first_t = pair.first.weight.detach().numpy().T.copy()  # in x r
    second = pair.second.weight.detach().numpy()  # out x r
    stored = numpy_helper.to_array(next(i for i in graph.initializer if i.name == init_name))
    w = dense_weight.detach().numpy()  # out x in
    transposed = stored.shape == w.T.shape and np.array_equal(stored, w.T)  # the initializer holds Wᵀ
    a_name, b_name = f"{init_name}.first_t", f"{init_name}.second"
    nodes = list(graph.node)
    if not any(init_name in node.input for node in nodes):
        return f"the weight of {layer} is used by no node of the main graph"
    replaced: list[onnx.NodeProto] = []
    b_array = None
    for node in nodes:
        if init_name not in node.input:
            replaced.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mid = f"{node.output[0]}.low_rank"
        if node.op_type == "MatMul" and list(node.input).index(init_name) == 1 and transposed:
            b_array = second.T.copy()
            replaced += [onnx.helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{node.name}_first"),
                         onnx.helper.make_node("MatMul", [mid, b_name], list(node.output), name=f"{node.name}_second")]
        elif node.op_type == "Gemm" and list(node.input).index(init_name) == 1 and not attrs.get("transA", 0) \
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
                and transposed != bool(attrs.get("transB", 0)):
            trans_b = attrs.get("transB", 0)
            b_array = second.copy() if trans_b else second.T.copy()
            replaced += [onnx.helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{node.name}_first"),
                         onnx.helper.make_node("Gemm", [mid, b_name, *node.input[2:]], list(node.output),
                                               name=f"{node.name}_second", transB=trans_b)]
        else:
            return f"the weight of {layer} feeds a {node.op_type} node the derivation does not rewrite"
    graph.initializer.extend([numpy_helper.from_array(first_t, a_name), numpy_helper.from_array(b_array, b_name)])
    del graph.node[:]
    graph.node.extend(replaced)
    return None
