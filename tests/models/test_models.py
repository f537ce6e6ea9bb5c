"""Model zoo: shapes, hand-computed parameter counts, seeding, initialisation and errors."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError, SpecError, UnknownNameError
from prunelab.models import (
    INITS,
    MODELS,
    build_model,
    count_parameters,
    describe_models,
    initialise,
    model_names,
)
from prunelab.models.lenet import LeNet300100

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
EXPECTED_MODELS = {
    "lenet-300-100",
    "lenet5",
    "conv2",
    "conv4",
    "conv6",
    "conv2-bn",
    "conv4-bn",
    "vgg11",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet18",
    "alexnet",
}


def _output_layer(model: nn.Module) -> nn.Module:
    return dict(model.named_modules())[model.output_layer]


# --- hand-computed parameter counts -------------------------------------------------------------


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def resnet20_count(in_channels: int, classes: int) -> int:
    total = conv(in_channels, 16, 3, bias=False) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(3):
            total += (
                conv(c_in, width, 3, bias=False) + bn(width) + conv(width, width, 3, bias=False) + bn(width)
            )
            if c_in != width:  # 1x1 projection shortcut
                total += conv(c_in, width, 1, bias=False) + bn(width)
            c_in = width
    return total + linear(64, classes)


def test_registry_holds_every_model() -> None:
    assert set(model_names()) == EXPECTED_MODELS


def test_lenet_300_100_count() -> None:
    assert count_parameters(build_model("lenet-300-100", input_shape=MNIST)) == 266_610
    assert linear(784, 300) + linear(300, 100) + linear(100, 10) == 266_610


@pytest.mark.parametrize(
    ("shape", "flat_side"),
    [(MNIST, 5), (CIFAR, 6)],  # 28->26->13->11->5 ; 32->30->15->13->6
)
def test_lenet5_count(shape: tuple[int, int, int], flat_side: int) -> None:
    expected = (
        conv(shape[0], 6, 3)
        + conv(6, 16, 3)
        + linear(16 * flat_side * flat_side, 120)
        + linear(120, 84)
        + linear(84, 10)
    )
    assert count_parameters(build_model("lenet5", input_shape=shape)) == expected
    if shape == MNIST:
        assert expected == 60_074  # Paganini & Forde 2020, Table 1: ~60k


@pytest.mark.parametrize(("shape", "pooled_side"), [(MNIST, 14), (CIFAR, 16)])
def test_conv2_count(shape: tuple[int, int, int], pooled_side: int) -> None:
    expected = (
        conv(shape[0], 64, 3)
        + conv(64, 64, 3)
        + linear(64 * pooled_side**2, 256)
        + linear(256, 256)
        + linear(256, 10)
    )
    assert count_parameters(build_model("conv2", input_shape=shape)) == expected
    if shape == CIFAR:
        assert round(expected / 1e6, 1) == 4.3  # Frankle & Carbin Table 1


@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_resnet20_count(shape: tuple[int, int, int]) -> None:
    expected = resnet20_count(shape[0], 10)
    assert count_parameters(build_model("resnet20", input_shape=shape)) == expected
    if shape == CIFAR:
        assert expected == 272_474  # He et al.'s 0.27M plus 2,752 for the two projections


# --- every model builds and runs ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_builds_and_forwards(name: str, shape: tuple[int, int, int]) -> None:
    num_classes = 10 if shape == MNIST else 7
    model = build_model(name, num_classes=num_classes, input_shape=shape, seed=0)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    head = _output_layer(model)
    assert isinstance(head, nn.Linear)
    assert head.out_features == num_classes
    assert f"{model.output_layer}.weight" in model.state_dict()


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_min_size_is_exact(name: str) -> None:
    """The declared minimum builds and runs (non-square too); one pixel less is refused."""
    m = MODELS.get(name).min_size
    model = build_model(name, input_shape=(2, m, m + 3), seed=0).eval()
    assert model(torch.randn(2, 2, m, m + 3)).shape == (2, 10)
    if m > 1:
        for bad in [(2, m - 1, m + 3), (2, m + 3, m - 1)]:
            with pytest.raises(SpecError):
                build_model(name, input_shape=bad)


def test_bad_input_shape_message() -> None:
    with pytest.raises(SpecError) as err:
        build_model("conv6", input_shape=(3, 4, 4))
    message = str(err.value)
    assert "conv6" in message
    assert "(3, 4, 4)" in message
    assert ">= 8" in message


@pytest.mark.parametrize(
    "shape", [(28, 28), (1, 0, 28), (1, 28.0, 28), "1x28x28", (1, 28, 28, 1), (True, 28, 28)]
)
def test_malformed_input_shape(shape: object) -> None:
    with pytest.raises(SpecError, match="input_shape"):
        build_model("lenet5", input_shape=shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(SpecError, match="num_classes"):
        build_model("lenet5", num_classes=num_classes)  # type: ignore[arg-type]


def test_input_shape_as_list() -> None:
    assert build_model("lenet5", input_shape=[1, 28, 28])(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # type: ignore[arg-type]


def test_lenet_300_100_accepts_flat_input() -> None:
    model = build_model("lenet-300-100", seed=0)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), model(x.flatten(1)))


# --- names and errors ---------------------------------------------------------------------------


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        build_model("lenet-5")
    message = str(err.value)
    assert "lenet-5" in message
    for name in EXPECTED_MODELS:
        assert name in message
    assert "Did you mean 'lenet5'" in message
    assert isinstance(err.value, PrunelabError)


def test_unknown_init() -> None:
    with pytest.raises(UnknownNameError, match="glorot-normal") as err:
        build_model("lenet5", init="xavier")
    assert "xavier" in str(err.value)
    with pytest.raises(UnknownNameError):
        initialise(nn.Linear(2, 2), "he")


# --- seeding ------------------------------------------------------------------------------------


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_same_seed_same_weights(name: str) -> None:
    a = build_model(name, input_shape=CIFAR, seed=1)
    torch.rand(5)  # global RNG use in between must not matter
    b = build_model(name, input_shape=CIFAR, seed=1)
    c = build_model(name, input_shape=CIFAR, seed=2)
    assert _state_equal(a, b)
    assert not _state_equal(a, c)


def test_seed_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model("conv2", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    build_model("conv2")  # without a seed the global generator is used, as documented
    assert not torch.equal(torch.get_rng_state(), before)


# --- initialisation -----------------------------------------------------------------------------


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0, 0].numel()
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [
        ("glorot-normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("glorot-uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("kaiming-normal", lambda fi, fo: math.sqrt(2 / fi)),
        ("kaiming-uniform", lambda fi, fo: math.sqrt(2 / fi)),
    ],
)
@pytest.mark.parametrize(("name", "param"), [("lenet-300-100", "fc1.weight"), ("conv6", "conv4.weight")])
def test_init_std(scheme: str, expected_std, name: str, param: str) -> None:
    model = build_model(name, init=scheme, seed=0)
    params = dict(model.named_parameters())
    weight = params[param]
    fan_in, fan_out = _fans(weight)
    std = expected_std(fan_in, fan_out)
    assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert abs(weight.mean().item()) < 0.05 * std
    for key, value in params.items():
        if key.endswith("bias"):
            assert torch.count_nonzero(value) == 0, key


def test_lenet_300_100_default_is_glorot_normal() -> None:
    assert _state_equal(
        build_model("lenet-300-100", seed=3), build_model("lenet-300-100", init="glorot-normal", seed=3)
    )


@pytest.mark.parametrize(
    ("name", "scheme"),
    [("lenet-300-100", "glorot-normal"), ("lenet5", "glorot-normal"), ("conv4", "glorot-normal")]
    + [(n, "kaiming-normal") for n in ("vgg11", "vgg16", "vgg19", "resnet20", "resnet18")],
)
def test_family_default_init(name: str, scheme: str) -> None:
    assert MODELS.get(name).default_init == scheme


def test_torch_default_keeps_pytorch_init() -> None:
    model = build_model("lenet-300-100", init="torch-default", seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        reference = LeNet300100(784, 10)
    assert _state_equal(model, reference)
    assert torch.count_nonzero(model.fc1.bias) > 0


@pytest.mark.parametrize("scheme", INITS.names())
def test_batchnorm_is_one_zero(scheme: str) -> None:
    model = build_model("resnet20", seed=0, init=scheme)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 5.0)
            nn.init.constant_(module.bias, 5.0)
    initialise(model, scheme)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for module in norms:
        assert torch.all(module.weight == 1)
        assert torch.all(module.bias == 0)


# --- state dict, description --------------------------------------------------------------------


def test_state_dict_is_plain() -> None:
    model = build_model("lenet-300-100", seed=0)
    state = model.state_dict()
    assert list(state) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert all(type(v) is torch.Tensor for v in state.values())
    fresh = build_model("lenet-300-100", seed=1)
    fresh.load_state_dict(state, strict=True)
    assert _state_equal(model, fresh)
    resnet_keys = build_model("resnet20").state_dict().keys()
    assert {"layer1.0.conv1.weight", "layer2.0.shortcut.conv.weight", "fc.weight"} <= resnet_keys


def test_describe_models() -> None:
    before = torch.get_rng_state()
    rows = describe_models(MNIST, 10)
    assert torch.equal(torch.get_rng_state(), before)
    assert [r[0] for r in rows] == model_names()
    by_name = {r[0]: r for r in rows}
    assert by_name["lenet-300-100"][1:3] == ("lenet", 266_610)
    assert by_name["resnet20"][2] == resnet20_count(1, 10)
    tiny = {r[0]: r[2] for r in describe_models((3, 4, 4), 10)}
    assert tiny["conv6"] is None
    assert tiny["conv4"] == count_parameters(build_model("conv4", input_shape=(3, 4, 4)))


def test_model_entry_is_frozen() -> None:
    entry = MODELS.get("alexnet")
    assert entry.family == "alexnet"
    assert "15" in entry.supported_input
    assert MODELS.get("resnet18").supported_input.startswith("any")
    with pytest.raises(FrozenInstanceError):
        entry.family = "other"  # type: ignore[misc]
