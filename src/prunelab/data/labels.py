"""Class labels, checked in one place for every data source (npz arrays, csv/jsonl/tsv files, saved
Hugging Face datasets).

The rule: labels are integers 0..K-1, and K is the number of classes present. A gap in 0..K-1 (a
class that never occurs, such as star ratings 1..5 without 0) is named and refused, unless the data
says the classes are meant (``#classes=K`` after the data source's path, or a dataset's own class
names). A label that is not an integer, negative, not finite, or absurd (K far beyond the number of
examples: a head of 10^9 classes) is one :class:`~prunelab.errors.DataError` naming the file and
the line or array index. The checks cost a sort of the labels, never an allocation per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from prunelab.errors import DataError, SpecError

__all__ = [
    "CLASSES_OPTION",
    "LabelPart",
    "check_labels",
    "class_limit",
    "classes_option",
    "label_number",
    "with_classes",
]

#: The data-source option (``npz:FILE#classes=K``) saying that K classes are meant, some of them
#: possibly absent from the data.
CLASSES_OPTION = "classes"
#: K may never exceed this many classes per example, nor :data:`MIN_LIMIT` when that is larger.
CLASSES_PER_EXAMPLE = 10
MIN_LIMIT = 10_000
#: Beyond int64 (and well beyond any class count): refused before any conversion.
_HUGE = 2**62


def class_limit(examples: int) -> int:
    """The most classes ``examples`` labelled examples may have (what is not absurd)."""
    return max(MIN_LIMIT, CLASSES_PER_EXAMPLE * examples)


@dataclass
class LabelPart:
    """One split's labels as read: ``values`` (a NumPy array, or Python numbers) from ``where`` (a
    file, an array in a file), each position named by ``position(i)`` (``line 7``, ``index 3``)."""

    where: str
    values: np.ndarray | Sequence[object]
    position: Callable[[int], str] = field(default=lambda i: f"index {i}")

    def at(self, i: int) -> str:
        return f"{self.where}, {self.position(i)}"


def classes_option(options: dict[str, str], usage: str) -> int | None:
    """The ``classes=K`` option of a data source (None when not given); a SpecError for a value that
    is not a whole number >= 1."""
    text = options.get(CLASSES_OPTION)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(
            f"{usage}#{CLASSES_OPTION}=K: K is the number of classes, a whole number >= 1, not {text!r}"
        )
    return value


def with_classes(data: str, k: int) -> str:
    """``data`` (a data-source text) with ``classes=k`` among its options: what a user writes to say
    that ``k`` classes are meant."""
    path, sep, tail = data.rpartition("#")
    if sep and "=" in tail:
        kept = [item for item in tail.split(",") if item.partition("=")[0].strip() != CLASSES_OPTION]
        return f"{path}#{','.join([*kept, f'{CLASSES_OPTION}={k}'])}"
    return f"{data}#{CLASSES_OPTION}={k}"


def check_labels(
    parts: Sequence[LabelPart], classes: int | None = None, *, data: str = "", names: Sequence[str] = ()
) -> tuple[list[np.ndarray], int]:
    """Each part's labels as int64 arrays, and the number of classes K.

    ``classes``: K is given (the data's class names, or ``#classes=K``): labels must lie in 0..K-1 and
    classes may be absent. Otherwise K is 1 + the largest label and every class 0..K-1 must occur.
    ``data`` (the data-source text) lets the gap message say how to declare the classes meant;
    ``names`` are the class names, shown in messages when given.
    """
    arrays = [_integers(part) for part in parts]
    examples = sum(len(a) for a in arrays)
    limit = class_limit(examples)
    if classes is not None:
        if classes > limit:
            raise DataError(
                f"{CLASSES_OPTION}={classes:,} for {examples:,} labelled examples is absurd (at most {limit:,} "
                f"classes: {CLASSES_PER_EXAMPLE} per example, or {MIN_LIMIT:,}); give the number of classes"
            )
        for part, a in zip(parts, arrays, strict=True):
            high = np.flatnonzero(a >= classes)
            if high.size:
                i = int(high[0])
                shown = f" ({', '.join(names)})" if names and len(names) <= 20 else ""
                raise DataError(
                    f"{part.at(i)}: bad label {int(a[i])}; expected integer labels 0..{classes - 1}{shown}"
                )
        return arrays, classes
    if not examples:
        return arrays, 0
    top = max((int(a.max()), n) for n, a in enumerate(arrays) if len(a))
    k = top[0] + 1
    if k > limit:
        part, a = parts[top[1]], arrays[top[1]]
        i = int(np.argmax(a))
        raise DataError(
            f"{part.at(i)}: label {int(a[i]):,} would make {k:,} classes for {examples:,} labelled examples; "
            f"labels are class numbers 0..K-1 (or class names), K the number of classes"
        )
    present = np.unique(np.concatenate(arrays))
    if len(present) < k:
        missing = _missing(present, k)
        shown = ", ".join(map(str, missing)) + (", ..." if k - len(present) > len(missing) else "")
        where = "; ".join(dict.fromkeys(p.where for p in parts))
        declare = f" (data {with_classes(data, k)})" if data else f" ({CLASSES_OPTION}={k})"
        raise DataError(
            f"integer labels must be 0..K-1, but those of {where} range over {int(present[0])}..{k - 1} and "
            f"{shown} never occur{'s' if k - len(present) == 1 else ''}; renumber them from 0 (e.g. star "
            f"ratings 1..5: subtract 1), use class names, or, if those classes are meant, say so{declare}"
        )
    return arrays, k


def _missing(present: np.ndarray, k: int, most: int = 5) -> list[int]:
    """The first ``most`` values of 0..k-1 absent from the sorted unique ``present``."""
    found: list[int] = []
    expected = 0
    for value in [*present.tolist(), k]:
        while expected < value and len(found) < most:
            found.append(expected)
            expected += 1
        if len(found) >= most:
            break
        expected = value + 1
    return found


def _integers(part: LabelPart) -> np.ndarray:
    """The part's labels as int64, each an integer >= 0 of sane size, else one DataError naming it."""
    values = part.values
    expected = "expected integer labels 0..K-1 (or class names)"
    if not isinstance(values, np.ndarray):
        return _python_integers(part, expected)
    a = values
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{part.where} has dtype {a.dtype}; {expected} (e.g. y.astype(numpy.int64))")
    if np.issubdtype(a.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{part.at(i)}: bad label {float(a[i])!r}, not a finite number; {expected}")
        bad = np.flatnonzero(a != np.floor(a))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{part.at(i)}: bad label {float(a[i])!r}, not an integer; {expected}")
    bad = np.flatnonzero(a < 0)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{part.at(i)}: bad label {a[i].item()!r}; labels are never negative ({expected})")
    bad = np.flatnonzero(a >= _HUGE)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{part.at(i)}: label {a[i].item():.6g} is far beyond any number of classes; {expected}"
        )
    return a.astype(np.int64)


def _python_integers(part: LabelPart, expected: str) -> np.ndarray:
    """:func:`_integers` for Python numbers (text files' labels)."""
    out = np.empty(len(part.values), dtype=np.int64)
    for i, v in enumerate(part.values):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise DataError(f"{part.at(i)}: bad label {v!r}; {expected}")
        out[i] = label_number(v, part.at(i))
    return out


def label_number(value: Real, at: str) -> int:
    """A label read as a number (from a text file): an int when it is a finite integer >= 0 of sane
    size, else one DataError naming it ``at`` (file and line)."""
    expected = "expected integer labels 0..K-1 (or class names)"
    if not isinstance(value, Integral):
        value = float(value)
        if not math.isfinite(value):
            raise DataError(f"{at}: bad label {value!r}, not a finite number; {expected}")
        if not value.is_integer():
            raise DataError(f"{at}: bad label {value!r}, not an integer; {expected}")
    if value < 0:
        raise DataError(f"{at}: bad label {value!r}; labels are never negative ({expected})")
    if value >= _HUGE:
        raise DataError(f"{at}: label {value:.6g} is far beyond any number of classes; {expected}")
    return int(value)
