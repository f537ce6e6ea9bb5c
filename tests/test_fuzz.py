"""Property-based fuzzing of the command line (hypothesis): hostile values for every spec flag,
hostile paths for every folder option, hostile options for the result commands.

Each invocation holds at least one value that is invalid by construction (a negative number where
every field is non-negative, a non-finite float, a name no registry or parser accepts, a path through
a file or with a name too long), so the only right answer is one message and exit status 2. The
figures (invocations, tracebacks, exit 0 on invalid input) are printed with ``pytest -s``.
"""

import math
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunelab.cli.experiments as cli_experiments
from prunelab.cli import main
from prunelab.cli.experiments import RUN_FLAGS
from prunelab.experiments import ExperimentRunner, Store

TALLY: dict[str, dict[str, int]] = {}
#: PRUNELAB_FUZZ=N multiplies the examples of each fuzz test (a longer campaign)
SCALE = int(os.environ.get("PRUNELAB_FUZZ", "1"))


def invoke(capsys, group: str, args: list) -> int:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    tally = TALLY.setdefault(group, {"invocations": 0, "tracebacks": 0, "exit 0 on invalid input": 0})
    tally["invocations"] += 1
    text = out.out + out.err
    if "Traceback" in text or code not in (0, 2):
        tally["tracebacks"] += 1
    if code == 0:
        tally["exit 0 on invalid input"] += 1
    assert "Traceback" not in text, (args, text[-2000:])
    assert code == 2, (args, code, text[-2000:])
    assert out.err.count("error:") == 1, (args, out.err)
    return code


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    for group, tally in TALLY.items():
        print(f"\nfuzz {group}: " + ", ".join(f"{k} {v}" for k, v in tally.items()))


def checked_without_training(spec, *, root, data_dir, progress, wait=True):
    """What `run` checks before its first training step: the spec, the runner, the data, a trainer."""
    from prunelab.training import Trainer

    runner = ExperimentRunner(spec, root, data_dir=data_dir)
    model = runner._new_model(0, "init")
    Trainer(model, runner.data, spec.train, seed=0)


# values that are invalid for every field of their kind: every number of a spec is >= 0, except
# those whose range reaches below 0 (a log alpha threshold, a log variance), which get values far
# below any range instead
NUMBERS = st.sampled_from([-1, -7, -(10**12)])
FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-9])
SIGNED_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1e12])
GARBAGE = st.text(min_size=0, max_size=30).map(lambda t: "~" + t.replace("\0", ""))
FLAGS = [f for f in RUN_FLAGS if f.kind is not bool and f.path[-1] != "name"]


def lower_bound(path: tuple[str, ...]) -> float | None:
    """The ``ge``/``gt`` bound of the spec field at ``path``, or None."""
    from prunelab.experiments import ExperimentSpec

    model = ExperimentSpec
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    for meta in model.model_fields[path[-1]].metadata:
        for attr in ("ge", "gt"):
            if getattr(meta, attr, None) is not None:
                return getattr(meta, attr)
    return None


@st.composite
def hostile_flags(draw):
    chosen = draw(st.lists(st.sampled_from(FLAGS), min_size=1, max_size=4, unique_by=lambda f: f.name))
    args = []
    for flag in chosen:
        if flag.kind is int:
            value = draw(NUMBERS)
        elif flag.kind is float:
            bound = lower_bound(tuple(flag.path))
            value = draw(SIGNED_FLOATS if bound is not None and bound < 0 else FLOATS)
        else:
            value = draw(GARBAGE)
        args += [flag.name, value]
    return args


@settings(
    max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args=hostile_flags())
def test_hostile_spec_flags_get_one_message_and_exit_2(capsys, monkeypatch, tmp_path, args):
    monkeypatch.setattr(cli_experiments, "_start", lambda *a, **k: None)
    monkeypatch.setattr(cli_experiments, "_run_experiment", checked_without_training)
    invoke(
        capsys,
        "spec flags",
        ["run", "--data", "digits", "--iterations", "3", *args, "--root", tmp_path / "runs"],
    )
    assert not (tmp_path / "runs" / "experiments").exists()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-runs")
    args = [
        "run",
        "--data",
        "digits",
        "--rounds",
        "1",
        "--iterations",
        "10",
        "--no-progress",
        "--root",
        str(root),
    ]
    assert main(args) == 0
    return root, Store(root).experiments()[0].id


@st.composite
def hostile_paths(draw, base, folder: bool = True):
    """A path that cannot be written: through a file, a name too long, a NUL byte; for a folder
    option, also a file itself (a file option may name an existing file to replace)."""
    kind = draw(st.sampled_from(["through-file", "too-long", "nul", *(["is-file"] if folder else [])]))
    name = draw(st.text(alphabet="abc-_", min_size=1, max_size=8))  # no ".": a/. is a itself
    if kind == "through-file":
        return base / "a-file" / name
    if kind == "too-long":
        return base / ("n" * draw(st.integers(256, 400)))
    if kind == "nul":
        return f"{base}/{name}\0x"
    return base / "a-file"


COMMANDS = [
    lambda ident, p: ["run", "--data", "digits", "--iterations", "3", "--root", p],
    lambda ident, p: ["ls", "--root", p],
    lambda ident, p: ["show", ident, "--root", p],
    lambda ident, p: ["run", "--config", p],
    lambda ident, p: ["train", "--data", "digits", "--iterations", "3", "--out", p],
    lambda ident, p: ["train", "--data", "mnist", "--data-dir", p],
    ("stored", lambda ident, p: ["export", ident, "-o", p]),
    ("stored", lambda ident, p: ["report", ident, "-o", p, "--no-ensembles"]),
    ("stored-file", lambda ident, p: ["mask-plot", ident, "--layer", "fc1", "-o", p]),
    ("stored-file", lambda ident, p: ["compare", ident, "--csv", p]),
]


@settings(max_examples=80 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_paths_get_one_message_and_exit_2(capsys, monkeypatch, tmp_path, stored, data):
    monkeypatch.setattr(cli_experiments, "_start", lambda *a, **k: None)
    root, ident = stored
    (tmp_path / "a-file").write_text("x")
    command = data.draw(st.sampled_from(COMMANDS))
    folder = not (isinstance(command, tuple) and command[0] == "stored-file")
    path = data.draw(hostile_paths(tmp_path, folder))
    args = [*command[1](ident, path), "--root", root] if isinstance(command, tuple) else command(ident, path)
    invoke(capsys, "paths", args)


RESULT_OPTIONS = [
    ("show", ["--tolerance"], FLOATS),
    ("compare", ["--tolerance"], FLOATS),
    ("compare", ["--metric"], GARBAGE),
    ("compare", ["--table"], GARBAGE),
    ("similarity", ["--seeds"], GARBAGE),
    ("similarity", ["--reference"], GARBAGE),
    ("effective", ["--level"], NUMBERS),
    ("effective", ["--seed"], NUMBERS),
    ("stability", ["--layer"], GARBAGE),
    ("ensemble", ["--density"], FLOATS),
    ("ensemble", ["--level"], NUMBERS),
    ("count", ["--level"], NUMBERS),
    ("count", ["--control"], GARBAGE),
    ("export", ["--seed"], NUMBERS),
    ("bench", ["--batch-sizes"], GARBAGE),
    ("bench", ["--repeats"], NUMBERS),
    ("bench", ["--device"], GARBAGE),
    ("bench", ["--threads"], NUMBERS),
    ("mask-plot", ["--layer"], GARBAGE),
]


@settings(max_examples=80 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_result_options_get_one_message_and_exit_2(capsys, tmp_path, stored, data):
    root, ident = stored
    command, option, values = data.draw(st.sampled_from(RESULT_OPTIONS))
    value = data.draw(values)
    args = [command, ident, *option, value, "--root", root]
    if command == "export":
        args += ["-o", tmp_path / "e"]
    if command == "mask-plot" and option != ["--layer"]:
        args += ["--layer", "fc1"]
    if command == "mask-plot":
        args += ["-o", tmp_path / "m.png"]
    if command == "bench":
        args += ["--no-plot"]
    invoke(capsys, "result options", args)
    shutil.rmtree(tmp_path / "e", ignore_errors=True)


CORRUPT_COMMANDS = [
    lambda ident, out: ["show", ident],
    lambda ident, out: ["ls"],
    lambda ident, out: ["export", ident, "-o", out],
    lambda ident, out: ["count", ident, "--level", "1"],
    lambda ident, out: ["effective", ident],
    lambda ident, out: ["similarity", ident],
    lambda ident, out: ["run", "--data", "digits", "--rounds", "1", "--iterations", "10", "--no-progress"],
]


@st.composite
def corruption(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "random", "empty", "json"]))
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip" and data:
        out = bytearray(data)
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "json":
        return draw(st.sampled_from([b"[]", b"{}", b"null", b'{"level": "x"}', b'{"spec": []}', b'"\xff"']))
    return draw(st.binary(max_size=64)) if kind == "random" else b""


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_results_never_give_a_traceback(capsys, monkeypatch, tmp_path, stored, data):
    """Any file of the store damaged in any way: every command answers with exit 0 or one message
    and exit 2; a damaged file a command needs is named."""
    monkeypatch.setattr(cli_experiments, "_start", lambda *a, **k: None)
    root, ident = stored
    copy = tmp_path / "root"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file() and not p.name.startswith(".lock"))
    target = data.draw(st.sampled_from(files))
    target.write_bytes(data.draw(corruption(target.read_bytes())))
    command = data.draw(st.sampled_from(CORRUPT_COMMANDS))
    args = [str(a) for a in [*command(ident, tmp_path / "out"), "--root", copy]]
    code = main(args)
    out = capsys.readouterr()
    tally = TALLY.setdefault("corrupt files", {"invocations": 0, "tracebacks": 0, "exit 2": 0})
    tally["invocations"] += 1
    tally["exit 2"] += code == 2
    if "Traceback" in out.out + out.err or code not in (0, 2):
        tally["tracebacks"] += 1
    assert "Traceback" not in out.out + out.err and code in (0, 2), (target, args, out.err[-2000:])
    if code == 2:
        assert out.err.count("error:") == 1, out.err
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
