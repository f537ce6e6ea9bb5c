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
    assert messages(out.err) == 1, (args, out.err)
    return code


def messages(err: str) -> int:
    """The error messages in ``err``: lines that start with ``error:`` (a hostile value quoted in a
    message, say ``--model '~error:'``, may hold the word itself)."""
    return sum(line.startswith("error:") for line in err.splitlines())


def exit_0_or_one_message(capsys, group: str, code: int, context: object) -> None:
    """A command given damaged files either works (exit 0) or says what is wrong in one message
    (exit 2), never a traceback; tallied under ``group``."""
    out = capsys.readouterr()
    tally = TALLY.setdefault(group, {"invocations": 0, "tracebacks": 0, "exit 2": 0})
    tally["invocations"] += 1
    tally["exit 2"] += code == 2
    if "Traceback" in out.out + out.err or code not in (0, 2):
        tally["tracebacks"] += 1
    assert "Traceback" not in out.out + out.err and code in (0, 2), (context, out.err[-2000:])
    if code == 2:
        assert messages(out.err) == 1, out.err


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
    exit_0_or_one_message(capsys, "corrupt files", main(args), (target, args))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


# labels (issue 28): huge, negative, non-finite, non-integer and gapped labels in every file form --
LABELS = st.one_of(
    st.integers(-(10**30), 10**30),
    st.sampled_from([-1, 10**9, 2**63, math.nan, math.inf, -math.inf, 0.5, 2.5, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),  # flush-to-zero may be on
)


def write_labels(tmp_path, form: str, labels: list) -> str:
    """``labels`` (the training ones; test gets 0 and 1) in a data file of ``form``; its --data text."""
    import json

    import numpy as np

    n = len(labels)
    if form == "npz":
        path = tmp_path / "d.npz"
        as_array = np.array(labels, dtype=np.float64 if any(isinstance(v, float) for v in labels) else object)
        if as_array.dtype == object:  # Python integers of any size: int64 where they fit, else float
            as_array = np.array([float(v) if abs(v) >= 2**63 else v for v in labels])
        np.savez(
            path,
            x_train=np.zeros((n, 4, 4), np.uint8),
            y_train=as_array,
            x_test=np.zeros((2, 4, 4), np.uint8),
            y_test=np.array([0, 1]),
        )
        return f"npz:{path}"
    rows = [(f"t{i}", v, "train") for i, v in enumerate(labels)] + [("a", 0, "test"), ("b", 1, "test")]
    if form == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": v, "split": s}) + "\n" for t, v, s in rows))
    else:
        path = tmp_path / "d.csv"
        path.write_text("text,label,split\n" + "".join(f"{t},{v!r},{s}\n" for t, v, s in rows))
    return f"{form}:{path}"


@settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.sampled_from(["npz", "jsonl", "csv"]), labels=st.lists(LABELS, min_size=2, max_size=8))
def test_hostile_labels_load_as_0_to_k_or_give_one_message(capsys, tmp_path, form, labels):
    """Any labels: the data loads with every class 0..K-1 present (K no more than the examples), or
    fails with one message naming the file, in a fraction of a second, never a traceback or a head of
    10^9 classes."""
    import time

    from prunelab.data import load_dataset, resolve_dataset, texts_of
    from prunelab.errors import DataError

    resolve_dataset.cache_clear()
    data = write_labels(tmp_path, form, labels)
    start = time.perf_counter()
    try:
        if form == "npz":
            y = load_dataset(data, val_size=0).train.y
            k = resolve_dataset(data).info.num_classes
        else:
            texts = texts_of(data)
            y, k = texts.train_labels, len(texts.label_names)
    except DataError as exc:
        assert str(tmp_path) in str(exc) and "\n" not in str(exc), exc
    else:
        assert k <= len(labels) + 2 and set(range(k)) == {*y.tolist(), 0, 1} | set(range(min(k, 2))), (
            k,
            labels,
        )
    tally = TALLY.setdefault("labels", {"invocations": 0, "slowest (s)": 0})
    tally["invocations"] += 1
    tally["slowest (s)"] = max(tally["slowest (s)"], round(time.perf_counter() - start, 3))


# Hugging Face folders (issue 28): any file of a good save_pretrained folder damaged or removed ------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from prunelab.models import resolve_model

    tok = resolve_model("bert-tiny").tokenizer("synthetic-sentiment")
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("hf") / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tok.tokenizer.save_pretrained(folder)
    return folder


CONFIG_VALUES = st.sampled_from([0, -1, 3, 7, 10**9, 1.5, None, "x", [], True])
CONFIG_FIELDS = st.sampled_from(
    ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
     "max_position_embeddings", "model_type", "type_vocab_size"]
)  # fmt: skip


@settings(max_examples=30 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_hf_folders_never_give_a_traceback(capsys, tmp_path, hf_folder, data):
    """A damaged config (a field of a bad value), weights or tokenizer file, or one removed: `train`
    either works (exit 0) or says what is wrong in one message (exit 2)."""
    import json

    folder = tmp_path / "bert"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(hf_folder, folder)
    files = sorted(p.name for p in folder.iterdir())
    kind = data.draw(st.sampled_from(["config field", "corrupt", "remove"]))
    if kind == "config field":
        config = json.loads((folder / "config.json").read_text())
        config[data.draw(CONFIG_FIELDS)] = data.draw(CONFIG_VALUES)
        (folder / "config.json").write_text(json.dumps(config))
    else:
        target = folder / data.draw(st.sampled_from(files))
        if kind == "remove":
            target.unlink()
        else:
            target.write_bytes(data.draw(corruption(target.read_bytes())))
    args = ["train", "--model", f"hf:{folder}", "--weights", "hf:DEFAULT", "--data", "synthetic-sentiment"]
    code = main([*args, "--iterations", "1", "--batch-size", "8", "--no-progress"])
    exit_0_or_one_message(capsys, "hf folders", code, kind)
