"""Sparse execution: every format of prunelab's kernel equals the dense layer with zeros (and torch's
CSR product), at awkward shapes, batch sizes and thread counts; layers are swapped in only where faster."""

import contextlib
import stat
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.compress import SparseConv2d, SparseLinear, semi_structured_support, sparsify
from prunelab.compress import native as sparse_native
from prunelab.compress import sparse as sparse_module
from prunelab.compress.formats import FORMATS, Pattern
from prunelab.compress.sparse import fits, install_sparse, is_2_4, sparse_state
from prunelab.errors import PrunelabError
from prunelab.models import build_model
from prunelab.native import cache_dir
from prunelab.pruning import prune

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = ("csr16", "bitmap", "nm")  # csr32 (inputs past 65,536) has its own test


@pytest.fixture()
def kernel():
    """The kernel (built once for the tests that share it; skips where no compiler exists)."""
    if sparse_native.sparse_kernel() is None:
        pytest.skip(f"{sparse_native.fallback_message()} (the MKL path is tested on its own)")
    return sparse_native


def _clear():
    sparse_native.sparse_kernel.cache_clear()
    sparse_native._entry.cache_clear()
    sparse_native.warn_fallback.cache_clear()


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weight(rows: int, cols: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)


def n_of_m(rows: int, cols: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """At most n kept in every m consecutive inputs (the last group of a row may be partial)."""
    g = torch.Generator().manual_seed(seed)
    groups = -(-cols // m)
    keep = torch.zeros(rows, groups, m)
    keep.scatter_(2, torch.rand(rows, groups, m, generator=g).argsort(2)[..., :n], 1.0)
    return torch.randn(rows, cols, generator=g) * keep.reshape(rows, groups * m)[:, :cols]


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The dense layer with zeros, in float64."""
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


def check(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: relative 1e-5 of the output's scale."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale)


# odd shapes: widths that are not multiples of 8 or 16, empty rows, empty and full layers
SHAPES = {
    "13x37, empty rows": lambda: weight(13, 37, 0.3).index_fill_(0, torch.tensor([0, 4, 12]), 0.0),
    "1x1": lambda: weight(1, 1, 1.0),
    "33x17": lambda: weight(33, 17, 0.5),
    "40x129, 95% zeros": lambda: weight(40, 129, 0.05),
    "all zeros": lambda: torch.zeros(20, 30),
    "no zeros": lambda: weight(24, 45, 1.0),
    "2:4, 18x37": lambda: n_of_m(18, 37, 2, 4),
    "1:8, 17x70": lambda: n_of_m(17, 70, 1, 8),
    "4:16, 5x48": lambda: n_of_m(5, 48, 4, 16),
    "4:8, 9x75": lambda: n_of_m(9, 75, 4, 8),
}
BATCHES = (1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 130)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("bias", [True, False])
def test_every_format_equals_the_dense_layer_with_zeros(kernel, shape, bias):
    w = SHAPES[shape]()
    b = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1)) if bias else None
    formats = fits(Pattern.of(w))
    assert "csr16" in formats and "bitmap" in formats and "mkl" in formats
    assert "nm" in formats or ":" not in shape  # found where the pattern is N:M
    g = torch.Generator().manual_seed(2)
    for name in formats:
        layer = SparseLinear(w, b, format=name)
        assert layer.format == name and torch.equal(layer.dense_weight(), w)
        for n in BATCHES:
            x = torch.randn(n, w.shape[1], generator=g)
            expected = reference(x, w, b)
            for t in (1, 2):
                with threads(t), torch.no_grad():
                    out = layer(x)
                assert out.shape == (n, w.shape[0]) and (out.is_contiguous() or name == "mkl")
                check(out, expected)


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_the_avx2_and_portable_builds_equal_the_dense_layer(kernel, monkeypatch, isa):
    """The same source built for CPUs without AVX-512 (AVX2 gathers; plain C and SSE2 elsewhere)."""
    from prunelab import native

    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    flags = ["-O3", "-shared", "-fPIC", *(["-mavx2", "-mfma"] if isa == "avx2" else [])]
    monkeypatch.setattr(native, "_flag_sets", lambda wide=False: [[*flags, "-fopenmp"], flags])
    _clear()
    try:
        assert sparse_native.sparse_kernel() is not None, sparse_native.fallback_message()
        g = torch.Generator().manual_seed(4)
        for shape in ("13x37, empty rows", "2:4, 18x37", "4:8, 9x75", "40x129, 95% zeros"):
            w = SHAPES[shape]()
            b = torch.randn(w.shape[0], generator=g)
            for name in fits(Pattern.of(w)):
                layer = SparseLinear(w, b, format=name)
                for n in (1, 9, 70):
                    x = torch.randn(n, w.shape[1], generator=g)
                    for t in (1, 2):
                        with threads(t), torch.no_grad():
                            check(layer(x), reference(x, w, b))
    finally:
        _clear()


def test_kernel_equals_torch_sparse_at_bert_sizes_and_large_batches(kernel):
    """The oracle: torch's CSR product (MKL), at a BERT FFN shape, 1 and 2 threads."""
    w = weight(768, 300, 0.1)
    b = torch.randn(768)
    oracle = SparseLinear(w, b, format="mkl")
    x = torch.randn(200, 300)
    with torch.no_grad():
        expected = oracle(x)
        for name in NATIVE[:2]:
            for t in (1, 2):
                with threads(t):
                    check(SparseLinear(w, b, format=name)(x), expected)


def test_csr32_for_inputs_past_65536(kernel):
    w = torch.zeros(3, 70_001)
    w[0, [0, 65_535, 65_536, 70_000]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w[2, 40_000] = -1.0
    assert fits(Pattern.of(w)) == ["csr32", "bitmap", "mkl"]
    layer = SparseLinear(w)
    assert layer.format == "csr32"
    x = torch.randn(5, 70_001)
    with torch.no_grad():
        check(layer(x), reference(x, w, None))
        check(layer(x[:1]), reference(x[:1], w, None))
    with pytest.raises(PrunelabError, match=r"'csr16' does not fit a 3x70001 weight.*csr32, bitmap, mkl"):
        SparseLinear(w, format="csr16")


def test_leading_dimensions_views_and_the_transformers_conv1d_layout(kernel):
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(30, 40) < 0.1)
    fast = SparseLinear(layer)
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        check(fast(x), layer(x))
        check(fast(x.transpose(0, 1)), layer(x.transpose(0, 1)))  # not contiguous
        columns = torch.randn(40, 6).t()  # a transposed view
        check(fast(columns), layer(columns))

    class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D: y = x @ weight + bias, weight (in, out)
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf) * (torch.rand(nx, nf) < 0.2))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x):
            return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
                *x.shape[:-1], self.nf
            )

    gpt2 = Conv1D(12, 20)
    swapped = SparseLinear(gpt2)
    assert (swapped.in_features, swapped.out_features) == (20, 12)
    x = torch.randn(3, 5, 20)
    with torch.no_grad():
        check(swapped(x), gpt2(x))


@pytest.mark.parametrize("fmt", ["csr16", "bitmap", "mkl"])
def test_sparse_conv_equals_dense(kernel, fmt):
    g = torch.Generator().manual_seed(0)
    cases = [
        (nn.Conv2d(4, 6, 3, padding=1), (2, 4, 9, 9)),
        (nn.Conv2d(4, 6, 3, stride=2), (3, 4, 9, 9)),
        (nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False), (2, 4, 9, 9)),
        (nn.Conv2d(20, 24, 1), (2, 20, 9, 9)),  # 1x1: the input read as is
        (nn.Conv2d(20, 24, 1, stride=2, bias=False), (2, 20, 9, 9)),
        (nn.Conv2d(20, 24, 1), (70, 20, 1, 1)),  # a classifier on pooled features: one pixel each
    ]
    for conv, shape in cases:
        with torch.no_grad():
            conv.weight.mul_(torch.rand(conv.weight.shape, generator=g) < 0.2)
        x = torch.randn(*shape, generator=g)
        fast = SparseConv2d(conv, format=fmt)
        for t in (1, 2):
            with threads(t), torch.no_grad():
                check(fast(x), conv(x))


def test_the_kernel_is_built_once_and_cached(kernel):
    _clear()  # built again, under this test's own cache folder
    assert sparse_native.sparse_kernel() is not None
    built = list(cache_dir().glob("sparse_linear-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _clear()
    assert sparse_native.sparse_kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in cache_dir().iterdir() if p != built[0]]  # no temporary files left
    assert sparse_native.fallback_message() is None


def test_a_compiler_error_is_one_message_naming_the_compiler_and_the_fallback(tmp_path, monkeypatch):
    broken = tmp_path / "brokencc"
    broken.write_text("#!/bin/sh\necho 'sparse_linear.c:1:1: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(broken))
    _clear()
    try:
        message = sparse_native.fallback_message()
        assert str(broken) in message and "this compiler is broken" in message
        assert "torch.sparse CSR (MKL)" in message and "\n" not in message
        w = weight(12, 20, 0.2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = [SparseLinear(w, format="csr16"), SparseLinear(w, format="bitmap")]
        assert [str(c.message) for c in caught] == [message]  # once per process, not per layer
        assert [layer.format for layer in layers] == ["mkl", "mkl"]
        x = torch.randn(5, 20)
        with torch.no_grad():
            check(layers[0](x), reference(x, w, None))
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        _clear()
        assert str(tmp_path / "no-such-cc") in sparse_native.fallback_message()
    finally:
        _clear()


def test_without_the_kernel_sparse_layers_run_mkl_and_gradients_always_do(monkeypatch):
    monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    _clear()
    try:
        layer = nn.Linear(40, 30)
        with torch.no_grad():
            layer.weight.mul_(torch.rand(30, 40) < 0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = SparseLinear(layer)
        assert not fast.native and "PRUNELAB_NO_NATIVE=1" in sparse_native.fallback_message()
        x = torch.randn(70, 40)
        with torch.no_grad():
            check(fast(x), layer(x))
    finally:
        _clear()
    monkeypatch.delenv("PRUNELAB_NO_NATIVE")
    x = torch.randn(6, 40, requires_grad=True)  # an input that needs gradients takes torch's path
    out = SparseLinear(layer, format="csr16")(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.detach().sum(0).expand(6, 40))


@pytest.mark.parametrize("fmt", ["csr16", "mkl"])
def test_copies_and_moves_get_their_own_kernel_view(kernel, fmt):
    import copy

    w = weight(30, 50, 0.1)
    layer = SparseLinear(w, torch.randn(30), format=fmt)
    x = torch.randn(9, 50)
    with torch.no_grad():
        before = layer(x)
        twin = copy.deepcopy(layer)
        del layer
        check(twin(x), before)
        check(twin.to("cpu")(x), before)
        check(copy.deepcopy(nn.Sequential(twin))(x), before)  # a model holding one copies too


def test_sparsify_times_every_format_and_keeps_outputs():
    model = build_model("lenet5", seed=0)
    mask = prune(model, None, fraction=0.9, method="magnitude")
    x = torch.randn(8, 1, 28, 28)
    forced = sparsify(model, x, mask, repeats=2, force=True)
    assert sorted(forced.used) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert isinstance(forced.model.fc1, SparseLinear) and isinstance(forced.model.conv2, SparseConv2d)
    assert forced.max_error < 1e-5 and forced.batch_size == 8 and forced.threads == 1
    chosen = sparsify(model, x, mask, repeats=2)
    for choice in chosen.choices:
        assert choice.dense_ms is not None and set(choice.timings) == set(
            fits(Pattern.of(mask["fc1.weight"]))
        )
        assert choice.format == min(choice.timings, key=choice.timings.get)
        assert choice.used == (choice.sparse_ms < 0.95 * choice.dense_ms)
    only = sparsify(model, x, mask, repeats=1, force=True, formats=("mkl",))
    assert {c.format for c in only.choices} == {"mkl"}
    dense_enough = sparsify(model, x, mask, repeats=1, min_sparsity=0.95)
    assert dense_enough.used == [] and all(c.dense_ms is None for c in dense_enough.choices)
    assert isinstance(model.fc1, nn.Linear)  # the input model is left alone
    with pytest.raises(PrunelabError, match=r"unknown sparse format 'csr'.*csr16"):
        sparsify(model, x, mask, formats=("csr",))


def test_where_sparse_is_slower_the_layer_stays_dense(monkeypatch):
    """The choice itself, with the timings forced: sparse twice as slow as dense everywhere."""

    def fake_time(fn, repeats, sync):
        module = fn.__defaults__[0]
        return 2.0 if isinstance(module, (SparseLinear, SparseConv2d)) else 1.0

    monkeypatch.setattr(sparse_module, "_time_ms", fake_time)
    model = build_model("lenet-300-100", seed=0)
    mask = prune(model, None, fraction=0.95, method="magnitude")
    result = sparsify(model, torch.randn(4, 1, 28, 28), mask, repeats=1)
    assert result.used == [] and len(result.choices) == 3
    assert all(c.sparse_ms == 2.0 and c.dense_ms == 1.0 and not c.used for c in result.choices)
    assert not any(isinstance(m, SparseLinear) for m in result.model.modules())


def test_sparse_state_round_trip_rebuilds_each_layer_in_its_format(kernel):
    model = nn.Sequential(nn.Linear(37, 20), nn.ReLU(), nn.Linear(20, 8), nn.Conv2d(3, 4, 1))
    with torch.no_grad():
        model[0].weight.copy_(n_of_m(20, 37, 2, 4))
        model[2].weight.mul_(torch.rand(8, 20) < 0.2)
    model[0] = SparseLinear(model[0], format="nm")
    model[2] = SparseLinear(model[2], format="bitmap")
    model[3] = SparseConv2d(model[3], format="csr16")
    layers, tensors = sparse_state(model)
    assert {k: v["format"] for k, v in layers.items()} == {"0": "nm", "2": "bitmap", "3": "csr16"}
    fresh = nn.Sequential(nn.Linear(37, 20), nn.ReLU(), nn.Linear(20, 8), nn.Conv2d(3, 4, 1))
    install_sparse(fresh, layers, tensors)
    for i in (0, 2, 3):
        assert fresh[i].format == model[i].format
        assert torch.equal(fresh[i].pattern().dense(), model[i].pattern().dense())
    x = torch.randn(5, 37)
    with torch.no_grad():
        torch.testing.assert_close(fresh[2](fresh[1](fresh[0](x))), model[2](model[1](model[0](x))))
    tensors["2.col"] = tensors["2.col"] + 100
    with pytest.raises(PrunelabError, match="do not describe a 8x20 weight"):
        install_sparse(fresh, layers, tensors)


def test_format_bytes_follow_their_formulas():
    w = weight(64, 100, 0.1)
    p = Pattern.of(w)
    nnz = p.nnz
    assert FORMATS.get("csr16").nbytes(p) == 6 * nnz + 4 * 65
    assert FORMATS.get("bitmap").nbytes(p) == 4 * nnz + 2 * 64 * 7 + 4 * 65
    q = Pattern.of(n_of_m(64, 100, 2, 4))
    assert FORMATS.get("nm").shape_args(q) == (2, 4)
    assert FORMATS.get("nm").nbytes(q) == 5 * 64 * 25 * 2 + 4 * 65
    assert not FORMATS.get("nm").fits(p)  # a random mask is no N:M pattern


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
