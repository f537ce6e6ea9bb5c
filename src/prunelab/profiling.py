"""What a piece of work cost: wall time and peak memory (the process's resident memory, sampled;
a GPU's peak allocation), for the log lines of long one-shot steps such as pruning a language model."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: Seconds between two samples of the resident memory.
SAMPLE_EVERY = 0.01


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``), else its peak so far (``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Cost:
    """Wall seconds and the process's CPU seconds (all threads: on a busy machine the wall time
    stretches, the CPU time much less); resident memory at the start and its peak during the work;
    a GPU's peak allocation (None without CUDA)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    start_rss: int = 0
    peak_rss: int = 0
    cuda_peak: int | None = None

    def text(self) -> str:
        gib = 1 << 30
        out = (
            f"{self.seconds:.1f} s ({self.cpu_seconds:.1f} s of CPU), peak resident memory {self.peak_rss / gib:.2f} GiB "
            f"(+{max(0, self.peak_rss - self.start_rss) / gib:.2f} GiB during it)"
        )
        if self.cuda_peak is not None:
            out += f", peak GPU memory {self.cuda_peak / gib:.2f} GiB"
        return out


@contextlib.contextmanager
def measured() -> Iterator[Cost]:
    """Time the ``with`` block and sample its peak memory every :data:`SAMPLE_EVERY` seconds."""
    cost = Cost(start_rss=resident_bytes())
    cost.peak_rss = cost.start_rss
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY):
            cost.peak_rss = max(cost.peak_rss, resident_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        cost.cpu_seconds = time.process_time() - cpu
        stop.set()
        thread.join()
        cost.peak_rss = max(cost.peak_rss, resident_bytes())
        if cuda:
            cost.cuda_peak = int(torch.cuda.max_memory_allocated())
