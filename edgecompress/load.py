"""Load a trained model safely: a ``torch.export`` program (.pt2), a state_dict (.pt or
.safetensors) + factory, a Hugging Face-style model folder (see :mod:`edgecompress.hf`), or (only
with an explicit opt-in) a fully pickled module.

Every path returns a plain ``nn.Module`` in which each linear layer is an ``nn.Linear`` (an
exported program's ``aten.linear`` calls are lifted into ``nn.Linear`` sub-modules), so the rest
of the pipeline sees one kind of model.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgecompress import onnxinfo, pt2_archive
from edgecompress.errors import InputError, UnsafeLoadError
from edgecompress.spec import InputSpec, ModelIO

PICKLE_FLAG = "--allow-pickle"
RECURRENT_OPS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for compression, with where it came from."""

    module: nn.Module
    path: Path
    format: str  # "export" | "state_dict" | "pickle" | "module"
    sha256: str
    example_shape: tuple[int, ...] | None  # input shape recorded in the file, if any
    io: ModelIO | None = None  # inputs recorded in the file (a .pt2's signature, an HF folder's tokens)


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Resolve ``module:function`` or ``path/to/file.py:function`` to a callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"--factory must look like 'package.module:function' or 'file.py:function', got {spec!r}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise InputError(f"factory file not found: {file}")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = _import_from_here(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = (f"; give the file instead ('{module_name.replace('.', '/')}.py:{attr}') or put its folder "
                    f"on PYTHONPATH")
        raise InputError(f"cannot import factory module {module_name!r}: {exc}{hint}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{module_name} has no callable {attr!r}")
    return factory


def _import_from_here(module_name: str) -> Any:
    """Import ``module_name``; if it is not found, retry with the current folder on the import path
    (``--factory mymodels:make`` next to mymodels.py, as ``python -m`` would find it). Only for an
    explicit --factory, which runs the named code anyway."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        here = os.getcwd()
        if exc.name != top or here in sys.path or not (Path(top + ".py").is_file() or Path(top).is_dir()):
            raise
        sys.path.insert(0, here)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(here)


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if weights_only and "Unsupported global" in str(exc):
            raise UnsafeLoadError(
                f"{path} holds a pickled Python object (e.g. a whole nn.Module); loading it runs arbitrary "
                f"code. Re-run with {PICKLE_FLAG} if you trust the file, or save a torch.export program "
                f"(.pt2) or a state_dict (+ --factory) instead") from exc
        raise InputError(f"{path} is not a readable PyTorch file (not a torch.save archive, or corrupt)") from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {first}") from exc


def _lift_linears(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Turn ``aten.linear(x, W, b)`` calls on parameters into ``nn.Linear`` sub-module calls."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)  # shape guards pin the exported batch size; we re-export with a dynamic one
            continue
        if node.op != "call_function" or node.target not in (torch.ops.aten.linear.default, torch.nn.functional.linear):
            continue
        x, weight_node, *rest = node.args
        bias_node = rest[0] if rest else node.kwargs.get("bias")
        if getattr(weight_node, "op", None) != "get_attr" or (bias_node is not None and bias_node.op != "get_attr"):
            continue
        weight = gm.get_parameter(weight_node.target)
        if weight.dim() != 2:
            continue
        out_features, in_features = weight.shape
        linear = nn.Linear(in_features, out_features, bias=bias_node is not None)
        linear.weight = weight
        if bias_node is not None:
            linear.bias = gm.get_parameter(bias_node.target)
        owner = weight_node.target.rpartition(".")[0]
        name = owner if owner and _replaceable(gm, owner) else f"linear_{weight_node.target.replace('.', '_')}"
        if name == owner:
            gm.set_submodule(owner, linear)
        else:
            gm.add_submodule(name, linear)
        with graph.inserting_before(node):
            replacement = graph.call_module(name, (x,))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")
    for key, hook in list(gm._forward_pre_hooks.items()):
        if "check_input_constraints" in getattr(hook, "__name__", ""):
            del gm._forward_pre_hooks[key]  # same reason: the exported batch size is not a constraint of ours
    for method in ("train", "eval"):  # torch.export's module() makes these raise; fine-tuning needs them, and
        gm.__dict__.pop(method, None)  # they only flip flags: the graph's ops were fixed at export time
    gm.recompile()
    return gm


def _replaceable(gm: nn.Module, path: str) -> bool:
    """A parameter holder with only weight/bias and no children can become an nn.Linear."""
    try:
        owner = gm.get_submodule(path)
    except AttributeError:
        return False
    names = {name for name, _ in owner.named_parameters(recurse=False)}
    return not list(owner.children()) and names <= {"weight", "bias"} and not list(owner.buffers(recurse=False))


def _program_io(program: Any) -> ModelIO:
    """The user inputs of an exported program from its placeholders' metadata (never from pickled
    sample inputs): names, dtypes, shapes; symbolic dims become dynamic axes (dim 0 "batch")."""
    user_inputs = [spec.arg.name for spec in program.graph_signature.input_specs
                   if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    symbols: dict[str, str] = {}
    specs = []
    for name in user_inputs:
        node = nodes.get(name)
        value = None if node is None else node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"the exported program's input {name!r} is not a tensor; edgecompress needs tensor inputs")
        shape, axes = [], []
        for index, dim in enumerate(value.shape):
            if isinstance(dim, int):
                shape.append(dim)
                axes.append(None)
                continue
            symbol = str(dim)
            default = "batch" if index == 0 else "seq" if index == 1 else f"d{len(symbols)}"
            axes.append(symbols.setdefault(symbol, default))
            hint = dim.node.hint if hasattr(dim, "node") and dim.node.hint is not None else 2
            shape.append(int(hint))
        dtype = str(value.dtype).removeprefix("torch.")
        high = _embedding_rows(node)
        role = "mask" if name.lower().endswith("mask") else "ids" if high else "data"
        specs.append(InputSpec(name, tuple(shape), tuple(axes), dtype, 2 if role == "mask" else high, role))
    return ModelIO(tuple(specs))


def _embedding_rows(node: Any) -> int | None:
    """Rows of the embedding table an integer input indexes (its value bound), if it feeds one directly."""
    for user in node.users:
        if user.target == torch.ops.aten.embedding.default and len(user.args) > 1 and user.args[1] is node:
            weight = user.args[0].meta.get("val")
            if isinstance(weight, torch.Tensor):
                return int(weight.shape[0])
    return None


def batch_is_free(module: nn.Module, io: ModelIO) -> bool:
    """Whether a static-batch program also runs at other batch sizes: traced symbolically (fake tensors,
    nothing executes), so a program whose graph pins the batch (reshapes, recurrent states) says no."""
    if any(node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in RECURRENT_OPS
           for node in getattr(module, "graph", torch.fx.Graph()).nodes):
        return False  # aten.lstm/gru take their baked initial state unchecked: another batch corrupts memory
    dynamic = ModelIO(tuple(replace(s, axes=("batch",) + s.axes[1:]) for s in io.inputs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.export(module, dynamic.example(2),
                                dynamic_shapes=tuple({0: torch.export.Dim("batch", min=1)} for _ in io.inputs))
    except Exception:  # any failure means the batch size is baked into the graph
        return False
    return True


def _load_export(path: Path, *,
                 allow_pickle: bool = False) -> tuple[nn.Module, tuple[int, ...] | None, ModelIO]:
    try:
        if allow_pickle:
            program = torch.export.load(path)
        else:
            pt2_archive.inspect_pt2(path)  # refuses pickled members before torch reads any of them
            with pt2_archive.no_pickle():
                program = torch.export.load(path)
    except InputError:
        raise
    except Exception as exc:  # torch raises many types for a bad archive
        raise InputError(f"{path} is not a readable torch.export program: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    io = _program_io(program)
    module = _lift_linears(program.module())
    if io.static_batch is not None and batch_is_free(module, io):
        io = ModelIO(tuple(replace(s, axes=("batch",) + s.axes[1:]) for s in io.inputs))  # re-exported dynamic
    return module, io.inputs[0].shape if io.inputs else None, io


def load_model(path: str | Path, *, factory: str | None = None, allow_pickle: bool = False) -> LoadedModel:
    """Load ``path`` as a model (see module docstring). Never modifies the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    digest = onnxinfo.sha256(path)
    example_shape, io = None, None
    if path.suffix == ".pt2":
        module, example_shape, io = _load_export(path, allow_pickle=allow_pickle)
        fmt = "export"
    else:
        obj = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path, weights_only=not allow_pickle)
        if isinstance(obj, nn.Module):
            module, fmt = obj, "pickle"
        elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            if factory is None:
                raise InputError(f"{path} is a state_dict (weights only): give --factory 'module:function' "
                                 "that builds the architecture")
            module = factory_module(load_factory(factory))
            try:
                module.load_state_dict(obj)
            except RuntimeError as exc:
                raise InputError(f"state_dict does not fit the factory's model: {' '.join(str(exc).split())[:600]}") from exc
            fmt = "state_dict"
        else:
            raise InputError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict")
    if fmt != "export":  # an exported program is already in inference form and refuses .eval()
        module.eval()
    check_finite(module)
    return LoadedModel(module, path, fmt, digest, example_shape, io)


def _load_folder(path: Path) -> LoadedModel:
    """A Hugging Face-style folder (config.json + weights); its digest is the weights files' digests'."""
    from edgecompress import hf

    if not hf.is_hf_folder(path):
        raise InputError(f"model path {path} is a folder without config.json; give a model file (.pt2, .pt, "
                         ".safetensors) or a local Hugging Face model folder")
    module, io = hf.load_hf_folder(path)
    check_finite(module)
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    digest = onnxinfo.sha256(weights[0]) if len(weights) == 1 else ",".join(onnxinfo.sha256(p) for p in weights)
    return LoadedModel(module, path, "hf_folder", digest, io.input_shape, io)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (a state_dict; never runs code)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise InputError("reading .safetensors needs the safetensors package (the hf extra)") from exc
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError for a bad header
        raise InputError(f"{path} is not a readable safetensors file: {str(exc).splitlines()[0]}") from exc


def factory_module(factory: Callable[[], nn.Module]) -> nn.Module:
    """Call a factory and check it returned a module."""
    try:
        module = factory()
    except Exception as exc:  # the user's code: any failure is bad input, reported in one line
        message = " ".join(str(exc).split()) or "no message"
        raise InputError(f"the factory {getattr(factory, '__name__', factory)!s} raised {type(exc).__name__}: "
                         f"{message[:300]}") from exc
    if not isinstance(module, nn.Module):
        raise InputError(f"the factory returned {type(module).__name__}, not an nn.Module")
    return module


def check_finite(module: nn.Module) -> None:
    """Reject models with NaN or Inf parameters (an SVD of them is meaningless)."""
    for name, param in module.named_parameters():
        if not torch.isfinite(param).all():
            raise InputError(f"parameter {name} contains NaN or Inf values; fix the model before compressing it")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x784"`` or ``"1,3,32,32"`` -> a shape tuple of positive ints."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape must look like 1x784, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"--input-shape needs positive sizes, got {text!r}")
    return shape


def infer_input_shape(module: nn.Module) -> tuple[int, ...]:
    """(1, in_features) when the model's first parameterised layer is an ``nn.Linear``."""
    for sub in module.modules():
        if any(True for _ in sub.parameters(recurse=False)):
            if isinstance(sub, nn.Linear):
                return (1, sub.in_features)
            break
    raise InputError("cannot infer the input shape (the first layer is not a Linear); give --input-shape, e.g. "
                     "1x3x32x32, or --input NAME:SHAPE:DTYPE per input, e.g. --input input_ids:batch=1,seq=128:int64")


def check_input_shape(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Run one forward pass on zeros of ``shape``; return the output or raise a clear error."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
    except Exception as exc:  # any failure means the shape does not fit this model
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"input shape {'x'.join(map(str, shape))} does not fit the model: {message}") from exc
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returns {type(out).__name__}; edgecompress needs a model returning one tensor")
    return out
