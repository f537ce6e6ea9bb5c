"""Sparse execution: CSR layers equal the masked layers, and are swapped in only where faster."""

import pytest
import torch
from torch import nn

from prunelab.compress import SparseConv2d, SparseLinear, semi_structured_support, sparsify
from prunelab.compress.sparse import is_2_4
from prunelab.errors import PrunelabError
from prunelab.models import build_model
from prunelab.native import cache_dir
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


@pytest.fixture()
def fresh_kernel():
    """Each use builds (or finds) the kernel under this test's own cache folder."""
    from prunelab.compress import native

    native.csr_kernel.cache_clear()
    yield native
    native.csr_kernel.cache_clear()


def test_native_kernel_is_built_once_and_cached(fresh_kernel):
    if fresh_kernel.csr_kernel() is None:
        pytest.skip("no C compiler on this machine: sparse layers use MKL's product (tested above)")
    built = list(cache_dir().glob("csr_linear-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    fresh_kernel.csr_kernel.cache_clear()
    assert fresh_kernel.csr_kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in cache_dir().iterdir() if p != built[0]]  # no temp files left


@pytest.mark.parametrize("bias", [True, False])
def test_native_kernel_equals_dense_product_at_awkward_sizes(fresh_kernel, bias):
    if fresh_kernel.csr_kernel() is None:
        pytest.skip("no C compiler on this machine: sparse layers use MKL's product (tested above)")
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(13, 37, generator=g) * (torch.rand(13, 37, generator=g) < 0.2)
    weight[4] = 0  # an output with no kept weight at all
    b = torch.randn(13, generator=g) if bias else None
    layer = nn.Linear(37, 13, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(b)
    fast = SparseLinear(layer)
    assert fast.native
    for n in (1, 63, 64, 65, 130, 0):  # block boundaries of the kernel (64 rows)
        x = torch.randn(n, 37, generator=g)
        with torch.no_grad():
            out = fast(x)
            assert out.is_contiguous() and out.shape == (n, 13)
            torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)


def test_without_the_native_kernel_sparse_layers_fall_back_to_mkl(fresh_kernel, monkeypatch):
    monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    layer = sparse_weights(nn.Linear(40, 30))
    fast = SparseLinear(layer)
    assert not fast.native
    x = torch.randn(70, 40)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x))
    # an input that needs gradients takes the MKL path even where the kernel exists
    monkeypatch.delenv("PRUNELAB_NO_NATIVE")
    fresh_kernel.csr_kernel.cache_clear()
    x.requires_grad_(True)
    torch.testing.assert_close(SparseLinear(layer)(x), layer(x))
