"""Calibration: streamed input second moments from forward hooks, ReLU detection, sample checks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgecompress.errors import InputError
from edgecompress.load import load_model
from edgecompress.lowrank.calibration import calibrate, relu_followers, require_samples
from edgecompress.models import mlp


def layer_inputs_at_once(model: nn.Sequential, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Every Linear's input, computed by running the layers by hand (no hooks)."""
    inputs, h = {}, torch.from_numpy(x)
    with torch.no_grad():
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                inputs[name] = h.double()
            h = module(h)
    return inputs


@settings(max_examples=10, deadline=None, derandomize=True)
@given(batch_size=st.integers(1, 70), n=st.integers(1, 90))
def test_streamed_gram_equals_gram_of_all_inputs(small_mlp: nn.Sequential, batch_size: int, n: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
    calibration = calibrate(small_mlp, x, ["0", "2", "4"], batch_size=batch_size)
    for name, rows in layer_inputs_at_once(small_mlp, x).items():
        stats = calibration.layers[name]
        assert stats.count == n
        torch.testing.assert_close(stats.gram, rows.T @ rows, rtol=1e-4, atol=1e-4)  # float32 activations


def test_hooks_are_removed_and_model_unchanged(small_mlp: nn.Sequential) -> None:
    before = {k: v.clone() for k, v in small_mlp.state_dict().items()}
    calibrate(small_mlp, np.zeros((4, 64), np.float32), ["0", "2"])
    assert all(not m._forward_pre_hooks for m in small_mlp.modules())
    assert all(torch.equal(before[k], v) for k, v in small_mlp.state_dict().items())


def test_keep_inputs_is_bounded_and_matches_the_first_rows(small_mlp: nn.Sequential) -> None:
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    calibration = calibrate(small_mlp, x, ["2"], batch_size=16, keep_inputs=20)
    kept = calibration.layers["2"].inputs
    assert kept.shape == (20, 96)
    torch.testing.assert_close(kept, layer_inputs_at_once(small_mlp, x)["2"][:20])
    assert calibration.layers["2"].to_json()["kept_inputs"] == 20


def test_sequence_inputs_count_every_vector() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    x = np.ones((3, 5, 8), np.float32)  # 3 samples of 5 tokens
    stats = calibrate(model, x, ["0"]).layers["0"]
    assert stats.count == 15 and float(stats.gram[0, 0]) == 15.0


def test_relu_followers_in_sequential_and_exported_graph(small_mlp: nn.Sequential, small_mlp_pt2: Path) -> None:
    assert relu_followers(small_mlp, ["0", "2", "4"]) == {"0", "2"}
    graph_module = load_model(small_mlp_pt2).module
    names = [n for n, m in graph_module.named_modules() if isinstance(m, nn.Linear)]
    found = relu_followers(graph_module, names)
    assert len(names) == 3 and len(found) == 2 and names[-1] not in found


def test_linear_without_relu_is_not_a_follower() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    assert relu_followers(model, ["0", "2"]) == set()


def test_too_few_samples_names_the_layer_and_suggests_a_number() -> None:
    model = mlp((16, 300, 10)).eval()
    calibration = calibrate(model, np.zeros((100, 16), np.float32), ["0", "2"])
    with pytest.raises(InputError, match=r"layer '2' only 100 input vectors but it has 300 inputs.*--calib-samples (\d+)") as info:
        require_samples(calibration, ["0", "2"])
    suggested = int(str(info.value).split("--calib-samples ")[1].split()[0])
    assert suggested >= 300
    require_samples(calibration, ["0"])  # 100 vectors for 16 inputs is enough


def test_wrong_input_shape_is_a_clear_input_error(small_mlp: nn.Sequential) -> None:
    with pytest.raises(InputError, match="cannot run on the calibration data"):
        calibrate(small_mlp, np.zeros((4, 65), np.float32), ["0"])
