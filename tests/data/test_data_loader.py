"""TensorLoader batching and batched CIFAR augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelab.data import Split, TensorLoader, cifar_augment
from prunelab.errors import SpecError


def split(n: int = 10) -> Split:
    return Split(
        torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), torch.arange(n)
    )


def epoch(loader: TensorLoader) -> list[torch.Tensor]:
    return [yb for _, yb in loader]


def test_sequential_batches_and_len():
    loader = TensorLoader(split(10), batch_size=4, shuffle=False)
    assert len(loader) == 3
    assert [b.tolist() for b in epoch(loader)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for xb, yb in loader:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_drop_last():
    loader = TensorLoader(
        split(10), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    )
    assert len(loader) == 2
    batches = epoch(loader)
    assert [len(b) for b in batches] == [4, 4]
    assert len(TensorLoader(split(8), 4, shuffle=False, drop_last=True)) == 2


def test_shuffle_covers_every_sample_once_and_is_deterministic():
    a = TensorLoader(split(23), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(7))
    b = TensorLoader(split(23), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(7))
    first_a, first_b = epoch(a), epoch(b)
    assert [t.tolist() for t in first_a] == [t.tolist() for t in first_b]
    assert sorted(torch.cat(first_a).tolist()) == list(range(23))
    second_a = epoch(a)
    assert sorted(torch.cat(second_a).tolist()) == list(range(23))
    assert torch.cat(second_a).tolist() != torch.cat(first_a).tolist()  # a new order each epoch
    for xb, yb in a:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_empty_split_and_bad_batch_size():
    assert list(TensorLoader(split(0), 4, shuffle=True, generator=torch.Generator())) == []
    with pytest.raises(SpecError):
        TensorLoader(split(4), 0, shuffle=False)


def test_augment_called_with_generator():
    seen = []

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seen.append(g)
        return x + 100

    g = torch.Generator().manual_seed(0)
    xb, _ = next(iter(TensorLoader(split(4), 4, shuffle=False, generator=g, augment=aug)))
    assert seen == [g] and float(xb.min()) == 100
    xb, _ = next(iter(TensorLoader(split(4), 4, shuffle=False, augment=aug)))  # no generator given
    assert isinstance(seen[-1], torch.Generator)


def reference_match(image: torch.Tensor, out: torch.Tensor, pad: int = 4) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flip) whose per-image crop and flip of ``image`` equals ``out``."""
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    hits = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                if torch.equal(crop.flip(-1) if flip else crop, out):
                    hits.append((dy, dx, flip))
    return hits


def test_cifar_augment_matches_per_image_reference():
    x = torch.rand(64, 3, 32, 32) + 0.5  # no zeros: padding is recognisable
    out = cifar_augment(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = []
    for image, augmented in zip(x, out, strict=True):
        hits = reference_match(image, augmented)
        assert len(hits) == 1
        draws.append(hits[0])
    assert {flip for _, _, flip in draws} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in draws}) > 20  # offsets vary
    assert any(dy != 4 or dx != 4 for dy, dx, _ in draws)  # real crops, with zero padding showing
    assert (out == 0).any()


def test_cifar_augment_deterministic_and_pure():
    x = torch.rand(16, 3, 8, 8)
    before = x.clone()
    a = cifar_augment(x, torch.Generator().manual_seed(1), padding=2)
    b = cifar_augment(x, torch.Generator().manual_seed(1), padding=2)
    c = cifar_augment(x, torch.Generator().manual_seed(2), padding=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)
    assert cifar_augment(x[:0], torch.Generator()).shape == (0, 3, 8, 8)


def test_cifar_augment_is_fast():
    x = torch.rand(512, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    cifar_augment(x, g)
    import time

    start = time.perf_counter()
    for _ in range(5):
        cifar_augment(x, g)
    assert (time.perf_counter() - start) / 5 < 0.25  # a Python loop over images takes far longer
