"""Physical removal: compact models compute what masked models compute, for every model family."""

import copy

import pytest
import torch
from helpers import assert_same_outputs
from torch import nn

from prunelab.compress import compact
from prunelab.errors import MaskError, PrunelabError
from prunelab.models import build_model, count_parameters, model_names
from prunelab.pruning import Mask, prune

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {
    "lenet-300-100": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "resnet18": (3, 16, 16),
    "alexnet": (3, 16, 16),
}


def shape_of(name: str) -> tuple[int, int, int]:
    return SHAPES.get(name, (3, 32, 32))


def randomise(model: nn.Module, seed: int, affine: bool = False) -> nn.Module:
    """Random positive BatchNorm statistics and scales (else eval-mode BN is the identity and proves
    little); with ``affine`` also random BN shifts and biases, so dead units carry non-zero constants."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.2 + 0.2)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                if affine:
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            elif affine and isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model.eval()


def masked_copy(model: nn.Module, mask: Mask) -> nn.Module:
    return mask.apply(copy.deepcopy(model)).eval()


def structured(model: nn.Module, fraction: float = 0.5, structure: str = "structured-output") -> Mask:
    return prune(
        model,
        None,
        fraction=fraction,
        method="l1-structured",
        structure=structure,
        exclude=[model.output_layer],
    )


@pytest.mark.parametrize("name", model_names())
def test_compact_equals_masked_for_every_model(name):
    shape = shape_of(name)
    model = randomise(build_model(name, input_shape=shape, seed=0), seed=1)
    mask = structured(model)
    result = compact(model, mask, torch.zeros(1, *shape))
    assert_same_outputs(result.model, masked_copy(model, mask), shape)
    assert count_parameters(result.model) < count_parameters(model)
    assert sum(result.removed.values()) > 0 and not result.kept_dead


@pytest.mark.parametrize("name", ["lenet5", "conv4", "vgg11", "resnet20", "alexnet"])
def test_dead_units_with_nonzero_constants_are_folded_or_kept_exactly(name):
    """Random biases and BN shifts: a dead unit outputs a constant, folded into the next layer's bias
    where that is exact (linear, unpadded conv) and kept where it is not (zero-padded conv)."""
    shape = shape_of(name)
    model = randomise(build_model(name, input_shape=shape, seed=0), seed=2, affine=True)
    mask = structured(model)
    result = compact(model, mask, torch.zeros(1, *shape))
    assert_same_outputs(result.model, masked_copy(model, mask), shape)
    assert count_parameters(result.model) < count_parameters(model)
    if name == "lenet5":  # unpadded convs: every dead unit folds
        assert not result.kept_dead and result.removed == {"conv1": 3, "conv2": 8, "fc1": 60, "fc2": 42}


def test_approximate_mode_removes_every_dead_channel_and_reports_the_error():
    shape = (3, 32, 32)
    model = randomise(build_model("vgg11", input_shape=shape, seed=0), seed=2, affine=True)
    mask = structured(model)
    exact = compact(model, mask, torch.zeros(1, *shape))
    approx = compact(model, mask, torch.zeros(1, *shape), exact=False)
    assert exact.kept_dead and not approx.kept_dead
    assert count_parameters(approx.model) < count_parameters(exact.model)
    assert approx.max_error > exact.max_error


def test_lenet_300_100_counts_match_a_hand_computation():
    model = randomise(build_model("lenet-300-100", seed=0), seed=3, affine=True)
    out_mask = structured(model)  # fc1 keeps 150 of 300 units, fc2 50 of 100
    out = compact(model, out_mask, torch.zeros(1, 1, 28, 28))
    assert count_parameters(out.model) == (784 * 150 + 150) + (150 * 50 + 50) + (50 * 10 + 10)
    assert out.plan["fc2"] == {"type": "Linear", "attrs": {"in_features": 150, "out_features": 50}}
    kept = out_mask["fc1.weight"].any(1).nonzero().flatten().tolist()
    assert out.kept_channels["fc1"] == kept
    # structured-input: fc2 drops 150 input columns, so those fc1 units are unused; pixels stay
    in_mask = structured(model, structure="structured-input")
    inp = compact(model, in_mask, torch.zeros(1, 1, 28, 28))
    assert count_parameters(inp.model) == (784 * 150 + 150) + (150 * 100 + 100) + (100 * 10 + 10)
    assert_same_outputs(inp.model, masked_copy(model, in_mask), (1, 28, 28))


def test_unstructured_dead_units_cascade():
    """Units dead on either side go, and so do units whose only live inputs came from removed ones."""
    model = randomise(build_model("lenet-300-100", seed=0), seed=4, affine=True)
    keep = Mask.ones(model)
    fc1, fc2 = keep["fc1.weight"].clone(), keep["fc2.weight"].clone()
    fc1[0:10] = False  # dead: no incoming weight
    fc2[:, 10:20] = False  # unused: no outgoing weight
    fc2[5] = False
    fc2[5, 0:10] = True  # fc2 unit 5 only listens to dead fc1 units: constant, so dead too
    fc1[50:60, 100:700] = False  # ordinary unstructured zeros
    mask = Mask({"fc1.weight": fc1, "fc2.weight": fc2, "fc3.weight": keep["fc3.weight"]})
    result = compact(model, mask, torch.zeros(1, 1, 28, 28))
    assert result.plan["fc1"]["attrs"]["out_features"] == 280
    assert result.plan["fc2"]["attrs"]["out_features"] == 99
    assert result.removed == {"fc1": 20, "fc2": 1}
    assert_same_outputs(result.model, masked_copy(model, mask), (1, 28, 28))


def test_residual_channels_go_only_when_dead_in_every_coupled_layer():
    shape = (3, 16, 16)
    model = randomise(build_model("resnet20", input_shape=shape, seed=0), seed=5)
    stage = ["conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight", "layer1.2.conv2.weight"]
    keep = Mask.ones(model)
    partial = {n: m.clone() for n, m in keep.items()}
    partial["layer1.0.conv2.weight"][3] = False
    result = compact(model, Mask(partial), torch.zeros(1, *shape))
    assert (
        result.plan["layer1.0.conv2"]["attrs"]["out_channels"] == 16
    )  # the shortcut still carries channel 3
    full = {n: m.clone() for n, m in keep.items()}
    for name in stage:
        full[name][3] = False
    result = compact(model, Mask(full), torch.zeros(1, *shape))
    for layer in ("conv1", "bn1", "layer1.2.conv2", "layer1.2.bn2"):
        attrs = result.plan[layer]["attrs"]
        assert attrs.get("out_channels", attrs.get("num_features")) == 15, layer
    assert result.plan["layer2.0.shortcut.conv"]["attrs"]["in_channels"] == 15
    assert 3 not in result.kept_channels["conv1"]
    assert_same_outputs(result.model, masked_copy(model, Mask(full)), shape)


def test_a_layer_keeps_at_least_one_unit():
    model = build_model("lenet-300-100", seed=0).eval()
    keep = {n: m.clone() for n, m in Mask.ones(model).items()}
    keep["fc2.weight"][:] = False
    result = compact(model, Mask(keep), torch.zeros(1, 1, 28, 28))
    assert result.plan["fc2"]["attrs"]["out_features"] == 1
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(result.model(x), masked_copy(model, Mask(keep))(x))


def test_the_input_model_is_left_alone():
    model = build_model("lenet5", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact(model, structured(model), torch.zeros(1, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_a_mask_that_does_not_fit_is_refused():
    model = build_model("lenet-300-100", seed=0)
    other = Mask.ones(build_model("lenet5", seed=0))
    with pytest.raises(MaskError, match="not parameters of the model"):
        compact(model, other, torch.zeros(1, 1, 28, 28))


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.head = nn.Linear(5, 2)  # wrong width: tracing fails here

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def test_a_model_failing_on_its_example_names_the_layer_and_ops_without_rules_freeze():
    with pytest.raises(PrunelabError, match=r"in layer 'head' \(Linear\)"):
        compact(Broken(), None, torch.zeros(1, 8))
    model = WithLSTM()  # no rule for the LSTM: the channels it touches stay, nothing is guessed
    keep = {n: m.clone() for n, m in Mask.ones(model).items()}
    keep["fc.weight"][:, 1] = False
    result = compact(model, Mask(keep), torch.zeros(1, 3, 4))
    assert not result.removed and count_parameters(result.model) == count_parameters(model)
    assert_same_outputs(result.model, masked_copy(model, Mask(keep)), (3, 4))


class _Permuted(nn.Module):
    """``linear`` reading its inputs in another order: the same function, summed in another order."""

    def __init__(self, linear: nn.Linear, order: torch.Tensor) -> None:
        super().__init__()
        self.order = order
        self.fc = nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            self.fc.weight.copy_(linear.weight[:, order])
            self.fc.bias.copy_(linear.bias)
        self.bn = nn.BatchNorm1d(linear.out_features)

    def forward(self, x):
        return self.bn(self.fc(x[:, self.order]))


def _near_constant_pair():
    """A linear layer whose outputs barely vary over a batch, then train-mode BatchNorm, which
    divides float32 rounding (~1e-7) by that small deviation (~1e-4): beyond tolerance in float32,
    far within it in float64. Eval mode (running statistics 0 and 1) does not amplify it."""
    torch.manual_seed(0)
    fc = nn.Linear(512, 4)
    with torch.no_grad():
        fc.weight.mul_(1e-3)
        fc.bias.fill_(1.0)
    reference = nn.Sequential()
    reference.fc, reference.bn = fc, nn.BatchNorm1d(4)
    return reference, _Permuted(fc, torch.randperm(512))


def test_the_check_takes_float64_where_float32_rounding_alone_is_off():
    from prunelab.compress.compact import _checked, _compared, check, check_inputs

    reference, net = _near_constant_pair()
    example = torch.zeros(1, 512)
    x = check_inputs(reference, example, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(Exception, match="in train mode"):  # float32 alone would refuse it
            _checked(_compared(reference, net, x, net), net, x, True, None, locate=False)
        float32 = _checked(_compared(reference, net, x, net, modes=(True,)), net, x, False, None)
    error = check(net, reference, example, torch.Generator().manual_seed(0), 16, exact=True)
    assert float32 > 1e-5 and error < float32 / 100  # the float64 verdict: the same function


def test_an_inexact_model_is_refused_naming_the_first_layer_that_differs():
    from prunelab.compress.compact import check

    reference = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net = copy.deepcopy(reference)
    with torch.no_grad():
        net[2].weight[0, 0] += 0.5
    with pytest.raises(PrunelabError, match=r"changed its outputs by .*layer '2' are the first to differ"):
        check(net, reference, torch.zeros(1, 6), torch.Generator().manual_seed(0), 8, exact=True)
    assert check(net, reference, torch.zeros(1, 6), torch.Generator().manual_seed(0), 8, exact=False) > 0.01
