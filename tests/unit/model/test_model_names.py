"""The names other code picks things by: methods, net kinds, event types, each defined once."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from model.errors import ConfigError
from model.nets import RECOMMENDER_NETS, build_recommender
from model.recommenders.base import HYBRID_METHODS, METHODS, NEIGHBOR_METHODS, NEURAL_METHODS
from model.recommenders.hybrid import HYBRID, WITHOUT_SEQUENCE
from model.recommenders.loading import load_recommender
from model.types import EVENT_TYPE_INDEX, EVENT_TYPES, EventType


def test_every_neural_method_has_a_net_and_every_net_a_method() -> None:
    assert set(NEURAL_METHODS) == set(RECOMMENDER_NETS)
    assert METHODS == NEIGHBOR_METHODS + NEURAL_METHODS + HYBRID_METHODS
    assert len(set(METHODS)) == len(METHODS)
    assert (HYBRID, WITHOUT_SEQUENCE) == HYBRID_METHODS


def test_unknown_names_are_config_errors_and_still_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known: popularity, covisitation, gru, sasrec, "
                       "hybrid, hybrid_without_sequence"):
        load_recommender(tmp_path, "knn")
    with pytest.raises(ValueError, match="unknown recommender net"):
        build_recommender("lstm", {})


def test_event_types_are_the_literal() -> None:
    assert EVENT_TYPES == get_args(EventType) == ("view", "click", "add_to_cart", "purchase")
    assert [EVENT_TYPE_INDEX[t] for t in EVENT_TYPES] == [0, 1, 2, 3]
