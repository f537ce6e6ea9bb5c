"""How long the command line takes to answer what needs no model: ``prunelab --help`` and the
listings ``methods``, ``treatments``, ``controls`` and ``data list`` (goal: 0.5 s each).

Each command runs as a user runs it, in a fresh Python process, ``--repeats`` times; the median wall
time is printed beside the goal, and, for the listings, the first run's time with an empty cache (it
imports the registries, and torch with them, to build the tables it then keeps). Also prints the
start-up of a bare Python and of ``import torch`` in the same way, for scale. One run on this
machine; a busy machine moves the figures.

    python bench/cli_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

GOAL = 0.5
COMMANDS = [["--help"], ["methods"], ["treatments"], ["controls"], ["data", "list"]]


def wall(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "COLUMNS": "100"}
        python = [sys.executable]
        bare = statistics.median(wall([*python, "-c", "pass"], env) for _ in range(args.repeats))
        torch = statistics.median(wall([*python, "-c", "import torch"], env) for _ in range(args.repeats))
        print(f"for scale: python start-up {bare:.2f} s, import torch {torch:.2f} s (medians)")
        print(f"{'command':<24}{'first run (s)':>15}{'median (s)':>12}{'/ goal':>9}")
        worst = 0.0
        for command in COMMANDS:
            line = [*python, "-m", "prunelab", *command]
            first = wall(line, env)
            median = statistics.median(wall(line, env) for _ in range(args.repeats))
            worst = max(worst, median)
            shown = "prunelab " + " ".join(command)
            print(f"{shown:<24}{first:>15.2f}{median:>12.2f}{median / GOAL:>9.2f}")
    print(f"slowest median {worst:.2f} s: {'within' if worst <= GOAL else 'over'} the goal of {GOAL} s")


if __name__ == "__main__":
    main()
