"""Wilson intervals and seed aggregates against hand-computed values."""

from __future__ import annotations

import math

import pytest

from msd_trl.stats import auc, mean_and_spread, rate_entry, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),  # the interval does not collapse at 0 %
        (10, 10, 0.72247, 1.0),
        (5, 10, 0.23659, 0.76341),
        (1, 2, 0.09453, 0.90547),
        (24, 40, 0.44596, 0.73652),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in ((-1, 3), (4, 3), (0, -1)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(*bad)


def test_rate_entry_names_rate_and_interval():
    entry = rate_entry([True, False, False, False], "refusal_rate")
    assert entry["refusal_rate"] == 0.25
    assert entry["refusal_rate_ci"] == [round(v, 4) for v in wilson_interval(1, 4)]
    assert rate_entry([], "x") == {"x": None, "x_ci": [0.0, 1.0]}


def test_mean_and_spread_over_seeds():
    stats = mean_and_spread([0.9, 0.575, None, 0.75])
    assert stats["n"] == 3 and stats["min"] == 0.575 and stats["max"] == 0.9
    assert stats["mean"] == pytest.approx(0.741667, abs=1e-6)
    assert stats["std"] == pytest.approx(math.sqrt(((0.9 - 0.741667) ** 2 + (0.575 - 0.741667) ** 2
                                                    + (0.75 - 0.741667) ** 2) / 2), abs=1e-6)  # fmt: skip
    assert mean_and_spread([0.5])["std"] == 0.0
    assert mean_and_spread([None])["mean"] is None


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auc([0.1], [0.9]) == 0.0
    assert auc([0.5], [0.5]) == 0.5 and auc([0.3, 0.7], [0.5]) == 0.5
    assert auc([], [0.1]) is None and auc([0.1], []) is None


def test_spearman_by_hand():
    from msd_trl.stats import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their mean rank: x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4 -> r = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2, 3], [1, 2])
