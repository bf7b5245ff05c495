"""Serve the registry's latest recommender and risk model behind the Predictor seam."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from itertools import starmap
from pathlib import Path
from typing import Any

import torch

from model.batching import MicroBatcher
from model.device import resolve_device
from model.errors import ConfigError, RegistryError
from model.predictor import Predictor
from model.recommenders.base import METHODS, Recommender
from model.recommenders.baseline import BaselinePredictor
from model.recommenders.loading import load_recommender
from model.recommenders.neural import CPU_ROWS
from model.recommenders.sequence import SeqState, state_to_bytes
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.types import Prediction, PredictionContext, RiskOutput, ScoredItem, SeqItem

__all__ = ["ModelPredictor", "RULES_VERSION", "load_predictor", "with_trigger"]

RULES_VERSION = "rules-v1"


def with_trigger(ctx: PredictionContext) -> tuple[SeqItem, ...]:
    """The context's sequence, ending with the triggering event even if the caller left it out."""
    seq = ctx.sequence
    if seq and seq[-1].item_id == ctx.item_id and seq[-1].ts_ms == ctx.ts_ms:
        return seq
    return (*seq, SeqItem(ctx.item_id, ctx.event_type, ctx.ts_ms))


class ModelPredictor:
    """A frozen recommender + risk model: `predict_batch` computes a caller's whole batch in
    the calling thread; `predict_one` requests from concurrent callers meet in a micro-batcher.

    Deterministic top-k, so every item's propensity is 1.0. The trigger item and
    `context.exclude_items` are never recommended; `context.k` items at most. A missing risk
    model falls back to the baseline's rule score (version "rules-v1"), whose spend z-score
    learns from the purchases it scores, as the online baseline's does.

    max_batch defaults to one CPU pass (recommenders.neural.CPU_ROWS): a bigger batch runs as
    consecutive passes anyway, so waiting up to max_wait_ms for it to fill buys no throughput
    and adds latency (on a GPU, where a batch is one pass, pass a bigger max_batch).
    """

    def __init__(self, recommender: Recommender, risk: RiskScorer | None, *,
                 version: str, risk_version: str | None, max_batch: int = CPU_ROWS,
                 max_wait_ms: float = 5.0, max_queue: int = 8192,
                 timeout_s: float | None = 30.0) -> None:
        self.recommender = recommender
        self.risk_scorer = risk
        self.name = recommender.method
        self.version = version
        has_risk = risk is not None and risk_version is not None
        self.risk_version: str = risk_version if has_risk and risk_version else RULES_VERSION
        self._rules = BaselinePredictor() if risk is None else None
        self._lock = threading.Lock()  # one pass at a time: the batcher's or a caller's
        self._batcher: MicroBatcher[PredictionContext, Prediction] = MicroBatcher(
            self._compute_locked, max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, timeout_s=timeout_s, block_s=timeout_s,
            name=f"predict-{self.name}-{version}")

    @property
    def keeps_seq_state(self) -> bool:
        """True when the served recommender keeps a streaming sequence state (the hybrid)."""
        rec = self.recommender
        return hasattr(rec, "advance") and getattr(rec, "seq", None) is not None

    def compute(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        """One batched forward pass of both models, no queueing (what the batcher calls)."""
        if not contexts:
            return []
        rec_rows = [i for i, c in enumerate(contexts) if c.recommend and c.k > 0]
        ranked: dict[int, tuple[ScoredItem, ...]] = {}
        states = self._advance(contexts)
        if rec_rows:
            k = max(contexts[i].k for i in rec_rows)
            seqs = [with_trigger(contexts[i]) for i in rec_rows]
            excl = [contexts[i].exclude_items | {contexts[i].item_id} for i in rec_rows]
            out = (self.recommender.recommend(seqs, k, excl) if not states else
                   self.recommender.recommend(  # type: ignore[call-arg]
                       seqs, k, excl, states=[states.get(i) for i in rec_rows]))
            for i, row in zip(rec_rows, out, strict=True):
                ranked[i] = tuple(starmap(ScoredItem, row[: contexts[i].k]))  # propensity 1
        risks: list[RiskOutput]
        if self.risk_scorer is not None:
            risks = self.risk_scorer.score(contexts)
        else:
            assert self._rules is not None
            risks = [self._rules.risk_online(c) for c in contexts]
        return [Prediction(items=ranked.get(i, ()), risk=risks[i], model=self.name,
                           model_version=self.version, risk_model_version=self.risk_version,
                           seq_state=state_to_bytes(states[i]) if i in states else None)
                for i in range(len(contexts))]

    def _advance(self, contexts: Sequence[PredictionContext]) -> dict[int, SeqState]:
        """Sequence states after each event whose context carries one (recommending or
        not: every event advances the state), when the served model keeps states.

        A user's later event of the same call (its context carries b"": the worker has no
        state after the event before it yet) steps from the state this call computes for
        that event, one batched step per round of such events, instead of re-encoding the
        whole history: under a backlog a batch holds several events of many users."""
        advance = getattr(self.recommender, "advance", None)
        rows = [i for i, c in enumerate(contexts) if c.seq_state is not None]
        if advance is None or not rows or getattr(self.recommender, "seq", None) is None:
            return {}
        rounds: list[list[tuple[int, int | None]]] = []  # (row, row whose state it steps from)
        last: dict[str, tuple[int, int]] = {}  # user -> (row, round) of their latest event
        for i in rows:
            c = contexts[i]
            parent = None if c.seq_state else last.get(c.user_id)  # b"": chained, if it can be
            r = 0 if parent is None else parent[1] + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append((i, None if parent is None else parent[0]))
            last[c.user_id] = (i, r)
        out: dict[int, SeqState] = {}
        for level in rounds:
            got = advance([with_trigger(contexts[i]) for i, _ in level],
                          [contexts[i].seq_state if p is None else out[p] for i, p in level])
            out.update(zip((i for i, _ in level), got, strict=True))
        return out

    def _compute_locked(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        with self._lock, torch.inference_mode():
            return self.compute(contexts)

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        """The whole batch in the calling thread, `max_batch` rows a pass. A caller that
        already holds a batch (the worker's model call) gains nothing from the batcher's
        queue and pays for its thread: every torch operation hands the GIL back, and a second
        thread woken per request competes for it. In the worker this cut the model's share
        of a drained batch from ~170 to ~150 us an event (docs/benchmarks/
        hybrid-worker-2026-12-08.md)."""
        rows = list(contexts)
        step = self._batcher.max_batch
        out: list[Prediction] = []
        for i in range(0, len(rows), step):
            out.extend(self._compute_locked(rows[i:i + step]))
        return out

    def predict_one(self, context: PredictionContext) -> Prediction:
        """One request through the batcher (what concurrent callers use)."""
        return self._batcher.submit(context).result()

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        """Frozen between published versions: online learning belongs to the baseline."""

    def metrics(self) -> dict[str, Any]:
        return self._batcher.metrics()

    def close(self) -> None:
        """Finish queued requests and stop the batcher thread (after a swap)."""
        self._batcher.close()


_cache_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], tuple[Recommender, str]] = {}


def _load_recommender(reg: ModelRegistry, device: torch.device, prefer: str,
                      version: str | None = None) -> tuple[Recommender, str] | None:
    version = version or reg.latest("recommender")
    if version is None:
        return None
    root = reg.path("recommender", version)
    manifest = reg.manifest("recommender", version)
    method = str(manifest.get("served", "")) if prefer == "auto" else prefer
    available = [m for m in manifest.get("methods", []) if (root / m).is_dir()]
    if method not in available:
        raise RegistryError(f"recommender {version} has no {method!r} model "
                            f"(has: {', '.join(available) or 'none'})")
    key = (str(root.resolve()), version, method, str(device))
    with _cache_lock:  # versions are immutable, so a loaded one can be shared
        hit = _cache.get(key)
        if hit is None:
            rec = load_recommender(root / method, method, device)
            seq = getattr(rec, "seq", None)
            if seq is not None:  # cached sequence states name the version that computed them
                seq.version = version
            hit = (rec, version)
            _cache[key] = hit
    return hit


def load_predictor(data_dir: Path, device: str = "auto", prefer: str = "auto", *,
                   recommender_version: str | None = None, risk_version: str | None = None,
                   features: Collection[str] | None = None, with_risk: bool = True,
                   explain_risk_above: float | None = None, **batcher: Any) -> Predictor:
    """The Predictor for the registry's latest versions in `data_dir`.

    prefer: "auto" serves the method that won the evaluation at training time; a method name
    ("popularity", "covisitation", "gru", "sasrec", "hybrid", "hybrid_without_sequence") serves
    that one from the latest version;
    "baseline" (or an empty registry) gives the online BaselinePredictor. Loading is cheap
    (small files, cached per immutable version) and touches no shared state but the cache, so
    a worker may call it from any thread and swap predictors between batches; call `close()`
    on the old ModelPredictor after the swap. `recommender_version` / `risk_version` pin a
    published version (what a `model-updates` record names) instead of `latest`. With
    `features` (the names the stream produces), a risk model that reads any other raises
    FeatureMismatch (model.features) instead of serving scores built on zeros.
    `with_risk=False` serves the rule risk whatever the registry holds. `explain_risk_above`
    (a worker's alert threshold) limits the risk model's reasons to the scores that reach it
    (model.risk.model.RiskScorer); None explains every score.
    """
    if prefer not in ("auto", "baseline", *METHODS):
        raise ConfigError(f"prefer must be auto, baseline or one of {', '.join(METHODS)}")
    if prefer == "baseline":
        return BaselinePredictor()
    dev = resolve_device(device)
    reg = ModelRegistry(Path(data_dir))
    rec = _load_recommender(reg, dev, prefer, recommender_version)
    if rec is None:
        return BaselinePredictor()
    risk_version = (risk_version or reg.latest("risk")) if with_risk else None
    risk = (RiskScorer.load(reg.path("risk", risk_version), dev, produced=features,
                            explain_above=explain_risk_above) if risk_version else None)
    return ModelPredictor(rec[0], risk, version=rec[1], risk_version=risk_version, **batcher)
