"""The model-updates agent: load a newly published model version and swap it in between batches."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from stream.app import Worker

log = logging.getLogger(__name__)


def attach_model_updates(worker: Worker) -> None:
    app = worker.app
    settings = worker.settings
    topic = app.topic(worker.topics.model_updates.name, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw", partitions=1)

    @app.agent(topic, name=f"{settings.topic_prefix}model-updates")
    async def model_updates(stream: Any) -> None:
        async for raw in stream:
            try:
                update = orjson.loads(raw)
                name, version = update["name"], update["version"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("ignoring a malformed model-updates record")
                continue
            if name not in ("recommender", "risk"):
                continue
            try:
                from model.serving import load_predictor
            except ImportError:
                log.warning("model-updates: no model serving package installed; ignored")
                continue
            loop = asyncio.get_running_loop()
            try:
                predictor = await loop.run_in_executor(
                    None, lambda: load_predictor(settings.data_dir, device=settings.device,
                                                 prefer=settings.model_name))
            except Exception as exc:  # a broken artifact must not stop the worker
                log.error("model-updates: cannot load %s %s: %s", name, version, exc)
                continue
            worker.ingest.holder.offer(predictor)
            worker.metrics.set_model(predictor.name, predictor.version)
            log.info("model-updates: %s %s will serve from the next batch", name, version)
