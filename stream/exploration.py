"""How the worker explores: every model it serves is shown through one exploration policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model.exploration import ExplorationPredictor
from model.policy import Policy, make_policy
from model.predictor import Predictor
from stream.agents.ingest import PredictorHolder
from stream.settings import Settings

Wrap = Callable[[Predictor], Predictor]


def policy_from_settings(settings: Settings, name: str | None = None) -> Policy:
    return make_policy(name or settings.policy, epsilon_start=settings.policy_epsilon_start,
                       epsilon_floor=settings.policy_epsilon_floor,
                       epsilon_decay_steps=settings.policy_epsilon_decay,
                       temperature=settings.policy_temperature)


def exploration_wrapper(settings: Settings) -> Wrap:
    """Wraps any predictor in the configured policy. One policy object serves every model
    version, so epsilon keeps decaying across hot swaps instead of starting over."""
    policy = policy_from_settings(settings)
    shadow = (policy_from_settings(settings, settings.policy_shadow)
              if settings.policy_shadow else None)

    def wrap(predictor: Predictor) -> Predictor:
        if isinstance(predictor, ExplorationPredictor):
            return predictor
        return ExplorationPredictor(predictor, policy, pool=settings.policy_pool,
                                    seed=settings.policy_seed, shadow=shadow)
    return wrap


class ExploringHolder(PredictorHolder):
    """The ingest agent's predictor holder, wrapping every offered model in the policy."""

    def __init__(self, predictor: Predictor, wrap: Wrap) -> None:
        super().__init__(wrap(predictor))
        self.wrap = wrap

    def offer(self, predictor: Predictor) -> None:
        super().offer(self.wrap(predictor))


def install_exploration(ingest: Any, settings: Settings) -> None:
    """Give the ingest agent a holder whose models explore (see model.policy)."""
    ingest.holder = ExploringHolder(ingest.holder.current, exploration_wrapper(settings))
