"""Export a compacted model as a plain state_dict plus a JSON plan; load it back without pickle.

The plan names the registered model and its build arguments, then every reshaped layer's new
constructor shapes: :func:`load_compact` builds the model on the meta device (no memory, no
initialisation), swaps in layers of the planned shapes and assigns the safetensors weights.
A sparse export (``sparse=``, from :func:`~prunelab.compress.sparse.sparsify`) adds the plan's
``sparse`` section (each sparse layer's type, format and shape, and the batch size and threads its
format was timed at) and ``sparse.safetensors`` (their CSR arrays and biases): those layers are
packed again at load and run sparse, the rest come from ``model.safetensors`` as usual.
Nothing on disk is executed, and an export never leaves a half-written folder behind.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.compress.blocks import ShortcutBlock
from prunelab.compress.compact import NORM_TYPES, CompactResult
from prunelab.compress.encoder import save_pretrained
from prunelab.compress.resize import set_attributes
from prunelab.compress.sparse import SparseResult, install_sparse, sparse_state
from prunelab.coupling.attention import SWAPPED
from prunelab.errors import CheckpointError, PrunelabError
from prunelab.io import (
    OutputKind,
    atomic_write_json,
    check_output_folder,
    load_tensors,
    output_folder,
    save_tensors,
)
from prunelab.models.build import example_input
from prunelab.models.encoder import is_encoder, set_head_counts
from prunelab.models.residual import shortcut_attribute
from prunelab.models.source import resolve_model

FORMAT = "prunelab-compact"
VERSION = 2
READABLE = (1, 2)  # version 1: every layer rebuilt fresh from its constructor shapes
WEIGHTS = "model.safetensors"
SPARSE_WEIGHTS = "sparse.safetensors"
PLAN = "plan.json"
ONNX = "model.onnx"
HF = "hf"


EXPORT = OutputKind("export", PLAN, (PLAN, WEIGHTS, SPARSE_WEIGHTS, ONNX, HF))


def check_target(directory: str | Path, force: bool = False, protect: Sequence[Path] = ()) -> Path:
    """Refuse, before any work, a target that could hold something of value (see
    :func:`prunelab.io.check_output_folder`): ``force`` replaces only an earlier export."""
    return check_output_folder(directory, EXPORT, force=force, protect=protect)


def export_compact(
    result: CompactResult,
    directory: str | Path,
    *,
    model: str,
    num_classes: int,
    input_shape: Sequence[int],
    force: bool = False,
    onnx: bool = False,
    source: dict[str, Any] | None = None,
    protect: Sequence[Path] = (),
    image_size: int | None = None,
    data: str | None = None,
    sparse: SparseResult | None = None,
) -> Path:
    """Write ``result`` to ``directory`` (weights, plan, optionally ONNX), checked by loading it back.

    ``force`` replaces an earlier export only; ``protect`` are folders the target may not hold
    (the results root).

    ``model``, ``num_classes`` and ``input_shape`` are the :func:`prunelab.build_model` arguments
    that built the uncompacted network (a zoo name, ``torchvision:NAME``, ``timm:NAME`` or a user
    factory, whose file hash the plan records), ``image_size`` its input resizing, ``data`` the
    dataset (a text model's tokenizer comes from it). A transformer whose blocks all keep the same
    shapes is also written as a ``save_pretrained`` folder, ``hf/``, that transformers loads (see
    :func:`prunelab.compress.encoder.save_pretrained`). ``sparse``: ``result.model`` with sparse
    layers swapped in (:func:`~prunelab.compress.sparse.sparsify`), written as described above
    (``hf/`` and the parameter count stay those of the dense compacted model). Files are written to
    a temporary sibling folder that replaces ``directory`` only once complete.
    """
    directory = check_target(directory, force, protect)
    text = is_encoder(result.model)
    if onnx and sparse is not None:
        raise PrunelabError(
            "--onnx and --sparse cannot be combined: ONNX has no place for prunelab's sparse layers; "
            "export the ONNX model without --sparse"
        )
    if onnx and text:
        raise PrunelabError(
            "ONNX export of text models is not supported (their forward cuts padding per batch); "
            "export the hf/ save_pretrained folder with transformers' own tools instead"
        )
    if onnx:
        require_onnx()
    plan = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_fingerprint": resolve_model(model).fingerprint(),
        "image_size": image_size,
        "data": data,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "layers": result.plan,
        "kept_channels": result.kept_channels,
        "removed_blocks": list(result.removed_blocks),
        "removed_groups": {conv: list(groups) for conv, groups in result.removed_groups.items()},
        "removed_heads": {attention: list(heads) for attention, heads in result.removed_heads.items()},
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "source": source or {},
        "torch": torch.__version__,
    }
    net = result.model if sparse is None else sparse.model
    if sparse is not None:
        layers, tensors = sparse_state(sparse.model)
        plan["sparse"] = {
            "file": SPARSE_WEIGHTS,
            "batch_size": sparse.batch_size,
            "threads": sparse.threads,
            "layers": layers,
        }
    with output_folder(directory, EXPORT, force=force, protect=protect) as tmp:
        save_tensors(tmp / WEIGHTS, net.state_dict(), metadata={"format": FORMAT})
        if sparse is not None:
            save_tensors(tmp / SPARSE_WEIGHTS, tensors, metadata={"format": FORMAT})
        atomic_write_json(tmp / PLAN, plan)
        _check_round_trip(net, tmp, input_shape, result.model)
        if text:
            plan["save_pretrained"] = save_pretrained(result.model, tmp / HF, resolve_model(model), data)
            atomic_write_json(tmp / PLAN, plan)
        if onnx:
            export_onnx(result.model, tmp / ONNX, input_shape)
    return directory


@torch.no_grad()
def _check_round_trip(model: nn.Module, folder: Path, input_shape: Sequence[int], dense: nn.Module) -> None:
    """``folder`` loads back as ``model`` computes (``dense``: its dense form, which says what input
    it takes: a model whose layers all run sparse has no parameters left)."""
    loaded = load_compact(folder)
    x = example_input(dense, input_shape, 2, generator=torch.Generator().manual_seed(0))
    was = model.training
    model.eval()
    try:
        ok = torch.allclose(loaded.to(x.device)(x), model(x), rtol=1e-5, atol=1e-6)
    finally:
        model.train(was)
    if not ok:
        raise PrunelabError("the exported model does not reproduce the compacted one; nothing was written")


def read_plan(directory: str | Path) -> dict[str, Any]:
    """The plan of a :func:`export_compact` folder, checked for its format."""
    directory = Path(directory)
    try:
        plan = json.loads((directory / PLAN).read_text())
    except OSError:
        raise CheckpointError(f"{directory} holds no {PLAN}: not a `prunelab export` folder") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory / PLAN} is not valid JSON ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT or plan.get("version") not in READABLE:
        raise CheckpointError(
            f"{directory / PLAN} is not a {FORMAT} plan of version {' or '.join(map(str, READABLE))}"
        )
    return plan


def load_compact(directory: str | Path) -> nn.Module:
    """The compacted model saved by :func:`export_compact` (or ``prunelab export``), in eval mode."""
    from prunelab.models import build_model

    directory = Path(directory)
    plan = read_plan(directory)
    state = load_tensors(directory / WEIGHTS)
    _check_fingerprint(directory, plan)
    # Text models carry non-persistent buffers (position ids) that no state_dict holds: built for real.
    device = "cpu" if resolve_model(plan["model"]).is_text else "meta"
    try:
        with torch.device(device):
            model = build_model(
                plan["model"],
                num_classes=plan["num_classes"],
                input_shape=tuple(plan["input_shape"]),
                init="torch-default",
                image_size=plan.get("image_size"),
                data=plan.get("data"),
            )
            if plan["version"] == 1:
                for name, spec in plan["layers"].items():
                    model.set_submodule(name, _rebuild(model.get_submodule(name), spec, name))
            else:
                _apply_plan(model, plan["layers"])
                _fit_tensors(model, state)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / PLAN} does not describe a buildable model: {exc}") from None
    if plan.get("sparse"):
        _load_sparse(directory, plan["sparse"], model)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{directory / WEIGHTS} does not fit the plan: {first}") from None
    stale = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if stale:
        raise CheckpointError(f"{directory / WEIGHTS} lacks tensors for {stale[:5]}")
    if is_encoder(model):
        set_head_counts(model)
    return model.eval()


def _load_sparse(directory: Path, section: dict[str, Any], model: nn.Module) -> None:
    """Swap in the sparse layers of a sparse export, packed in their recorded formats."""
    try:
        file = directory / Path(str(section["file"])).name  # a name in the folder, never a path out of it
        install_sparse(model, section["layers"], load_tensors(file))
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError, PrunelabError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{directory / PLAN}: its sparse layers cannot be rebuilt ({exc})") from None


def _check_fingerprint(directory: Path, plan: dict[str, Any]) -> None:
    """A user factory's file that changed since the export may build another architecture: say so."""
    recorded = plan.get("model_fingerprint")
    if recorded is None:
        return
    try:
        now = resolve_model(plan["model"]).fingerprint()
    except PrunelabError as exc:
        raise CheckpointError(
            f"{directory / PLAN}: its model {plan['model']!r} cannot be found ({exc})"
        ) from None
    if now != recorded:
        warnings.warn(
            f"{plan['model']}: the file changed since {directory} was exported (content hash {recorded}, "
            f"now {now}); the architecture is rebuilt from the current code",
            stacklevel=3,
        )


def _apply_plan(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Version 2: swap in the modules compaction swapped in, and set every recorded size attribute
    (outermost first, so a swapped module's children are reached through it)."""
    for name in sorted(layers, key=lambda n: (n.count(".") if n else -1, n)):
        spec = layers[name]
        old = model.get_submodule(name)
        kind = spec.get("type")
        if kind in ("Factorized", "ShortcutBlock"):
            model.set_submodule(name, _rebuild(old, spec, name))
            continue
        if spec.get("swap"):
            if kind not in SWAPPED:
                raise CheckpointError(f"plan swaps layer {name!r} for an unknown module {kind!r}")
            new = SWAPPED[kind].of(old)
            set_attributes(new, spec.get("attrs", {}))
            model.set_submodule(name, new)
            continue
        if kind != type(old).__name__:
            raise CheckpointError(f"plan says layer {name!r} is a {kind}, the model has {type(old).__name__}")
        set_attributes(old, spec.get("attrs", {}))


def _fit_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer the shape the saved weights have (empty, on the model's
    device), so ``load_state_dict(assign=True)`` takes them."""
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, attr, None)
        if not isinstance(current, torch.Tensor) or tuple(current.shape) == tuple(tensor.shape):
            continue
        empty = torch.empty(tensor.shape, dtype=current.dtype, device=current.device)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(empty, requires_grad=current.requires_grad)
        elif attr in owner._buffers:
            owner._buffers[attr] = empty


def _rebuild(old: nn.Module, spec: dict[str, Any], name: str) -> nn.Module:
    """A fresh (meta) layer like ``old`` with the plan's shapes."""
    if spec.get("type") == "Factorized" and isinstance(old, (nn.Linear, nn.Conv2d)):
        from prunelab.compress.pca import Factorized

        return Factorized.like(old, int(spec["rank"]))
    if spec.get("type") == "ShortcutBlock" and shortcut_attribute(old) == spec.get("shortcut"):
        return ShortcutBlock.of(old, name)  # a removed residual block: its shortcut alone
    if spec.get("type") != type(old).__name__:
        raise CheckpointError(
            f"plan says layer {name!r} is a {spec.get('type')}, the model has {type(old).__name__}"
        )
    if isinstance(old, nn.Linear):
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    if isinstance(old, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return type(old)(
            spec["in_channels"],
            spec["out_channels"],
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            groups=spec.get("groups", old.groups),
            bias=spec["bias"],
            padding_mode=old.padding_mode,
        )
    if isinstance(old, NORM_TYPES):
        return type(old)(
            spec["num_features"],
            eps=old.eps,
            momentum=old.momentum,
            affine=old.affine,
            track_running_stats=old.track_running_stats,
        )
    raise CheckpointError(f"plan layer {name!r} has a type ({type(old).__name__}) that cannot be rebuilt")


# ONNX ------------------------------------------------------------------------------------------
def require_onnx() -> None:
    """Refuse early, with the install hint, when the ONNX exporter's packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise PrunelabError(
            "ONNX export needs the onnx and onnxscript packages: pip install prunelab[onnx]"
        ) from None


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Write ``model`` as ONNX (batch dimension dynamic) through torch.onnx's exporter."""
    require_onnx()
    import onnx

    device = next(model.parameters()).device
    example = torch.randn(2, *input_shape, device=device)
    was, quiet = model.training, logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and the like
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        program.save(str(path), external_data=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(f"ONNX export failed: {first}") from None
    finally:
        quiet.setLevel(level)
        model.train(was)
    onnx.checker.check_model(str(path))
    return Path(path)
