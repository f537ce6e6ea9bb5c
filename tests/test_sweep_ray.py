"""The Ray executor: one local Ray instance with 2 CPUs, started once (Ray starts slowly).

Skipped when Ray is not installed (``pip install 'prunelab[ray]'``; ``make test`` installs it).
"""

from __future__ import annotations

import pytest
import torch
from test_sweep import BAD_MODEL, BASE, numbers

import prunelab
from prunelab.experiments.store import Store

ray = pytest.importorskip("ray")


def test_ray_gives_the_local_numbers_and_reports_a_failing_task(tmp_path, one_thread):
    torch.set_num_threads(1)
    (tmp_path / "bad.py").write_text(BAD_MODEL)
    grid = {"pruning.method": ["magnitude", "random"]}
    local = prunelab.sweep(BASE, grid, root=tmp_path / "local", threads=1)
    assert not local.failed
    # the same grid plus a model that fails as it trains: retried, reported, the rest goes on
    failing = {"model": ["lenet-300-100", f"{tmp_path / 'bad.py'}:make"], **grid}
    result = prunelab.sweep(
        BASE, failing, root=tmp_path / "ray", executor="ray", workers=2, cpus_per_task=1, retries=1
    )
    assert not ray.is_initialized()  # the instance it started is stopped
    assert numbers(tmp_path / "ray") == numbers(tmp_path / "local")  # bit-identical
    assert len(numbers(tmp_path / "local")) == 2 * 2 * 3
    bad_trunk = result.plan.points[2].spec.trunk_id()
    assert sorted((o.key, o.status, o.error) for o in result.failed if o.status == "failed") == [
        (f"trunk {bad_trunk} seed {s}", "failed", "RuntimeError: boom: this model cannot train")
        for s in (0, 1)
    ]  # after its retry
    assert sum(o.status == "skipped" for o in result.failed) == 4  # 2 experiments x 2 seeds after it
    statuses = [row[-1] for row in result.table().rows]
    assert statuses[:2] == ["done", "done"] and all(s.startswith("skipped") for s in statuses[2:])
    stored = Store(tmp_path / "ray").experiments()
    assert {e.status() for e in stored} == {"done"} and len(stored) == 2
    envs = {m.environment["threads"] for e in stored for lv in e.levels.values() for m in lv.values()}
    assert envs == {1}  # each task ran torch on its one CPU


def test_bad_ray_options_are_refused_before_anything_starts(tmp_path, cli):
    from test_sweep import grid_file

    path = grid_file(tmp_path, 'pruning.method = ["magnitude"]')
    code, _, err = cli("sweep", path, "--executor", "ray", "--address", "127.0.0.1:1", "--dry-run")
    assert code == 2 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--address", "nowhere", "--dry-run")
    assert code == 2 and "write auto, HOST:PORT or ray://HOST:PORT" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--workers", "2", "--address", "auto")
    assert code == 2 and "not both" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--cpus-per-task", "0")
    assert code == 2 and "a task needs some resource" in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()
