"""The Ray executor: one local Ray instance with 2 CPUs, started once (Ray starts slowly).

Skipped when Ray is not installed (``pip install 'prunelab[ray]'``; ``make test`` installs it).
"""

from __future__ import annotations

import pytest
import torch
from test_sweep import BAD_MODEL, BASE, grid_file, numbers

import prunelab
from prunelab.experiments.store import Store

ray = pytest.importorskip("ray")


def test_ray_gives_the_local_numbers_and_reports_a_failing_task(tmp_path, cli, one_thread):
    torch.set_num_threads(1)
    (tmp_path / "bad.py").write_text(BAD_MODEL)
    local = prunelab.sweep(  # the control is a task of its own, run beside the levels of the other
        BASE | {"controls": ["reinit"]},
        {"pruning.method": ["magnitude", "random"]},
        root=tmp_path / "local",
        threads=1,
    )
    assert not local.failed
    # the same grid plus a model that fails as it trains: retried, reported, the rest goes on
    path = grid_file(
        tmp_path,
        f'model = ["lenet-300-100", "{tmp_path / "bad.py"}:make"]\npruning.method = ["magnitude", "random"]',
    )
    args = [
        "--executor",
        "ray",
        "--workers",
        "2",
        "--cpus-per-task",
        "1",
        "--retries",
        "1",
        "--controls",
        "reinit",
    ]
    code, out, err = cli("sweep", path, "--root", tmp_path / "ray", *args)
    assert code == 1
    assert not ray.is_initialized()  # the instance it started is stopped
    assert numbers(tmp_path / "ray") == numbers(tmp_path / "local")  # bit-identical
    assert len(numbers(tmp_path / "local")) == 2 * 2 * (3 + 2)
    errors = " ".join(err.split())
    assert errors.count("failed: dense trunk") == 2 and errors.count("after 2 attempt(s)") == 2  # 2 seeds
    assert "RuntimeError: boom: this model cannot train" in errors
    assert errors.count("skipped: ") == 2 * 2 * 2  # levels and control, 2 experiments x 2 seeds
    table = out[out.index("Sweep: 4 experiments") :]
    assert table.count("done") == 2 and table.count("failed") == 2 + 1, table  # 2 rows, the note
    stored = Store(tmp_path / "ray").experiments()
    assert {e.status() for e in stored} == {"done"} and len(stored) == 2
    branches = [*(e.levels for e in stored), *(c for e in stored for c in e.controls.values())]
    envs = {m.environment["threads"] for b in branches for lv in b.values() for m in lv.values()}
    assert envs == {1}  # each task ran torch on its one CPU


def test_bad_ray_options_are_refused_before_anything_starts(tmp_path, cli):
    path = grid_file(tmp_path, 'pruning.method = ["magnitude"]')
    code, _, err = cli("sweep", path, "--executor", "ray", "--address", "127.0.0.1:1", "--dry-run")
    assert code == 2 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--address", "nowhere", "--dry-run")
    assert code == 2 and "write auto, HOST:PORT or ray://HOST:PORT" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--workers", "2", "--address", "auto")
    assert code == 2 and "not both" in err
    code, _, err = cli("sweep", path, "--executor", "ray", "--cpus-per-task", "0")
    assert code == 2 and "a task needs some resource" in err
    if not torch.cuda.is_available():
        code, _, err = cli("sweep", path, "--executor", "ray", "--gpus-per-task", "0.25", "--workers", "4")
        assert code == 2 and "--gpus-per-task 0.25 was asked for, but this machine has no GPU" in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()
