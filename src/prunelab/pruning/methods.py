"""The method names users type, each a small record: criterion x default structure x unit norm.

Adding a method is one ``METHODS.add``; :func:`prunelab.pruning.prune.prune` never branches on names.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.registry import Registry


@dataclass(frozen=True)
class Method:
    """``criterion`` scores weights; ``structure`` is the default grouping (``prune(structure=...)``
    overrides it); ``unit_norm`` reduces a unit's scores when pruning structured; ``structured_only``
    methods are defined by their units (e.g. ``l2-structured``) and refuse ``structure='unstructured'``.
    """

    criterion: str
    description: str
    structure: str = "unstructured"
    unit_norm: str = "l1"
    structured_only: bool = False


METHODS: Registry[Method] = Registry("pruning method")

for _name, _description in [
    ("magnitude", "smallest |w| (IMP; torch l1_unstructured)"),
    ("large_final", "smallest |w_final| (Zhou et al.; same as magnitude)"),
    ("magnitude_increase", "smallest |w_final| - |w_init| (Zhou et al.)"),
    ("movement", "smallest |w_final - w_init| (Zhou et al.)"),
    ("snip", "smallest |g * w| at the current weights (Lee et al. 2019)"),
    ("grasp", "GraSP w * Hg: keeps gradient flow (Wang et al. 2020)"),
    ("synflow", "smallest synaptic flow, data-free, iterative (Tanaka et al. 2020)"),
]:
    METHODS.add(_name, Method(_name, _description))

METHODS.add("random", Method("random", "random weights (torch random_unstructured)", unit_norm="random"))

# Paper 001's structured methods prune along the input axis, hence the default "structured-input";
# pass structure="structured-output" for whole filters / output neurons.
for _name, _norm, _what in [
    ("l1", "l1", "L1 norm"),
    ("l2", "l2", "L2 norm"),
    ("linf", "linf", "L-inf norm (largest |w|)"),
    ("lninf", "lninf", "L-(-inf) norm (smallest |w|)"),
]:
    METHODS.add(
        f"{_name}-structured",
        Method("magnitude", f"whole units with the smallest {_what}", "structured-input", _norm, True),
    )
METHODS.add("random-structured", Method("random", "random whole units", "structured-input", "random", True))
METHODS.add(
    "hybrid",
    Method(
        "magnitude",
        "L1-structured conv layers, L1-unstructured linear layers (paper 001)",
        "hybrid",
        "l1",
        True,
    ),
)
METHODS.add(
    "head-importance",
    Method(
        "head-importance",
        "heads by gate gradients (Michel et al. 2019)",
        "heads",
        "linf",
        True,
    ),
)
METHODS.add(
    "taylor",
    Method(
        "taylor",
        "units by |sum g*w|, first-order Taylor",
        "ffn",
        "abs-sum",
        True,
    ),
)
METHODS.add(
    "l1-filter",
    Method(
        "magnitude",
        "coupled channels by L1 norm (Li et al. 2017)",
        "channels",
        "l1",
        True,
    ),
)
METHODS.add(
    "thinet",
    Method(
        "thinet",
        "input channels, greedy (ThiNet, Luo 2017)",
        "structured-input",
        "linf",
        True,
    ),
)
METHODS.add(
    "lasso",
    Method(
        "lasso",
        "input channels by LASSO (He et al. 2017)",
        "structured-input",
        "linf",
        True,
    ),
)
