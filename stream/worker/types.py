"""What the worker's agents and views see of it: the Worker protocol (built in app.py)."""

from __future__ import annotations

from typing import Any, Protocol

import faust

from stream.settings import Settings
from stream.state.features import FeatureConfig
from stream.topics import Topics
from stream.worker.ingest import IngestAgent
from stream.worker.metrics import Metrics


class Learning(Protocol):
    """A source of the dashboard's learning report (reward per window, exploration rate)."""

    def report(self) -> dict[str, Any]: ...


class Worker(Protocol):
    """The worker's Faust app and what its agents and views share. stream.worker.app builds
    the one concrete worker; web views and the model-updates agent take this, so they never
    import the module that imports them."""

    app: faust.App
    settings: Settings
    topics: Topics
    table: Any  # faust Table of user id -> encoded UserState (bytes keys and values)
    features: FeatureConfig
    metrics: Metrics
    ingest: IngestAgent
    learning: Learning | None  # set once an agent on this worker reports feedback
