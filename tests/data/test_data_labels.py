"""Labels in data files (issue 28, class 3): one rule for every source, checked in prunelab.data.labels.

Labels are integers 0..K-1 (or class names), K the classes present; a gap is named and refused unless
``#classes=K`` says the classes are meant; a label that is not an integer, negative, not finite or
absurd (a 10^9-class head) is one message naming the file and the line or array index, raised before
anything is sized by K.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from prunelab.cli import main
from prunelab.data import load_dataset, resolve_dataset, texts_of
from prunelab.data.labels import LabelPart, check_labels, class_limit, with_classes
from prunelab.errors import DataError, SpecError


def write_npz(path: Path, y_train, y_test) -> str:
    g = np.random.default_rng(0)
    np.savez(
        path,
        x_train=g.integers(0, 256, (len(y_train), 4, 4), dtype=np.uint8),
        y_train=np.asarray(y_train),
        x_test=g.integers(0, 256, (len(y_test), 4, 4), dtype=np.uint8),
        y_test=np.asarray(y_test),
    )
    resolve_dataset.cache_clear()
    return f"npz:{path}"


def write_jsonl(path: Path, labels: list) -> str:
    rows = [
        {"text": f"example {i}", "label": v, "split": "test" if i % 3 == 2 else "train"}
        for i, v in enumerate(labels)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resolve_dataset.cache_clear()
    return f"jsonl:{path}"


def write_csv(path: Path, labels: list[str]) -> str:
    lines = ["text,label,split"] + [
        f"t{i},{v},{'test' if i % 3 == 2 else 'train'}" for i, v in enumerate(labels)
    ]
    path.write_text("\n".join(lines) + "\n")
    resolve_dataset.cache_clear()
    return f"csv:{path}"


def test_an_absurd_npz_label_is_named_by_array_and_index_before_any_head_is_sized(tmp_path):
    data = write_npz(tmp_path / "a.npz", [0, 1, 0, 10**9, 1, 0], [0, 1])
    with pytest.raises(
        DataError, match=r"array y_train in .*a\.npz, index 3: label 1,000,000,000 would make"
    ):
        load_dataset(data)
    with pytest.raises(DataError, match=r"index 3"):
        resolve_dataset(data).info  # noqa: B018 - the facts (the class count) are where a head is sized


def test_a_gap_is_named_and_refused_unless_the_classes_are_meant(tmp_path):
    data = write_npz(tmp_path / "gap.npz", [1, 2, 1, 2, 1, 2], [1, 2])
    with pytest.raises(DataError, match=r"range over 1\.\.2 and 0 never occurs.*gap\.npz#classes=3"):
        load_dataset(data)
    meant = load_dataset(f"{data}#classes=3")
    assert meant.info.num_classes == 3 and int(meant.test.y.max()) == 2
    with pytest.raises(DataError, match=r"index 1: bad label 2; expected integer labels 0\.\.1"):
        load_dataset(f"{data}#classes=2")
    with pytest.raises(SpecError, match=r"classes=K: K is the number of classes.*'many'"):
        resolve_dataset(f"{data}#classes=many")


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ([0, 1, float("nan"), 1, 0, 1], r"line 3: bad label nan, not a finite number"),
        ([0, 1, 2.5, 1, 0, 1], r"line 3: bad label 2\.5, not an integer"),
        ([0, -1, 1, 1, 0, 1], r"line 2: bad label -1; labels are never negative"),
        ([0, 1, 1, 10**9, 0, 1], r"line 4: label 1,000,000,000 would make 1,000,000,001 classes for 6"),
        ([0, 1, 1, 10**40, 0, 1], r"line 4: label 1e\+40 is far beyond any number of classes"),
    ],
)
def test_jsonl_labels_that_are_no_class_are_one_message_naming_the_line(tmp_path, labels, says):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": "x", "label": v, "split": "train" if i % 2 else "test"}) + "\n"
            for i, v in enumerate(labels)
        )
    )
    resolve_dataset.cache_clear()
    with pytest.raises(DataError, match=says) as caught:
        texts_of(f"jsonl:{path}")
    assert str(path) in str(caught.value)


def test_csv_numbers_are_labels_not_class_names(tmp_path):
    with pytest.raises(DataError, match=r"big\.csv, line 5: label 1,000,000,000 would make"):
        texts_of(write_csv(tmp_path / "big.csv", ["0", "1", "0", "1e9", "1", "0"]))
    with pytest.raises(DataError, match=r"nan\.csv, line 3: bad label nan"):
        texts_of(write_csv(tmp_path / "nan.csv", ["0", "NaN", "1", "0", "1", "0"]))
    whole = texts_of(write_csv(tmp_path / "whole.csv", ["0", "1.0", "1", "0", "1", "0"]))
    assert whole.label_names == ("0", "1")
    named = texts_of(write_csv(tmp_path / "names.csv", ["cat", "dog", "cat", "dog", "cat", "dog"]))
    assert named.label_names == ("cat", "dog")


def test_the_classes_option_declares_a_text_gap(tmp_path):
    data = write_jsonl(tmp_path / "stars.jsonl", [1, 2, 5, 1, 2, 5])
    with pytest.raises(DataError, match=r"0, 3, 4 never occur.*stars\.jsonl#classes=6"):
        texts_of(data)
    assert texts_of(f"{data}#classes=6").label_names == tuple("012345")
    assert with_classes("csv:a.csv#text=review", 6) == "csv:a.csv#text=review,classes=6"


def test_a_deeply_nested_jsonl_line_is_one_message_naming_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "a", "label": 0, "split": "train"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl, line 2 nests JSON too deeply"):
        texts_of(f"jsonl:{path}")
    path.write_text('{"text": "a", "label": ' + "9" * 5000 + ', "split": "train"}\n')
    resolve_dataset.cache_clear()
    with pytest.raises(DataError, match=r"deep\.jsonl, line 1 is not valid JSON"):
        texts_of(f"jsonl:{path}")


def test_the_check_sorts_instead_of_allocating_per_class():
    """K = 10^6 classes over 10^5 examples: checked in one sort; the limit is 10 per example."""
    labels = np.arange(0, 1_000_000, 10, dtype=np.int64)
    assert class_limit(len(labels)) == 1_000_000
    with pytest.raises(DataError, match=r"0\.\.999990 and 1, 2, 3, 4, 5, \.\.\. never occur"):
        check_labels([LabelPart("y", labels)])
    (out,), k = check_labels([LabelPart("y", labels)], classes=1_000_000)
    assert k == 1_000_000 and out.dtype == np.int64
    with pytest.raises(DataError, match=r"classes=10,000,001 for 1 labelled examples is absurd"):
        check_labels([LabelPart("y", np.zeros(1, np.int64))], classes=10_000_001)


def test_prunelab_run_on_an_absurd_label_is_exit_2_with_one_message(tmp_path, capsys):
    data = write_npz(tmp_path / "a.npz", [0, 1, 0, 10**9, 1, 0], [0, 1])
    code = main(["run", "--data", data, "--iterations", "2", "--no-progress", "--root", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "index 3" in err and "Traceback" not in err
