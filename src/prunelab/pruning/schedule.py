"""Schedule arithmetic: how much to prune per round to reach a target (Reddy, Vaddiraju & Datta's p^(1/n)).

Rates are fractions of the *remaining* weights, so n rounds at rate r leave (1 - r)^n of them.
"""

from __future__ import annotations

import math

from prunelab.errors import SpecError


def check_rate(what: str, value: object) -> float:
    """A fraction of the remaining weights to remove: in [0, 1) (1 would remove everything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SpecError(
            f"{what} must be in [0, 1), got {value!r} (it is the share of the remaining weights removed; "
            "1 or more would remove every weight)"
        )
    return float(value)


def _check_rounds(rounds: object, minimum: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < minimum:
        raise SpecError(f"rounds must be an integer >= {minimum}, got {rounds!r}")
    return rounds


def one_shot_rate(target_sparsity: float) -> float:
    """The rate of a single round reaching ``target_sparsity`` from a dense start: the target itself."""
    return check_rate("target_sparsity", target_sparsity)


def rate_for_rounds(target_sparsity: float, rounds: int) -> float:
    """Per-round rate reaching ``target_sparsity`` in ``rounds`` rounds: 1 - (1 - p)^(1/n)."""
    p = check_rate("target_sparsity", target_sparsity)
    n = _check_rounds(rounds, 1)
    return 1.0 - (1.0 - p) ** (1.0 / n)


def density_after(rate: float, rounds: int) -> float:
    """Fraction of weights left after ``rounds`` rounds at ``rate``: (1 - rate)^rounds."""
    r = check_rate("rate", rate)
    return (1.0 - r) ** _check_rounds(rounds, 0)


def rounds_for_rate(rate: float, target_sparsity: float) -> int:
    """Fewest rounds at ``rate`` reaching at least ``target_sparsity`` (e.g. 20% per round)."""
    r = check_rate("rate", rate)
    p = check_rate("target_sparsity", target_sparsity)
    if p == 0:
        return 0
    if r == 0:
        raise SpecError(f"rate 0 never reaches target_sparsity {p}")
    n = math.log(1.0 - p) / math.log(1.0 - r)
    return max(1, math.ceil(n - 1e-9))  # 1e-9: (1-r)^n equal to the target up to rounding counts
