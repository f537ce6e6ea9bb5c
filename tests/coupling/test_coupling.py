"""Coupled groups: discovery on small builds against hand-written expectations, masks that zero
every member of a unit, and compaction that removes them exactly (eval and train mode)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.compress import compact, export_compact, load_compact
from prunelab.compress.compact import dropout_off
from prunelab.coupling import discover
from prunelab.errors import PrunelabError
from prunelab.pruning import PruneContext, prune
from prunelab.pruning.norms import channel_dim

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm scales near 1 with non-zero shifts and statistics, no constant tensors; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                    p.copy_(
                        0.1 * torch.randn(p.shape, generator=g)
                        + (1.0 if name == "weight" and p.dim() == 1 else 0)
                    )
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.4 * torch.rand(m.bias.shape, generator=g) - 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def members(groups, name: str) -> set[str]:
    """The members of the group named ``name``, as ``tensor[dim]``."""
    (group,) = [g for g in groups.prunable() if g.name == name]
    return {f"{m.tensor}[{m.dim}]" for m in group.members}


def compact_checked(model: nn.Module, x: torch.Tensor, fraction: float = 0.5, structure: str = "groups"):
    """Prune ``fraction`` of every group's units by L1, compact, and check the compacted model
    against the masked one in eval and train mode (compact does; here again, by hand)."""
    mask = prune(model, None, fraction=fraction, method="l1-filter", structure=structure, example=x)
    result = compact(model, mask, x)
    masked = mask.apply(copy.deepcopy(model))
    batch = torch.randn((3, *x.shape[1:]), generator=torch.Generator().manual_seed(5))
    for training in (False, True):
        a, b = copy.deepcopy(masked).train(training), copy.deepcopy(result.model).train(training)
        with torch.no_grad(), dropout_off(a, b):
            want, got = a(batch), b(batch)
        want, got = (want[0], got[0]) if isinstance(want, tuple) else (want, got)
        assert float((want - got).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max())), training
        assert float((want[0] - want[1]).abs().max()) > 1e-4  # outputs that depend on the input
    return mask, result


# small builds ---------------------------------------------------------------------------------------
class Residual(nn.Module):
    """A stem, a block with a projection shortcut, a block with an identity shortcut, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.a1, self.an1 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.a2, self.an2 = nn.Conv2d(6, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.proj, self.pn = nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.b1, self.bn1 = nn.Conv2d(12, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b2, self.bn2 = nn.Conv2d(6, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.an2(self.a2(F.relu(self.an1(self.a1(x))))) + self.pn(self.proj(x)))
        x = F.relu(self.bn2(self.b2(F.relu(self.bn1(self.b1(x))))) + x)
        return self.fc(x.mean((2, 3)))


def test_residual_blocks_couple_every_layer_adding_into_a_stage():
    groups = discover(Residual(), torch.zeros(1, 3, 8, 8))
    assert members(groups, "stem") == {
        "stem.weight[0]", "bn.weight[0]", "bn.bias[0]", "bn.running_mean[0]", "bn.running_var[0]",
        "a1.weight[1]", "proj.weight[1]",
    }  # fmt: skip
    stage = members(groups, "a2")  # the projection, both blocks' last convs, the next readers
    assert {"a2.weight[0]", "proj.weight[0]", "pn.weight[0]", "b2.weight[0]", "bn2.bias[0]"} <= stage
    assert {"b1.weight[1]", "fc.weight[1]"} <= stage
    assert members(groups, "a1") == {
        "a1.weight[0]", "an1.weight[0]", "an1.bias[0]", "an1.running_mean[0]", "an1.running_var[0]", "a2.weight[1]",
    }  # fmt: skip
    assert {g.name: g.count for g in groups.prunable()} == {"stem": 8, "a1": 6, "a2": 12, "b1": 6}
    assert not any(g.frozen for g in groups.prunable())  # the classes are frozen, in the fc's own group


def test_residual_pruning_halves_every_group_and_compacts_exactly():
    model = trained_like(Residual())
    x = torch.zeros(1, 3, 8, 8)
    mask, result = compact_checked(model, x)
    small = result.model
    assert (small.stem.out_channels, small.a1.out_channels, small.a2.out_channels, small.b1.out_channels) == (
        4,
        3,
        6,
        3,
    )
    assert small.fc.in_features == 6 and small.fc.out_features == 5  # the classes stay
    # parameters by hand: convs (in x out x k x k), BN 2 per channel, fc
    want = 3 * 4 * 9 + 2 * 4 + (4 * 3 * 9 + 2 * 3) + (3 * 6 * 9 + 2 * 6) + (4 * 6 + 2 * 6)
    want += (6 * 3 * 9 + 2 * 3) + (3 * 6 * 9 + 2 * 6) + (6 * 5 + 5)
    assert sum(p.numel() for p in small.parameters()) == want
    assert_whole_units(discover(model, x), mask)


def unit_pruned(group, mask) -> list[torch.Tensor]:
    """Per parameter member the mask covers: per unit, whether all its positions are masked."""
    out = []
    for m in group.params():
        if m.tensor in mask:
            entry = mask[m.tensor]
            gone = ~entry.movedim(m.dim, 0).reshape(entry.shape[m.dim], -1).any(1)
            kept = torch.zeros(group.count, dtype=torch.long).index_add_(0, m.units, (~gone).long())
            out.append(kept == 0)
    return out


def assert_whole_units(groups, mask) -> None:
    """Every unit of every group is pruned in all the members the mask covers, or in none."""
    for group in groups.prunable():
        patterns = unit_pruned(group, mask)
        assert all(torch.equal(p, patterns[0]) for p in patterns), group.name


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head((x * scale).mean((2, 3)))


def test_a_squeeze_excite_gate_joins_the_channels_it_scales():
    groups = discover(SqueezeExcite(), torch.zeros(1, 3, 6, 6))
    assert members(groups, "conv") == {
        "conv.weight[0]", "conv.bias[0]", "bn.weight[0]", "bn.bias[0]", "bn.running_mean[0]",
        "bn.running_var[0]", "fc1.weight[1]", "fc2.weight[0]", "fc2.bias[0]", "head.weight[1]",
    }  # fmt: skip
    assert members(groups, "fc1") == {"fc1.weight[0]", "fc1.bias[0]", "fc2.weight[1]"}
    compact_checked(trained_like(SqueezeExcite()), torch.zeros(1, 3, 6, 6))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.c(torch.cat([self.a(x), self.b(x)], 1))), 1))


def test_a_concatenation_places_each_part_and_flatten_maps_positions():
    model = Concat()
    groups = discover(model, torch.zeros(1, 3, 4, 4))
    (ab,) = [g for g in groups.prunable() if g.name == "a"]  # one group: both parts feed c's columns
    (column,) = [m for m in ab.members if m.tensor == "c.weight"]
    assert ab.count == 10 and column.dim == 1 and column.units.tolist() == list(range(10))
    assert members(groups, "a") >= {"a.weight[0]", "b.weight[0]", "c.weight[1]"}
    (c,) = [g for g in groups.prunable() if g.name == "c"]
    (fc,) = [m for m in c.members if m.tensor == "fc.weight"]
    assert fc.units.tolist() == [u for u in range(5) for _ in range(16)]  # channel c: 16 flattened columns
    _, result = compact_checked(trained_like(model), torch.zeros(1, 3, 4, 4))
    assert result.model.c.in_channels == 2 + 3 and result.model.fc.in_features == 3 * 16


class Shuffle(nn.Module):
    """ShuffleNet-V2's block: chunk, a branch, concatenation, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Sequential(
            nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1)
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = torch.cat([left, self.branch(right)], 1)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(x.mean((2, 3)))


def test_a_channel_shuffle_ties_the_positions_it_interleaves():
    groups = discover(Shuffle(), torch.zeros(1, 3, 6, 6))
    (stem,) = [g for g in groups.prunable() if g.name == "stem"]
    assert stem.count == 4  # chunk ties stem j with 4 + j, the shuffle the branch's output j with them
    (inner,) = [g for g in groups.prunable() if g.name == "branch.0"]
    assert inner.count == 4 and inner.kind == "channels"  # the 1x1 and the depthwise conv between
    compact_checked(trained_like(Shuffle()), torch.zeros(1, 3, 6, 6))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm over channels last, an inverted MLP, a layer scale, a residual."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + self.scale * y).mean((2, 3)))


def test_a_layernorm_block_prunes_channels_with_the_norm_normalising_the_kept_ones():
    model = ConvNeXtBlock()
    groups = discover(model, torch.zeros(1, 3, 8, 8))
    stage = members(groups, "stem")
    assert {
        "stem.weight[0]",
        "norm.weight[0]",
        "norm.bias[0]",
        "scale[0]",
        "fc2.weight[0]",
        "fc1.weight[1]",
    } <= stage
    assert {"dw.weight[0]", "head.weight[1]"} <= stage
    mask, result = compact_checked(trained_like(model), torch.zeros(1, 3, 8, 8))
    assert result.model.norm.normalized_shape == (4,) and result.model.scale.shape == (4, 1, 1)
    # the masked model's LayerNorm normalises over the kept channels: a hook, not its state_dict
    masked = mask.apply(copy.deepcopy(model))
    x = torch.randn(2, 5, 8)
    keep = mask["norm.weight"]
    want = F.layer_norm(x[..., keep], (4,), masked.norm.weight[keep], masked.norm.bias[keep])
    torch.testing.assert_close(masked.norm(x)[..., keep], want)
    assert float(masked.norm(x)[..., ~keep].detach().abs().max()) == 0
    assert set(masked.state_dict()) == set(model.state_dict())


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm, as torchvision's ConvNeXt and timm define it."""

    def forward(self, x):
        return F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        ).permute(0, 3, 1, 2)


def test_a_channels_first_layernorm_is_found_by_its_behaviour():
    assert channel_dim(nn.LayerNorm(6)) == -1 and channel_dim(LayerNorm2d(6)) == 1
    assert channel_dim(nn.LayerNorm((4, 4))) is None
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), LayerNorm2d(6), nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    compact_checked(trained_like(model), torch.zeros(1, 3, 8, 8))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.g, self.ng = nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8)
        self.b, self.gn = nn.Conv2d(8, 6, 1), nn.GroupNorm(3, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.ng(self.g(F.relu(self.na(self.a(x))))))
        return self.head(F.relu(self.gn(self.b(x))).mean((2, 3)))


def test_grouped_convs_and_groupnorms_lose_whole_groups():
    groups = discover(Grouped(), torch.zeros(1, 3, 5, 5))
    (conv,) = [g for g in groups.prunable() if g.name == "a"]
    assert conv.kind == "conv groups" and conv.count == 4  # 2 input + 2 output channels per group
    (norm,) = [g for g in groups.prunable() if g.name == "b"]
    assert norm.kind == "norm groups" and norm.count == 3
    _, result = compact_checked(trained_like(Grouped()), torch.zeros(1, 3, 5, 5))
    small = result.model
    assert (small.g.groups, small.g.in_channels, small.g.out_channels) == (2, 4, 4)
    assert (small.gn.num_groups, small.gn.num_channels) == (
        1,
        2,
    ) and small.a.out_channels == 4  # round(1.5) = 2 go


class WithAux(nn.Module):
    """An auxiliary head that runs in train mode only, as GoogLeNet's and Inception-V3's do."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 4, 1)
        self.head, self.aux_head = nn.Linear(8, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        out = self.head(F.relu(self.b(x)).mean((2, 3)))
        if self.training:
            return out, self.aux_head(F.relu(self.aux(x)).mean((2, 3)))
        return out


def test_branches_that_run_in_train_mode_only_are_traced_and_compacted():
    groups = discover(WithAux(), torch.zeros(1, 3, 6, 6))
    assert "aux.weight[1]" in members(groups, "a")
    eval_only = discover(WithAux(), torch.zeros(1, 3, 6, 6), train=False)
    assert "aux.weight[1]" not in members(eval_only, "a")
    _, result = compact_checked(trained_like(WithAux()), torch.zeros(1, 3, 6, 6))
    assert result.model.aux.in_channels == 4


# attention ------------------------------------------------------------------------------------------
def tiny_vit():
    from prunelab.models.vision import import_torchvision

    tv = import_torchvision()
    return tv.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4, hidden_dim=16,
                                       mlp_dim=32, num_classes=3)  # fmt: skip


def vision():
    from prunelab.errors import SpecError
    from prunelab.models.vision import import_torchvision

    try:
        return import_torchvision()
    except SpecError:
        pytest.skip("torchvision is not installed")


def test_a_torchvision_vit_prunes_heads_and_its_width_and_swaps_its_attention():
    vision()
    from prunelab.coupling.attention import CompactMultiheadAttention

    model = tiny_vit()
    x = torch.zeros(1, 3, 16, 16)
    groups = discover(model, x)
    kinds = sorted((g.kind, g.count) for g in groups.prunable())
    assert kinds == [("channels", 16), ("channels", 32), ("channels", 32), ("heads", 4), ("heads", 4)]
    assert [(p.module, p.attribute) for p in groups.patches] == [("", "hidden_dim")]
    _, result = compact_checked(trained_like(model), x)
    small = result.model
    attention = small.encoder.layers[0].self_attention
    assert isinstance(attention, CompactMultiheadAttention) and (attention.num_heads, attention.head_dim) == (
        2,
        4,
    )
    assert small.hidden_dim == 8 and small.conv_proj.out_channels == 8 and small.class_token.shape[-1] == 8
    assert result.removed_heads["encoder.layers.encoder_layer_0.self_attention"] in (
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    )


def test_a_torchvision_swin_prunes_its_window_attention_heads():
    tv = vision()
    from prunelab.coupling.attention import CompactShiftedWindowAttention

    for block in (
        tv.models.swin_transformer.SwinTransformerBlock,
        tv.models.swin_transformer.SwinTransformerBlockV2,
    ):
        merging = tv.models.swin_transformer.PatchMerging if block is tv.models.swin_transformer.SwinTransformerBlock else (
            tv.models.swin_transformer.PatchMergingV2
        )  # fmt: skip
        model = tv.models.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 1], num_heads=[2, 4],
                                          window_size=[2, 2], num_classes=3, block=block,
                                          downsample_layer=merging)  # fmt: skip
        x = torch.zeros(1, 3, 8, 8)
        _, result = compact_checked(trained_like(model), x)
        attention = result.model.features[1][1].attn
        assert isinstance(attention, CompactShiftedWindowAttention) and attention.num_heads == 1


def test_a_timm_vit_prunes_heads_through_its_attribute_layout():
    vision()
    timm = pytest.importorskip("timm")
    model = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=24, depth=2,
                                                             num_heads=3, num_classes=4)  # fmt: skip
    x = torch.zeros(1, 3, 16, 16)
    groups = discover(model, x)
    assert sorted(g.count for g in groups.prunable() if g.kind == "heads") == [3, 3]
    _, result = compact_checked(trained_like(model), x)
    attention = result.model.blocks[0].attn
    assert (
        attention.num_heads == 1 and attention.attn_dim == 8 and attention.qkv.out_features == 24
    )  # 2 of 3 go


def test_a_hugging_face_vit_prunes_heads_found_by_its_view():
    pytest.importorskip("transformers")
    vision()
    from prunelab.models.vision import import_transformers

    t = import_transformers()
    config = t.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                         image_size=16, patch_size=8, num_labels=3)  # fmt: skip

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = t.ViTForImageClassification(config)

        def forward(self, x):
            return self.vit(pixel_values=x).logits

    model = Logits()
    x = torch.zeros(1, 3, 16, 16)
    groups = discover(model, x)
    assert sorted(g.count for g in groups.prunable() if g.kind == "heads") == [4, 4]
    _, result = compact_checked(trained_like(model), x)
    assert result.model.vit.vit.layers[0].attention.q_proj.out_features == 8


# export ---------------------------------------------------------------------------------------------
FACTORY = """\
from prunelab.models.vision import import_torchvision


def make(num_classes, input_shape):
    tv = import_torchvision()
    return tv.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4, hidden_dim=16,
                                       mlp_dim=32, num_classes=num_classes)
"""


def test_an_export_with_swapped_attention_and_set_attributes_loads_back(tmp_path):
    vision()
    factory = tmp_path / "vit.py"
    factory.write_text(FACTORY)
    model = trained_like(
        prunelab.build_model(f"{factory}:make", num_classes=3, input_shape=(3, 16, 16), seed=0)
    )
    x = torch.zeros(1, 3, 16, 16)
    _, result = compact_checked(model, x)
    out = export_compact(
        result, tmp_path / "out", model=f"{factory}:make", num_classes=3, input_shape=(3, 16, 16)
    )
    loaded = load_compact(out)
    batch = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), result.model(batch))
    assert (
        loaded.hidden_dim == 8
        and type(loaded.encoder.layers[0].self_attention).__name__ == "CompactMultiheadAttention"
    )


# methods on groups, rates, bad input -----------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["l1-filter", "l2-structured", "linf-structured", "random-structured", "taylor", "slimming"]
)
def test_every_structured_method_prunes_whole_units_of_groups(method):
    model = trained_like(Residual())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    context = PruneContext(batches=[(x, torch.tensor([0, 1, 2, 3]))], input_shape=(3, 8, 8))
    structure = None if method in ("l1-filter", "slimming") else "channels"
    mask = prune(model, None, fraction=0.5, method=method, structure=structure, context=context,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    groups = discover(model, x[:1])
    assert_whole_units(groups, mask)
    for group in groups.prunable():
        pruned = unit_pruned(group, mask)[0]
        assert 0 < int(pruned.sum()) < group.count, (method, group.name)
    result = compact(model, mask, x[:1])
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_rate_that_would_empty_a_group_keeps_one_unit_and_says_so():
    model = Residual()
    with pytest.warns(UserWarning, match="every group keeps at least one unit"):
        mask = prune(model, None, fraction=0.99, method="l1-filter", example=torch.zeros(1, 3, 8, 8))
    assert int(mask["a1.weight"].flatten(1).any(1).sum()) == 1


def test_a_model_that_fails_on_its_example_is_one_message_naming_the_layer():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(
        PrunelabError, match=r"fails on the example input \(1, 3, 6, 6\) in layer 'fc' \(Linear\)"
    ):
        discover(Broken(), torch.zeros(1, 3, 6, 6))


def test_ops_without_a_rule_freeze_the_channels_they_touch_and_say_which():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            x = self.a(x)
            x = torch.cummax(x, dim=1).values  # mixes channels: no rule says how
            return self.fc(self.b(x).mean((2, 3)))

    groups = discover(Odd(), torch.zeros(1, 3, 6, 6))
    reasons = groups.frozen_reasons()
    assert any("cummax" in where and units == 6 for units, _, where in reasons), reasons
    assert [g.name for g in groups.prunable()] == ["b"]


def test_the_groups_command_lists_groups_and_frozen_channels(cli):
    code, out, err = cli("groups", "resnet20", "--data", "cifar10", "--members")
    assert code == 0, err
    assert "layer1.0.conv1" in out and "layer2.0.shortcut.conv" in out and "reaches the model output" in out
    code, _, err = cli("groups", "no-such-model")
    assert code == 2 and "unknown model 'no-such-model'" in err


def test_a_compacted_vit_counts_and_exports_to_onnx(tmp_path):
    vision()
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from prunelab.compress import count, export_onnx

    model = trained_like(tiny_vit())
    x = torch.zeros(1, 3, 16, 16)
    mask, result = compact_checked(model, x)
    report = count(model, (3, 16, 16), mask, result.model)
    dense, _, small = next(row for row in report.summary_rows() if row[0] == "FLOPs")[1:]
    assert 0 < small < 0.6 * dense  # half of every width and of the heads: about a third of the FLOPs
    path = export_onnx(result.model, tmp_path / "vit.onnx", (3, 16, 16))
    assert path.stat().st_size > 1000


def test_a_coupled_run_exports_counts_and_loads_back_from_the_command_line(cli, tmp_path):
    root = tmp_path / "runs"
    code, out, err = cli(
        "run", "--model", "resnet20", "--data", "digits", "--method", "l1-filter", "--rate", "0.3",
        "--iterations", "20", "--treatment", "finetune", "--finetune-epochs", "1", "--root", root, "--no-progress",
        "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, out, err = cli("count", run, "--root", root)
    assert code == 0 and "compact / dense" in out, err
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "small")
    assert code == 0, err
    level = prunelab.load(run, root=root)
    small = load_compact(tmp_path / "small")
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in level.model.parameters())
    x = torch.randn(3, 1, 8, 8)
    masked = level.mask.apply(copy.deepcopy(level.model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
