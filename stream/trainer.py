"""The continuous trainer: feedback records in, gated reranker versions out (`lamstream trainer`).

Consumes the `feedback` topic in its own consumer group (`<app_id>-trainer`), feeds each
poll to model.train.online.OnlineTrainer (score, then train), and every
`trainer_gate_every` records asks its gate. A candidate that wins is published to the
registry (DATA_DIR/models/reranker/vN, atomic) and announced on `model-updates`, so every
worker reranks with it from its next batch.

Restarts resume, not retrain: the candidate's weights, the optimizer state, the replay buffer
and the gate window are checkpointed atomically under DATA_DIR/trainer every
`trainer_checkpoint_s`, and the consumer offsets are committed only after a checkpoint. A
crash between the two replays at most one checkpoint interval of records (trained twice,
scored once more in the window): at-least-once, never a gap.

A rollback (`lamstream model rollback reranker`) moves the registry's LATEST; the trainer sees
it at its next gate check and compares against the rolled-back version from then on.
"""

from __future__ import annotations

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

from model.registry import ModelRegistry
from model.reranker import Reranker
from model.train.online import OnlineConfig, OnlineTrainer
from model.types import RERANKER
from stream.errors import InfraError
from stream.settings import Settings

log = logging.getLogger(__name__)

Announce = Callable[[str, str], None]  # (version, action)


def online_config(settings: Settings) -> OnlineConfig:
    return OnlineConfig(replay_size=settings.trainer_replay, lr=settings.trainer_lr,
                        window=settings.trainer_window, min_window=settings.trainer_min_window,
                        margin=settings.trainer_margin, confidence=settings.trainer_confidence)


class ContinuousTrainer:
    """OnlineTrainer + registry + checkpoint; no Kafka (run_trainer feeds it)."""

    def __init__(self, settings: Settings, announce: Announce | None = None) -> None:
        import torch

        torch.set_num_threads(settings.trainer_threads)  # OMP spin-waits starve co-tenants
        self.settings = settings
        self.announce = announce
        self.registry = ModelRegistry(settings.data_dir)
        self.state_dir = Path(settings.data_dir) / "trainer"
        self.since_gate = 0
        self.published: list[str] = []
        self.gates: list[dict[str, Any]] = []
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
        log.info("trainer: %s, serving reranker %s", "resumed from " + str(self.state_dir)
                 if resumed else "fresh candidate",
                 serving.version if serving else "none (base ranking)")

    # -- work -----------------------------------------------------------------------
    def process(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.trainer.observe(records)
        self.since_gate += len(records)
        if self.since_gate >= self.settings.trainer_gate_every:
            self.since_gate = 0
            self.check_gate()

    def final_gate(self) -> None:
        """At the end of a finite input: one more gate check for what came since the last."""
        if self.since_gate:
            self.since_gate = 0
            self.check_gate()

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
                self.announce(version, "publish")
        else:
            log.info("trainer: gate refused: %s", gate.reason)
        self.gates.append(out)
        return out

    # -- checkpoint -----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write candidate + optimizer + buffers to a fresh dir, then swap it in."""
        import torch

        tmp = self.state_dir.with_name(f".trainer-{os.getpid()}-{time.monotonic_ns()}")
        tmp.mkdir(parents=True)
        try:
            self.trainer.candidate.save(tmp / "candidate")
            torch.save(self.trainer.opt.state_dict(), tmp / "optimizer.pt")
            state = self.trainer.state()
            state["since_gate"] = self.since_gate
            (tmp / "state.json").write_bytes(orjson.dumps(state))
            old = self.state_dir.with_name(f".trainer-old-{os.getpid()}")
            if self.state_dir.exists():
                os.rename(self.state_dir, old)
            os.rename(tmp, self.state_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _restore(self) -> None:
        import torch

        state = orjson.loads((self.state_dir / "state.json").read_bytes())
        self.trainer.load_state(state)
        self.since_gate = int(state.get("since_gate", 0))
        opt = self.state_dir / "optimizer.pt"
        if opt.is_file():
            self.trainer.opt.load_state_dict(torch.load(opt, weights_only=True))


def train_from_file(settings: Settings, source: str, chunk: int = 500) -> ContinuousTrainer:
    """Replay a feedback JSONL file through the trainer (gate checks as on the topic, one
    more at the end), then checkpoint. Publishes to the registry; announces nothing."""
    from stream.feedback_source import load_feedback

    ct = ContinuousTrainer(settings)
    records = load_feedback(source)
    for i in range(0, len(records), chunk):
        ct.process(records[i:i + chunk])
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


def decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        rec = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and "rec_id" in rec else None


def _batches(consumer: Any, stop: threading.Event, idle_exit: float | None
             ) -> Iterator[list[dict[str, Any]]]:
    idle_since = time.monotonic()
    bad = 0
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=500, max_records=2000)
        records = []
        for msgs in polled.values():
            for m in msgs:
                rec = decode(m.value)
                if rec is None:
                    bad += 1
                    log.warning("trainer: skipping a malformed feedback record at %s[%d]@%d "
                                "(%d so far)", m.topic, m.partition, m.offset, bad)
                else:
                    records.append(rec)
        if polled or not consumer.assignment():  # idle counts only once the group joined
            idle_since = time.monotonic()
        elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
            return
        yield records


def run_trainer(settings: Settings, *, once: bool = False, idle_exit_s: float = 5.0,
                stop: threading.Event | None = None) -> ContinuousTrainer:
    """Consume `feedback` until SIGTERM/SIGINT (or, with `once`, until the topic has been
    idle for `idle_exit_s`); returns the trainer (for its gate log)."""
    from kafka.errors import KafkaError

    from stream.client import _consumer, announce_model
    from stream.topics import topics_for

    def announce(version: str, action: str) -> None:
        try:
            announce_model(settings, RERANKER, version,
                           "rollback" if action == "rollback" else "publish")
        except InfraError as exc:  # the registry is the truth; workers load it at start
            log.error("trainer: reranker %s published but not announced: %s", version, exc)

    ct = ContinuousTrainer(settings, announce)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    topic = topics_for(settings).feedback.name
    consumer = _consumer(settings, "lamstream-trainer", group_id=f"{settings.app_id}-trainer",
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         max_poll_interval_ms=300_000, session_timeout_ms=10_000,
                         heartbeat_interval_ms=1000)
    try:
        consumer.subscribe([topic])
        last_ckpt = time.monotonic()
        dirty = False
        for records in _batches(consumer, stop, idle_exit_s if once else None):
            ct.process(records)
            dirty = dirty or bool(records)
            if dirty and time.monotonic() - last_ckpt >= settings.trainer_checkpoint_s:
                ct.checkpoint()
                consumer.commit()
                last_ckpt, dirty = time.monotonic(), False
        if once:
            ct.final_gate()
        if dirty:
            ct.checkpoint()
            consumer.commit()
    except KafkaError as exc:
        raise InfraError(f"trainer lost the broker at {settings.bootstrap}: {exc}") from None
    finally:
        consumer.close()
    return ct
