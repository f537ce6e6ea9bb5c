"""Latency plumbing: pinned settings, interleaving, the table's ratios and the plot (no speed claims)."""

import pytest
import torch
from torch import nn

from prunelab.compress import BenchResult, Timing, benchmark, pinned, plot_latency, standard_variants
from prunelab.compress.latency import flush_denormal_enabled, percentile, time_interleaved
from prunelab.errors import PrunelabError
from prunelab.models import build_model
from prunelab.pruning import prune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pinned_sets_and_restores_threads_and_denormals():
    original = flush_denormal_enabled()
    torch.set_flush_denormal(False)
    before = torch.get_num_threads()
    try:
        with pinned(1):
            assert torch.get_num_threads() == 1 and flush_denormal_enabled()
        assert torch.get_num_threads() == before and not flush_denormal_enabled()
        with pytest.raises(PrunelabError, match="threads"), pinned(0):
            pass
    finally:
        torch.set_flush_denormal(original)


class Recorder(nn.Module):
    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_repetitions_are_interleaved_after_warmup():
    log: list[str] = []
    models = {n: Recorder(n, log) for n in "abc"}
    samples = time_interleaved(models, torch.zeros(1), repeats=3, warmup=1, rewarm=0)
    assert log[:3] == ["a", "b", "c"]  # warm-up
    assert log[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotating order
    log.clear()
    time_interleaved(models, torch.zeros(1), repeats=1, warmup=0, rewarm=1)
    assert log == ["a", "a", "b", "b", "c", "c"]  # each timed call right after its own untimed one
    assert all(len(s) == 3 and min(s) >= 0 for s in samples.values())
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([5], 0.9) == 5


def test_benchmark_table_and_plot(tmp_path):
    model = build_model("lenet-300-100", seed=0)
    mask = prune(model, None, fraction=0.9, method="magnitude")
    variants = standard_variants(model, mask, (1, 28, 28), sparse_repeats=1)
    result = benchmark(variants, (1, 28, 28), (1, 4), label="3", repeats=2, warmup=1, threads=1)
    assert [(t.variant, t.batch_size) for t in result.timings] == [
        (v, b) for b in (1, 4) for v in ("dense", "masked", "compact", "sparse")
    ]
    rows = {(r[1], r[2]): r for r in result.rows()}
    assert rows[("dense", 4)][5] == 1.0 and rows[("dense", 4)][6] == 1.0
    assert rows[("masked", 4)][6] == pytest.approx(1 / 0.1, rel=0.05)  # FLOP ratio of the non-zeros
    assert rows[("masked", 4)][7] < rows[("dense", 4)][7]
    path = plot_latency(result, tmp_path / "fig.png", "test")
    assert path.stat().st_size > 10_000
    assert result.to_json()["timings"][0]["variant"] == "dense"


def test_speedup_and_flop_ratio_are_against_dense_of_the_same_level():
    result = BenchResult(
        [
            Timing("1", "dense", 8, 4.0, 5.0, 100, 1000),
            Timing("1", "compact", 8, 1.0, 1.5, 25, 250),
            Timing("2", "dense", 8, 8.0, 9.0, 100, 1000),
            Timing("2", "compact", 8, 4.0, 4.0, 10, 100),
        ]
    )
    assert [(r[5], r[6]) for r in result.rows()] == [(1.0, 1.0), (4.0, 4.0), (1.0, 1.0), (2.0, 10.0)]
