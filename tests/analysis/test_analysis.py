"""Analyses checked against hand computations on tiny real experiments, plots, and the CLI commands."""

import csv
import io
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunelab.analysis import (
    accuracy_table,
    agreement_matrix,
    compare_masks,
    effective_levels,
    effective_mask,
    effective_sparsity,
    ensemble,
    ensemble_accuracy,
    ensemble_table,
    hamming,
    jaccard,
    layer_sparsity_table,
    learning_table,
    neuron_sparsity,
    parameters_table,
    plots,
    similarity_across_levels,
    similarity_between,
    stability_summary,
    weight_stability,
    weight_trajectories,
    winning_table,
)
from prunelab.analysis.runs import resolve, series_names
from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, load_level
from prunelab.experiments.summary import level_rows
from prunelab.models import build_model
from prunelab.pruning import Mask
from prunelab.training import TrainConfig


def tiny(method: str, treatment: str = "rewind", controls: tuple[str, ...] = ()) -> ExperimentSpec:
    return ExperimentSpec(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(iterations=4, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=2, method=method),
        treatment=TreatmentSpec(kind=treatment),
        seeds=(0, 1),
        controls=controls,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> dict[str, str]:
    """Three tiny experiments sharing one dense trunk: L1-unstructured (with a reinit control),
    L1-structured, and L1-unstructured with finetuning instead of rewinding."""
    root = tmp_path_factory.getbasetemp() / "analysis-runs"
    specs = {
        "mag": tiny("magnitude", controls=("reinit",)),
        "l1s": tiny("l1-structured"),
        "ft": tiny("magnitude", "finetune"),
    }
    return {k: str(ExperimentRunner(s, root).run().directory) for k, s in specs.items()}


def png_ok(data: bytes) -> bool:
    """A decodable PNG that is not a single colour."""
    img = matplotlib.image.imread(io.BytesIO(data), format="png")
    return (
        data[:8] == b"\x89PNG\r\n\x1a\n"
        and img.shape[0] > 50
        and img.shape[1] > 50
        and float(img.std()) > 0.01
    )


# similarity ----------------------------------------------------------------------------------
def test_jaccard_and_hamming_by_hand():
    a = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    assert jaccard(a, b) == 2 / 4  # both keep 0 and 4; either keeps 0, 1, 2, 4
    assert hamming(a, b) == 2 / 6
    assert jaccard(a, a) == 1.0 and hamming(a, a) == 0.0
    assert jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    with pytest.raises(PrunelabError, match=r"shapes \(6,\) and \(3,\) differ"):
        jaccard(a, torch.ones(3, dtype=torch.bool))


def test_compare_masks_per_layer_and_pooled():
    ma = Mask({"l1.weight": torch.tensor([[1, 1], [0, 0]]), "l2.weight": torch.tensor([1, 0, 0])})
    mb = Mask({"l1.weight": torch.tensor([[1, 0], [1, 0]]), "l2.weight": torch.tensor([1, 0, 1])})
    rows = {r["layer"]: r for r in compare_masks(ma, mb)}
    assert rows["l1"]["jaccard"] == 1 / 3 and rows["l2"]["jaccard"] == 1 / 2
    assert rows["overall"]["jaccard"] == 2 / 5  # pooled: intersection 1+1 over union 3+2
    assert rows["overall"]["jaccard_distance"] == pytest.approx(3 / 5)
    assert rows["overall"]["hamming"] == 3 / 7
    with pytest.raises(PrunelabError, match="different layers"):
        compare_masks(ma, Mask({"l1.weight": torch.ones(2, 2)}))
    with pytest.raises(PrunelabError, match=r"masks for 'l2\.weight'"):
        compare_masks(ma, Mask({"l1.weight": torch.ones(2, 2), "l2.weight": torch.ones(4)}))


def test_similarity_between_and_across_levels(runs):
    rows = similarity_between(runs["mag"], runs["l1s"])
    assert {(r["level"], r["seed"]) for r in rows} == {(lv, s) for lv in (1, 2) for s in (0, 1)}
    assert {r["layer"] for r in rows} == {"fc1", "fc2", "fc3", "overall"}
    mag = Mask.load(Path(runs["mag"]) / "seed-1" / "level-02" / "mask.safetensors")
    l1s = Mask.load(Path(runs["l1s"]) / "seed-1" / "level-02" / "mask.safetensors")
    inter = sum(int((mag[n] & l1s[n]).sum()) for n in mag)
    union = sum(int((mag[n] | l1s[n]).sum()) for n in mag)
    row = next(r for r in rows if (r["level"], r["seed"], r["layer"]) == (2, 1, "overall"))
    assert row["jaccard"] == inter / union and 0 < row["jaccard"] < 1
    # same run: identical masks; rewinding and finetuning share level 1 (pruned from the same dense net)
    assert all(r["jaccard"] == 1.0 for r in similarity_between(runs["mag"], runs["mag"]))
    rf = similarity_between(runs["mag"], runs["ft"])
    assert all(r["jaccard"] == 1.0 for r in rf if r["level"] == 1)
    assert any(r["jaccard"] < 1.0 for r in rf if r["level"] == 2)
    # across levels: level 1 against the dense level 0 keeps exactly its own weights
    across = similarity_across_levels(runs["mag"], reference=0)
    for r in across:
        assert r["jaccard"] == pytest.approx(r["density_a"])
    with pytest.raises(PrunelabError, match="level 7 is not finished in both"):
        similarity_between(runs["mag"], runs["l1s"], levels=[7])
    with pytest.raises(PrunelabError, match="no experiment 'nope'"):
        similarity_between("nope", runs["mag"])


# effective and neuron sparsity -----------------------------------------------------------------
def test_effective_sparsity_of_a_cut_off_neuron():
    """3 -> 4 -> 2: hidden unit 1 loses all inputs, unit 2 all outputs; their other weights go too."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    k1, k2 = torch.ones(4, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    k1[1, :] = False  # unit 1: no incoming weight
    k2[:, 2] = False  # unit 2: no outgoing weight
    mask = Mask({"0.weight": k1, "2.weight": k2})
    rows = {r["layer"]: r for r in effective_sparsity(net, mask)}
    assert (rows["0"]["kept"], rows["0"]["effective_kept"]) == (9, 6)  # unit 2's 3 inputs are useless
    assert (rows["2"]["kept"], rows["2"]["effective_kept"]) == (6, 4)  # unit 1's 2 outputs carry nothing
    assert rows["overall"]["sparsity"] == 5 / 20 and rows["overall"]["effective_sparsity"] == 10 / 20
    eff = effective_mask(net, mask)
    assert not eff["0.weight"][2].any() and not eff["2.weight"][:, 1].any()
    assert eff["0.weight"][[0, 3]].all() and eff["2.weight"][:, [0, 3]].all()


def test_effective_mask_matches_path_counting_on_random_masks():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    for _ in range(5):
        mask = Mask(
            {n: torch.rand(p.shape, generator=g) < 0.35 for n, p in net.named_parameters() if "weight" in n}
        )
        keeps = [mask[n].long() for n in ("0.weight", "2.weight", "4.weight")]
        reach_in = [torch.ones(6, dtype=torch.long)]  # units reached from the input, per layer
        for k in keeps:
            reach_in.append((k @ reach_in[-1] > 0).long())
        reach_out = [torch.ones(3, dtype=torch.long)]  # units reaching the output, backwards
        for k in reversed(keeps):
            reach_out.insert(0, (k.T @ reach_out[0] > 0).long())
        eff = effective_mask(net, mask)
        for i, n in enumerate(("0.weight", "2.weight", "4.weight")):
            expected = mask[n] & (reach_out[i + 1][:, None] > 0) & (reach_in[i][None, :] > 0)
            assert torch.equal(eff[n], expected)


def test_effective_sparsity_conv_channels_and_residual_shortcuts():
    model = build_model("lenet5", num_classes=10, input_shape=(1, 28, 28), seed=0)
    keep = Mask.ones(model)
    k = {n: m.clone() for n, m in keep.items()}
    k["conv2.weight"][:, 3] = False  # nothing reads conv1's channel 3
    k["fc1.weight"][:, 5 * 25 : 6 * 25] = False  # nothing reads conv2's channel 5 (5x5 map, flattened)
    rows = {r["layer"]: r for r in effective_sparsity(model, Mask(k), (1, 28, 28))}
    assert rows["conv1"]["kept"] - rows["conv1"]["effective_kept"] == 9  # filter 3: 1x3x3
    assert (
        rows["conv2"]["kept"] - rows["conv2"]["effective_kept"] == 5 * 9
    )  # filter 5 minus its pruned input 3
    assert rows["fc1"]["effective_kept"] == rows["fc1"]["kept"]
    # ResNet: a block whose second conv is pruned away leaves its first conv dead, but the shortcut
    # keeps the stem and the following blocks alive
    net = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8), seed=0)
    k = {n: m.clone() for n, m in Mask.ones(net).items()}
    k["layer1.0.conv2.weight"][:] = False
    rows = {r["layer"]: r for r in effective_sparsity(net, Mask(k), (3, 8, 8))}
    assert rows["layer1.0.conv1"]["effective_kept"] == 0
    assert rows["conv1"]["effective_kept"] == rows["conv1"]["kept"]
    assert rows["layer1.1.conv1"]["effective_kept"] == rows["layer1.1.conv1"]["kept"]
    with pytest.raises(PrunelabError, match="give input_shape"):
        effective_mask(model)


def test_neuron_sparsity_by_hand():
    k = torch.ones(4, 3, dtype=torch.bool)
    k[0] = False  # output unit 0 has no incoming weight
    k[1, 1:] = False  # unit 1 keeps 1 of 3
    k[:, 2] = False  # input 2 has no outgoing weight
    (row,) = neuron_sparsity(Mask({"fc.weight": k}))
    assert row["layer"] == "fc" and row["units"] == 4 and row["inputs"] == 3
    assert row["dead_in"] == 0.25 and row["dead_out"] == pytest.approx(1 / 3)
    assert row["unit_density_min"] == 0 and row["unit_density_max"] == pytest.approx(2 / 3)
    conv = torch.ones(2, 3, 3, 3, dtype=torch.bool)
    conv[1] = False
    assert neuron_sparsity(Mask({"c.weight": conv}))[0]["dead_in"] == 0.5


def test_effective_levels_of_a_run(runs):
    rows = effective_levels(runs["l1s"])
    assert {(r["level"], r["seed"]) for r in rows} == {(lv, s) for lv in range(3) for s in (0, 1)}
    for r in rows:
        assert r["effective_density"] <= r["density"] + 1e-12
    assert any(r["effective_density"] < r["density"] for r in rows)  # structured pruning cuts units off


# stability ------------------------------------------------------------------------------------
def test_weight_stability_against_direct_computation(runs):
    rows = weight_stability(runs["mag"])
    assert {(r["level"], r["seed"]) for r in rows} == {(lv, s) for lv in (1, 2) for s in (0, 1)}
    a, b = (load_level(runs["mag"], lv, seed=1) for lv in (1, 2))
    both = a.mask["fc2.weight"] & b.mask["fc2.weight"]
    wa, wb = a.model.fc2.weight.detach(), b.model.fc2.weight.detach()
    expected = float((wb - wa).abs()[both].mean())
    row = next(r for r in rows if (r["level"], r["seed"], r["layer"]) == (2, 1, "fc2"))
    assert row["mean_abs_change"] == pytest.approx(expected) and row["weights"] == int(both.sum())
    summary = {r["layer"]: r for r in stability_summary(rows)}
    fc2 = [r["mean_abs_change"] for r in rows if r["layer"] == "fc2"]
    assert summary["fc2"]["mean_abs_change"] == pytest.approx(sum(fc2) / len(fc2))


def test_weight_trajectories_end_where_pruned(runs):
    traj = weight_trajectories(runs["mag"], "fc3", seed=0, max_weights=50)
    assert traj.levels == [0, 1, 2] and traj.values.shape == (50, 3)
    mask2 = Mask.load(Path(runs["mag"]) / "seed-0" / "level-02" / "mask.safetensors")["fc3.weight"].flatten()
    assert np.array_equal(np.isnan(traj.values[:, 2]), ~mask2[traj.indices].numpy())
    assert not np.isnan(traj.values[:, 0]).any()
    assert traj.densities[0] == 1.0 and traj.densities[2] == pytest.approx(0.25, abs=0.01)
    with pytest.raises(PrunelabError, match="unknown layer 'fc9'"):
        weight_trajectories(runs["mag"], "fc9")


# ensembles --------------------------------------------------------------------------------------
def test_agreement_and_ensemble_accuracy_by_hand():
    p1 = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    p2 = torch.tensor([[0.2, 0.8], [0.3, 0.7], [0.7, 0.3]])
    y = torch.tensor([0, 1, 0])
    assert torch.allclose(agreement_matrix([p1, p2]), torch.tensor([[1.0, 2 / 3], [2 / 3, 1.0]]))
    assert ensemble_accuracy([p1, p2], y) == 1.0  # averages: [.55,.45], [.35,.65], [.65,.35]


def test_ensemble_matches_a_direct_computation(runs):
    from prunelab.data import load_dataset

    test = load_dataset("synthetic").test
    result = ensemble([runs["mag"], runs["l1s"]], level=2)
    per_seed, members = [], []
    for seed in (0, 1):
        probs = []
        for run in (runs["mag"], runs["l1s"]):
            model = load_level(run, 2, seed=seed).model.eval()
            with torch.no_grad():
                probs.append(model(test.x).softmax(1))
        members.append([float((p.argmax(1) == test.y).float().mean()) for p in probs])
        per_seed.append(float(((probs[0] + probs[1]) / 2).argmax(1).eq(test.y).float().mean()))
    assert result.ensemble_acc == pytest.approx(sum(per_seed) / 2)
    assert result.member_acc == pytest.approx([sum(m[i] for m in members) / 2 for i in (0, 1)])
    # members' accuracies are those the experiment recorded
    stored = resolve(runs["mag"]).levels
    assert result.member_acc[0] == pytest.approx(
        (stored[0][2].final.test_acc + stored[1][2].final.test_acc) / 2
    )
    assert torch.allclose(result.agreement.diagonal(), torch.ones(2)) and torch.allclose(
        result.agreement, result.agreement.T
    )
    assert result.levels == [2, 2] and result.seeds == [0, 1]
    by_density = ensemble([runs["mag"], runs["l1s"]], density=0.5)
    assert by_density.levels == [1, 1]
    rows = ensemble_table([runs["mag"], runs["l1s"]])
    assert [r["level"] for r in rows] == [1, 2] and rows[1]["ensemble"] == pytest.approx(result.ensemble_acc)
    with pytest.raises(PrunelabError, match="not both"):
        ensemble([runs["mag"], runs["l1s"]], level=1, density=0.5)
    with pytest.raises(PrunelabError, match="no finished level 5"):
        ensemble([runs["mag"], runs["l1s"]], level=5)


# tables -----------------------------------------------------------------------------------------
def test_tables(runs):
    exps = [resolve(runs["mag"]), resolve(runs["l1s"])]
    names = series_names(exps)
    assert names == ["magnitude", "l1-structured"]
    table = accuracy_table(exps)  # equal densities at every level: one density column
    assert table.columns == ["level", "density", "magnitude", "l1-structured", "magnitude (reinit control)"]
    expected = level_rows(exps[1])
    for row, ref in zip(table.rows, expected, strict=True):
        assert row[0] == ref["level"] and row[3] == pytest.approx(ref["ticket"])
        assert row[1] == pytest.approx(ref["density"], rel=0.01)
    parsed = list(csv.reader(io.StringIO(table.to_csv())))
    assert parsed[0] == [
        "level",
        "density",
        "magnitude",
        "magnitude std",
        "l1-structured",
        "l1-structured std",
        "magnitude (reinit control)",
        "magnitude (reinit control) std",
    ]
    assert len(parsed) == 4 and float(parsed[3][4]) == pytest.approx(expected[2]["ticket"][0])
    gentler = ExperimentSpec(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(iterations=4, batch_size=64),
        pruning=PruneSpec(rate=0.3, rounds=2),
    )
    other = ExperimentRunner(gentler, Path(runs["mag"]).parents[1]).run().directory
    mixed = accuracy_table([runs["mag"], other])  # different densities: one density column each
    assert len(mixed.columns) == 7 and mixed.columns[2].endswith(" density")  # + the control and its density
    assert mixed.columns[5].endswith("(reinit control)")
    assert mixed.rows[2][2] == pytest.approx(0.25, abs=0.01) and mixed.rows[2][4] == pytest.approx(
        0.49, abs=0.01
    )
    assert "±" in table.to_html() and "<caption>" in table.to_html()
    learn = learning_table(exps[0])
    assert learn.columns[-1] == "train-test gap" and len(learn.rows) == 3
    params = parameters_table(["lenet5", "lenet-300-100"], "fashion-mnist", fractions=(0, 0.2))
    assert params.rows[0] == ["lenet5", 60.1, 48.1] and params.rows[1][1] == 266.6
    layers = layer_sparsity_table(exps[0], seed=0)
    names = [r[0] for r in layers.rows]
    assert "fc1.bias" in names and "fc3.weight" in names and names[-1] == "all parameters"
    fc1 = layers.rows[names.index("fc1.weight")]
    assert fc1[2:] == [0.0, pytest.approx(0.5, abs=1e-3), pytest.approx(0.75, abs=1e-3)]
    win = winning_table(exps, tolerance=1.0)
    assert [r[1] for r in win.rows] == [2, 2]  # with any accuracy allowed, the sparsest level wins


# plots ------------------------------------------------------------------------------------------
def test_plots_are_nonempty_images(runs, tmp_path):
    exps = [resolve(runs[k]) for k in ("mag", "l1s", "ft")]
    names = series_names(exps)
    assert plots.method_color("magnitude") == plots.styles(exps)[0].color != plots.styles(exps)[1].color
    assert plots.styles(exps)[2].linestyle == "--"  # finetuning: same colour, dashed
    assert plots.method_color("some-new-method") == plots.method_color("some-new-method")
    load = load_level(runs["mag"], 2, seed=0)
    conv = build_model("lenet5", num_classes=10, input_shape=(1, 28, 28), seed=0).conv2.weight
    figures = {
        "accuracy": plots.plot_accuracy(exps, names),
        "effective": plots.plot_accuracy(exps, names, effective={e.id: effective_levels(e) for e in exps}),
        "early": plots.plot_early_stop(exps, names),
        "curves": plots.plot_learning_curves(exps[0], names[0]),
        "linear-mask": plots.plot_mask(load.model.fc3.weight, load.mask["fc3.weight"], "fc3"),
        "conv-mask": plots.plot_mask(conv, conv.abs() > 0.1, "conv2"),
        "similarity": plots.plot_similarity({"a vs b": similarity_between(exps[0], exps[1])}),
        "stability": plots.plot_stability(
            {n: stability_summary(weight_stability(e)) for n, e in zip(names, exps, strict=True)}
        ),
        "trajectories": plots.plot_trajectories(weight_trajectories(exps[0], "fc3"), "mag"),
        "agreement": plots.plot_agreement(["a", "b"], torch.tensor([[1.0, 0.9], [0.9, 1.0]])),
    }
    for name, fig in figures.items():
        assert png_ok(plots.figure_bytes(fig, "png")), name
    paths = plots.save_figure(figures["accuracy"], tmp_path / "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.svg"]
    assert png_ok(paths[0].read_bytes()) and b"<svg" in paths[1].read_bytes()[:2000]


def test_mask_image_colours_by_sign_with_pruned_grey():
    w = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])  # 1 output, 1 input, 2x2 kernel
    keep = torch.tensor([[[[True, True], [True, False]]]])
    img, _, _ = plots.mask_image(w, keep)
    assert img.shape[:2] == (2, 2)
    red, blue, pale, grey = img[0, 0], img[0, 1], img[1, 0], img[1, 1]
    assert red[0] > red[2] + 0.2 and blue[2] > blue[0] + 0.2
    assert tuple(grey[:3]) == pytest.approx(plots.PRUNED_GREY)
    assert pale[0] > pale[2]  # smaller positive: lighter red
    grid, _, _ = plots.mask_image(torch.randn(4, 3, 3, 3), torch.ones(4, 3, 3, 3, dtype=torch.bool))
    assert grid.shape[:2] == (3 * 4 - 1, 4 * 4 - 1)  # rows: input channels; columns: output channels


# CLI ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def test_cli_compare_similarity_effective_stability(cli, runs, tmp_path):
    out = cli("compare", runs["mag"], runs["l1s"], "--csv", tmp_path / "main.csv")
    assert out.exit_code == 0, out.output
    assert "magnitude" in out.output and "l1-structured" in out.output and "Winning tickets" in out.output
    assert (tmp_path / "main.csv").read_text().startswith("level,density,magnitude,magnitude std,")
    assert cli("compare", runs["mag"], "--table", "all").exit_code == 0
    out = cli("similarity", runs["mag"], runs["ft"], "--layers", "--plot", tmp_path / "sim.png")
    assert out.exit_code == 0 and "fc1" in out.output and png_ok((tmp_path / "sim.png").read_bytes())
    out = cli("similarity", runs["mag"], "--reference", "0")
    assert out.exit_code == 0 and "0.5000" in out.output  # level 1 keeps half of level 0
    out = cli("effective", runs["l1s"], "--level", "2", "--seed", "1")
    assert out.exit_code == 0 and "effective" in out.output and "dead" in out.output
    out = cli("stability", runs["mag"], runs["l1s"], "--plot", tmp_path / "stab.svg")
    assert out.exit_code == 0 and b"<svg" in (tmp_path / "stab.svg").read_bytes()[:2000]
    out = cli("stability", runs["mag"], "--layer", "fc2", "--plot", tmp_path / "traj.png")
    assert out.exit_code == 0 and png_ok((tmp_path / "traj.png").read_bytes())


def test_cli_ensemble_and_mask_plot(cli, runs, tmp_path):
    out = cli("ensemble", runs["mag"], runs["l1s"], "--level", "1", "--plot", tmp_path / "agree.png")
    assert out.exit_code == 0 and "ensemble" in out.output and "agreement" in out.output
    assert png_ok((tmp_path / "agree.png").read_bytes())
    out = cli("mask-plot", runs["mag"], "--layer", "fc2", "--level", "2", "-o", tmp_path / "m.png")
    assert out.exit_code == 0 and png_ok((tmp_path / "m.png").read_bytes())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("compare", "no-such-run"), "no experiment 'no-such-run'"),
        (("compare", "{mag}", "--metric", "acc"), "unknown metric 'acc'"),
        (("similarity", "{mag}", "{l1s}", "{ft}"), "give one experiment"),
        (("similarity", "{mag}", "--reference", "first"), "--reference 'first'"),
        (("effective", "{mag}", "--level", "9"), "no finished level 9"),
        (("ensemble", "{mag}", "{l1s}", "--density", "2"), "density must be in"),
        (("mask-plot", "{mag}", "--layer", "fc9", "-o", "x.png"), "unknown layer 'fc9'"),
        (("mask-plot", "{mag}", "--layer", "fc1", "-o", "x.txt"), "ending in .png"),
    ],
)
def test_cli_bad_input_is_one_user_error(cli, runs, args, message):
    out = cli(*(a.format(**runs) for a in args))
    assert isinstance(out.exception, PrunelabError), out.output
    assert message in str(out.exception)


def test_masks_of_different_shapes_are_refused():
    small = build_model("lenet-300-100", num_classes=4, input_shape=(1, 8, 8))
    large = build_model("lenet-300-100", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(
        PrunelabError, match=r"masks for 'fc1.weight': shapes \(300, 64\) and \(300, 784\) differ"
    ):
        compare_masks(Mask.ones(small), Mask.ones(large))
    with pytest.raises(PrunelabError, match="cover different layers"):
        compare_masks(
            Mask.ones(small), Mask.ones(build_model("lenet5", num_classes=10, input_shape=(1, 28, 28)))
        )


def test_main_table_shows_control_branches(tmp_path):
    from prunelab.analysis import accuracy_table
    from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec
    from prunelab.training import TrainConfig

    spec = ExperimentSpec(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(epochs=1, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=2),
        controls=("reinit",),
        name="lt",
    )
    result = ExperimentRunner(spec, tmp_path).run()
    table = accuracy_table([result.directory.name], root=tmp_path)
    assert table.columns == ["level", "density", "lt", "lt (reinit control)"]
    control = [row[3] for row in table.rows]
    assert control[0] is None  # level 0 is dense: no control
    assert control[2][0] == result.controls[0]["reinit"][1].final.test_acc
