"""Writes this folder's results root, ``runs/``, and what the command line printed about it, ``expected/``.

It was run once, by the prunelab of commit 637cfc2 (before the store was split into paths, metrics,
locks and a reader), from this folder::

    PYTHONPATH=../../../src python make_fixture.py

and its output committed: ``tests/experiments/test_store.py`` reads it with the current code, so a change of the
on-disk layout or of the metrics format shows as a failing test, not as results users can no longer
read. Never run it again to "fix" that test (the point is that the files are old); a new format gets
a fixture of its own beside this one.
"""

import contextlib
import io
import json
import os
from pathlib import Path

import torch

from prunelab.cli import main
from prunelab.experiments import ExperimentRunner
from prunelab.experiments.spec import ExperimentSpec
from prunelab.spec import build_spec

SGD = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9}

SPECS = {
    # IMP with late rewinding (a trunk point), both controls, two seeds
    "imp": {
        "model": "nets.py:mlp",
        "train": {"epochs": 1, "batch_size": 64},
        "pruning": {"rate": 0.5, "rounds": 2},
        "treatment": "rewind:2it",
        "controls": ["reinit", "random-mask"],
        "seeds": [0, 1],
    },
    # a training-time method whose dense level reports a ticket (metrics.json's "plugins")
    "early-bird": {
        "model": "nets.py:convbn",
        "train": {**SGD, "epochs": 4},
        "pruning": {"method": "early-bird", "rate": 0.25, "early_bird": {"queue": 2, "distance": 0.5}},
        "treatment": {"kind": "finetune", "finetune_epochs": 1},
    },
    # one whose dense level reports learned block scales
    "structure-selection": {
        "model": "nets.py:resnet",
        "train": SGD,
        "pruning": {"method": "structure-selection", "rate": 0.5, "structure_selection": {"penalty": 0.05}},
        "treatment": "finetune",
    },
}


def printed(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


def make() -> None:
    here = Path(__file__).parent
    os.chdir(here)
    os.environ["COLUMNS"] = "120"
    torch.set_num_threads(1)
    (here / "expected").mkdir(exist_ok=True)
    ids = {}
    for name, values in SPECS.items():
        spec = build_spec(ExperimentSpec, data="synthetic", **values)
        ExperimentRunner(spec, "runs").run()
        ids[name] = spec.experiment_id()
        text = printed("show", ids[name], "--root", "runs").replace(str(here.resolve()), "HERE")
        (here / "expected" / f"show-{name}.txt").write_text(text)
    (here / "expected" / "ls.txt").write_text(
        printed("ls", "--root", "runs").replace(str(here.resolve()), "HERE")
    )
    (here / "expected" / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")


if __name__ == "__main__":
    make()
