""":func:`build_model`: the one way experiments obtain a network, from any model source.

The model string is resolved by :func:`prunelab.models.source.resolve_model`; the module is built
under a seed (so a config file naming a model, a dataset and a seed determines the initial weights,
which lottery-ticket rewinding depends on), initialised, given starting weights when asked, and,
with ``image_size``, made to resize its input batches (see :class:`ResizeInputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import SpecError
from prunelab.models.init import INITS, initialise
from prunelab.models.registry import InputShape, check_num_classes, normalise_shape
from prunelab.models.source import ModelSource, resolve_model
from prunelab.models.weights import load_into, parse_weights, read_state

MAX_IMAGE_SIZE = 4096


class ResizeInputs:
    """A forward pre-hook resizing each input batch to ``size`` x ``size`` (bilinear), on the batch's
    own device: the dataset stays stored at its size, and no resized copy of it is ever held
    (CIFAR-10 at 224 x 224 in float32 would be 30 GB)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return (x, *args[1:])
        return args


def check_image_size(image_size: object) -> int | None:
    if image_size is None:
        return None
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise SpecError(f"image_size must be an integer in 1..{MAX_IMAGE_SIZE}, got {image_size!r}")
    return image_size


def model_input_shape(input_shape: InputShape, image_size: int | None) -> InputShape:
    """The shape the model's layers see: the stored images, resized to ``image_size`` when given."""
    if image_size is None:
        return input_shape
    if len(input_shape) != 3:
        raise SpecError(f"image_size resizes images; the data has inputs of shape {tuple(input_shape)}")
    return (input_shape[0], image_size, image_size)


def find_output_layer(model: nn.Module, num_classes: int) -> str | None:
    """The model's ``output_layer`` attribute, else its last ``nn.Linear`` with ``num_classes`` outputs."""
    named = getattr(model, "output_layer", None)
    if isinstance(named, str):
        return named
    linears = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    return linears[-1] if linears else None


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: InputShape = (1, 28, 28),
    init: str | None = None,
    seed: int | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    notes: list[str] | None = None,
    data: str | None = None,
) -> nn.Module:
    """Build and initialise the model ``name`` (a zoo name or any source form, see
    :mod:`prunelab.models.source`).

    ``init`` defaults to the source's scheme (the zoo family's; external models keep the weights
    their library drew, under the seed). With ``seed`` the weights depend on the seed alone and the
    global RNG state is left untouched, so building a model mid-run does not perturb data shuffling.
    ``weights`` (a file, or ``torchvision:DEFAULT``...) are loaded over the initial weights;
    ``image_size`` makes the model resize its input batches. What the build changed that a user
    should know (a replaced head, the weights loaded) is appended to ``notes``. ``data`` names the
    dataset, which a text model's vocabulary depends on (``bert-tiny``). Raises
    ``UnknownNameError`` for unknown names and ``SpecError`` for anything else malformed.
    """
    source = resolve_model(name)
    scheme = source.default_init if init is None else init
    if scheme is not None:
        INITS.get(scheme)  # fail on a bad name before any (possibly slow) construction
    num_classes = check_num_classes(num_classes)
    shape = model_input_shape(normalise_shape(input_shape), check_image_size(image_size))
    source.check_shape(shape)
    ref = None if weights is None else parse_weights(weights, source.weights_prefix)

    def make() -> nn.Module:
        model = source.build(num_classes, shape, data=data)
        return model if scheme is None else initialise(model, scheme)

    if seed is None:
        model = make()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make()
    _set_output_layer(name, source, model, num_classes)
    found: list[str] = (
        [] if ref is not None else source.notes(num_classes, getattr(model, "output_layer", None))
    )
    if ref is not None:
        if ref.prefix is None:
            state, where = read_state(ref.path), str(ref.path)
        else:
            state, _, where = source.pretrained(ref.name, num_classes, shape)
        found += load_into(model, state, where)
    if image_size is not None:
        model.register_forward_pre_hook(ResizeInputs(image_size))
        found.append(f"input batches are resized to {image_size}x{image_size} as they enter the model")
    if notes is not None:
        notes.extend(found)
    return model


def input_stats(name: str, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input statistics of pretrained weights (``torchvision:DEFAULT``), which the data is then
    normalised with; None for a weights file or none (the dataset's own statistics apply)."""
    if weights is None:
        return None
    source = resolve_model(name)
    ref = parse_weights(weights, source.weights_prefix)
    return None if ref.prefix is None else source.pretrained_stats(ref.name)


def _set_output_layer(name: str, source: ModelSource, model: nn.Module, num_classes: int) -> None:
    layer_name = find_output_layer(model, num_classes)
    layer = dict(model.named_modules()).get(layer_name) if layer_name is not None else None
    if source.is_builtin and (not isinstance(layer, nn.Linear) or layer.out_features != num_classes):
        raise TypeError(
            f"model {name!r}: output_layer={layer_name!r} is not a Linear with {num_classes} outputs"
        )
    if layer_name is not None and not isinstance(getattr(model, "output_layer", None), str):
        model.output_layer = layer_name


def example_input(
    model: nn.Module,
    input_shape: InputShape,
    batch: int = 1,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A batch ``model`` accepts: random token ids without padding for a text model, else N(0, 1)."""
    from prunelab.models.decoder import find_decoder
    from prunelab.models.encoder import example_tokens, is_encoder

    device = device if device is not None else next(model.parameters()).device
    if is_encoder(model) or find_decoder(model) is not None:
        return example_tokens(model, int(input_shape[0]), batch, generator, device)
    return torch.randn(batch, *input_shape, generator=generator).to(device)
