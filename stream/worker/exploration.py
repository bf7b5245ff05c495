"""How the worker explores: every model it serves is shown through one exploration policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from model.policy.catalog import ItemCatalog
from model.policy.exploration import ExplorationPredictor
from model.policy.policies import Policy, make_policy
from model.predictor import Predictor
from stream.settings import Settings
from stream.worker.holder import PredictorHolder

if TYPE_CHECKING:  # model.policy.reranker brings torch: imported when a reranker is loaded
    from model.policy.reranker import Reranker

Wrap = Callable[[Predictor], Predictor]


def policy_from_settings(settings: Settings, name: str | None = None) -> Policy:
    return make_policy(name or settings.policy, epsilon_start=settings.policy_epsilon_start,
                       epsilon_floor=settings.policy_epsilon_floor,
                       epsilon_decay_steps=settings.policy_epsilon_decay,
                       temperature=settings.policy_temperature)


def exploration_wrapper(settings: Settings) -> Wrap:
    """Wraps any predictor in the configured policy. One policy object serves every model
    version, so epsilon keeps decaying across hot swaps instead of starting over; one item
    catalogue likewise keeps the item categories learned so far."""
    policy = policy_from_settings(settings)
    shadow = (policy_from_settings(settings, settings.policy_shadow)
              if settings.policy_shadow else None)
    catalog = ItemCatalog(settings.item_catalog_size)

    def wrap(predictor: Predictor) -> Predictor:
        if isinstance(predictor, ExplorationPredictor):
            return predictor
        return ExplorationPredictor(predictor, policy, pool=settings.policy_pool,
                                    seed=settings.policy_seed, shadow=shadow, catalog=catalog)
    return wrap


class ExploringHolder(PredictorHolder):
    """The ingest agent's predictor holder, wrapping every offered model in the policy.

    It also holds the feedback-trained reranker, which outlives recommender swaps: a new
    reranker (or none, after a rollback past the first) is offered like a model and takes
    effect between batches."""

    def __init__(self, predictor: Predictor, wrap: Wrap,
                 reranker: Reranker | None = None) -> None:
        super().__init__(wrap(predictor))
        self.wrap = wrap
        self.reranker = reranker
        self._next_reranker: tuple[Reranker | None] | None = None  # (None,): serve none
        self._attach()

    def offer(self, predictor: Predictor) -> None:
        super().offer(self.wrap(predictor))

    def offer_reranker(self, reranker: Reranker | None) -> None:
        self._next_reranker = (reranker,)

    def swap_if_offered(self) -> bool:
        swapped = super().swap_if_offered()
        if self._next_reranker is not None:
            (self.reranker,), self._next_reranker = self._next_reranker, None
            swapped = True
        if swapped:
            self._attach()
        return swapped

    def _attach(self) -> None:
        if isinstance(self.current, ExplorationPredictor):
            self.current.reranker = self.reranker


def load_reranker(settings: Settings, version: str | None = None) -> Reranker | None:
    """The registry's reranker `version` (default: latest), or None when none is published."""
    from model.policy.reranker import Reranker
    from model.registry import ModelRegistry

    return Reranker.from_registry(ModelRegistry(settings.data_dir), version)


def exploring_holder(predictor: Predictor, settings: Settings) -> ExploringHolder:
    """A holder whose models explore (see model.policy.policies), with the latest published
    reranker if there is one."""
    return ExploringHolder(predictor, exploration_wrapper(settings), load_reranker(settings))
