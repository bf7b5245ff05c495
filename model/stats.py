"""Summary statistics of samples: the one percentile rule every report and benchmark uses."""

from __future__ import annotations

from collections.abc import Iterable

from model.errors import ConfigError

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 <= q <= 1) of `values`: the sorted value at index
    floor(q * n), clamped to the last one.

    An empty sample has no percentile: the answer is None (JSON null), never 0.0 or NaN, so a
    report cannot show a latency that was never measured.
    """
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"q must lie in [0, 1], got {q}")
    s = sorted(values)
    if not s:
        return None
    return s[min(len(s) - 1, int(q * len(s)))]
