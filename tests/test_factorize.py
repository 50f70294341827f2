import pytest
import torch
from torch import nn

from edgecompress.lowrank.factorize import LowRankLinear, compress, count_linear_params
from edgecompress.lowrank.policies import EnergyPolicy, UniformPolicy
from edgecompress.lowrank.spectrum import exclude_head, model_spectra


class Attention(nn.Module):
    """Self-attention written with nn.Linear projections (q, k, v, out)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int = 48, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([EncoderBlock(), EncoderBlock()])
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_truncation_is_the_best_rank_r_approximation(small_mlp: nn.Sequential) -> None:
    compressed, plan = compress(small_mlp, UniformPolicy(8))
    layer = compressed[2]
    assert isinstance(layer, LowRankLinear) and layer.rank == 8
    weight = small_mlp[2].weight.detach().double()
    s = torch.linalg.svdvals(weight)
    error = torch.linalg.norm(weight - layer.dense_weight().detach().double())
    assert float(error) == pytest.approx(float(s[8:].pow(2).sum().sqrt()), rel=1e-4)  # Eckart–Young
    assert torch.equal(layer.second.bias, small_mlp[2].bias)


def test_compress_does_not_mutate_input(small_mlp: nn.Sequential) -> None:
    before = {k: v.clone() for k, v in small_mlp.state_dict().items()}
    compress(small_mlp, UniformPolicy(4))
    assert all(isinstance(small_mlp[i], nn.Linear) for i in (0, 2, 4))
    assert all(torch.equal(before[k], v) for k, v in small_mlp.state_dict().items())


def test_plan_counts_parameters(small_mlp: nn.Sequential) -> None:
    compressed, plan = compress(small_mlp, UniformPolicy(8))
    assert plan.linear_params_before == count_linear_params(small_mlp)
    assert plan.linear_params_after == count_linear_params(compressed)
    first = plan.layers[0]
    assert first.params_after == 8 * (64 + 96) + 96


def test_rank_that_does_not_pay_stays_dense(small_mlp: nn.Sequential) -> None:
    # 96x96 breaks even at rank 47, so rank 60 would add parameters
    compressed, plan = compress(small_mlp, UniformPolicy(60))
    by_name = {layer.name: layer for layer in plan.layers}
    assert by_name["2"].rank is None and "does not pay" in by_name["2"].reason
    assert isinstance(compressed[2], nn.Linear) and not isinstance(compressed[2], LowRankLinear)


def test_nested_transformer_every_linear_is_swapped_and_output_close() -> None:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    spectra = model_spectra(model)
    assert len(spectra) == 2 * 6 + 1
    compressed, plan = compress(model, EnergyPolicy(0.9999999))
    swapped = [name for name, m in compressed.named_modules() if isinstance(m, LowRankLinear)]
    assert "blocks.1.attn.q" in {p.name for p in plan.layers}
    x = torch.randn(2, 7, 48)
    # near-full energy but the rank must pay: every swapped layer reproduces the layer closely
    if swapped:
        assert torch.allclose(compressed(x), model(x), atol=1e-3)
    compressed, plan = compress(model, UniformPolicy(8))
    swapped = {name for name, m in compressed.named_modules() if isinstance(m, LowRankLinear)}
    assert {"blocks.0.attn.q", "blocks.1.attn.out", "blocks.0.mlp.0", "blocks.1.mlp.2"} <= swapped
    assert compressed(x).shape == (2, 5)


def test_exclude_keeps_matching_layers_dense() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    compressed, plan = compress(model, UniformPolicy(8), exclude=r"classifier\.3")
    assert isinstance(compressed.classifier[1], LowRankLinear)
    assert type(compressed.classifier[3]) is nn.Linear
    assert [(layer.name, layer.factorized) for layer in plan.layers] == [("classifier.1", True), ("classifier.3", False)]
    assert "--exclude" in plan.layers[1].reason
    assert plan.linear_params_before == count_linear_params(model)  # totals cover the excluded layer too
    assert plan.linear_params_after == count_linear_params(compressed)
    assert compressed(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_exclude_head_names_the_last_selected_linear_only_when_there_are_two() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    assert exclude_head(model, None) == "^4$"
    assert exclude_head(model, "^4$") == "^2$|^4$"  # the last layer still selected becomes the head
    assert exclude_head(nn.Sequential(nn.Linear(8, 3)), None) is None  # a lone layer is the whole model: compress it
    assert list(model_spectra(model, exclude_head(model, None))) == ["0", "2"]


def test_a_bare_linear_model_is_replaced_by_its_factor_pair() -> None:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    compressed, plan = compress(model, UniformPolicy(4))
    assert isinstance(compressed, LowRankLinear) and type(model) is nn.Linear  # the input is not modified
    assert plan.ranks == {"": 4} and plan.linear_params_after == count_linear_params(compressed) == 4 * 128 + 64
    u, sv, vh = torch.linalg.svd(model.weight.detach().double())
    truncated = ((u[:, :4] * sv[:4]) @ vh[:4]).float()  # Eckart-Young: the best rank-4 weight
    x = torch.randn(5, 64)
    assert torch.allclose(compressed(x), x @ truncated.T + model.bias, atol=1e-4)
