"""Your own models and weights: a model file through every command, factories, weights files and
pretrained sources, input resizing, and the errors for each kind of bad input."""

import json
import textwrap

import numpy as np
import pytest
import torch
from helpers import run_example
from safetensors.torch import save_file
from torch import nn

from prunelab.compress import load_compact
from prunelab.errors import SpecError, UnknownNameError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, load_level
from prunelab.models import build_model, resolve_model
from prunelab.spec import build_spec
from prunelab.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

USER_MODEL = '''
import torch
from torch import nn


class Swish(nn.Module):
    """A custom activation: no prunelab layer type knows it."""

    def forward(self, x):
        return x * torch.sigmoid(x)


class ResidualMLP(nn.Module):
    def __init__(self, num_classes, input_shape, width=WIDTH):
        super().__init__()
        c, h, w = input_shape
        self.inp = nn.Linear(c * h * w, width)
        self.block = nn.Linear(width, width)
        self.out = nn.Linear(width, num_classes)
        self.act = Swish()

    def forward(self, x):
        h = self.act(self.inp(x.reshape(x.shape[0], -1)))
        h = h + self.act(self.block(h))
        return self.out(h)


def make(num_classes, input_shape):
    return ResidualMLP(num_classes, input_shape)


def make_without_arguments():
    return ResidualMLP(4, (1, 8, 8))


def not_a_module(num_classes):
    return 42


def broken(num_classes):
    raise ValueError("no such width")
'''


def write_model(path, width=32):
    path.write_text(USER_MODEL.replace("WIDTH", str(width)))
    return path


def test_a_user_model_file_goes_through_run_show_report_export_and_load(cli, tmp_path):
    file = write_model(tmp_path / "my_models.py")
    root = tmp_path / "runs"
    model = f"{file}:make"
    code, out, err = cli(
        "run", "--model", model, "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
        "--rounds", "2", "--rate", "0.5", "--method", "l1-structured", "--structure", "structured-output",
        "--exclude", "out", "--controls", "reinit", "--root", root, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    spec = ExperimentSpec(
        model=model,
        data="synthetic",
        train=TrainConfig(epochs=1, batch_size=64),
        pruning=PruneSpec(
            method="l1-structured", structure="structured-output", rate=0.5, rounds=2, exclude=("out",)
        ),
        controls=("reinit",),
    )
    run = spec.experiment_id()
    assert spec.identity()["fingerprints"]["model"] == resolve_model(model).fingerprint()
    code, out, err = cli("show", run, "--root", root)
    assert code == 0, err
    assert "28.00%" in out  # level 2: a quarter of the hidden units, half of the head's inputs
    code, out, err = cli("report", run, "--root", root, "-o", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "compact")
    assert code == 0, err
    plan = json.loads((tmp_path / "compact" / "plan.json").read_text())
    assert plan["model"] == model and plan["model_fingerprint"] == resolve_model(model).fingerprint()
    small = load_compact(tmp_path / "compact")
    # inp and block add into one residual stream: a unit goes only where both layers dropped it
    assert small.inp.out_features == small.block.out_features < 32
    level = load_level(run, root=root)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), level.model.eval()(x), atol=1e-5, rtol=1e-4)


def test_editing_the_model_file_changes_the_experiment_id(tmp_path):
    file = write_model(tmp_path / "net.py")
    spec = ExperimentSpec(model=f"{file}:make", data="synthetic")
    before = spec.experiment_id()
    write_model(file, width=48)
    assert ExperimentSpec(model=f"{file}:make", data="synthetic").experiment_id() != before
    resolve_model.cache_clear()
    built = build_model(f"{file}:make", num_classes=4, input_shape=(1, 8, 8))
    assert built.inp.out_features == 48  # the edited file, not a stale import


def test_a_factory_gets_only_the_arguments_it_takes(tmp_path, monkeypatch):
    file = write_model(tmp_path / "net.py")
    net = build_model(f"{file}:make_without_arguments", num_classes=4, input_shape=(1, 8, 8), seed=0)
    assert net.output_layer == "out"  # found by type: the last Linear with 4 outputs
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_model(package / "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    a = build_model("pkg.nets:make", num_classes=4, input_shape=(1, 8, 8), seed=3)
    b = build_model("pkg.nets:make", num_classes=4, input_shape=(1, 8, 8), seed=3)
    torch.testing.assert_close(a.state_dict(), b.state_dict())  # seeded: same initial weights
    assert resolve_model("pkg.nets:make").fingerprint() == resolve_model(f"{file}:make").fingerprint()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("nope", "defines no 'nope'; its callables: ResidualMLP, Swish, broken, make"),
        ("not_a_module", "returned int, not an nn.Module"),
        ("broken", "the factory raised ValueError: no such width"),
    ],
)
def test_a_bad_factory_is_one_clear_error_and_nothing_is_written(cli, tmp_path, factory, message):
    file = write_model(tmp_path / "net.py")
    root = tmp_path / "runs"
    code, _, err = cli("run", "--model", f"{file}:{factory}", "--data", "synthetic", "--root", root)
    assert code == 2
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (root / "experiments").exists()


def test_a_file_that_does_not_import_is_named(cli, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ndef make(:\n")
    code, _, err = cli("train", "--model", f"{bad}:make", "--data", "synthetic")
    assert code == 2 and f"importing {bad} failed: SyntaxError" in " ".join(err.split())
    code, _, err = cli("train", "--model", f"{tmp_path / 'absent.py'}:make", "--data", "synthetic")
    assert code == 2 and "no file" in err
    code, _, err = cli("train", "--model", "no_such_pkg.models:make", "--data", "synthetic")
    assert code == 2 and "importing module 'no_such_pkg.models' failed: ModuleNotFoundError" in " ".join(
        err.split()
    )


@pytest.mark.parametrize("model", ["FILE:leave", "sys:exit", "builtins:exit"])
def test_a_factory_that_exits_is_named_and_exit_2(cli, tmp_path, model):
    """Issue 28: user code ending with sys.exit(0) (or exit()) while building the model is one
    message naming the factory, exit status 2, never a silent exit 0; what is being built is said
    first, so that a factory that hangs is visibly the user's code."""
    file = tmp_path / "quits.py"
    file.write_text("import sys\n\ndef leave(num_classes):\n    sys.exit(0)\n")
    model = model.replace("FILE", str(file))
    root = tmp_path / "runs"
    code, _, err = cli("run", "--model", model, "--data", "synthetic", "--iterations", "2", "--root", root)
    text = " ".join(err.split())
    code_shown = "0" if model.endswith("leave") else "None"
    assert (
        code == 2 and f"the factory {model} exited (SystemExit {code_shown}) before returning a model" in text
    )
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"building model {model}: calling" in text and text.index("building model") < text.index("error:")
    assert not (root / "experiments").exists()


def test_a_file_that_exits_while_imported_is_named(cli, tmp_path):
    file = tmp_path / "exits.py"
    file.write_text("raise SystemExit(3)\n")
    code, _, err = cli("train", "--model", f"{file}:make", "--data", "synthetic")
    assert code == 2 and f"the file {file} exited (SystemExit 3) while being imported" in " ".join(
        err.split()
    )


def test_an_unknown_model_lists_names_and_forms():
    with pytest.raises(
        UnknownNameError, match=r"Did you mean 'lenet5'.*torchvision:NAME, timm:NAME, FILE\.py:FACTORY"
    ):
        build_model("lenet-5")


# weights ---------------------------------------------------------------------------------------
def _net(classes=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))


def test_weights_files_in_common_wrappers_load(tmp_path):
    file = tmp_path / "seq.py"
    file.write_text("from torch import nn\ndef make(num_classes):\n    return nn.Sequential(nn.Flatten(), "
                    "nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")  # fmt: skip
    source = _net()
    state = source.state_dict()
    files = {
        "plain.safetensors": None,
        "wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "model.pth": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "no_suffix": state,
    }
    for name, payload in files.items():
        if payload is None:
            save_file(state, tmp_path / name)
        else:
            torch.save(payload, tmp_path / name)
        notes = []
        net = build_model(
            f"{file}:make", num_classes=4, input_shape=(1, 8, 8), weights=str(tmp_path / name), notes=notes
        )
        torch.testing.assert_close(net.state_dict(), state, msg=name)
        assert notes == [f"loaded weights {tmp_path / name}"]


def test_a_replaced_head_is_reported_and_a_misshaped_file_is_refused(tmp_path):
    file = tmp_path / "seq.py"
    file.write_text("from torch import nn\ndef make(num_classes):\n    return nn.Sequential(nn.Flatten(), "
                    "nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")  # fmt: skip
    pretrained = _net(classes=1000).state_dict()
    torch.save(pretrained, tmp_path / "imagenet.pt")
    notes = []
    net = build_model(
        f"{file}:make",
        num_classes=4,
        input_shape=(1, 8, 8),
        weights=str(tmp_path / "imagenet.pt"),
        notes=notes,
    )
    torch.testing.assert_close(net[1].weight, pretrained["1.weight"])
    assert net[3].weight.shape == (4, 16)
    assert any("classifier head is new" in n and "3.weight (1000, 16)" in n for n in notes)
    bad = dict(pretrained, **{"1.weight": torch.zeros(16, 50), "extra.weight": torch.zeros(2)})
    del bad["1.bias"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(SpecError) as err:
        build_model(f"{file}:make", num_classes=4, input_shape=(1, 8, 8), weights=str(tmp_path / "bad.pt"))
    text = str(err.value)
    assert "missing: 1.bias (16,)" in text and "unexpected: extra.weight (2,)" in text
    assert "mis-shaped: 1.weight (16, 50) where the model has (16, 64)" in text


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(SpecError, match="cannot be read safely as tensors"):
        build_model("lenet5", weights=str(tmp_path / "evil.pt"))


def test_weights_enter_the_experiment_id(tmp_path):
    net = build_model("lenet5", seed=1)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    a = ExperimentSpec(model="lenet5", data="synthetic", weights=str(tmp_path / "w.safetensors"))
    assert a.trunk_identity()["fingerprints"]["weights"]
    before = a.experiment_id()
    save_file(build_model("lenet5", seed=2).state_dict(), tmp_path / "w.safetensors")
    assert (
        ExperimentSpec(
            model="lenet5", data="synthetic", weights=str(tmp_path / "w.safetensors")
        ).experiment_id()
        != before
    )


# input resizing --------------------------------------------------------------------------------
def test_image_size_resizes_batches_as_they_enter_the_model(tmp_path):
    file = tmp_path / "probe.py"
    file.write_text(textwrap.dedent('''
        from torch import nn

        class Probe(nn.Module):
            def __init__(self, num_classes, input_shape):
                super().__init__()
                self.seen = []
                self.expected = input_shape
                self.fc = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)

            def forward(self, x):
                self.seen.append(tuple(x.shape[1:]))
                return self.fc(x.flatten(1))

        def make(num_classes, input_shape):
            return Probe(num_classes, input_shape)
    '''))  # fmt: skip
    spec = ExperimentSpec(
        model=f"{file}:make",
        data="synthetic",
        image_size=20,
        train=TrainConfig(iterations=3, batch_size=16, eval_every="3it"),
        pruning=PruneSpec(rounds=1, rate=0.5),
    )
    net = spec.build_model(0)
    assert net.expected == (1, 20, 20)  # the factory is told the size it will see
    result = ExperimentRunner(spec, tmp_path / "runs").run()
    assert len(result.levels[0]) == 2  # dense and one pruned level trained on resized batches
    stored = spec.build_model(pretrained=False)
    stored(torch.zeros(2, 1, 8, 8))
    assert stored.seen == [(1, 20, 20)]


# torchvision -----------------------------------------------------------------------------------
@pytest.fixture
def rgb_npz(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "rgb.npz"
    np.savez(
        path,
        x_train=g.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8),
        y_train=np.arange(64) % 4,
        x_test=g.integers(0, 256, (16, 3, 16, 16), dtype=np.uint8),
        y_test=np.arange(16) % 4,
    )
    return path


def test_torchvision_pretrained_weights_come_from_torchs_cache(tmp_path, monkeypatch, rgb_npz):
    pytest.importorskip("PIL")
    from prunelab.models.vision import import_torchvision

    tv = import_torchvision()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("prunelab.models.weights.DOWNLOAD_TIMEOUT_S", 2)
    spec = dict(model="torchvision:resnet18", data=f"npz:{rgb_npz}", weights="torchvision:DEFAULT")
    file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(SpecError) as err:
        ExperimentSpec(**spec).build_model(0)
    assert "put resnet18-f37072fd.pth" in str(err.value) and str(file.parent) in str(err.value)
    imagenet = tv.models.resnet18().state_dict()  # stands in for the real file (offline)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(imagenet, file)
    notes = []
    net = ExperimentSpec(**spec).build_model(0, notes=notes)
    torch.testing.assert_close(net.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    assert net.fc.out_features == 4 and any("classifier head is new" in n for n in notes)
    data = ExperimentSpec(**spec).load_data()
    raw = np.load(rgb_npz)["x_test"][:, 0].astype(np.float32) / 255
    expected = (raw - 0.485) / 0.229  # ImageNet's statistics, not the dataset's
    torch.testing.assert_close(data.test.x[:, 0], torch.from_numpy(expected))
    with pytest.raises(SpecError, match="has no weights 'IMAGENET9K'; choose one of: DEFAULT, IMAGENET1K_V1"):
        ExperimentSpec(**{**spec, "weights": "torchvision:IMAGENET9K"}).build_model(0)


def test_torchvision_names_and_weights_are_checked():
    with pytest.raises(UnknownNameError, match="torchvision has no classification model 'resnet19'"):
        build_model("torchvision:resnet19", input_shape=(3, 32, 32))
    with pytest.raises(SpecError, match="takes 3-channel"):
        build_model("torchvision:resnet18", input_shape=(1, 28, 28))
    with pytest.raises(SpecError, match="only a timm:NAME model takes"):
        build_spec(ExperimentSpec, model="torchvision:resnet18", weights="timm:DEFAULT")


def test_a_torchvision_model_with_weights_through_the_commands(cli, tmp_path, rgb_npz):
    from prunelab.models.vision import import_torchvision

    tv = import_torchvision()
    start = tmp_path / "start.pth"
    torch.save({"model": tv.models.resnet18(num_classes=1000).state_dict()}, start)  # a 1000-class checkpoint
    root = tmp_path / "runs"
    args = [
        "--model", "torchvision:resnet18", "--weights", start, "--data", f"npz:{rgb_npz}",
        "--iterations", "2", "--batch-size", "16", "--eval-every", "2it", "--rounds", "1", "--rate", "0.5",
        "--method", "l1-structured", "--structure", "structured-output", "--layers", "conv-only",
        "--treatment", "finetune",
    ]  # fmt: skip
    code, out, err = cli("run", *args, "--root", root, "--no-progress")
    assert code == 0, err
    assert "classifier head is new" in " ".join(err.split())  # notes go to stderr, beside the log
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, out, err = cli("count", run, "--root", root)
    assert code == 0, err
    assert "MACs" in out and "compact" in out
    code, _, err = cli("export", run, "--root", root, "-o", tmp_path / "compact", "--onnx")
    assert code == 0, err
    timings = tmp_path / "bench.json"
    code, out, err = cli(
        "bench", run, "--root", root, "--batch-sizes", "2", "--repeats", "1", "--warmup", "0",
        "--no-sparse", "--no-plot", "--json", timings,
    )  # fmt: skip
    assert code == 0, err
    assert {"dense", "masked", "compact"} <= {
        t["variant"] for t in json.loads(timings.read_text())["timings"]
    }
    small = load_compact(tmp_path / "compact")
    level = load_level(run, root=root)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in level.model.parameters())
    assert (tmp_path / "compact" / "model.onnx").stat().st_size > 0
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(small(x), level.model.eval()(x), atol=1e-4, rtol=1e-3)


def test_the_python_api_takes_a_module_built_without_any_registry(tmp_path, rgb_npz):
    import prunelab

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    mask = prunelab.prune(net, None, fraction=0.5, method="l1-structured", layers="conv-only")
    data = prunelab.load_dataset(f"npz:{rgb_npz}")
    result = prunelab.train(net, data, TrainConfig(iterations=2, batch_size=16, eval_every="2it"), mask=mask)
    assert result.final.test_acc >= 0
    small = prunelab.compress.compact(net, mask, torch.zeros(1, 3, 16, 16)).model
    assert small[0].out_channels == 4


def test_timm_models_build_prune_and_compact(monkeypatch, tmp_path):
    import prunelab

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    notes = []
    net = build_model("timm:resnet18", num_classes=4, input_shape=(3, 16, 16), seed=0, notes=notes)
    assert net.output_layer == "fc" and net.fc.out_features == 4
    assert notes == ["timm:resnet18: classifier head fc built for 4 classes (the original has 1000)"]
    mask = prunelab.prune(net, None, fraction=0.5, method="l1-structured", layers="conv-only")
    net.eval()
    small = prunelab.compress.compact(net, mask, torch.zeros(1, 3, 16, 16)).model
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    with pytest.raises(SpecError, match=r"not in the Hugging Face cache.*\$HF_HOME/hub"):
        build_model("timm:resnet18", num_classes=4, input_shape=(3, 16, 16), weights="timm:DEFAULT")
    with pytest.raises(UnknownNameError, match="timm has no model 'resnet1'"):
        build_model("timm:resnet1", input_shape=(3, 16, 16))


def _images(folder, classes=("cat", "dog"), per_class=6, size=8):
    from PIL import Image

    g = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in classes:
            (folder / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / c / f"{i}.png")
    return folder


def test_an_image_folder_trains_through_the_cli(cli, tmp_path):
    folder = _images(tmp_path / "pets")
    out = tmp_path / "trained"
    code, stdout, err = cli(
        "train", "--model", "torchvision:mobilenet_v2", "--data", f"imagefolder:{folder}", "--image-size", "32",
        "--iterations", "2", "--batch-size", "4", "--eval-every", "2it", "--out", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "train 11 / val 1 / test 12" in " ".join(stdout.split())
    assert "resized to 32x32" in " ".join(stdout.split())
    assert (out / "model.safetensors").stat().st_size > 0


def test_bad_image_folders_are_one_clear_error_and_nothing_is_written(cli, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    root = tmp_path / "runs"
    code, _, err = cli("run", "--model", "lenet5", "--data", f"imagefolder:{empty}", "--root", root)
    assert code == 2 and str(empty / "train") in " ".join(err.split()) and "Traceback" not in err
    folder = _images(tmp_path / "pets")
    broken = folder / "train" / "cat" / "3.png"
    broken.write_bytes(b"not a png")
    code, _, err = cli("run", "--model", "lenet5", "--data", f"imagefolder:{folder}", "--root", root)
    assert code == 2 and "3.png" in " ".join(err.split()) and "Traceback" not in err
    assert not (root / "experiments").exists()


def test_the_listings_show_the_other_forms(cli):
    code, out, _ = cli("models")
    assert code == 0
    text = " ".join(out.split())
    for form in ("torchvision:NAME", "timm:NAME", "FILE.py:FACTORY", "MODULE:FACTORY"):
        assert form in text
    code, out, _ = cli("data", "list")
    assert code == 0 and "imagefolder:PATH" in out and "npz:" in out
    code, out, _ = cli("run", "--help")
    assert "torchvision:NAME" in " ".join(out.split())


def test_the_pretrained_cnn_example_runs_and_says_what_it_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached: a random start
    out = run_example("pretrained_cnn.py", "--root", tmp_path / "runs", "--iterations", 3, "--rounds", 1)
    assert "random initialisation (no resnet18-f37072fd.pth in" in out
    assert "SYNTHETIC CIFAR-shaped" in out or "data: CIFAR-10" in out
    assert "L1 filters, level 1, compacted" in out
    assert load_compact(next((tmp_path / "runs" / "example-exports").iterdir())).fc.out_features == 10


def test_reading_an_experiment_whose_model_file_changed_warns(tmp_path):
    file = write_model(tmp_path / "net.py")
    spec = ExperimentSpec(
        model=f"{file}:make",
        data="synthetic",
        train=TrainConfig(iterations=2, batch_size=32, eval_every="2it"),
        pruning=PruneSpec(rounds=1, rate=0.5),
    )
    ExperimentRunner(spec, tmp_path / "runs").run()
    run = spec.experiment_id()
    load_level(run, root=tmp_path / "runs")  # unchanged: no warning
    file.write_text(file.read_text() + "\n# an edit that keeps the architecture\n")
    assert spec.experiment_id() != run  # running it again would start a new experiment
    with pytest.warns(UserWarning, match="changed since it ran"):
        level = load_level(run, root=tmp_path / "runs")
    assert level.model.inp.out_features == 32
