import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import InputError, UnsafeLoadError
from edgecompress.load import (PICKLE_FLAG, check_input_shape, infer_input_shape, load_factory, load_model,
                               parse_shape)

FACTORY = "tests.conftest:make_small_mlp"


def test_export_program_lifts_linears_and_accepts_any_batch(small_mlp_pt2: Path, small_mlp: nn.Module) -> None:
    loaded = load_model(small_mlp_pt2)
    assert loaded.format == "export" and loaded.example_shape == (1, 64)
    assert sum(isinstance(m, nn.Linear) for m in loaded.module.modules()) == 3
    x = torch.randn(5, 64)
    assert torch.allclose(loaded.module(x), small_mlp(x), atol=1e-6)


def test_state_dict_needs_factory(small_mlp_state_dict: Path) -> None:
    with pytest.raises(InputError, match="--factory"):
        load_model(small_mlp_state_dict)
    loaded = load_model(small_mlp_state_dict, factory=FACTORY)
    assert loaded.format == "state_dict"


def test_state_dict_that_does_not_fit_factory(small_mlp_state_dict: Path, tmp_path: Path) -> None:
    factory = tmp_path / "arch.py"
    factory.write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(3, 3))\n")
    with pytest.raises(InputError, match="does not fit"):
        load_model(small_mlp_state_dict, factory=f"{factory}:make")


def test_pickled_module_refused_without_flag(small_mlp_pickle: Path) -> None:
    with pytest.raises(UnsafeLoadError, match=PICKLE_FLAG):
        load_model(small_mlp_pickle)
    assert load_model(small_mlp_pickle, allow_pickle=True).format == "pickle"


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b"", b"PK\x03\x04broken-zip"],
                         ids=["random", "empty", "broken-zip"])
def test_garbage_files_are_input_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a readable PyTorch file"):
        load_model(path)
    pt2 = tmp_path / "junk.pt2"
    pt2.write_bytes(content)
    with pytest.raises(InputError, match="torch.export"):
        load_model(pt2)


def test_truncated_file_is_input_error(small_mlp_state_dict: Path, tmp_path: Path) -> None:
    data = small_mlp_state_dict.read_bytes()
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_model(truncated, factory=FACTORY)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.pt2")


def test_nan_weights_rejected(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(model.state_dict(), path)
    factory = tmp_path / "arch.py"
    factory.write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(4, 4))\n")
    with pytest.raises(InputError, match="NaN or Inf"):
        load_model(path, factory=f"{factory}:make")


def test_input_file_is_not_modified(small_mlp_pt2: Path) -> None:
    before = small_mlp_pt2.read_bytes()
    load_model(small_mlp_pt2)
    assert small_mlp_pt2.read_bytes() == before


def test_shape_parsing_and_inference(small_mlp: nn.Module) -> None:
    assert parse_shape("1x784") == (1, 784) and parse_shape("2,3,8,8") == (2, 3, 8, 8)
    for bad in ("axb", "0x3", ""):
        with pytest.raises(InputError):
            parse_shape(bad)
    assert infer_input_shape(small_mlp) == (1, 64)
    with pytest.raises(InputError, match="--input-shape"):
        infer_input_shape(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(InputError, match="does not fit"):
        check_input_shape(small_mlp, (1, 65))


def test_factory_module_is_found_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--factory mymodels:make_mlp` run from the folder holding mymodels.py (the README's example),
    without PYTHONPATH; the import path is left as it was."""
    name = f"mymodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\n\ndef make_mlp():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    try:
        assert isinstance(load_factory(f"{name}:make_mlp")(), nn.Linear)
    finally:
        sys.modules.pop(name, None)
    assert sys.path == before


def test_missing_factory_module_suggests_the_file_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"no_such_models/sub\.py:make'\) or put its folder on PYTHONPATH"):
        load_factory("no_such_models.sub:make")
