"""A worker serves a trained hybrid with each user's sequence state in the features table; the
state survives a restart from the changelog; the trainer fine-tunes the hybrid from the events
stream and publishes a version mid-stream, which the worker hot-swaps to (issue 17)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka import KafkaConsumer, TopicPartition

from model.datasets import iter_events
from model.encoding import encode_sequences
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.sequence import state_from_bytes
from model.registry import ModelRegistry
from model.train.pipeline import train_recommender
from stream.client import PredictionSubscriber
from stream.kafka.admin import end_offsets, ensure_topics
from stream.schemas import Recommendation
from stream.settings import Settings
from stream.state.features import UserState
from stream.trainer.loop import run_trainer
from tests.helpers import poll_until
from tests.integration.test_model_swap import SAMPLE, TINY, triggers
from tests.integration.test_worker import encode, get_json, send, wait_exact_counts, worker
from tests.unit.model.test_hybrid import STATE_TOL

pytestmark = pytest.mark.integration


def _changelog(s: Settings) -> dict[str, UserState]:
    """Each user's latest state on the features changelog (what a restart restores)."""
    topic = f"{s.app_id}-{s.topic_prefix}features-changelog"
    ends = end_offsets(s, topic)
    consumer = KafkaConsumer(**s.kafka_python_config(), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        raw: dict[bytes, bytes | None] = {}
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
            assert time.monotonic() < deadline, "the changelog was not read to its end"
            for msgs in consumer.poll(500).values():
                for m in msgs:
                    raw[m.key] = m.value
    finally:
        consumer.close()
    return {k.decode(): UserState.from_bytes(v, 3) for k, v in raw.items() if v}


def _check_states(s: Settings, version: str, users: set[str]) -> int:
    """Every user's stored sequence state (of those with their whole history kept) equals a
    full pass of `version`'s sequence model over that history, within STATE_TOL; returns how
    many were compared."""
    reg = ModelRegistry(s.data_dir)
    seq = HybridRecommender.load(reg.path("recommender", version) / "hybrid").seq
    assert seq is not None
    compared = 0
    for user, st in _changelog(s).items():
        if user not in users or st.total != len(st.seq):
            continue  # a history longer than the state keeps: no full pass to compare with
        assert st.seq_state is not None, user
        got = state_from_bytes(st.seq_state)
        assert (got.version, got.events, got.last_ts_ms) == (version, st.total, st.seq[-1].ts_ms)
        batch = encode_sequences([list(st.seq)], seq.vocab, max_len=len(st.seq))
        with torch.inference_mode():
            full = seq.net.encode_state(batch)[:, 0]
        torch.testing.assert_close(got.hidden, full, rtol=STATE_TOL, atol=STATE_TOL)
        compared += 1
    return compared


def test_worker_keeps_hybrid_states_and_swaps_to_the_trainers_fine_tuned_version(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    events: list[dict[str, Any]] = list(iter_events(SAMPLE))
    first, second, rest = events[:1000], events[1000:1600], events[1600:]
    # one trainer poll of exactly the events sent before it starts: one fine-tuned version
    s = settings_factory(trainer_sequence_every=len(first) + len(second),
                         trainer_sequence_min_cases=100, trainer_sequence_margin=-1.0)
    ensure_topics(s)
    v1, comp = train_recommender(SAMPLE, s.data_dir, cfg=TINY, methods=("hybrid",))
    assert (v1, comp.served) == ("v1", "hybrid")
    base = f"http://127.0.0.1:{s.web_port}"
    recs: dict[str, Recommendation] = {}
    with PredictionSubscriber(s, from_beginning=True) as sub:
        def collect(want: set[str]) -> Callable[[], bool]:
            def done() -> bool:
                for record in sub.poll(0.2):
                    r = record.value
                    if isinstance(r, Recommendation):
                        assert r.event_id not in recs, f"two recommendations for {r.event_id}"
                        recs[r.event_id] = r
                return want <= set(recs)
            return done

        with worker(s, tmp_path, "w1"):
            assert get_json(f"{base}/health")[1]["model"] == "hybrid"
            send(s, encode(first))
            poll_until(collect(triggers(first)), timeout=60, message="v1's recommendations")
            wait_exact_counts(base, first)
        users = {e["user_id"] for e in events}
        assert _check_states(s, "v1", users) > 100  # stepped per event, as a full pass

        # a clean restart: the table comes back from the changelog, states included
        with worker(s, tmp_path, "w2"):
            send(s, encode(second))
            poll_until(collect(triggers(first + second)), timeout=60,
                       message="recommendations after the restart")
            wait_exact_counts(base, first + second)
            stop = threading.Event()
            trainer = threading.Thread(target=run_trainer, kwargs={"settings": s, "stop": stop},
                                       daemon=True)
            trainer.start()
            try:
                # events keep flowing (a trickle, at most 600) until the worker serves v2: the
                # trainer joins its group, learns the poll and publishes in the meantime
                sent, deadline = 0, time.monotonic() + 180
                while get_json(f"{base}/health")[1]["model_version"] != "v2":
                    assert time.monotonic() < deadline, "the worker never swapped to v2"
                    if sent < 600:
                        send(s, encode(rest[sent: sent + 10]))
                        sent += 10
                    collect(set())()
                    time.sleep(0.3)
                after = rest[sent:]
                send(s, encode(after))
                poll_until(collect(triggers(events)), timeout=60, message="all recommendations")
                wait_exact_counts(base, events)
            finally:
                stop.set()
                trainer.join(60)
    reg = ModelRegistry(s.data_dir)
    assert reg.versions("recommender") == ["v1", "v2"]
    manifest = reg.manifest("recommender", "v2")
    assert (manifest["served"], manifest["parent"]) == ("hybrid", "v1")
    assert set(recs) == triggers(events)  # nothing lost, nothing extra
    assert {recs[e].model_version for e in triggers(first + second)} == {"v1"}
    assert {recs[e].model_version for e in triggers(after)} == {"v2"}
    assert {recs[e].model for e in triggers(events)} == {"hybrid"}
    by_user: dict[str, list[str]] = {}
    for e in events:
        if e["event_id"] in recs:
            by_user.setdefault(e["user_id"], []).append(recs[e["event_id"]].model_version)
    assert all(vs == sorted(vs) for vs in by_user.values())
    # users with events after the swap: their state was re-encoded by v2, then stepped
    swapped = {e["user_id"] for e in after}
    assert _check_states(s, "v2", swapped) > 10
