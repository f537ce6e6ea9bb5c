"""How many threads torch should run, and whether other work already fills the CPUs.

Two processes that each run 2 OpenMP threads on 2 cores slow each other down by up to 30x
(measured: 2.9 against 91 GFLOP/s), so prunelab's default follows the CPUs this process may
actually use (its affinity mask and a cgroup CPU quota), and :func:`oversubscription` says so in
one line when other prunelab processes or other load compete for them.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch


def _cgroup_cpus() -> float | None:
    """The cgroup CPU quota in CPUs (v2 ``cpu.max``, else v1 ``cfs_quota_us``), or None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: :func:`available_cpus`); returns it."""
    n = available_cpus() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def other_writers(root: Path) -> list[str]:
    """Who else is writing experiments under ``root`` now (the lock holders' own descriptions)."""
    from prunelab.experiments.paths import Paths
    from prunelab.locks import is_locked

    holders = []
    for lock in Paths(root).lock_files():
        if is_locked(lock.parent, lock.name):
            try:
                holders.append(lock.read_text().strip() or str(lock.parent))
            except OSError:
                holders.append(str(lock.parent))
    return sorted(set(h.split(" since ")[0] for h in holders))


def busy_cpus(samples: int = 3) -> int:
    """Threads of other processes running now (``/proc/loadavg``'s runnable count, less this one).

    The load average lags a minute behind (a run that just ended still counts), so the instant
    count is read instead, the smallest of a few samples 10 ms apart.
    """
    counts = []
    for i in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(0.01)
    return min(counts)


def oversubscription(threads: int, root: Path | None = None) -> str | None:
    """One line, with the fix, when ``threads`` more threads would oversubscribe this machine's CPUs."""
    cpus = available_cpus()
    writers = other_writers(root) if root is not None else []
    load = busy_cpus()
    if writers and threads * (len(writers) + 1) > cpus:
        who = "; ".join(writers)
        return (
            f"warning: {len(writers)} other prunelab process(es) are training under {root} ({who}); "
            f"with {threads} thread(s) each on {cpus} CPU(s) they slow each other down many times over: "
            "run each with --threads 1"
        )
    if load and load + threads > cpus:
        return (
            f"warning: this machine is busy ({load} other thread(s) running on {cpus} CPU(s)); {threads} more "
            f"oversubscribe it and can slow training many times over: use --threads {max(1, cpus - load)} or wait"
        )
    return None
