"""PNG figures of an offline evaluation: HR@K per method (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_hit_curves(curves: Mapping[str, Sequence[float]], path: Path, *,
                    served: str | None = None, title: str = "") -> Path:
    """Write HR@K for K = 1..len(curve) of each method to `path` (PNG); returns `path`."""
    import matplotlib  # the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        for method, curve in curves.items():
            ks = range(1, len(curve) + 1)
            ax.plot(ks, list(curve), label=method + (" (served)" if method == served else ""),
                    linewidth=2.5 if method == served else 1.5)
        ax.set_xlabel("K (items shown)")
        ax.set_ylabel("HR@K (share of test cases whose next item is in the top K)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(title or "Hit rate at K per method, on the test cases")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
