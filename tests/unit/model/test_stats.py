"""The one percentile rule of every report (model.stats.percentile)."""

import pytest

from model.stats import percentile


def test_nearest_rank_on_the_sorted_sample() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.99) == 5.0
    assert percentile(values, 1.0) == 5.0


def test_an_empty_sample_has_no_percentile() -> None:
    assert percentile([], 0.5) is None


def test_q_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="q must lie"):
        percentile([1.0], 1.5)
