"""The trainer's next-item loop: the events topic in, fine-tuned hybrid versions out.

Runs beside the feedback loop (stream.trainer.loop) in its own consumer group,
`<app_id>-trainer-events`, only while the registry's latest recommender serves a hybrid
(TRAINER_SEQUENCE turns it off). Every `trainer_sequence_every` events form a poll: each
user's poll events, after the last events seen of that user as context, become next-item
cases (model.train.finetune). The serving hybrid and the candidate (a copy that keeps
learning) are both scored on the poll's cases before the candidate trains on them
(prequential), then the candidate's sequence model and ranker fine-tune. The gate compares the
two on the last `trainer_sequence_window` polls; a candidate that wins is published to the
registry as a new recommender version (served: hybrid; the parent's other methods copied) and
announced on `model-updates`, the reranker's path, so every worker hot-swaps to it and
re-encodes users' cached sequence states lazily. A rollback (`lamstream model rollback
recommender`) moves LATEST: the learner follows it at its next poll.

Restarts: offsets are committed after each poll is learned, so a crash replays at most one
poll; the candidate starts again from the registry's latest version (an unpublished gain of at
most one gate window is lost) and users' context rebuilds from the stream.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from model.recommenders.base import HYBRID_METHODS
from model.recommenders.hybrid import HybridRecommender
from model.registry import ModelRegistry
from model.train.finetune import FineTuneConfig, fine_tune, prequential, sample_cases
from model.types import SeqItem
from stream.errors import InfraError, PoisonMessage
from stream.kafka.consumers import kafka_consumer
from stream.schemas import Event, decode_event
from stream.settings import Settings
from stream.topics import topics_for

log = logging.getLogger(__name__)

RECOMMENDER = "recommender"
HYBRID = HYBRID_METHODS[0]
HR = "hr@20"
_MAX_USERS = 100_000  # users whose recent events are kept as context (least recent dropped)

Announce = Callable[[str, str, str], None]  # (model name, version, action)


class SequenceLearner:
    """The candidate hybrid, the serving one, users' context and the gate window; no Kafka
    (consume_events feeds it)."""

    def __init__(self, settings: Settings, registry: ModelRegistry,
                 announce: Announce | None = None, cfg: FineTuneConfig = FineTuneConfig()
                 ) -> None:
        self.settings = settings
        self.registry = registry
        self.announce = announce
        self.cfg = cfg
        self.serving: HybridRecommender | None = None
        self.candidate: HybridRecommender | None = None
        self.serving_version: str | None = None
        self._synced = False
        self.histories: OrderedDict[str, list[SeqItem]] = OrderedDict()
        self.buffer: list[Event] = []
        # per poll: (cases, candidate HR@20, serving HR@20), both scored before training
        self.window: deque[tuple[int, float, float]] = deque(
            maxlen=settings.trainer_sequence_window)
        self.seen = self.trained = self.polls = self.skipped = 0
        self.gates: list[dict[str, Any]] = []
        self.published: list[str] = []

    def stats(self) -> dict[str, Any]:
        return {"seen": self.seen, "trained": self.trained, "polls": self.polls,
                "skipped": self.skipped, "users": len(self.histories),
                "window": sum(n for n, _, _ in self.window),
                "serving": self.serving_version if self.serving is not None else None,
                "last_candidate_hr": self.window[-1][1] if self.window else None,
                "last_serving_hr": self.window[-1][2] if self.window else None}

    # -- what serves ------------------------------------------------------------------
    def sync_serving(self) -> bool:
        """Follow the registry's LATEST recommender (a publish, a rollback, `lamstream train
        recommender`); True when it serves a hybrid, which the candidate then copies."""
        latest = self.registry.latest(RECOMMENDER)
        if self._synced and latest == self.serving_version:
            return self.serving is not None
        self._synced, self.serving_version = True, latest
        self.serving = self.candidate = None
        self.window.clear()
        if latest is None:
            return False
        manifest = self.registry.manifest(RECOMMENDER, latest)
        path = self.registry.path(RECOMMENDER, latest) / HYBRID
        if manifest.get("served") != HYBRID or not path.is_dir():
            log.info("trainer: recommender %s serves %s, not a hybrid: events not learned",
                     latest, manifest.get("served"))
            return False
        self.serving = self._load(path, latest)
        self.candidate = self._load(path, latest)
        log.info("trainer: fine-tuning a copy of hybrid %s from the events stream", latest)
        return True

    @staticmethod
    def _load(path: Path, version: str) -> HybridRecommender:
        rec = HybridRecommender.load(path)
        if rec.seq is not None:
            rec.seq.version = version
        return rec

    # -- work -------------------------------------------------------------------------
    def observe(self, events: list[Event]) -> bool:
        """Buffer a poll's events; learn once `trainer_sequence_every` are buffered. True when
        the buffer was learned (offsets up to here may be committed)."""
        self.seen += len(events)
        self.buffer.extend(events)
        if len(self.buffer) < self.settings.trainer_sequence_every:
            return False
        self.learn()
        return True

    def learn(self) -> dict[str, Any] | None:
        """Score, train on and gate the buffered events; None when no hybrid serves (the
        events are dropped) or they hold no next-item case."""
        buf, self.buffer = self.buffer, []
        if not buf or not self.sync_serving():
            self.skipped += len(buf)
            return None
        assert self.serving is not None and self.candidate is not None
        users, new_from, categories = self._poll(buf)
        cases = sample_cases(self.candidate, users, new_from, self.cfg)
        if not cases:
            self._remember(users)
            return None
        serving_hr = prequential(self.serving, cases)[HR]
        report = fine_tune(self.candidate, users, new_from, self.cfg, categories)
        self._remember(users)
        self.polls += 1
        self.trained += report.cases
        self.window.append((report.cases, report.prequential[HR], serving_hr))
        log.info("trainer: hybrid poll %d: %d cases, HR@20 candidate %.4f serving %.4f",
                 self.polls, report.cases, report.prequential[HR], serving_hr)
        return self.check_gate(report.to_json())

    def _poll(self, buf: list[Event]
              ) -> tuple[dict[str, list[SeqItem]], dict[str, int], dict[str, str]]:
        """Each user's context (last events seen) + the poll's events, the index of its first
        new event, and the poll's item categories (for items new to the sequence model)."""
        max_len = self.candidate.seq.max_len if self.candidate and self.candidate.seq else 50
        users: dict[str, list[SeqItem]] = {}
        new_from: dict[str, int] = {}
        categories: dict[str, str] = {}
        ids: set[str] = set()
        for ev in buf:
            if ev.event_id in ids:  # a producer's retry within the poll
                continue
            ids.add(ev.event_id)
            seq = users.get(ev.user_id)
            if seq is None:
                seq = users[ev.user_id] = list(self.histories.get(ev.user_id, ())[-max_len:])
                new_from[ev.user_id] = len(seq)
            seq.append(SeqItem(ev.item_id, ev.type, ev.ts))
            if ev.category:
                categories[ev.item_id] = ev.category
        return users, new_from, categories

    def _remember(self, users: dict[str, list[SeqItem]]) -> None:
        max_len = self.candidate.seq.max_len if self.candidate and self.candidate.seq else 50
        hist = self.histories
        for u, seq in users.items():
            hist[u] = seq[-max_len:]
            hist.move_to_end(u)
        while len(hist) > _MAX_USERS:
            hist.popitem(last=False)

    # -- the gate ---------------------------------------------------------------------
    def check_gate(self, poll: dict[str, Any]) -> dict[str, Any]:
        """Publish the candidate when its HR@20 over the window's cases beats the serving
        hybrid's by `trainer_sequence_margin` (a strict gain unless the margin is negative)."""
        n = sum(c for c, _, _ in self.window)
        cand = sum(c * h for c, h, _ in self.window) / max(n, 1)
        serv = sum(c * h for c, _, h in self.window) / max(n, 1)
        margin = self.settings.trainer_sequence_margin
        gate: dict[str, Any] = {"n": n, "candidate_value": round(cand, 5),
                                "serving_value": round(serv, 5), "passed": False}
        if n < self.settings.trainer_sequence_min_cases:
            gate["reason"] = (f"window has {n} cases, needs "
                              f"{self.settings.trainer_sequence_min_cases}")
        elif cand < serv * (1.0 + margin) or (margin >= 0 and cand <= serv):
            gate["reason"] = f"candidate {cand:.4f} below serving {serv:.4f} x (1 + {margin})"
        else:
            gate.update(passed=True, reason=f"candidate {cand:.4f} beats serving {serv:.4f} "
                        f"x (1 + {margin})")
        out: dict[str, Any] = {"gate": gate, "poll": poll, **self.stats()}
        if gate["passed"]:
            out["published"] = self.publish(gate)
        self.gates.append(out)
        return out

    def publish(self, gate: dict[str, Any]) -> str:
        """The candidate as a new recommender version (the parent's other methods copied, so
        a worker pinned to one of them still finds it); it serves from now on."""
        assert self.candidate is not None and self.serving_version is not None
        parent = self.serving_version
        parent_dir = self.registry.path(RECOMMENDER, parent)
        old = self.registry.manifest(RECOMMENDER, parent)
        methods = sorted({HYBRID, *old.get("methods", [])})
        candidate = self.candidate

        def write(d: Path) -> None:
            candidate.save(d / HYBRID)
            for m in methods:
                if m != HYBRID and (parent_dir / m).is_dir():
                    shutil.copytree(parent_dir / m, d / m)
        meta = {"served": HYBRID, "methods": methods, "parent": parent,
                "fine_tuned": {"gate": gate, "seen_events": self.seen,
                               "trained_cases": self.trained, "config": self.cfg.to_dict()},
                "data": old.get("data"), "config": old.get("config")}
        version = self.registry.publish(RECOMMENDER, write, metadata=meta)
        self.serving = self._load(self.registry.path(RECOMMENDER, version) / HYBRID, version)
        self.serving_version = version
        self.window.clear()
        self.published.append(version)
        log.info("trainer: published recommender %s (hybrid fine-tuned from %s): %s",
                 version, parent, gate["reason"])
        if self.announce is not None:
            self.announce(RECOMMENDER, version, "publish")
        return version


def consume_events(learner: SequenceLearner, settings: Settings, stop: threading.Event,
                   idle_exit_s: float | None) -> None:
    """The events poll loop (group `<app_id>-trainer-events`): observe, commit after each
    learned poll; with `idle_exit_s`, learn what is buffered once the input went idle."""
    consumer = kafka_consumer(settings, "lamstream-trainer-events",
                              group_id=f"{settings.app_id}-trainer-events",
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              max_poll_interval_ms=600_000, session_timeout_ms=10_000,
                              heartbeat_interval_ms=1000)
    try:
        consumer.subscribe([topics_for(settings).events.name])
        idle_since = time.monotonic()
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=500, max_records=2000)
            events: list[Event] = []
            for msgs in polled.values():
                for m in msgs:
                    try:
                        events.append(decode_event(m.value, m.key, settings.max_event_bytes))
                    except PoisonMessage:  # the worker sends it to the DLQ
                        learner.skipped += 1
            if learner.observe(events):
                consumer.commit()
            if polled or not consumer.assignment():
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
        if idle_exit_s is not None and learner.buffer:
            learner.learn()
            consumer.commit()
    except KafkaError as exc:
        raise InfraError(f"trainer lost the broker at {settings.bootstrap}: {exc}") from None
    finally:
        consumer.close()
