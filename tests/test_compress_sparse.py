"""Sparse execution: CSR layers equal the masked layers, and are swapped in only where faster."""

import pytest
import torch
from torch import nn

from prunelab.compress import SparseConv2d, SparseLinear, semi_structured_support, sparsify
from prunelab.compress.sparse import is_2_4
from prunelab.errors import PrunelabError
from prunelab.models import build_model
from prunelab.pruning import prune

pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_weights(layer: nn.Module, density: float = 0.1) -> nn.Module:
    with torch.no_grad():
        layer.weight.mul_(
            torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < density
        )
    return layer


def test_sparse_linear_equals_dense_for_any_leading_shape():
    layer = sparse_weights(nn.Linear(40, 30))
    fast = SparseLinear(layer)
    for shape in [(5, 40), (2, 3, 40)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), layer(x))
    second = sparse_weights(nn.Linear(30, 7))
    x = torch.randn(4, 40)
    with torch.no_grad():  # a transposed-view output feeds the next sparse layer without a copy
        torch.testing.assert_close(SparseLinear(second)(torch.relu(fast(x))), second(torch.relu(layer(x))))


def test_sparse_conv_equals_dense():
    for kwargs in [dict(padding=1), dict(stride=2), dict(padding=2, dilation=2, bias=False)]:
        layer = sparse_weights(nn.Conv2d(4, 6, 3, **kwargs))
        x = torch.randn(2, 4, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(SparseConv2d(layer)(x), layer(x), atol=1e-5, rtol=1e-4)


def test_sparsify_times_each_layer_and_keeps_outputs():
    model = build_model("lenet5", seed=0)
    mask = prune(model, None, fraction=0.9, method="magnitude")
    x = torch.randn(8, 1, 28, 28)
    forced = sparsify(model, x, mask, repeats=2, force=True)
    assert sorted(forced.used) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert isinstance(forced.model.fc1, SparseLinear) and isinstance(forced.model.conv2, SparseConv2d)
    assert forced.max_error < 1e-5
    chosen = sparsify(model, x, mask, repeats=2)
    for choice in chosen.choices:
        assert choice.dense_ms is not None and choice.sparse_ms is not None
        assert choice.used == (choice.sparse_ms < 0.95 * choice.dense_ms)
    dense_enough = sparsify(model, x, mask, repeats=1, min_sparsity=0.95)
    assert dense_enough.used == [] and all(c.dense_ms is None for c in dense_enough.choices)
    assert isinstance(model.fc1, nn.Linear)  # the input model is left alone


def test_2_4_pattern_check():
    keep = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    assert not is_2_4(keep)
    assert is_2_4(keep[:1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is present")
def test_semi_structured_is_refused_without_a_gpu():
    assert "CUDA" in semi_structured_support()
    model = build_model("lenet-300-100", seed=0)
    with pytest.raises(PrunelabError, match="needs a CUDA GPU"):
        sparsify(model, torch.zeros(2, 1, 28, 28), semi_structured=True)
