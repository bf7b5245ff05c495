"""create_app(settings) -> the Faust app of one lamstream worker; no work at import time."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import faust
from faust.types.auth import CredentialsT

from model.predictor import Predictor
from stream.kafka import fastpath
from stream.settings import Settings
from stream.state.features import FeatureConfig
from stream.topics import Topics, topics_for
from stream.worker.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """The app plus what its agents and views share."""

    app: faust.App
    settings: Settings
    topics: Topics
    table: Any  # faust Table of user id -> encoded UserState
    features: FeatureConfig
    metrics: Metrics
    ingest: Any  # stream.worker.ingest.IngestAgent


def faust_brokers(bootstrap: str) -> list[str]:
    """Faust's broker URLs for a comma-separated bootstrap list."""
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",")]


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """SASL / TLS settings as Faust credentials (None for PLAINTEXT)."""
    proto = settings.security_protocol
    if proto == "PLAINTEXT":
        return None
    ctx = settings.ssl_context()
    if proto == "SSL":
        assert ctx is not None
        return faust.SSLCredentials(ctx)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    mech = settings.sasl_mechanism or "PLAIN"
    if mech == "PLAIN":
        return faust.SASLCredentials(username=settings.sasl_username, password=password,
                                     ssl_context=ctx)
    return faust.SASLCredentials(username=settings.sasl_username, password=password,
                                 ssl_context=ctx, mechanism=mech)


def new_faust_app(settings: Settings, app_id: str, datadir: str, **conf: Any) -> faust.App:
    """A Faust app with what every lamstream app shares: broker and credentials, table store
    under DATA_DIR/`datadir`, topics declared from settings, and group timing tuned for quick
    rebalances (see the README on the embedded broker). `conf` adds or overrides settings."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    shared: dict[str, Any] = {
        "broker": faust_brokers(settings.bootstrap),
        "broker_credentials": faust_credentials(settings),
        "store": "rocksdb://" if settings.store == "rocksdb" else "memory://",
        "datadir": str(data_dir / datadir),
        "autodiscover": False,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_rebalance_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_commit_interval": 1.0,
        "producer_linger_ms": 2,
        "table_standby_replicas": 0,
        "logging_config": None,
    }
    return faust.App(app_id, **{**shared, **conf})


def run_until_stopped(app: faust.App, settings: Settings) -> None:
    """Run a Faust app in this process until SIGTERM / Ctrl-C; a clean stop is not an error."""
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def create_app(settings: Settings, predictor: Predictor | None = None) -> Worker:
    """Build the worker's Faust app: topics, the features table, agents and web views."""
    # Imported here so that importing stream.worker.app stays cheap and side-effect free.
    from stream.kafka.recovery import install_exact_highwaters
    from stream.worker.exploration import install_exploration
    from stream.worker.ingest import IngestAgent
    from stream.worker.model_updates import attach_model_updates
    from stream.worker.web import attach_views

    fastpath.install()
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
    table = app.Table(
        f"{settings.topic_prefix}features",
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help="user id -> rolling feature state",
    )
    features = FeatureConfig.from_settings(settings)
    metrics = Metrics()
    events_topic = app.topic(topics.events.name, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=topics.events.partitions)
    ingest = IngestAgent(app=app, settings=settings, topics=topics, table=table,
                         features=features, metrics=metrics, events_topic=events_topic,
                         predictor=predictor)
    install_exploration(ingest, settings)
    worker = Worker(app=app, settings=settings, topics=topics, table=table, features=features,
                    metrics=metrics, ingest=ingest)
    attach_model_updates(worker)
    attach_views(worker)
    install_exact_highwaters(app, settings)
    _install_fetch_wait(app, settings.fetch_max_wait_ms)
    return worker


_FETCH_WAIT_MS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _install_fetch_wait(app: Any, wait_ms: int) -> None:
    """Faust builds its consumer with fetch_max_wait_ms=1500 hard-coded; use the setting."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    _FETCH_WAIT_MS[app] = wait_ms
    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, "_lamstream_fetch_wait", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        ms = _FETCH_WAIT_MS.get(self.app)
        if ms is not None:
            consumer._fetch_max_wait_ms = ms  # read when the consumer starts its fetcher
        return consumer

    cls._create_worker_consumer = create
    cls._lamstream_fetch_wait = True
