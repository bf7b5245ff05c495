"""Which input features a published model reads, and the check that the stream produces them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from model.errors import FeatureMismatch
from model.types import FEATURE_NAMES

__all__ = ["check_features", "declared_features", "missing_features"]

_SHOWN = 5  # missing names quoted in the error; the rest are counted


def declared_features(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The feature names a registry manifest declares (`features`); before manifests declared
    them, a risk net's config named them (`config.feature_names`); () when neither does."""
    names = manifest.get("features")
    if names is None:
        config = manifest.get("config")
        names = config.get("feature_names") if isinstance(config, dict) else None
    return tuple(str(n) for n in names) if isinstance(names, list | tuple) else ()


def missing_features(declared: Sequence[str],
                     produced: Collection[str] = FEATURE_NAMES) -> tuple[str, ...]:
    """The declared names the stream does not produce, in declaration order."""
    have = frozenset(produced)
    return tuple(n for n in declared if n not in have)


def check_features(model: str, declared: Sequence[str],
                   produced: Collection[str] = FEATURE_NAMES) -> None:
    """Raise FeatureMismatch when `model` reads a feature that `produced` lacks.

    A missing feature would be read as 0 on every event: the scores would look valid and mean
    nothing, so such a model is refused rather than served.
    """
    missing = missing_features(declared, produced)
    if not missing:
        return
    shown = ", ".join(missing[:_SHOWN])
    more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    raise FeatureMismatch(
        f"{model} reads {len(missing)} of its {len(declared)} input features that the stream "
        f"does not produce ({shown}{more}): it was trained on another dataset's columns; "
        "train it on event data (Fraud_Data.csv, or the risk-feedback topic)")
