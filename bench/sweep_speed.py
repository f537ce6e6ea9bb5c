"""Wall-clock time of one sweep run locally (one task after another) and on Ray with 2 workers.

Prints, from one run on this machine:
  * a sweep of 8 small experiments (LeNet-300-100, 4 methods x 2 rates, 2 levels each: the dense
    trunk, shared by all 8, and one pruned level), each in a fresh results folder;
  * local: in-process, one task after another, torch at its default thread count (all the CPUs),
    and again at 1 thread (what Ray's tasks run: the same numbers, bit for bit);
  * Ray: a local instance with 2 workers, each task on 1 thread (its CPU share);
  * the wall-clock ratios Ray / local (goal <= 0.75 on this 2-core machine), and where Ray's time
    goes: its trainings packed perfectly on 2 workers (the shared trunk alone, then the 8 levels
    two at a time, at the times each took there on 1 thread), the rest being Ray's fixed costs;
    and the ratio with zero fixed costs, the best this sweep's shape allows at those speeds;
  * Ray's overhead: its start-up (ray.init), a cold worker made ready (imports, data), and the
    scheduling cost per task (no-op tasks), in seconds;
  * with a GPU only: the same sweep with K nets sharing one GPU (--gpus-per-task 1/K) against one
    task at a time on it (--gpu-nets K, default 4).
The largest test-accuracy difference between the two runs is printed (equal thread counts give
identical numbers; these runs differ in threads, so float rounding may differ).

    python bench/sweep_speed.py [--data digits] [--iterations 5000]
    python bench/sweep_speed.py --data digits --iterations 20   # seconds: checks it runs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import prunelab
from prunelab.experiments import ExperimentSpec, PruneSpec
from prunelab.experiments.store import Store
from prunelab.training import TrainConfig

GRID = {"pruning.method": ["magnitude", "random", "l1-structured", "snip"], "pruning.rate": [0.2, 0.5]}
GOAL = 0.75


def run(executor: str, base: ExperimentSpec, **options) -> tuple[float, dict, list[float]]:
    """Wall time, each experiment's test accuracies, and each training's own time (trunk first)."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        result = prunelab.sweep(base, GRID, executor=executor, root=root, **options)
        wall = time.perf_counter() - start
        if result.failed:
            raise SystemExit(f"{executor}: {len(result.failed)} task(s) failed: {result.failed[0].error}")
        store = Store(root)
        accs, trainings = {}, []
        for point in result.plan.points:
            exp = store.read(store.experiment_dir(point.spec.experiment_id()))
            levels = exp.levels[0]
            accs[point.spec.experiment_id()] = [m.value("test_acc") for m in levels.values()]
            trainings += [m.wall_time for k, m in levels.items() if k > 0 or not trainings]
    return wall, accs, trainings


def ray_overhead(base: ExperimentSpec, tasks: int = 50) -> tuple[float, float, float]:
    """Ray's start-up, a cold worker made ready for a task (imports, data), and the cost per task."""
    import ray

    from prunelab.sweeps.executors import _warm_worker

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    ray.get([ray.remote(_warm_worker).options(num_cpus=1).remote([base], None, 1) for _ in range(2)])
    warm = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def noop(i: int) -> int:
        return i

    ray.get([noop.remote(i) for i in range(4)])  # workers warm
    start = time.perf_counter()
    ray.get([noop.remote(i) for i in range(tasks)])
    per_task = (time.perf_counter() - start) / tasks
    ray.shutdown()
    return startup, warm, per_task


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--iterations", type=int, default=5000, help="training iterations per level")
    parser.add_argument("--gpu-nets", type=int, default=4, help="with a GPU: nets sharing it at once")
    args = parser.parse_args()
    base = ExperimentSpec(
        model="lenet-300-100", data=args.data,
        train=TrainConfig(iterations=args.iterations, batch_size=60, eval_every=f"{max(1, args.iterations // 2)}it"),
        pruning=PruneSpec(rounds=1),
    )  # fmt: skip
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{os.cpu_count()} CPU cores, load average {load:.2f}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    threads = torch.get_num_threads()
    local, local_accs, trainings = run("local", base)
    local1, local1_accs, _ = run("local", base, threads=1)  # leaves this process at 1 thread
    ray_wall, ray_accs, ray_trainings = run("ray", base, workers=2)

    def largest(a: dict, b: dict) -> float:
        return max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))

    startup, warm, per_task = ray_overhead(base)
    trunk, levels = ray_trainings[0], ray_trainings[1:]
    packed = trunk + sum(levels) / 2
    each = sum(trainings[1:]) / len(trainings[1:])
    print(
        f"\n8 experiments x 2 levels (1 shared dense trunk + 8 pruned levels), {args.iterations} iterations a level"
    )
    print(f"local (one after another, {threads} threads): {local:8.2f} s")
    print(f"local (one after another, 1 thread):  {local1:8.2f} s")
    print(f"ray (2 workers x 1 thread):            {ray_wall:8.2f} s   (includes starting Ray)")
    for what, base_wall in ((f"local at {threads} threads", local), ("local at 1 thread", local1)):
        ratio = ray_wall / base_wall
        print(f"ratio ray / {what}: {ratio:.2f}   goal <= {GOAL}: {'met' if ratio <= GOAL else 'not met'}")
    print(f"largest test-accuracy difference, ray against local at {threads} threads: "
          f"{largest(ray_accs, local_accs):.4f} (float rounding differs between thread counts); "
          f"against local at 1 thread: {largest(ray_accs, local1_accs):.4f}")  # fmt: skip
    print(
        f"ray's trainings packed on 2 workers: {packed:.1f} s (trunk {trunk:.1f} s alone, then levels "
        f"{sum(levels) / len(levels):.1f} s each on 1 thread, against {each:.1f} s on {threads} threads locally); "
        f"fixed costs {ray_wall - packed:.1f} s"
    )
    print(f"best ratio this sweep's shape allows on 2 workers: {packed / local:.2f} (no fixed costs)")
    if torch.cuda.is_available():
        k = args.gpu_nets
        one, _, _ = run("ray", base, workers=1, gpus_per_task=1.0)
        shared, _, _ = run("ray", base, workers=k, gpus_per_task=1.0 / k, cpus_per_task=1)
        print(
            f"one GPU, one task at a time: {one:.2f} s; {k} nets sharing it: {shared:.2f} s; ratio {shared / one:.2f}"
        )
    else:
        print("no GPU here: the fractional-GPU comparison (--gpu-nets) was not run")
    print(
        f"Ray start-up {startup:.2f} s; a cold worker made ready (imports, data) {warm:.2f} s, overlapped "
        f"with planning; scheduling overhead per task {1000 * per_task:.1f} ms"
    )


if __name__ == "__main__":
    main()
