"""Threads follow the CPUs the process may use; oversubscription is said in one line; both recorded."""

import json
import os
import time

import pytest
import torch
from helpers import lock_held_elsewhere

from prunelab import threads
from prunelab.cli import main


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_available_cpus_follow_affinity_and_cgroup_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)
    assert threads.available_cpus() == 4
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 1.5)
    assert threads.available_cpus() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert threads.available_cpus() == 1


def test_cgroup_v2_quota_is_read(monkeypatch, tmp_path):
    real = threads.Path

    def fake(path):
        return real(tmp_path / "cpu.max") if str(path) == "/sys/fs/cgroup/cpu.max" else real(path)

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(threads, "Path", fake)
    assert threads._cgroup_cpus() == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_cpus() is None


def test_set_threads_defaults_to_the_available_cpus(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    assert threads.set_threads() == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError):
        threads.set_threads(0)


def test_another_writer_under_the_root_is_reported_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    lock_dir = tmp_path / "experiments" / "abc"
    lock_dir.mkdir(parents=True)
    with lock_held_elsewhere(lock_dir) as holder:
        message = threads.oversubscription(2, tmp_path)
        assert message and "1 other prunelab process" in message and "--threads 1" in message
        assert f"pid {holder.pid}" in message
        assert threads.oversubscription(1, tmp_path) is None  # 1 + 1 threads fit 2 CPUs
    time.sleep(0.05)
    assert threads.oversubscription(2, tmp_path) is None  # the lock died with its holder


def test_a_busy_machine_is_reported(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 2)
    assert "--threads 1" in threads.oversubscription(2)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0)
    assert threads.oversubscription(2) is None


def test_threads_flag_is_applied_and_recorded(tmp_path, capsys):
    out = tmp_path / "o"
    args = [
        "train",
        "--data",
        "digits",
        "--iterations",
        "5",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["environment"]["threads"] == 1
    assert "native" in capsys.readouterr().out or metrics["summary"]["environment"]["step"] != "native"
