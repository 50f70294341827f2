"""4-bit weight-only ONNX: every constant-weight ``Gemm``/``MatMul`` becomes onnxruntime's ``MatMulNBits``
(com.microsoft) with block-wise fp32 scales, activations stay fp32.

Each layer gets its own block size (onnxruntime's quantizer uses one for the whole graph): the power of
two in ``[16, max_block]`` that stores the weight in the fewest bytes — a rank-29 factor (K=29) gets
one padded block of 32, K=48 gets three blocks of 16 (no padding), K=784 = 49·16 gets 25 blocks of 32
(padding 16 rows costs less than 24 more fp32 scales per column).
Each block's scale is the one, among a few clipping ratios, with the least squared error (a cheap
search that makes 4 bits usable on small factors). Factor pairs stay two nodes: quantization
rewrites each weight on its own, it never multiplies two weights together.

``accuracy_level`` is MatMulNBits' compute type: 4 (the default) lets onnxruntime quantize each block of
activations to int8 at run time and use its integer kernels (on the reference MLP's rank-31/15 factors the
int4 file went from 1.38x to 1.09x the latency of the fp32 low-rank file), 0 keeps the fp32 kernels
(the weights are dequantized). The build verifies whichever it writes against the fp32 model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

BITS = 4
MIN_BLOCK = 16
DEFAULT_MAX_BLOCK = 32
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
DEFAULT_ACCURACY_LEVEL = 4
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
MSDOMAIN = "com.microsoft"


@dataclass(frozen=True)
class PackedWeight:
    """A [K, N] weight as MatMulNBits stores it: packed [N, blocks, block/2] uint8, scales [N*blocks],
    zero points (asymmetric only) packed [N * ceil(blocks/2)] uint8."""

    k: int
    n: int
    block_size: int
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)

    def dequantized(self) -> np.ndarray:
        """The [K, N] weight onnxruntime computes with (for tests and error measures)."""
        blocks = self.packed.shape[1]
        low, high = self.packed & 0x0F, self.packed >> 4
        q = np.stack([low, high], axis=-1).reshape(self.n, blocks, self.block_size).astype(np.float32)
        if self.zero_points is None:
            zero = np.full((self.n, blocks), 2 ** (BITS - 1), np.float32)
        else:
            zp = np.stack([self.zero_points & 0x0F, self.zero_points >> 4], axis=-1).reshape(self.n, -1)
            zero = zp[:, :blocks].astype(np.float32)
        w = (q - zero[..., None]) * self.scales.reshape(self.n, blocks)[..., None]
        return w.reshape(self.n, -1)[:, :self.k].T


def packed_bytes(k: int, n: int, block_size: int, symmetric: bool) -> int:
    """Bytes of a [K, N] weight stored with ``block_size`` (weights, fp32 scales, zero points)."""
    blocks = -(-k // block_size)
    return n * (blocks * block_size // 2 + 4 * blocks + (0 if symmetric else -(-blocks // 2)))


def block_size_for(k: int, *, max_block: int = DEFAULT_MAX_BLOCK, symmetric: bool = True) -> int:
    """The power of two in [16, max_block] storing K rows in the fewest bytes (the smaller block on a tie,
    which also quantizes more finely): the largest one dividing K unless padding a larger one pays."""
    candidates = [MIN_BLOCK << i for i in range(max(0, int(np.log2(max_block // MIN_BLOCK)) + 1))]
    return min(candidates, key=lambda b: (packed_bytes(k, 1, b, symmetric), b))


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 values < 16 along the last axis (even length) -> two per byte, the first in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def quantize_weight(weight: np.ndarray, *, block_size: int, symmetric: bool = True) -> PackedWeight:
    """Block-wise 4-bit quantization of a [K, N] weight along K (zero-padded to whole blocks), each block's
    scale (and zero point) picked among :data:`CLIP_RATIOS` of its range by least squared error."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    w = np.zeros((n, blocks * block_size), np.float32)
    w[:, :k] = weight.T
    w = w.reshape(n, blocks, block_size)
    best_err = np.full((n, blocks), np.inf, np.float32)
    best_q = np.zeros(w.shape, np.uint8)
    best_scale = np.zeros((n, blocks), np.float32)
    best_zero = np.full((n, blocks), 2 ** (BITS - 1), np.uint8)
    levels = 2 ** BITS - 1
    for ratio in CLIP_RATIOS:
        if symmetric:
            scale = np.abs(w).max(-1) * ratio / (2 ** (BITS - 1) - 1)
            zero = np.full_like(scale, 2 ** (BITS - 1))
        else:
            lo, hi = np.minimum(w.min(-1), 0) * ratio, np.maximum(w.max(-1), 0) * ratio
            scale = (hi - lo) / levels
            zero = np.clip(np.round(-lo / np.where(scale > 0, scale, 1)), 0, levels)
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.round(w / safe[..., None]) + zero[..., None], 0, levels)
        err = (((q - zero[..., None]) * scale[..., None] - w) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[..., None], q, best_q).astype(np.uint8)
        best_scale = np.where(better, scale, best_scale).astype(np.float32)
        best_zero = np.where(better, zero, best_zero).astype(np.uint8)
    zero_points = None
    if not symmetric:
        padded = np.zeros((n, blocks + blocks % 2), np.uint8)
        padded[:, :blocks] = best_zero
        zero_points = _pack_nibbles(padded).reshape(-1)
    return PackedWeight(k, n, block_size, _pack_nibbles(best_q), best_scale.reshape(-1), zero_points)


def _constant_weight(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The [K, N] weight of a Gemm (alpha = beta = 1, no transA) or MatMul whose B is a 2-D initializer."""
    if len(node.input) < 2 or node.input[1] not in initializers:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                   or attrs.get("beta", 1.0) != 1.0):
        return None
    if node.op_type not in ("Gemm", "MatMul"):
        return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    if weight.ndim != 2 or weight.dtype != np.float32:
        return None
    return weight.T if node.op_type == "Gemm" and attrs.get("transB", 0) else weight


def _bias_ok(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], n: int) -> bool:
    """A Gemm's C is taken as MatMulNBits' bias only when it is a constant [N] vector."""
    if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
        return True
    bias = initializers.get(node.input[2])
    return bias is not None and tuple(bias.dims) == (n,)


def quantize_model_int4(model: onnx.ModelProto, *, max_block: int = DEFAULT_MAX_BLOCK, symmetric: bool = True,
                        accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> tuple[onnx.ModelProto, list[dict[str, int | str]]]:
    """A copy of ``model`` with each constant-weight Gemm/MatMul as a 4-bit MatMulNBits (compute type
    ``accuracy_level``); returns it and one record per quantized layer (name, K, N, block size). Other nodes and
    weights are left as they are. ValueError for an accuracy level MatMulNBits does not define."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"MatMulNBits accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, layers, replaced = [], [], set()
    for node in graph.node:
        weight = _constant_weight(node, initializers)
        if weight is None or not _bias_ok(node, initializers, weight.shape[1]):
            nodes.append(node)
            continue
        k, n = weight.shape
        block = block_size_for(k, max_block=max_block, symmetric=symmetric)
        packed = quantize_weight(weight, block_size=block, symmetric=symmetric)
        stem = node.input[1]
        new = [numpy_helper.from_array(packed.packed, f"{stem}_Q4"),
               numpy_helper.from_array(packed.scales, f"{stem}_scales")]
        inputs = [node.input[0], new[0].name, new[1].name]
        if packed.zero_points is not None:
            new.append(numpy_helper.from_array(packed.zero_points, f"{stem}_zero_points"))
            inputs.append(new[-1].name)
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            inputs += [""] * (5 - len(inputs)) + [node.input[2]]  # A, B, scales, zero_points, g_idx, bias
        graph.initializer.extend(new)
        nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q4",
                                      domain=MSDOMAIN, K=k, N=n, bits=BITS, block_size=block,
                                      accuracy_level=accuracy_level))
        replaced.add(stem)
        layers.append({"node": node.name, "weight": stem, "K": k, "N": n, "block_size": block})
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name not in replaced or init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if layers and not any(op.domain == MSDOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MSDOMAIN, 1))
    return model, layers


def matmulnbits_shapes(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """The logical [N, K] weight shape of each MatMulNBits node (its packed initializer is 3-D)."""
    shapes = []
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            shapes.append((int(attrs["N"]), int(attrs["K"])))
    return shapes
