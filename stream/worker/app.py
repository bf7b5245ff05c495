"""create_app(settings) -> the worker: its Faust app, agents and views; no work at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from model.predictor import Predictor
from stream.kafka.faust_app import bytes_table, bytes_topic, new_faust_app, run_until_stopped
from stream.kafka.faust_patches import install_batch_drain, set_fetch_max_wait
from stream.kafka.recovery import install_exact_highwaters
from stream.settings import Settings
from stream.state.features import FeatureConfig
from stream.topics import Topics, topics_for
from stream.worker.exploration import exploring_holder
from stream.worker.ingest import IngestAgent
from stream.worker.metrics import Metrics
from stream.worker.model_updates import attach_model_updates
from stream.worker.types import Learning
from stream.worker.web import attach_views

# the worker's entry points (run_until_stopped is the one every lamstream app runs with)
__all__ = ["WorkerApp", "create_app", "run_until_stopped"]


@dataclass
class WorkerApp:
    """The worker (stream.worker.types.Worker): the app plus what its agents and views share."""

    app: faust.App
    settings: Settings
    topics: Topics
    table: Any  # faust Table of user id -> encoded UserState
    features: FeatureConfig
    metrics: Metrics
    ingest: IngestAgent
    learning: Learning | None = None


def create_app(settings: Settings, predictor: Predictor | None = None) -> WorkerApp:
    """Build the worker's Faust app: topics, the features table, agents and web views."""
    install_batch_drain()
    topics = topics_for(settings)
    app = new_faust_app(
        settings, settings.app_id, "faust",
        # the broker counts a member idle when it stops polling; a poll returns at most
        # max_poll_records, and the sink bounds what waits, so polls are never far apart
        broker_max_poll_interval=60.0,
        broker_max_poll_records=max(500, settings.batch_max),
        producer_max_batch_size=256 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        stream_wait_empty=True,
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # what the assignor tells the other members, so they can ask this worker for the
        # users on its partitions (stream.worker.routing); Faust's web_host only made its default
        canonical_url=settings.advertised_url(),
    )
    app.conf.table_cleanup_interval = 3600.0
    table = bytes_table(app, settings, "features",
                        help="user id -> rolling feature state")
    features = FeatureConfig.from_settings(settings)
    metrics = Metrics()
    events_topic = bytes_topic(app, topics.events.name, partitions=topics.events.partitions)
    ingest = IngestAgent(app=app, settings=settings, topics=topics, table=table,
                         features=features, metrics=metrics, events_topic=events_topic,
                         predictor=predictor)
    ingest.holder = exploring_holder(ingest.holder.current, settings)
    worker = WorkerApp(app=app, settings=settings, topics=topics, table=table,
                       features=features, metrics=metrics, ingest=ingest)
    attach_model_updates(worker)
    attach_views(worker)
    install_exact_highwaters(app, settings)
    set_fetch_max_wait(app, settings.fetch_max_wait_ms)
    return worker
