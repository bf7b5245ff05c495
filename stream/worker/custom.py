"""Bring your own model: import a user's Predictor factory (LAMSTREAM_PREDICTOR) and serve it."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable

from model.policy.exploration import ExplorationPredictor
from model.predictor import Predictor
from stream.errors import LamstreamError, SettingsError
from stream.schemas import ModelUpdate
from stream.settings import Settings
from stream.state.features import FeatureConfig

__all__ = ["ANNOUNCEMENTS", "accepts_announcements", "call_factory", "custom_loader",
           "import_factory", "load_custom", "make_custom", "served_model"]

log = logging.getLogger(__name__)

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# The attribute (on the factory or on the predictor it returns) that opts a user's model in to
# the registry's announcements; without it they are logged and ignored (docs/models.md).
ANNOUNCEMENTS = "accepts_announcements"

Factory = Callable[..., object]
ErrorType = type[LamstreamError]


def import_factory(spec: str, error: ErrorType = SettingsError) -> Factory:
    """The callable `spec` (package.module:factory) names; `error` with the reason when it
    cannot be imported. The working directory is searched too, as `python -m` would."""
    if not SPEC.match(spec):
        raise error(f"predictor {spec!r}: expected package.module:factory")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raised on import
        raise error(f"predictor {spec!r}: cannot import {module_name!r}: "
                    f"{type(exc).__name__}: {exc} (is it installed, or on PYTHONPATH?)") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"predictor {spec!r}: {module_name} has no {attr!r}") from None
    if not callable(obj):
        raise error(f"predictor {spec!r}: {attr} is a {type(obj).__name__}, not a factory "
                    "(a callable that returns a Predictor)")
    return obj


def call_factory(factory: Factory, spec: str, version: str | None = None,
                 error: ErrorType = SettingsError) -> object:
    """What the factory returns (called with `version=` when it takes one and one is asked
    for); `error` when it raises."""
    takes_version = "version" in inspect.signature(factory).parameters
    try:
        return factory(version=version) if takes_version and version else factory()
    except Exception as exc:  # noqa: BLE001 - whatever the user's factory raised
        raise error(f"predictor {spec!r}: the factory raised {type(exc).__name__}: {exc}"
                    ) from exc


def make_custom(factory: Factory, spec: str, version: str | None = None,
                error: ErrorType = SettingsError) -> Predictor:
    """The factory's predictor; `error` when it is not a Predictor."""
    got = call_factory(factory, spec, version, error)
    if not isinstance(got, Predictor):
        raise error(f"predictor {spec!r}: the factory returned a {type(got).__name__}, not a "
                    "model.predictor.Predictor (name, version, predict_batch, learn_batch); "
                    f"`lamstream model check {spec}` says what is missing")
    return got


def load_custom(spec: str, error: ErrorType = SettingsError) -> Predictor:
    """The user's predictor that `spec` names, built by its factory."""
    return make_custom(import_factory(spec, error), spec, error=error)


def served_model(predictor: Predictor) -> Predictor:
    """The model inside a served predictor: below its exploration policy and risk overlay."""
    from model.risk.overlay import RiskOverlay  # brings torch: only once a model is announced

    if isinstance(predictor, ExplorationPredictor):
        predictor = predictor.inner
    if isinstance(predictor, RiskOverlay):
        predictor = predictor.inner
    return predictor


def accepts_announcements(*owners: object) -> bool:
    """Whether the factory or the predictor set `accepts_announcements = True`."""
    return any(getattr(o, ANNOUNCEMENTS, False) is True for o in owners)


def custom_loader(settings: Settings, current: Callable[[], Predictor]
                  ) -> Callable[[ModelUpdate], Predictor | None]:
    """What a model-updates record does to a worker serving LAMSTREAM_PREDICTOR.

    Not opted in: nothing (logged). Opted in: a recommender announcement calls the factory
    again (with `version=` when it takes one), a risk announcement serves that published risk
    model next to the user's recommendations (model.risk.overlay)."""
    spec = settings.predictor or ""
    factory = import_factory(spec)

    def load(update: ModelUpdate) -> Predictor | None:
        model = served_model(current())
        if not accepts_announcements(factory, model):
            log.warning("model-updates: %s %s ignored: this worker serves its own predictor "
                        "%s (%s %s), which does not set %s = True", update.name,
                        update.version, spec, model.name, model.version, ANNOUNCEMENTS)
            return None
        if update.name == "risk":
            from model.registry import ModelRegistry  # torch: only once a model is announced
            from model.risk.overlay import overlay_risk

            produced = FeatureConfig.from_settings(settings).produced_names
            return overlay_risk(model, ModelRegistry(settings.data_dir), update.version,
                                settings.device, features=produced,
                                explain_above=settings.risk_threshold)
        return make_custom(factory, spec, update.version)
    return load
