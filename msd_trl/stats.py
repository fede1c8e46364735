"""Small statistics for reports: a rate with its Wilson interval, and mean/spread over seeds.

Why Wilson: evaluation rates here come from 30-60 prompts per language and often sit at 0 % or 100 %, where the
normal-approximation interval collapses to a point; Wilson's score interval stays inside [0, 1] and honest there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["auc", "format_percent", "mean_and_spread", "rate_entry", "spearman", "wilson_interval"]


def wilson_interval(successes: int, n: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % (by default) Wilson score interval of `successes` out of `n`; `(0.0, 1.0)` when `n` is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_entry(flags: Sequence[bool], name: str) -> dict[str, float | list[float] | int | None]:
    """`{name: rate, name + "_ci": [low, high]}` of a list of booleans (rate None when empty)."""
    n, k = len(flags), sum(bool(flag) for flag in flags)
    low, high = wilson_interval(k, n)
    return {name: k / n if n else None, f"{name}_ci": [round(low, 4), round(high, 4)]}


def mean_and_spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation, min and max of the non-None `values` (over seeds), and how many there were."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(present) / len(present)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1)) if len(present) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(present), "max": max(present), "n": len(present)}


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U / (n m)); None when
    either side is empty. 0.5: the score does not tell the sides apart; 1.0: every positive ranks above every
    negative."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def format_percent(value: float | None, spec: str = ".0%", missing: str = "–") -> str:
    """A rate for a table: `format(value, spec)`, or `missing` when there is none (no rows)."""
    return missing if value is None else format(value, spec)


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values (ties get mean ranks): the Pearson correlation of the ranks.
    None with fewer than 3 pairs or when either side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs paired values, got {len(xs)} and {len(ys)}")
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)
