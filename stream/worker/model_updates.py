"""Every worker reads `model-updates` itself and swaps each announced model in between batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mode import Service
from pydantic import ValidationError

from model.predictor import Predictor
from model.recommenders.baseline import BaselinePredictor
from model.types import RERANKER
from stream.schemas import ModelUpdate
from stream.settings import Settings
from stream.state.features import FeatureConfig
from stream.worker.custom import custom_loader, served_model
from stream.worker.exploration import ExploringHolder, load_reranker
from stream.worker.holder import PredictorHolder
from stream.worker.types import Worker

log = logging.getLogger(__name__)

MODEL_NAMES = ("recommender", "risk", RERANKER)
Loader = Callable[[ModelUpdate], Predictor | None]
Refused = Callable[[str, str, str], None]  # (model, version, reason)


def decode_update(raw: bytes | None) -> ModelUpdate | None:
    """The record, or None for anything malformed (logged; the agent goes on)."""
    try:
        update = ModelUpdate.model_validate_json(raw or b"")
    except ValidationError as exc:
        log.warning("ignoring a malformed model-updates record: %s",
                    exc.errors()[0]["msg"] if exc.errors() else exc)
        return None
    if update.name not in MODEL_NAMES:
        log.warning("ignoring a model-updates record for unknown model %r", update.name)
        return None
    return update


def online_base(predictor: Predictor) -> Predictor | None:
    """The online baseline inside a served predictor (under its exploration policy and risk
    overlay), or None when a published recommender serves."""
    predictor = served_model(predictor)
    return predictor if isinstance(predictor, BaselinePredictor) else None


def registry_loader(settings: Settings, current: Callable[[], Predictor] | None = None
                    ) -> Loader:
    """Load the announced version (and the latest of the other model) from the registry.

    `current` gives the predictor in service: when that is the online baseline (no
    recommender published, or model_name=baseline), a risk version is served next to it
    (model.risk.overlay), keeping what the baseline learned online."""

    def load(update: ModelUpdate) -> Predictor | None:
        # imported on the first announced model: they bring torch, which a worker serving the
        # online baseline never needs
        from model.registry import ModelRegistry
        from model.risk.overlay import overlay_risk
        from model.serving import load_predictor

        pinned: dict[str, Any] = {
            "recommender_version" if update.name == "recommender" else "risk_version":
            update.version}
        # a risk model reading features the stream does not fill is refused (FeatureMismatch)
        produced = FeatureConfig.from_settings(settings).produced_names
        predictor = load_predictor(settings.data_dir, device=settings.device,
                                   prefer=settings.model_name, features=produced,
                                   explain_risk_above=settings.risk_threshold, **pinned)
        if isinstance(predictor, BaselinePredictor):
            base = online_base(current()) if current is not None else None
            if update.name == "risk" and base is not None:
                return overlay_risk(base, ModelRegistry(settings.data_dir), update.version,
                                    settings.device, features=produced,
                                    explain_above=settings.risk_threshold)
            # nothing servable (no recommender, or model_name=baseline): keep the current
            # predictor, which for the baseline holds what it learned online
            return None
        return predictor
    return load


async def apply_reranker(update: ModelUpdate, holder: PredictorHolder, settings: Settings
                         ) -> bool:
    """Load the announced reranker off the event loop and offer it (between batches)."""
    if not isinstance(holder, ExploringHolder):
        log.warning("model-updates: reranker %s ignored: this worker does not explore",
                    update.version)
        return False
    loop = asyncio.get_running_loop()
    try:
        reranker = await loop.run_in_executor(None, load_reranker, settings, update.version)
    except Exception as exc:  # noqa: BLE001 - logged, the current reranker keeps serving
        log.error("model-updates: cannot load reranker %s: %s", update.version, exc)
        return False
    holder.offer_reranker(reranker)
    log.info("model-updates: reranker %s (%s) serves from the next batch", update.version,
             update.action)
    return True


async def apply_update(raw: bytes | None, holder: PredictorHolder, load: Loader,
                       refused: Refused | None = None) -> Predictor | None:
    """Decode one record, load the predictor off the event loop, offer it to the holder.

    Returns the offered predictor, or None when the record was ignored or loading failed: a
    broken artifact or a bad record must never stop the worker.
    """
    update = decode_update(raw)
    if update is None:
        return None
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    try:
        predictor = await loop.run_in_executor(None, load, update)
    except Exception as exc:  # noqa: BLE001 - logged, the current model keeps serving
        log.error("model-updates: refused %s %s, %s %s keeps serving: %s", update.name,
                  update.version, holder.current.name, holder.current.version, exc)
        if refused is not None:
            refused(update.name, update.version, str(exc))
        return None
    if predictor is None:
        log.info("model-updates: %s %s gives nothing to serve; keeping %s %s", update.name,
                 update.version, holder.current.name, holder.current.version)
        return None
    holder.offer(predictor)
    log.info("model-updates: %s %s (%s %s) loaded in %.2fs; serves from the next batch",
             update.name, update.version, predictor.name, predictor.version,
             time.perf_counter() - t0)
    return predictor


async def handle_update(raw: bytes | None, worker: Worker, load: Loader) -> None:
    """Apply one `model-updates` record to this worker (a reranker, or a model to serve)."""
    update = decode_update(raw)
    if update is not None and update.name == RERANKER:
        await apply_reranker(update, worker.ingest.holder, worker.settings)
        return
    predictor = await apply_update(raw, worker.ingest.holder, load, worker.metrics.refuse)
    if predictor is not None:
        worker.metrics.set_model(predictor.name, predictor.version)


class ModelUpdatesReader(Service):
    """Reads `model-updates` outside the consumer group: every worker its own consumer on
    every partition, from the end, committing nothing. An agent in the group got the topic's
    one partition on one member only, and the other workers kept the old model.

    Started, it takes the end offsets before the worker goes on starting (so an
    announcement sent once /health says ok is never missed), then loads the registry's latest
    recommender if it differs from the one serving (announced between this worker's start-up
    load and its positioning), then applies each record as it comes."""

    START_WAIT_S = 30.0  # past this the worker starts anyway; the reader keeps trying

    def __init__(self, worker: Worker, load: Loader, **kwargs: Any) -> None:
        self.worker = worker
        self.load = load
        self.topic = worker.topics.model_updates
        self._consumer: Any = None  # aiokafka.AIOKafkaConsumer, started and positioned
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        try:
            await asyncio.wait_for(self._open(), self.START_WAIT_S)
        except TimeoutError:
            log.warning("model-updates: not positioned after %.0fs; still trying",
                        self.START_WAIT_S)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _open(self) -> None:
        from aiokafka import TopicPartition  # the worker's own Kafka client

        consumer = await self._connect()
        if consumer is None:
            return
        tps = [TopicPartition(self.topic.name, p) for p in range(self.topic.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        self._consumer = consumer

    @Service.task
    async def _read(self) -> None:
        while self._consumer is None and not self.should_stop:
            await self._open()
        if self._consumer is None:
            return
        await self._catch_up()
        while not self.should_stop:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    await handle_update(record.value, self.worker, self.load)

    async def _connect(self) -> Any:
        """A started consumer with no group, or None when the worker stops first."""
        from aiokafka import AIOKafkaConsumer

        settings = self.worker.settings
        while not self.should_stop:
            consumer = AIOKafkaConsumer(**settings.aiokafka_config(), group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="latest",
                                        client_id=f"{settings.app_id}-model-updates")
            try:
                await consumer.start()
                return consumer
            except Exception as exc:  # noqa: BLE001 - the broker may come later: retry
                log.warning("model-updates: cannot connect yet (%s); retrying", exc)
                await consumer.stop()
                await self.sleep(2.0)
        return None

    async def _catch_up(self) -> None:
        """Offer the registry's latest recommender if it is not the one serving."""
        from model.registry import ModelRegistry

        latest = ModelRegistry(self.worker.settings.data_dir).latest("recommender")
        holder = self.worker.ingest.holder
        if latest is None or latest == holder.current.version:
            return
        update = ModelUpdate(name="recommender", version=latest, action="publish",
                             ts=int(time.time() * 1000))
        await handle_update(update.model_dump_json().encode(), self.worker, self.load)


def attach_model_updates(worker: Worker) -> ModelUpdatesReader:
    """The reader that offers each announced model to the ingest agent's predictor holder
    (a user's own predictor, LAMSTREAM_PREDICTOR, takes them only if it opts in)."""
    def current() -> Predictor:
        return worker.ingest.holder.current

    load = (custom_loader(worker.settings, current) if worker.settings.predictor else
            registry_loader(worker.settings, current))
    reader = ModelUpdatesReader(worker, load)
    worker.app.add_dependency(reader)
    return reader
