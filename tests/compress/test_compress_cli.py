"""``prunelab export | bench | count | removal-table`` on a tiny trained experiment, as users run them."""

import importlib.util
import json
import shutil

import pytest
import torch

from prunelab.compress import compact_level, load_compact
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec
from prunelab.models import build_model
from prunelab.pruning import Mask
from prunelab.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(root, pruning: PruneSpec) -> tuple[str, object]:
    """LeNet-300-100 on synthetic data, pruned as ``pruning`` says (a second or two)."""
    spec = ExperimentSpec(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(epochs=1, batch_size=64),
        pruning=pruning,
        seeds=(0,),
    )
    ExperimentRunner(spec, root).run()
    return spec.experiment_id(), root


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Two rounds of structured-output pruning."""
    pruning = PruneSpec(
        method="l1-structured", structure="structured-output", rate=0.5, rounds=2, exclude=("fc3",)
    )
    return trained(tmp_path_factory.mktemp("runs"), pruning)


def test_export_writes_a_loadable_compact_model(cli, experiment, tmp_path):
    run, root = experiment
    code, out, err = cli("export", run, "--level", 2, "-o", tmp_path / "m", "--root", root)
    assert code == 0, err
    assert "parameters after removal" in out
    loaded = load_compact(tmp_path / "m")
    assert loaded.fc1.out_features == 75 and loaded.fc2.out_features == 25  # 300 -> 150 -> 75 units
    level = compact_level(run, 2, root=root)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), level.loaded.model(x), atol=1e-5, rtol=1e-4)
    plan = json.loads((tmp_path / "m" / "plan.json").read_text())
    assert plan["source"]["level"] == 2 and plan["source"]["experiment"] == run


def test_export_refusals_exit_2_and_touch_nothing(cli, experiment, tmp_path):
    run, root = experiment
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    code, _, err = cli("export", run, "-o", target, "--root", root)
    assert code == 2 and "not empty" in err and "--force" in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    code, _, err = cli("export", run, "--level", 9, "-o", tmp_path / "new", "--root", root)
    assert code == 2 and "no finished level 9" in err and "0..2" in err
    assert not (tmp_path / "new").exists()
    code, _, err = cli("export", run, "-o", target, "--root", root, "--force")
    assert code == 2 and "not an earlier export (notes.txt)" in err  # --force replaces exports only
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    earlier = tmp_path / "earlier"
    assert cli("export", run, "--level", 1, "-o", earlier, "--root", root)[0] == 0
    code, _, err = cli("export", run, "-o", earlier, "--root", root, "--force")
    assert code == 0, err
    assert sorted(p.name for p in earlier.iterdir()) == ["model.safetensors", "plan.json"]
    assert json.loads((earlier / "plan.json").read_text())["source"]["level"] == 2


def test_a_mask_that_does_not_fit_exits_2(cli, experiment, tmp_path):
    run, root = experiment
    copy_root = tmp_path / "runs"
    shutil.copytree(root, copy_root)
    level_dir = next(copy_root.rglob("level-02"))
    Mask.ones(build_model("lenet5", seed=0)).save(level_dir / "mask.safetensors")
    code, _, err = cli("export", run, "-o", tmp_path / "out", "--root", copy_root)
    assert code == 2 and "not parameters of the model" in err
    assert not (tmp_path / "out").exists()


def test_count_prints_dense_masked_and_compact(cli, experiment):
    run, root = experiment
    code, out, err = cli("count", run, "--root", root, "--per-layer")
    assert code == 0, err
    for word in ("parameters", "MACs", "FLOPs", "fc1", "compact"):
        assert word in out


def test_bench_prints_table_and_writes_plot_and_json(cli, experiment, tmp_path):
    run, root = experiment
    code, out, err = cli(
        "bench", run, "--root", root, "-l", 1, "-l", 2, "--batch-sizes", "1,4", "--repeats", 2,
        "--warmup", 1, "--plot", tmp_path / "fig.png", "--json", tmp_path / "t.json",
    )  # fmt: skip
    assert code == 0, err
    assert "speed-up" in out and "FLOP ratio" in out
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    timings = json.loads((tmp_path / "t.json").read_text())["timings"]
    assert len(timings) == 2 * 2 * 4  # levels x batch sizes x variants
    assert {t["variant"] for t in timings} == {"dense", "masked", "compact", "sparse"}
    code, _, err = cli("bench", run, "--root", root, "--batch-sizes", "1,x", "--no-plot")
    assert code == 2 and "--batch-sizes" in err


def test_removal_table(cli):
    code, out, err = cli("removal-table", "lenet-300-100", "--data", "synthetic", "--fractions", "0.5,0.9")
    assert code == 0, err
    assert "after removal" in out and "0.9" in out


@pytest.mark.skipif(
    all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")), reason="checks the missing-onnx message"
)
def test_export_onnx_without_the_package_exits_2_before_any_work(cli, experiment, tmp_path):
    run, root = experiment
    code, _, err = cli("export", run, "-o", tmp_path / "out", "--root", root, "--onnx")
    assert code == 2 and "pip install prunelab[onnx]" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def unstructured(tmp_path_factory):
    """Two rounds of 80% magnitude pruning: 96% of the weights zero."""
    return trained(
        tmp_path_factory.mktemp("runs-unstructured"), PruneSpec(method="magnitude", rate=0.8, rounds=2)
    )


def test_sparse_export_runs_the_layers_sparse_that_timed_faster(cli, unstructured, tmp_path):
    """Which layers run sparse is the timing's call; whatever it is, the export loads and computes right."""
    from prunelab.compress.sparse import sparse_layers

    run, root = unstructured
    code, out, err = cli("export", run, "-o", tmp_path / "m", "--root", root, "--sparse", "--batch-size", 64)
    assert code == 0, err
    assert "layers run sparse (timed at batch 64, 1 thread(s))" in out and "fc1" in out
    plan = json.loads((tmp_path / "m" / "plan.json").read_text())
    used = set(plan["sparse"]["layers"])
    assert plan["sparse"]["batch_size"] == 64 and plan["sparse"]["threads"] == 1
    assert used <= {"fc1", "fc2", "fc3"}
    loaded = load_compact(tmp_path / "m")
    assert set(sparse_layers(loaded)) == used
    level = compact_level(run, 2, root=root)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), level.loaded.model(x), atol=1e-5, rtol=1e-5)


def test_sparse_export_of_a_model_without_unstructured_sparsity(cli, experiment, tmp_path):
    """Structured pruning leaves no zeros once compacted: nothing to gain, written only with --force."""
    run, root = experiment
    code, _, err = cli("export", run, "-o", tmp_path / "m", "--root", root, "--sparse")
    assert code == 2 and "no unstructured sparsity" in err and "--force" in err and "is 0% zeros" in err
    assert not (tmp_path / "m").exists()
    code, out, err = cli("export", run, "-o", tmp_path / "m", "--root", root, "--sparse", "--force")
    assert code == 0, err
    assert "the dense (compacted) model was written" in out
    assert "sparse" not in json.loads((tmp_path / "m" / "plan.json").read_text())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "plan.json"]
    code, _, err = cli("export", run, "-o", tmp_path / "n", "--root", root, "--sparse", "--onnx")
    assert code == 2 and "--onnx and --sparse cannot be combined" in err


def test_bench_says_which_layers_run_sparse(cli, unstructured, tmp_path):
    run, root = unstructured
    code, out, err = cli(
        "bench", run, "--root", root, "--batch-sizes", "1,32", "--repeats", 2, "--warmup", 1, "--no-plot",
        "--json", tmp_path / "t.json",
    )  # fmt: skip
    assert code == 0, err
    assert "the sparse version (batch 1:" in out and "batch 32" in out
    layers = json.loads((tmp_path / "t.json").read_text())["sparse_layers"]
    assert {(c["batch_size"], c["layer"]) for c in layers} == {
        (b, f"fc{i}") for b in (1, 32) for i in (1, 2, 3)
    }
    for c in layers:
        assert c["dense_ms"] > 0 and c["format"] in c["timings"] and c["used"] in (True, False)


def test_a_compiler_error_is_one_line_on_the_command_line(cli, unstructured, tmp_path, monkeypatch):
    from prunelab.compress import native

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    for fn in (native.sparse_kernel, native._entry, native.warn_fallback):
        fn.cache_clear()
    try:
        run, root = unstructured
        code, out, err = cli(
            "export", run, "-o", tmp_path / "m", "--root", root, "--sparse", "--batch-size", 64
        )
        assert code == 0, err
        lines = [line for line in (out + err).splitlines() if "no-such-cc" in line]
        assert len(lines) == 1 and lines[0].startswith("warning: prunelab's sparse kernel is not available")
        assert "torch.sparse CSR (MKL)" in lines[0] and "Traceback" not in err
    finally:
        for fn in (native.sparse_kernel, native._entry, native.warn_fallback):
            fn.cache_clear()
