"""Export: safetensors + JSON plan, loaded back without pickle; refusals leave everything in place."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file

from prunelab.compress import compact, export_compact, load_compact
from prunelab.errors import CheckpointError, PrunelabError
from prunelab.models import build_model
from prunelab.pruning import prune

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def compacted(name: str = "resnet20", shape=(3, 16, 16)):
    model = build_model(name, input_shape=shape, seed=0).eval()
    mask = prune(
        model,
        None,
        fraction=0.5,
        method="l1-structured",
        structure="structured-output",
        exclude=[model.output_layer],
    )
    return compact(model, mask, torch.zeros(1, *shape))


def test_round_trip_rebuilds_the_compact_architecture(tmp_path):
    result = compacted()
    out = export_compact(result, tmp_path / "out", model="resnet20", num_classes=10, input_shape=(3, 16, 16))
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plan.json"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"] == "resnet20" and plan["layers"]["layer1.0.conv1"]["attrs"]["out_channels"] == 8
    assert plan["parameters"] == sum(p.numel() for p in result.model.parameters())
    loaded = load_compact(out)
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in result.model.state_dict().items()
    }


def test_an_export_of_plan_version_1_still_loads(tmp_path):
    """Exports written before plans recorded size attributes (version 1: each layer's constructor
    shapes) load as they did."""
    result = compacted("lenet-300-100", (1, 28, 28))
    out = export_compact(
        result, tmp_path / "out", model="lenet-300-100", num_classes=10, input_shape=(1, 28, 28)
    )
    plan = json.loads((out / "plan.json").read_text())
    plan["version"] = 1
    plan["layers"] = {
        name: {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features, "bias": True}
        for name, m in result.model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    (out / "plan.json").write_text(json.dumps(plan))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_compact(out)(x), result.model(x))


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    result = compacted("lenet-300-100", (1, 28, 28))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    args = dict(model="lenet-300-100", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(PrunelabError, match="not empty; choose another folder, or pass --force"):
        export_compact(result, target, **args)
    with pytest.raises(PrunelabError, match=r"not an earlier export \(keep.txt\)"):
        export_compact(result, target, force=True, **args)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunelabError, match="not a folder"):
        export_compact(result, tmp_path / "file", **args)
    (target / "keep.txt").unlink()
    export_compact(result, target, **args)
    export_compact(result, target, force=True, **args)  # an earlier export is replaced
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "plan.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]  # no temporary left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    export_compact(result, empty, **args)  # an empty folder is fine without --force
    assert (empty / "plan.json").is_file()


def test_bad_export_folders_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match=r"no plan\.json"):
        load_compact(tmp_path)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_compact(tmp_path)
    result = compacted("lenet-300-100", (1, 28, 28))
    good = export_compact(
        result, tmp_path / "good", model="lenet-300-100", num_classes=10, input_shape=(1, 28, 28)
    )
    state = {k: v for k, v in result.model.state_dict().items() if k != "fc2.bias"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(good / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit the plan"):
        load_compact(good)
    (good / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_compact(good)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxscript not installed (pip install prunelab[onnx])")
def test_onnx_export(tmp_path):
    import onnx

    result = compacted("lenet5", (1, 28, 28))
    out = export_compact(
        result, tmp_path / "out", model="lenet5", num_classes=10, input_shape=(1, 28, 28), onnx=True
    )
    graph = onnx.load(str(out / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


@pytest.mark.skipif(HAS_ONNX, reason="checks the message shown when onnx is missing")
def test_onnx_without_the_package_says_how_to_get_it(tmp_path):
    result = compacted("lenet-300-100", (1, 28, 28))
    with pytest.raises(PrunelabError, match=r"pip install prunelab\[onnx\]"):
        export_compact(
            result,
            tmp_path / "out",
            model="lenet-300-100",
            num_classes=10,
            input_shape=(1, 28, 28),
            onnx=True,
        )
    assert not (tmp_path / "out").exists()


def structured_then_sparse(name: str, shape, exclude: str):
    """Half the units of every layer but ``exclude`` removed, then 80% of the rest's weights zeroed."""
    model = build_model(name, input_shape=shape, seed=0).eval()
    mask = prune(
        model, None, fraction=0.5, method="l1-structured", structure="structured-output", exclude=[exclude]
    )
    mask = prune(model, mask, fraction=0.8, method="magnitude")
    return compact(model, mask, torch.zeros(1, *shape))


@pytest.mark.parametrize(
    ("name", "shape", "exclude"), [("lenet-300-100", (1, 28, 28), "fc3"), ("lenet5", (1, 28, 28), "fc3")]
)
def test_sparse_export_loads_with_the_sparse_layers_in_place(tmp_path, name, shape, exclude):
    """Structure removed by compaction, the unstructured rest run sparse: both survive the round trip."""
    from prunelab.compress import SparseConv2d, SparseLinear, sparsify
    from prunelab.compress.sparse import sparse_layers

    result = structured_then_sparse(name, shape, exclude)
    x = torch.randn(3, *shape)
    fast = sparsify(result.model, x, repeats=1, force=True)  # every layer sparse, whatever the timing
    out = export_compact(result, tmp_path / "out", model=name, num_classes=10, input_shape=shape, sparse=fast)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plan.json", "sparse.safetensors"]
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["sparse"]["layers"]) == set(fast.used) and plan["sparse"]["batch_size"] == 3
    assert plan["layers"]["fc1"]["attrs"]["out_features"] in (150, 60)  # compaction's plan is kept as it was
    loaded = load_compact(out)
    assert set(sparse_layers(loaded)) == set(fast.used)
    for layer in fast.used:
        module = loaded.get_submodule(layer)
        assert isinstance(module, (SparseLinear, SparseConv2d))
        assert module.format == fast.model.get_submodule(layer).format
    assert not any(k.startswith("fc1.") for k in load_tensors_keys(out / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=1e-5, atol=1e-5)
    sparse = out / "sparse.safetensors"
    sparse.write_bytes(sparse.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"sparse\.safetensors is not a readable safetensors"):
        load_compact(out)


def load_tensors_keys(path):
    from prunelab.io import load_tensors

    return list(load_tensors(path))


def test_sparse_and_onnx_are_not_combined(tmp_path):
    from prunelab.compress import sparsify

    result = structured_then_sparse("lenet-300-100", (1, 28, 28), "fc3")
    fast = sparsify(result.model, torch.randn(2, 1, 28, 28), repeats=1, force=True)
    with pytest.raises(PrunelabError, match="--onnx and --sparse cannot be combined"):
        export_compact(
            result, tmp_path / "out", model="lenet-300-100", num_classes=10, input_shape=(1, 28, 28),
            onnx=True, sparse=fast,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
