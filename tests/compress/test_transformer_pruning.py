"""Transformers, structured (issue 13): heads and FFN neurons as pruning units (magnitude,
head-importance, taylor), removed physically with exact logits, counted with attention's products."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from prunelab.compress.compact import compact
from prunelab.compress.count import count, layer_flops
from prunelab.errors import SpecError
from prunelab.models import build_model, example_input
from prunelab.models.encoder import encoder_blocks
from prunelab.models.vision import import_transformers
from prunelab.pruning import Mask, PruneContext, prune
from prunelab.pruning.heads import head_importance

pytest.importorskip("transformers")
transformers = import_transformers()  # torchvision first, as prunelab imports it
pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS, HIDDEN, HEADS, FFN, TOKENS = 3, 32, 4, 48, 12


def tiny(kind: str = "bert", seed: int = 0):
    from prunelab.models.hf import TextClassifier

    torch.manual_seed(seed)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=FFN, num_labels=3, pad_token_id=0, initializer_range=0.3,
        )  # fmt: skip
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=60,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=FFN,
            num_labels=3,
            pad_token_id=0,
            initializer_range=0.3,
        )
        model = transformers.DistilBertForSequenceClassification(config)
    return TextClassifier(model, 0).eval()


def batches(net, n=2, size=6):
    g = torch.Generator().manual_seed(1)
    return [
        (example_input(net, (TOKENS,), size, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def head_rows(t: torch.Tensor, axis: int, head_dim: int) -> torch.Tensor:
    """(heads, weights per head) of a weight-shaped tensor, along the head axis."""
    t = t if axis == 0 else t.T
    return t.reshape(-1, head_dim * t.shape[1])


def head_scores(net, values, norm=lambda u: u.abs().sum(1)):
    """Per block, the heads' scores: ``norm`` over the head's Q/K/V rows and output columns."""
    params = dict(net.named_parameters())
    out = []
    for block in encoder_blocks(net):
        units = torch.cat(
            [head_rows(values(params[p]), a, block.head_dim) for p, a, _ in block.head_parts()], 1
        )
        out.append(norm(units))
    return torch.stack(out)


def pruned_heads(net, mask) -> list[set[int]]:
    """Per block, the heads whose Q/K/V rows and output columns are all pruned."""
    out = []
    for block in encoder_blocks(net):
        parts = [head_rows(mask[p], a, block.head_dim) for p, a, _ in block.head_parts()]
        gone = torch.stack([~p.any(1) for p in parts])
        assert bool((gone.all(0) == gone.any(0)).all()), "a head is pruned in some of its layers only"
        out.append(set(gone.all(0).nonzero().flatten().tolist()))
    return out


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_magnitude_heads_prunes_the_heads_with_the_smallest_weight_norm(kind):
    net = tiny(kind)
    mask = prune(
        net, None, fraction=0.5, method="magnitude", structure="heads"
    )  # layerwise: 2 of 4 per block
    expected = head_scores(net, lambda w: w.detach())
    want = [set(row.argsort()[:2].tolist()) for row in expected]
    assert pruned_heads(net, mask) == want
    for name in mask:  # nothing outside the heads' layers is touched
        if not any(
            k in name
            for k in ("query", "key", "value", "attention.output", "q_lin", "k_lin", "v_lin", "out_lin")
        ):
            assert bool(mask[name].all()), name
    again = prune(net, mask, fraction=0.5, method="magnitude", structure="heads", scope="global")
    assert sum(map(len, pruned_heads(net, again))) == 6 + round(0.5 * 6)  # only alive heads are candidates


def test_head_importance_prunes_the_least_important_heads_by_michels_gates():
    net = tiny()
    data = batches(net)
    mask = prune(
        net, None, fraction=0.25, method="head-importance", scope="global", context=PruneContext(batches=data)
    )
    importance = head_importance(
        net, data
    )  # per-layer normalised (its own finite-difference test is elsewhere)
    order = importance.flatten().argsort()[:3]
    want = [set() for _ in range(LAYERS)]
    for i in order.tolist():
        want[i // HEADS].add(i % HEADS)
    assert pruned_heads(net, mask) == want
    # the second round scores the masked model: pruned heads have zero gradient, and are not candidates
    second = prune(
        net, mask, fraction=0.25, method="head-importance", scope="global", context=PruneContext(batches=data)
    )
    assert all(a <= b for a, b in zip(pruned_heads(net, mask), pruned_heads(net, second), strict=True))


def test_taylor_ffn_prunes_by_the_first_order_change_of_the_loss():
    net = tiny()
    data = batches(net)
    mask = prune(
        net, None, fraction=0.25, method="taylor", context=PruneContext(batches=data)
    )  # ffn by default
    params = dict(net.named_parameters())
    loss = sum(F.cross_entropy(net(x), y) for x, y in data)
    grads = dict(
        zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True), strict=True)
    )
    for block in encoder_blocks(net):
        (w_in, _, _), (w_out, _, _) = block.ffn_parts()
        terms = (grads[w_in] * params[w_in]).sum(1) + (grads[w_out] * params[w_out]).sum(0)
        want = set(terms.detach().abs().argsort()[: round(0.25 * FFN)].tolist())
        assert set((~mask[w_in].any(1)).nonzero().flatten().tolist()) == want
        assert set((~mask[w_out].any(0)).nonzero().flatten().tolist()) == want


def test_every_block_keeps_one_head_and_the_error_messages_name_what_is_wrong():
    net = tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = prune(net, None, fraction=0.99, method="magnitude", structure="heads", scope="global")
    assert [len(p) for p in pruned_heads(net, mask)] == [HEADS - 1] * LAYERS
    assert any("keeps at least one unit" in str(w.message) for w in caught)
    with pytest.raises(SpecError, match="needs structure 'heads', got 'ffn'"):
        prune(
            net,
            None,
            fraction=0.5,
            method="head-importance",
            structure="ffn",
            context=PruneContext(batches=batches(net)),
        )
    with pytest.raises(SpecError, match=r"traces the model .* give an example input"):
        prune(build_model("lenet5"), None, fraction=0.5, method="magnitude", structure="heads")
    with pytest.raises(SpecError, match="finds no group of heads to prune"):
        lenet = build_model("lenet5")
        prune(
            lenet,
            None,
            fraction=0.5,
            method="magnitude",
            structure="heads",
            example=torch.zeros(1, 1, 28, 28),
        )
    with pytest.raises(SpecError, match="finds no group of ffn to prune among the selected layers"):
        prune(
            net,
            None,
            fraction=0.5,
            method="magnitude",
            structure="ffn",
            exclude=[b.name("ffn_out") for b in encoder_blocks(net)],
        )
    with pytest.raises(SpecError, match="needs data"):
        prune(net, None, fraction=0.5, method="taylor")


def test_taylor_also_prunes_conv_filters():
    net = build_model("conv2", num_classes=10, input_shape=(1, 28, 28), seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    mask = prune(
        net,
        None,
        fraction=0.5,
        method="taylor",
        structure="structured-output",
        context=PruneContext(batches=[(x, y)]),
    )
    w = dict(net.named_parameters())["conv1.weight"]
    g = torch.autograd.grad(F.cross_entropy(net(x), y), w)[0]
    want = set(((g * w).detach().flatten(1).sum(1).abs().argsort()[: round(0.5 * w.shape[0])]).tolist())
    assert set((~mask["conv1.weight"].flatten(1).any(1)).nonzero().flatten().tolist()) == want
    with pytest.raises(SpecError, match="signed scores"):
        prune(
            net,
            None,
            fraction=0.5,
            method="taylor",
            structure="hybrid",
            context=PruneContext(batches=[(x, y)]),
        )


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_compaction_removes_heads_and_neurons_with_the_masked_models_logits(kind):
    net = tiny(kind)
    data = batches(net)
    mask = prune(
        net, None, fraction=0.5, method="head-importance", scope="global", context=PruneContext(batches=data)
    )
    mask = prune(net, mask, fraction=0.5, method="taylor", context=PruneContext(batches=data))
    masked = copy.deepcopy(net)
    mask.apply(masked)
    result = compact(net, mask, data[0][0])
    small = result.model
    gone = pruned_heads(net, mask)
    for block, removed in zip(encoder_blocks(small), gone, strict=True):
        assert block.heads == HEADS - len(removed) and block.ffn_size == FFN - round(0.5 * FFN)
        attention = small.get_submodule(block.name("attention"))
        assert getattr(attention, block.layout.heads_attribute) == block.heads
    removed_params = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in small.parameters())
    heads_gone, neurons_gone = sum(map(len, gone)), LAYERS * round(0.5 * FFN)
    d = HIDDEN // HEADS
    assert removed_params == heads_gone * (3 * d * (HIDDEN + 1) + d * HIDDEN) + neurons_gone * (
        2 * HIDDEN + 1
    )
    x = torch.cat([x for x, _ in data] + [example_input(net, (TOKENS,), 4)])
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(masked(x), net(x), atol=1e-3)  # the pruning changed the model


def test_dead_heads_and_neurons_are_folded_into_the_next_bias_exactly():
    net = tiny()
    keep = Mask.ones(net)
    block = encoder_blocks(net)[1]
    d = block.head_dim
    keep[f"{block.name('value')}.weight"][d : 2 * d] = (
        False  # head 1 reads nothing: its context is the value bias
    )
    keep[f"{block.name('ffn_in')}.weight"][5] = False  # neuron 5 is gelu(its bias) at every token
    masked = copy.deepcopy(net)
    keep.apply(masked)
    result = compact(net, keep, example_input(net, (TOKENS,)))
    heads = {name: gone for name, gone in result.removed_heads.items() if gone}
    assert heads == {block.prefix + ".attention": (1,)} and result.removed[block.name("ffn_in")] == 1
    x = example_input(net, (TOKENS,), 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-5)


def test_flops_count_the_attention_products_and_shrink_with_the_heads():
    net = tiny()
    flops = layer_flops(net, (TOKENS,))
    block = encoder_blocks(net)[0]
    assert flops[block.name("attention")] == 2 * 2 * TOKENS * TOKENS * HIDDEN  # QK^T and AV, 2 FLOPs per MAC
    assert flops[block.name("query")] == 2 * TOKENS * HIDDEN * HIDDEN
    mask = prune(net, None, fraction=0.5, method="magnitude", structure="heads")
    small = compact(net, mask, example_input(net, (TOKENS,))).model
    report = count(net, (TOKENS,), mask, small)
    rows = {r.layer: r for r in report.layers}
    assert rows[block.name("attention")].compact_flops == flops[block.name("attention")] // 2
    assert rows[block.name("attention")].masked_flops == flops[block.name("attention")]  # masking saves none
    (params, *_), (macs, *_), (total, *_) = [r[1:] for r in report.summary_rows()]
    assert params == sum(p.numel() for p in net.parameters()) and total == 2 * macs


def test_head_and_ffn_pruning_end_to_end_through_the_cli(cli, tmp_path):
    from prunelab.compress.export import load_compact
    from prunelab.experiments import load_level
    from prunelab.models.hf import TextClassifier

    root = tmp_path / "runs"
    common = ("--model", "bert-tiny", "--data", "synthetic-sentiment", "--iterations", "20", "--batch-size", "32",
              "--eval-every", "20it", "--treatment", "finetune", "--root", root, "--no-progress")  # fmt: skip
    code, out, err = cli("run", *common, "--method", "head-importance", "--scope", "global", "--rate", "0.25",
                         "--rounds", "2")  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    level = load_level(run, root=root)
    assert [len(p) for p in pruned_heads(level.model, level.mask)] == [1, 1]  # 4 heads: 1, then 1 more
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "compact")
    assert code == 0 and "no hf/ folder: heads were removed" in " ".join(out.split()), err
    small = load_compact(tmp_path / "compact")
    assert [b.heads for b in encoder_blocks(small)] == [1, 1]
    x = level.spec.load_data().test.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(small(x), level.model.eval()(x), rtol=1e-5, atol=1e-5)
    code, out, err = cli("count", run, "--root", root, "--per-layer")
    assert code == 0 and "model.bert" in out, err
    code, out, err = cli("bench", run, "--root", root, "--batch-sizes", "1,2", "--tokens", 16, "--repeats", 2,
                         "--warmup", 1, "--no-plot", "--no-sparse")  # fmt: skip
    assert code == 0 and "compact" in out, err
    code, out, err = cli("bench", run, "--root", root, "--tokens", 100_000, "--no-plot")
    assert code == 2 and "--tokens must be in 1..128" in err

    # FFN neurons alone, the same number per block: also a save_pretrained folder transformers loads
    code, out, err = cli("run", *common, "--method", "taylor", "--rate", "0.5", "--rounds", "1")
    assert code == 0, err
    (ffn_run,) = [p.name for p in (root / "experiments").iterdir() if p.name != run]
    code, out, err = cli("export", ffn_run, "--root", root, "-o", tmp_path / "ffn")
    assert code == 0 and "FFN width 256" in out, err
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ffn" / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "ffn" / "hf")
    ids = tokenizer(["a truly wonderful film"], return_tensors="pt")["input_ids"]
    level = load_level(ffn_run, root=root)
    with torch.no_grad():
        torch.testing.assert_close(TextClassifier(hf, level.model.pad_id)(ids), level.model.eval()(ids))
    code, out, err = cli("export", ffn_run, "--root", root, "-o", tmp_path / "onnx", "--onnx")
    assert code == 2 and "ONNX export of text models" in err


def test_unstructured_bert_runs_its_encoder_linears_sparse_after_export(cli, tmp_path):
    """A magnitude-pruned bert-tiny exported with --sparse loads with SparseLinear in the encoder
    (wherever timing chose it) and gives the pruned model's logits; hf/ stays a dense folder."""
    from prunelab.compress import SparseLinear, load_compact, sparsify
    from prunelab.compress.export import export_compact
    from prunelab.compress.level import compact_level
    from prunelab.compress.sparse import sparse_layers

    root = tmp_path / "runs"
    code, out, err = cli("run", "--model", "bert-tiny", "--data", "synthetic-sentiment", "--iterations", "10",
                         "--batch-size", "32", "--eval-every", "10it", "--treatment", "finetune", "--root", root,
                         "--no-progress", "--method", "magnitude", "--rate", "0.9", "--rounds", "1",
                         "--exclude", "model.classifier")  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, out, err = cli(
        "export", run, "--root", root, "-o", tmp_path / "sparse", "--sparse", "--batch-size", 4
    )
    assert code == 0 and "sparse layers" in out, err
    item = compact_level(run, root=root)
    loaded = load_compact(tmp_path / "sparse")
    x = item.loaded.spec.load_data().test.x[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), item.loaded.model.eval()(x), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "sparse" / "hf" / "config.json").is_file()
    # every encoder linear forced sparse: the same round trip, independent of the timing
    fast = sparsify(item.result.model, x, repeats=1, force=True, min_sparsity=0.5)
    assert any(".encoder.layer." in name for name in fast.used)
    export_compact(
        item.result, tmp_path / "forced", model="bert-tiny", num_classes=2, input_shape=item.input_shape,
        data=item.loaded.spec.data, sparse=fast,
    )  # fmt: skip
    again = load_compact(tmp_path / "forced")
    assert set(sparse_layers(again)) == set(fast.used)
    assert all(isinstance(again.get_submodule(n), SparseLinear) for n in fast.used)
    with torch.no_grad():
        torch.testing.assert_close(again(x), item.loaded.model(x), rtol=1e-5, atol=1e-5)


def test_heads_and_ffn_together_pool_each_kind_apart():
    net = tiny()
    mask = prune(net, None, fraction=0.5, method="l1-structured", structure="heads+ffn", scope="global")
    assert sum(map(len, pruned_heads(net, mask))) == round(0.5 * LAYERS * HEADS)
    neurons = sum(int((~mask[b.parts("ffn")[0][0]].any(1)).sum()) for b in encoder_blocks(net))
    assert neurons == round(0.5 * LAYERS * FFN)
    heads_only = prune(net, None, fraction=0.5, method="l1-structured", structure="heads", scope="global")
    assert pruned_heads(net, heads_only) == pruned_heads(net, mask)  # the heads' pool holds heads only
    with pytest.raises(SpecError, match="needs structure 'heads', got 'heads\\+ffn'"):
        prune(net, None, fraction=0.5, method="head-importance", structure="heads+ffn",
              context=PruneContext(batches=batches(net)))  # fmt: skip


def test_heads_mask_prunes_named_heads_and_refuses_what_cannot_go():
    from prunelab.pruning import heads_mask

    net = tiny()
    mask = heads_mask(net, {0: [1, 3], 2: [0]})
    assert pruned_heads(net, mask) == [{1, 3}, set(), {0}]
    small = compact(net, mask, example_input(net, (TOKENS,))).model
    assert [b.heads for b in encoder_blocks(small)] == [2, 4, 3]
    with pytest.raises(SpecError, match=r"block 0 has heads 0\.\.3; there is no head 4"):
        heads_mask(net, {0: [4]})
    with pytest.raises(SpecError, match=r"block 5 does not exist: the model has blocks 0\.\.2"):
        heads_mask(net, {5: [0]})
    with pytest.raises(
        SpecError, match=r"block 0 has 2 head\(s\) left \(\[0, 2\]\); removing \[0, 2\] would leave none"
    ):
        heads_mask(net, {0: [0, 2]}, mask)


def test_pruned_heads_stay_zero_with_zero_adam_state_through_training():
    from prunelab.experiments import ExperimentSpec
    from prunelab.pruning import heads_mask
    from prunelab.training import TrainConfig, Trainer

    spec = ExperimentSpec(model="bert-tiny", data="synthetic-sentiment")
    net = spec.build_model(0)
    mask = heads_mask(net, {0: [1]})
    mask = prune(net, mask, fraction=0.3, method="magnitude", structure="ffn")
    trainer = Trainer(
        net, spec.load_data(), TrainConfig(optimizer="adam", lr=2e-3, batch_size=32, iterations=6), mask=mask
    )
    trainer.run()
    params = dict(net.named_parameters())
    for name, keep in mask.items():
        assert bool((params[name].detach()[~keep] == 0).all()), name
        assert bool((params[name].detach()[keep] != 0).all()), name
        for value in trainer.optimizer.state[params[name]].values():
            if isinstance(value, torch.Tensor) and value.shape == keep.shape:
                assert bool((value[~keep] == 0).all()), name


def test_heads_mask_takes_any_integer_index_and_refuses_the_rest():
    """Issue 28: NumPy and 0-d tensor integers are indices; a bool, a lone number or a float is one
    SpecError naming it; an empty list prunes no head."""
    import numpy as np

    from prunelab.pruning import heads_mask

    net = tiny()
    want = heads_mask(net, {0: [1, 3], 2: [0]})
    same = heads_mask(net, {np.int64(0): [np.int32(1), torch.tensor(3)], torch.tensor(2): (0,), 1: []})
    assert all(torch.equal(want[n], same[n]) for n in want.names())
    assert pruned_heads(net, heads_mask(net, {0: []})) == [set(), set(), set()]
    for heads, says in [
        ({True: [0]}, r"block True is not an index"),
        ({0: 1}, r"the heads of block 0 must be a list of head indices, as \[0, 2\], not 1"),
        ({0: [True]}, r"block 0: head True is not an index"),
        ({0: [1.0]}, r"block 0: head 1\.0 is not an index"),
        ({0: [torch.tensor([1, 2])]}, r"block 0: head tensor\(\[1, 2\]\) is not an index"),
        ({0: "12"}, r"must be a list of head indices"),
        ([0, 1], r"heads must map block indices"),
    ]:
        with pytest.raises(SpecError, match=says):
            heads_mask(net, heads)
