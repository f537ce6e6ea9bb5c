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
    assert plan["model"] == "resnet20" and plan["layers"]["layer1.0.conv1"]["out_channels"] == 8
    assert plan["parameters"] == sum(p.numel() for p in result.model.parameters())
    loaded = load_compact(out)
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in result.model.state_dict().items()
    }


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
