"""Decoder language models (issue 26): SparseGPT, Wanda and magnitude, unstructured and N:M, with
perplexity, block by block, through the runner and the CLI, on tiny GPT-2 and Llama models and text
that the tests build."""

import html
import json
import logging
import math
import random
import re
import shutil

import pytest
import torch
from torch import nn

from prunelab.data.corpus import load_lm_dataset, windows
from prunelab.errors import SpecError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, load_level
from prunelab.models import build_model, resolve_model
from prunelab.models.decoder import decoder_of
from prunelab.pruning import Mask, PruneContext, prune
from prunelab.pruning.nm import parse as parse_nm
from prunelab.pruning.owl import owl_densities
from prunelab.pruning.sparsegpt import sparsegpt
from prunelab.pruning.wanda import SquaredNorms, wanda_scores
from prunelab.spec import build_spec
from prunelab.training.evaluation import evaluate

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "sat",
    "ran",
    "flew",
    "on",
    "under",
    "over",
    "mat",
    "park",
    "tree",
    "and",
    "while",
    "sang",
    "slept",
    "green",
    "blue",
    "small",
    "big",
    "old",
    "young",
    "quickly",
    "slowly",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(n)
    ]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A text file, and tiny GPT-2 and Llama save_pretrained folders with a BPE tokenizer trained on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from prunelab.models.vision import import_transformers

    t = import_transformers()
    base = tmp_path_factory.mktemp("lm")
    lines = sentences(1500)
    (base / "corpus.txt").write_text("\n".join(lines))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(lines, trainer)
    fast = t.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>")
    vocab = len(fast)
    torch.manual_seed(0)
    gpt = t.GPT2LMHeadModel(
        t.GPT2Config(
            vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
        )
    )
    llama = t.LlamaForCausalLM(
        t.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0,
            eos_token_id=0,
        )
    )  # fmt: skip
    for name, model in (("gpt2", gpt), ("llama", llama)):
        model.save_pretrained(base / name)
        fast.save_pretrained(base / name)
    return base


def lm_spec(folders, model="gpt2", **pruning) -> ExperimentSpec:
    values = dict(method="wanda", target_sparsity=0.5, rounds=1, calibration_sequences=8) | pruning
    return build_spec(
        ExperimentSpec, model=f"hf:{folders / model}", weights="hf:DEFAULT", data=f"text:{folders / 'corpus.txt'}",
        sequence_length=16, pruning=values,
    )  # fmt: skip


# --- SparseGPT against independent computations ------------------------------------------------


def brute_force_obs(w: torch.Tensor, h: torch.Tensor, prune_mask: torch.Tensor) -> torch.Tensor:
    """OBS one weight at a time, left to right: weight j of a row removed with the closed-form update
    over the columns not yet fixed, F = j..n-1: delta = -w_j / [H_F^-1]_00 * H_F^-1[:, 0]."""
    w = w.clone()
    n = w.shape[1]
    for r in range(w.shape[0]):
        for j in range(n):
            if prune_mask[r, j]:
                inv = torch.linalg.inv(h[j:, j:])
                w[r, j:] -= w[r, j] / inv[0, 0] * inv[:, 0]
    return w


def test_sparsegpt_updates_equal_brute_force_obs_and_its_loss_is_the_reconstruction_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 12, dtype=torch.float64, generator=g)
    x = torch.randn(40, 12, dtype=torch.float64, generator=g)
    h = 2 * x.T @ x / len(x)
    prune_mask = torch.rand(5, 12, generator=g) < 0.5
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(12, dtype=torch.float64)
    result = sparsegpt(w, h, torch.ones(5, 12, dtype=torch.bool), 0.5, blocksize=4, prune=prune_mask)
    expected = brute_force_obs(w, damped, prune_mask)
    torch.testing.assert_close(result.weight, expected * ~prune_mask, rtol=1e-9, atol=1e-10)
    assert bool((result.weight[prune_mask] == 0).all()) and torch.equal(result.keep, ~prune_mask)
    delta = result.weight - w  # the predicted loss is 1/2 dW H dW^T per row (with the damped H)
    torch.testing.assert_close(result.losses, 0.5 * ((delta @ damped) * delta).sum(1), rtol=1e-9, atol=1e-10)
    assert float(0.5 * ((delta @ h) * delta).sum()) < float(
        0.5 * ((w * prune_mask) @ h * (w * prune_mask)).sum()
    )


def test_sparsegpt_chooses_exact_counts_per_column_block_and_exact_nm():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(6, 16, generator=g), torch.randn(64, 16, generator=g)
    h = 2 * x.T @ x / len(x)
    alive = torch.ones(6, 16, dtype=torch.bool)
    unstructured = sparsegpt(w, h, alive, 0.5, blocksize=8)
    for block in (slice(0, 8), slice(8, 16)):
        assert int((~unstructured.keep[:, block]).sum()) == 24  # round(0.5 * 48) in each block
    two_four = sparsegpt(w, h, alive, 0.0, nm=parse_nm("2:4"), blocksize=8)
    assert bool(((~two_four.keep).reshape(6, 4, 4).sum(2) == 2).all())
    assert bool((two_four.weight[~two_four.keep] == 0).all())
    assert not torch.equal(two_four.weight[two_four.keep], w[two_four.keep])  # kept weights updated


# --- Wanda, N:M, per-row, OWL --------------------------------------------------------------------


def test_wanda_mask_against_a_hand_computation():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    x = torch.tensor([[1.0, 0.0, 0.0, 2.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 2.0]])
    stats = SquaredNorms(4, torch.device("cpu"))
    stats.add(x)
    # ||X_j||: sqrt(3), 1, 1, sqrt(8); scores row 0: 1.73, 2, 3, 1.41; row 1: 6.93, 1, 1, 5.66
    scores = wanda_scores(w, stats.norms())
    torch.testing.assert_close(scores[0], torch.tensor([3**0.5, 2.0, 3.0, 0.5 * 8**0.5], dtype=torch.float64))
    keep = build_spec(PruneSpec, method="wanda").structure_name()
    from prunelab.pruning import STRUCTURES
    from prunelab.pruning.rowgroups import layer_keep

    kept = layer_keep(STRUCTURES.get(keep), "layer", scores, torch.ones(2, 4, dtype=torch.bool), 0.5)
    assert kept.tolist() == [[False, True, True, False], [True, False, False, True]]


def conv_and_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(12)).eval()


@pytest.mark.parametrize("form", ["2:4", "4:8", "1:4"])
def test_nm_masks_hold_exactly_n_zeros_in_every_group_of_m_for_any_criterion(form):
    net = conv_and_linear()
    net(torch.zeros(1, 8, 6, 6))
    n, m = map(int, form.split(":"))
    for method in ("magnitude", "random"):
        mask = prune(
            net, None, fraction=0.2, method=method, structure=form, generator=torch.Generator().manual_seed(0)
        )
        conv = mask["0.weight"].movedim(1, -1).reshape(-1, m)  # along input channels at each kernel position
        linear = mask["3.weight"].reshape(-1, m)
        for groups in (conv, linear):
            assert bool(((~groups).sum(1) == n).all()), (method, form)
    again = prune(net, mask, fraction=0.2, method="magnitude", structure=form)
    assert again == mask  # a group that holds N:M already loses nothing more


def test_nm_and_per_row_refuse_what_they_cannot_cut():
    net = conv_and_linear()
    net(torch.zeros(1, 8, 6, 6))
    with pytest.raises(SpecError, match=r"'3:5'.*groups of 5 inputs.*has 8 inputs.*--exclude 0"):
        prune(net, None, fraction=0.2, structure="3:5")
    with pytest.raises(SpecError, match="1 <= N < M"):
        build_spec(PruneSpec, structure="4:4")
    with pytest.raises(SpecError, match="scope must be 'layerwise'"):
        prune(net, None, fraction=0.2, method="magnitude-row", scope="global")
    row = prune(net, None, fraction=0.25, method="magnitude-row")
    assert bool((row["3.weight"].sum(1) == round(0.75 * row["3.weight"].shape[1])).all())


def test_owl_densities_follow_the_outliers_within_the_spread():
    densities = owl_densities([1.0, 3.0, 2.0], 0.5, 0.08)
    assert densities == pytest.approx([0.42, 0.58, 0.5])
    assert sum(densities) / 3 == pytest.approx(0.5)


# --- data and perplexity -----------------------------------------------------------------------


class CharTokenizer:
    """One token per character of 'ab ': a hand-checkable tokenizer."""

    origin = "chars"
    vocab_size = 3

    def stream(self, text):
        return torch.tensor(["ab ".index(c) for c in text if c in "ab "], dtype=torch.int64)

    def fingerprint(self):
        return "chars-v1"


class Bigram(nn.Module):
    """Logits log P[current, next]: the loss of each prediction is -log P[x_t, x_t+1]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.logp = nn.Parameter(table.log())

    def forward(self, ids):
        return self.logp[ids[:, :-1]].transpose(1, 2)


def test_perplexity_as_the_papers_compute_it_on_a_hand_made_case(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "train.txt").write_text("abab abab")
    (folder / "test.txt").write_text("aab ba bba")  # 10 tokens: windows of 4 -> 2 windows, 2 dropped
    data = load_lm_dataset(f"text:{folder}", CharTokenizer(), 4, 3)
    assert data.test.x.tolist() == [[0, 0, 1, 2], [1, 0, 2, 1]]
    assert data.test.y.tolist() == [[0, 1, 2], [0, 2, 1]]
    table = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    loss, _ = evaluate(Bigram(table), data.test)
    # predictions a->a, a->b, b->' ', b->a, a->' ', ' '->b: the mean of their -log P over both windows
    expected = -sum(math.log(p) for p in (0.5, 0.25, 0.2, 0.2, 0.25, 0.1)) / 6
    assert loss == pytest.approx(expected) and math.exp(loss) == pytest.approx(math.exp(expected))
    assert windows(torch.arange(10), 4).shape == (2, 4)


def test_block_by_block_calibration_equals_whole_model_passes(folders):
    """Wanda block by block gives the mask of pruning each block on whole-model forward passes of the
    model whose earlier blocks are already pruned (the rotary embeddings and causal mask caught at
    the first block reach every block alike)."""
    for kind in ("gpt2", "llama"):
        spec = lm_spec(folders, kind)
        model = spec.build_model(0).eval()
        data = spec.load_data()
        batches = ((data.train.x[:4], None), (data.train.x[4:8], None))
        mask = prune(model, None, spec.pruning, context=PruneContext(batches=batches))
        decoder = decoder_of(model)
        reference = Mask.ones(model)
        net = build_model(spec.model, num_classes=data.info.num_classes, input_shape=(16,)).eval()
        net.load_state_dict(model.state_dict())
        params = dict(net.named_parameters())
        stages = [
            {n: m for n, m in net.named_modules() if n.startswith(f"{block}.") and isinstance(m, nn.Linear)}
            for block, _ in decoder.blocks(net)
        ]
        if f"{decoder.head()}.weight" in mask:  # an untied head: calibrated last
            stages.append({decoder.head(): net.get_submodule(decoder.head())})
        for linears in stages:
            norms = {n: SquaredNorms(m.in_features, torch.device("cpu")) for n, m in linears.items()}
            hooks = [m.register_forward_pre_hook(lambda mod, a, s=norms[n]: s.add(a[0].reshape(-1, a[0].shape[-1])))
                     for n, m in linears.items()]  # fmt: skip
            with torch.no_grad():
                for x, _ in batches:
                    net(x)  # the whole model, its earlier blocks pruned
            for h in hooks:
                h.remove()
            for n in linears:
                scores = wanda_scores(params[f"{n}.weight"], norms[n].norms())
                k = scores.shape[1] // 2
                keep = torch.ones_like(scores, dtype=torch.bool)
                keep.scatter_(1, scores.argsort(dim=1, stable=True)[:, :k], False)
                reference = Mask({**dict(reference.items()), f"{n}.weight": keep})
                with torch.no_grad():
                    params[f"{n}.weight"].mul_(keep)
        for name, keep in mask.items():
            assert torch.equal(keep, reference[name]), (kind, name)


def test_calibration_leaves_the_model_as_it_was(folders):
    spec = lm_spec(folders, "llama", method="sparsegpt", structure="2:4")
    model = spec.build_model(0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = spec.load_data()
    updates: dict = {}
    mask = prune(
        model, None, spec.pruning, context=PruneContext(batches=((data.train.x[:8], None),), updates=updates)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(updates) == set(mask.names())  # every block's layers and the untied head, refitted
    for name, weight in updates.items():
        assert bool((weight[~mask[name]] == 0).all())
        assert bool(((~mask[name]).reshape(-1, 4).sum(1) == 2).all())


# --- the engine and the CLI ------------------------------------------------------------------------


def test_a_one_shot_experiment_evaluates_then_prunes_and_sparsegpt_refits(folders, tmp_path):
    spec = lm_spec(folders, method="sparsegpt")
    assert spec.treatment.kind == "finetune" and spec.train.iterations == 0  # one-shot defaults
    result = ExperimentRunner(spec, tmp_path / "runs").run()
    dense, pruned = result.levels[0]
    assert dense.iterations == 0 and pruned.iterations == 0
    assert abs(pruned.density - 0.5) < 0.01
    level = load_level(spec.experiment_id(), root=tmp_path / "runs")
    data = spec.load_data()
    loss, _ = evaluate(level.model, data.test)
    assert math.exp(loss) == pytest.approx(pruned.value("test_ppl"), rel=1e-5)
    plain = build_model(
        spec.model, num_classes=data.info.num_classes, input_shape=(16,), weights="hf:DEFAULT"
    )
    name = "model.transformer.h.0.mlp.c_fc.weight"
    kept = level.mask[name]
    assert not torch.allclose(level.model.state_dict()[name][kept], plain.state_dict()[name][kept])


def test_lm_cli_run_show_report_export_and_transformers_loads_it(cli, folders, tmp_path):
    root = tmp_path / "runs"
    common = ["--weights", "hf:DEFAULT", "--data", f"text:{folders / 'corpus.txt'}", "--sequence-length", 16,
              "--calibration-sequences", 8, "--rounds", 1, "--root", root, "--no-progress", "--threads", 1]  # fmt: skip
    ids = []
    for kind, method, structure in (
        ("gpt2", "sparsegpt", "2:4"),
        ("llama", "wanda", "per-row"),
        ("gpt2", "wanda", "2:4"),
    ):
        code, out, err = cli("run", "--model", f"hf:{folders / kind}", "--method", method, "--structure", structure,
                             "--target-sparsity", 0.5, *common)  # fmt: skip
        assert code == 0, err
        assert "pruned (" in err and "peak resident memory" in err
        ids.append(out.split("experiment ")[1].split()[0])
    code, out, err = cli("show", ids[0], "--root", root)
    assert code == 0 and "50.00%" in out and "winning ticket" not in out, err
    code, out, err = cli("compare", ids[0], ids[2], "--root", root)
    assert code == 0 and "test perplexity per pruning level" in out, err
    code, out, err = cli("similarity", ids[0], ids[2], "--root", root)
    assert code == 0 and "overall" in out, err
    code, out, err = cli("report", ids[0], ids[2], "--root", root, "-o", tmp_path / "report")
    assert code == 0, err
    page = html.unescape((tmp_path / "report" / "report.html").read_text())
    assert "test perplexity per pruning level" in page and "Density of each pruned layer" in page
    # sections that cannot apply are left out through the report's one mechanism, one line each
    left_out = re.search(r'<p class="note" id="left-out">Left out: (.*?)</p>', page).group(1)
    assert "ensembles compare classifiers' predictions; language models are left out" in left_out
    assert "head importance is measured on transformer classifiers" in left_out
    assert '<section id="ensemble">' not in page and '<section id="heads">' not in page
    assert "ensembles: left out (ensembles compare classifiers' predictions" in " ".join(err.split())
    code, out, err = cli("count", ids[0], "--root", root)
    assert code == 0 and "2:4" in out, err
    code, out, err = cli("bench", ids[0], "--root", root, "--repeats", 2, "--warmup", 1, "--batch-sizes", 1,
                         "--no-plot", "--json", tmp_path / "bench.json")  # fmt: skip
    assert code == 0, err  # N:M zeros: nothing to compact; dense, masked and the sparse formats timed
    timed = {t["variant"] for t in json.loads((tmp_path / "bench.json").read_text())["timings"]}
    assert timed == {"dense", "masked", "sparse"}, timed
    for flags in (["--sparse"], ["--sparse", "--onnx"], ["--approximate"]):  # compaction flags: refused
        code, out, err = cli("export", ids[0], "--root", root, "-o", tmp_path / "refused", *flags)
        assert code == 2 and err.count("error") == 1 and "Traceback" not in err, err
        assert f"{', '.join(flags)}: {ids[0]} is a language model" in " ".join(err.split()), err
        assert not (tmp_path / "refused").exists()
    for run, kind in ((ids[0], "gpt2"), (ids[1], "llama")):
        out_dir = tmp_path / f"export-{kind}"
        code, out, err = cli("export", run, "--root", root, "-o", out_dir)
        assert code == 0, err
        level = load_level(run, root=root)
        back = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
        x = level.spec.load_data().test.x[:4]
        with torch.no_grad():
            torch.testing.assert_close(
                back(input_ids=x).logits[:, :-1].transpose(1, 2), level.model.eval()(x)
            )
        from safetensors.torch import load_file

        masks = load_file(out_dir / "masks.safetensors")
        weights = load_file(out_dir / "model.safetensors")
        for name, keep in masks.items():
            assert bool((weights[name][~keep] == 0).all())
        assert json.loads((out_dir / "prunelab.json").read_text())["level"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sequence-length", 128], r"sequence length 128 is beyond the 64 positions of model"),
        (
            ["--calibration-sequences", 5000],
            r"calibration_sequences=5000 windows of 16 tokens .* is more than",
        ),
        (
            ["--structure", "2:3"],
            r"structure '2:3' cuts each row of .* into groups of 3 inputs, but it has 32",
        ),
        (["--method", "sparsegpt", "--structure", "per-row"], r"cannot prune with structure 'per-row'"),
    ],
)
def test_bad_lm_input_is_one_message_and_nothing_written(cli, folders, tmp_path, args, message):
    root = tmp_path / "runs"
    base = ["run", "--model", f"hf:{folders / 'gpt2'}", "--weights", "hf:DEFAULT", "--data",
            f"text:{folders / 'corpus.txt'}", "--method", "wanda", "--sequence-length", 16,
            "--calibration-sequences", 8, "--root", root, "--no-progress", "--threads", 1]  # fmt: skip
    for i, flag in enumerate(args[::2]):
        if flag in base:
            base[base.index(flag) + 1] = args[2 * i + 1]
        else:
            base += [flag, args[2 * i + 1]]
    code, out, err = cli(*base)
    assert code == 2, (out, err)
    assert sum(line.startswith("error") for line in err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, " ".join(err.split())), err
    assert not (root / "experiments").exists() or not any((root / "experiments").iterdir())


def test_bad_text_and_model_types_are_named(cli, folders, tmp_path):
    root = tmp_path / "runs"
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin.txt"
    empty.write_text("  \n")
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    neo = tmp_path / "neo"
    transformers.GPTNeoConfig(
        num_layers=1, hidden_size=16, num_heads=2, attention_types=[[["global"], 1]]
    ).save_pretrained(neo)
    cases = [
        (f"hf:{folders / 'gpt2'}", f"text:{empty}", r"empty.txt is empty"),
        (f"hf:{folders / 'gpt2'}", f"text:{latin}", r"latin.txt is not UTF-8 text"),
        (
            f"hf:{neo}",
            f"text:{folders / 'corpus.txt'}",
            r"'gpt_neo' model; .* decoder layouts of gpt2, opt, llama",
        ),
        ("lenet5", f"text:{folders / 'corpus.txt'}", r"running text without labels"),
    ]
    for model, data, message in cases:
        code, out, err = cli("run", "--model", model, "--data", data, "--sequence-length", 16, "--root", root,
                             "--no-progress", "--threads", 1)  # fmt: skip
        assert code == 2, (model, data, out, err)
        assert re.search(message, " ".join(err.split())), err
        assert sum(line.startswith("error") for line in err.splitlines()) == 1 and "Traceback" not in err
    assert not (root / "experiments").exists() or not any((root / "experiments").iterdir())


def test_a_damaged_decoder_folder_is_one_message_naming_the_file_or_field(cli, folders, tmp_path, caplog):
    """Issue 28's checks of hf: folders hold for causal LMs too, in the config's own spelling
    (GPT-2's n_embd, n_head): sizes that do not fit, a model too big for memory, corrupt weights, no
    tokenizer. Each one message, exit 2, nothing written. The tokenizer used is said."""
    gpt, root = tmp_path / "gpt2", tmp_path / "runs"
    shutil.copytree(folders / "gpt2", gpt)
    with caplog.at_level(logging.INFO, logger="prunelab.models"):  # a new folder: said the first time
        resolve_model(f"hf:{gpt}").tokenizer(None)
    said = (
        rf"hf:{re.escape(str(gpt))}: tokenizer \w+ from {re.escape(str(gpt / 'tokenizer.json'))}, \d+ tokens"
    )
    assert re.search(said, caplog.text), caplog.text
    config = json.loads((gpt / "config.json").read_text())
    args = ["run", "--model", f"hf:{gpt}", "--weights", "hf:DEFAULT", "--data", f"text:{folders / 'corpus.txt'}",
            "--sequence-length", 16, "--calibration-sequences", 8, "--root", root, "--no-progress", "--threads", 1]  # fmt: skip

    def refused(message: str) -> None:
        code, out, err = cli(*args)
        assert code == 2 and sum(line.startswith("error") for line in err.splitlines()) == 1, (out, err)
        assert "Traceback" not in err and message in " ".join(err.split()), err
        assert not (root / "experiments").exists() or not any((root / "experiments").iterdir())

    (gpt / "config.json").write_text(json.dumps(config | {"n_head": 3}))
    refused(f"{gpt / 'config.json'}: n_embd 32 is not a multiple of n_head 3")
    (gpt / "config.json").write_text(json.dumps(config | {"n_layer": 0}))
    refused(f"{gpt / 'config.json'}: n_layer is 0; it must be a whole number >= 1")
    (gpt / "config.json").write_text(json.dumps(config | {"vocab_size": 10**9}))
    refused("make a model of about 32,000,")  # embeddings of 10**9 x 32, more than any memory here
    (gpt / "config.json").write_text(json.dumps(config))
    weights = gpt / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-64])
    refused(f"{weights} is not a readable safetensors file")
    weights.write_bytes(intact)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (gpt / name).unlink()
    refused(f"{gpt} holds no tokenizer")


def test_llama_config_refused_by_transformers_names_the_file_and_why(folders, tmp_path):
    """A config that transformers' own validators refuse (Llama's sizes): the file and the reason,
    not the wrapper's first line."""
    llama = tmp_path / "llama"
    shutil.copytree(folders / "llama", llama)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps(config | {"num_attention_heads": 3}))
    with pytest.raises(SpecError) as info:
        build_model(f"hf:{llama}", num_classes=2, input_shape=(16,), data=f"text:{folders / 'corpus.txt'}")
    text = " ".join(str(info.value).split())
    assert str(llama / "config.json") in text and "not a multiple" in text and "(32)" in text, text


def test_decoder_size_estimate_counts_a_gated_ffn_and_an_untied_head(folders):
    """The memory refusal's parameter estimate for decoders against the parameters of the real model."""
    from prunelab.models.hf import _parameters

    t = transformers
    for kind in ("gpt2", "llama"):
        config = t.AutoConfig.from_pretrained(folders / kind)
        model = t.AutoModelForCausalLM.from_config(config)
        real = sum(p.numel() for p in model.parameters())
        # the estimate leaves out norms and biases (a few per cent here) and Llama's smaller K/V (GQA)
        assert 0.85 * real <= _parameters(config) <= 1.15 * real, (kind, _parameters(config), real)


def test_owl_gives_each_block_one_rate_around_the_target(folders):
    from prunelab.pruning.prune import pruned_layers

    spec = lm_spec(folders, "llama", layer_rates="owl", target_sparsity=0.6, exclude=("model.lm_head",))
    model = spec.build_model(0).eval()
    data = spec.load_data()
    context = PruneContext(batches=((data.train.x[:8], None),))
    chosen, rates = pruned_layers(model, Mask.ones(model), spec.pruning, context)
    by_block: dict[str, set] = {}
    for layer in chosen:
        by_block.setdefault(layer.param.split(".layers.")[1].split(".")[0], set()).add(rates[layer.param])
    assert all(len(r) == 1 for r in by_block.values()) and len(by_block) == 2, by_block
    sparsities = [r.pop() for r in by_block.values()]
    assert sorted(sparsities) == pytest.approx([0.52, 0.68])  # two blocks: the ends of rate +- spread
    mask = prune(model, None, spec.pruning, context=context)
    blocks = Mask({n: m for n, m in mask.items() if n != "model.lm_head.weight"})
    assert mask["model.lm_head.weight"].all() and abs(blocks.density() - 0.4) < 0.01


def test_jsonl_text_column_serves_a_language_model_without_labels(folders, tmp_path):
    rows = [{"text": s, "split": "test" if i % 10 == 0 else "train"} for i, s in enumerate(sentences(600, 1))]
    path = tmp_path / "lm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = build_spec(
        ExperimentSpec, model=f"hf:{folders / 'gpt2'}", data=f"jsonl:{path}", sequence_length=16,
    )  # fmt: skip
    data = spec.load_data()
    assert data.train.x.shape[1] == 16 and data.test.y.shape[1] == 15
    assert len(data.test) < len(data.train) and len(data.val) > 0  # val: the end of the training text


def test_hf_disk_text_serves_a_language_model_and_stays_a_classifiers_data(folders, tmp_path):
    datasets = pytest.importorskip("datasets")
    lines = sentences(400, 2)
    saved = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": lines[:360]}),
            "test": datasets.Dataset.from_dict({"text": lines[360:]}),
        }
    )
    saved.save_to_disk(str(tmp_path / "dd"))
    spec = build_spec(
        ExperimentSpec, model=f"hf:{folders / 'llama'}", data=f"hf-disk:{tmp_path / 'dd'}", sequence_length=16
    )
    data = spec.load_data()
    assert len(data.test) > 0 and data.info.num_classes == spec.build_model(0).model.config.vocab_size
