"""The continuous trainer: feedback in, gated reranker and risk versions out (`lamstream trainer`).

Consumes the `feedback` and `risk-feedback` topics in its own consumer group
(`<app_id>-trainer`) and routes each record by its topic: feedback to
model.train.online.OnlineTrainer (the reranker), labelled scored events to
model.train.risk_online.OnlineRiskTrainer (the risk model); each scores a poll, then trains
on it, and asks its gate every `trainer_gate_every` / `trainer_risk_gate_every` records. A
candidate that wins is published to the registry (DATA_DIR/models/<name>/vN, atomic; a risk
candidate recalibrated first) and announced on `model-updates`, so every worker serves it
from its next batch.

Restarts resume, not retrain: the candidate's weights, the optimizer state, the replay buffer
and the gate window (of both models) are checkpointed atomically under DATA_DIR/trainer every
`trainer_checkpoint_s`, and the consumer offsets are committed only after a checkpoint. A
crash between the two replays at most one checkpoint interval of records (trained twice,
scored once more in the window): at-least-once, never a gap.

A rollback (`lamstream model rollback reranker|risk`) moves the registry's LATEST; the trainer
sees it at its next gate check and compares against the rolled-back version from then on.

Beside it, while the registry's latest recommender serves a hybrid, a second loop consumes
the `events` topic in the group `<app_id>-trainer-events` and fine-tunes the hybrid
(stream.trainer.sequence), published and announced the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import torch
from kafka.errors import KafkaError

from model.policy.reranker import Reranker
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.serving import RULES_VERSION
from model.train.online import OnlineConfig, OnlineTrainer
from model.train.risk_data import RISK, RiskServing
from model.train.risk_online import OnlineRiskTrainer, RiskOnlineConfig
from model.types import RERANKER
from stream.client import announce_model
from stream.errors import InfraError
from stream.feedback.source import load_feedback, load_risk_feedback
from stream.kafka.consumers import kafka_consumer
from stream.settings import Settings
from stream.topics import topics_for
from stream.trainer.sequence import SequenceLearner, consume_events
from stream.trainer.web import serve_probes

log = logging.getLogger(__name__)

Announce = Callable[[str, str, str], None]  # (model name, version, action)


def online_config(settings: Settings) -> OnlineConfig:
    return OnlineConfig(replay_size=settings.trainer_replay, lr=settings.trainer_lr,
                        window=settings.trainer_window, min_window=settings.trainer_min_window,
                        margin=settings.trainer_margin, confidence=settings.trainer_confidence)


def risk_online_config(settings: Settings) -> RiskOnlineConfig:
    return RiskOnlineConfig(replay_size=settings.trainer_risk_replay, lr=settings.trainer_risk_lr,
                            window=settings.trainer_risk_window,
                            min_positives=settings.trainer_risk_min_positives,
                            min_negatives=settings.trainer_risk_min_negatives,
                            margin=settings.trainer_risk_margin,
                            confidence=settings.trainer_confidence, seed=settings.policy_seed)


class ContinuousTrainer:
    """OnlineTrainer (reranker) + OnlineRiskTrainer + registry + checkpoint; no Kafka
    (run_trainer feeds it)."""

    def __init__(self, settings: Settings, announce: Announce | None = None) -> None:
        torch.set_num_threads(settings.trainer_threads)  # OMP spin-waits starve co-tenants
        self.settings = settings
        self.announce = announce
        self.registry = ModelRegistry(settings.data_dir)
        self.state_dir = Path(settings.data_dir) / "trainer"
        self.since_gate = 0
        self.since_risk_gate = 0
        self.published: list[str] = []
        self.gates: list[dict[str, Any]] = []
        self.risk_published: list[str] = []
        self.risk_gates: list[dict[str, Any]] = []
        # the hybrid's next-item loop (its own thread and consumer: run_trainer starts it)
        self.sequence = SequenceLearner(settings, self.registry, announce)
        serving = Reranker.from_registry(self.registry)
        cfg = online_config(settings)
        resumed = (self.state_dir / "state.json").is_file()
        if resumed:
            candidate = Reranker.load(self.state_dir / "candidate", "candidate")
        elif serving is not None:
            candidate = serving.copy("candidate")
        else:
            candidate = Reranker.fresh(seed=settings.policy_seed)
        self.trainer = OnlineTrainer(cfg, candidate, serving)
        if resumed:
            self._restore()
        risk_cfg = risk_online_config(settings)
        if (self.state_dir / "risk" / "state.json").is_file():
            self.risk = OnlineRiskTrainer.restore(self.state_dir / "risk", risk_cfg,
                                                  RiskServing.from_registry(self.registry))
        else:
            self.risk = OnlineRiskTrainer.start(risk_cfg, self.registry, settings.policy_seed)
        log.info("trainer: %s, serving reranker %s, risk %s", "resumed from " +
                 str(self.state_dir) if resumed else "fresh candidate",
                 serving.version if serving else "none (base ranking)",
                 self.risk.serving.version)

    # -- work -----------------------------------------------------------------------
    @property
    def sequence_gates(self) -> list[dict[str, Any]]:
        return self.sequence.gates

    @property
    def sequence_published(self) -> list[str]:
        return self.sequence.published

    def process(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.trainer.observe(records)
        self.since_gate += len(records)
        if self.since_gate >= self.settings.trainer_gate_every:
            self.since_gate = 0
            self.check_gate()

    def process_risk(self, records: Sequence[dict[str, Any]]) -> None:
        """Labelled scored events (`risk-feedback`): score, train, gate now and then."""
        if not records:
            return
        self.risk.observe(records)
        self.since_risk_gate += len(records)
        if self.since_risk_gate >= self.settings.trainer_risk_gate_every:
            self.since_risk_gate = 0
            self.check_risk_gate()

    def final_gate(self) -> bool:
        """At the end of a finite input: one more gate check for what came since the last.
        True when a check ran (the state changed: checkpoint it)."""
        ran = bool(self.since_gate or self.since_risk_gate)
        if self.since_gate:
            self.since_gate = 0
            self.check_gate()
        if self.since_risk_gate:
            self.since_risk_gate = 0
            self.check_risk_gate()
        return ran

    def sync_serving(self) -> None:
        """Follow the registry: a rollback (or another publisher) changes what serves."""
        latest = self.registry.latest(RERANKER)
        current = self.trainer.serving.version if self.trainer.serving else None
        if latest != current:
            log.info("trainer: registry serves reranker %s (was %s): comparing against it",
                     latest, current)
            self.trainer.set_serving(Reranker.from_registry(self.registry, latest)
                                     if latest else None)

    def check_gate(self) -> dict[str, Any]:
        self.sync_serving()
        gate = self.trainer.gate()
        out: dict[str, Any] = {"gate": gate.to_dict(), **self.trainer.stats()}
        if gate.passed:
            meta = {"gate": gate.to_dict(), "trained_records": self.trainer.trained,
                    "seen_records": self.trainer.seen, "served": RERANKER,
                    "config": self.trainer.candidate.config.to_dict()}
            version = self.registry.publish(RERANKER, self.trainer.candidate.save,
                                            metadata=meta)
            self.trainer.promote(version)
            self.published.append(version)
            out["published"] = version
            log.info("trainer: published reranker %s: %s", version, gate.reason)
            if self.announce is not None:
                self.announce(RERANKER, version, "publish")
        else:
            log.info("trainer: gate refused: %s", gate.reason)
        self.gates.append(out)
        return out

    def sync_risk_serving(self) -> None:
        """Follow the registry's risk LATEST (a rollback, or `lamstream train risk`)."""
        latest = self.registry.latest(RISK)
        if (latest or RULES_VERSION) != self.risk.serving.version:
            log.info("trainer: registry serves risk %s (was %s): comparing against it",
                     latest or RULES_VERSION, self.risk.serving.version)
            self.risk.set_serving(RiskServing.from_registry(self.registry, latest))

    def check_risk_gate(self) -> dict[str, Any]:
        self.sync_risk_serving()
        gate = self.risk.gate()
        out: dict[str, Any] = {"gate": gate.to_dict(), **self.risk.stats()}
        calibration = self.risk.recalibrate() if gate.passed else None
        if gate.passed and calibration is None:
            out["refused"] = "Platt fit on the window has no positive slope"
            log.info("trainer: risk candidate not published: %s", out["refused"])
        elif gate.passed:
            meta = self.risk.publish_metadata(gate, calibration)
            version = self.registry.publish(RISK, RiskScorer(self.risk.candidate).save,
                                            metadata=meta)
            self.risk.promote(version)
            self.risk_published.append(version)
            out["published"] = version
            log.info("trainer: published risk %s: %s", version, gate.reason)
            if self.announce is not None:
                self.announce(RISK, version, "publish")
        else:
            log.info("trainer: risk gate %s: %s", "refused" if gate.decided else "undecided",
                     gate.reason)
        self.risk_gates.append(out)
        return out

    # -- checkpoint -----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write candidate + optimizer + buffers to a fresh dir, then swap it in."""
        tmp = self.state_dir.with_name(f".trainer-{os.getpid()}-{time.monotonic_ns()}")
        tmp.mkdir(parents=True)
        try:
            self.trainer.candidate.save(tmp / "candidate")
            torch.save(self.trainer.opt.state_dict(), tmp / "optimizer.pt")
            state = self.trainer.state()
            state["since_gate"] = self.since_gate
            state["since_risk_gate"] = self.since_risk_gate
            (tmp / "state.json").write_bytes(orjson.dumps(state))
            self.risk.save(tmp / "risk")
            old = self.state_dir.with_name(f".trainer-old-{os.getpid()}")
            if self.state_dir.exists():
                os.rename(self.state_dir, old)
            os.rename(tmp, self.state_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _restore(self) -> None:
        state = orjson.loads((self.state_dir / "state.json").read_bytes())
        self.trainer.load_state(state)
        self.since_gate = int(state.get("since_gate", 0))
        self.since_risk_gate = int(state.get("since_risk_gate", 0))
        opt = self.state_dir / "optimizer.pt"
        if opt.is_file():
            try:
                self.trainer.opt.load_state_dict(torch.load(opt, weights_only=True))
            except ValueError as exc:  # written by a version with other parameter groups
                log.warning("trainer: optimizer state in %s does not fit (%s): the optimizer "
                            "starts afresh, the weights and buffers are kept", opt, exc)


def train_from_file(settings: Settings, source: str | None, chunk: int = 500, *,
                    risk_source: str | None = None) -> ContinuousTrainer:
    """Replay a feedback JSONL file (and/or a risk-feedback one) through the trainer (gate
    checks as on the topics, one more at the end), then checkpoint. Publishes to the
    registry; announces nothing."""
    ct = ContinuousTrainer(settings)
    records = load_feedback(source) if source is not None else []
    for i in range(0, len(records), chunk):
        ct.process(records[i:i + chunk])
    labelled = load_risk_feedback(risk_source) if risk_source is not None else []
    for i in range(0, len(labelled), chunk):
        ct.process_risk(labelled[i:i + chunk])
    ct.final_gate()
    ct.checkpoint()
    return ct


def gate_candidate(settings: Settings, candidate_dir: Path, records: Sequence[dict[str, Any]]
                   ) -> dict[str, Any]:
    """Compare a reranker artifact (a registry version dir, the trainer's checkpoint
    `DATA_DIR/trainer/candidate`, or any dir with reranker.pt + config.json) with the serving
    version on logged feedback, the trainer's gate, nothing trained; publish it if it wins."""
    registry = ModelRegistry(settings.data_dir)
    serving = Reranker.from_registry(registry)
    candidate = Reranker.load(Path(candidate_dir), "candidate")
    cfg = online_config(settings)
    trainer = OnlineTrainer(replace(cfg, window=max(cfg.window, len(records))), candidate,
                            serving)
    trainer.observe(records, train=False)
    gate = trainer.gate()
    out: dict[str, Any] = {"gate": gate.to_dict(),
                           "serving": serving.version if serving else "base",
                           "records": len(records), "skipped": trainer.skipped}
    if gate.passed:
        out["published"] = registry.publish(RERANKER, candidate.save, metadata={
            "gate": gate.to_dict(), "source": str(candidate_dir)})
    return out


def decode(raw: bytes | None, field: str = "rec_id") -> dict[str, Any] | None:
    """A JSON object carrying `field` (rec_id: feedback; feedback_id: risk-feedback)."""
    try:
        rec = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and field in rec else None


def _batches(consumer: Any, stop: threading.Event, idle_exit: float | None, risk_topic: str
             ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per poll: (feedback records, risk-feedback records), routed by topic."""
    idle_since = time.monotonic()
    bad = 0
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=500, max_records=2000)
        records: list[dict[str, Any]] = []
        labelled: list[dict[str, Any]] = []
        for tp, msgs in polled.items():
            risk = tp.topic == risk_topic
            for m in msgs:
                rec = decode(m.value, "feedback_id" if risk else "rec_id")
                if rec is None:
                    bad += 1
                    log.warning("trainer: skipping a malformed record at %s[%d]@%d "
                                "(%d so far)", m.topic, m.partition, m.offset, bad)
                else:
                    (labelled if risk else records).append(rec)
        if polled or not consumer.assignment():  # idle counts only once the group joined
            idle_since = time.monotonic()
        elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
            return
        yield records, labelled


def run_trainer(settings: Settings, *, once: bool = False, idle_exit_s: float = 5.0,
                stop: threading.Event | None = None) -> ContinuousTrainer:
    """Consume `feedback` and `risk-feedback` until SIGTERM/SIGINT (or, with `once`, until
    both have been idle for `idle_exit_s`); returns the trainer (for its gate logs). Its
    /health and /metrics (stream.trainer.web) are served on TRAINER_WEB_PORT meanwhile."""
    def announce(name: str, version: str, action: str) -> None:
        try:
            announce_model(settings, name, version,
                           "rollback" if action == "rollback" else "publish")
        except InfraError as exc:  # the registry is the truth; workers load it at start
            log.error("trainer: %s %s published but not announced: %s", name, version, exc)

    ct = ContinuousTrainer(settings, announce)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    idle = idle_exit_s if once else None
    with serve_probes(ct, settings), _events_loop(ct, settings, stop, idle):
        _consume(ct, settings, stop, idle)
    return ct


@contextlib.contextmanager
def _events_loop(ct: ContinuousTrainer, settings: Settings, stop: threading.Event,
                 idle_exit_s: float | None) -> Iterator[None]:
    """The hybrid's events loop in a thread of its own (TRAINER_SEQUENCE), joined on the way
    out; its broker failure is raised here, as the feedback loop's is."""
    if not settings.trainer_sequence:
        yield
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            consume_events(ct.sequence, settings, stop, idle_exit_s)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trainer's thread
            failed.append(exc)
            stop.set()
    thread = threading.Thread(target=run, name="trainer-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        if idle_exit_s is None:
            stop.set()
        thread.join()
    if failed:
        raise failed[0]


def _consume(ct: ContinuousTrainer, settings: Settings, stop: threading.Event,
             idle_exit_s: float | None) -> None:
    """The poll loop: process, checkpoint and commit every TRAINER_CHECKPOINT_S; with
    `idle_exit_s` (once), a final gate after the input went idle."""
    once = idle_exit_s is not None
    topics = topics_for(settings)
    consumer = kafka_consumer(settings, "lamstream-trainer",
                              group_id=f"{settings.app_id}-trainer", enable_auto_commit=False,
                              auto_offset_reset="earliest", max_poll_interval_ms=300_000,
                              session_timeout_ms=10_000, heartbeat_interval_ms=1000)
    try:
        consumer.subscribe([topics.feedback.name, topics.risk_feedback.name])
        last_ckpt = time.monotonic()
        dirty = False
        for records, labelled in _batches(consumer, stop, idle_exit_s,
                                          topics.risk_feedback.name):
            ct.process(records)
            ct.process_risk(labelled)
            dirty = dirty or bool(records) or bool(labelled)
            if dirty and time.monotonic() - last_ckpt >= settings.trainer_checkpoint_s:
                ct.checkpoint()
                consumer.commit()
                last_ckpt, dirty = time.monotonic(), False
        if once:  # its outcome too must survive: a restart would check (and publish) again
            dirty = ct.final_gate() or dirty
        if dirty:
            ct.checkpoint()
            consumer.commit()
    except KafkaError as exc:
        raise InfraError(f"trainer lost the broker at {settings.bootstrap}: {exc}") from None
    finally:
        consumer.close()
