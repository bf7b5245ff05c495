"""Fakes that satisfy the model Protocols, and the contract every Predictor must pass."""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.predictor import Predictor
from model.recommenders.base import Ranked
from model.types import (
    FEATURE_NAMES,
    Prediction,
    PredictionContext,
    Reason,
    RiskOutput,
    ScoredItem,
    SeqItem,
)

__all__ = ["CONTRACT_RULES", "DEFAULT_CATALOGUE", "Failure", "FakePredictor", "FakeRecommender",
           "check_predictor", "contract_contexts", "learns_online"]

DEFAULT_CATALOGUE: tuple[str, ...] = tuple(f"item-{i}" for i in range(50))


class FakeRecommender:
    """A `Recommender` that ranks a fixed catalogue: the same order for everyone.

    Honours `k` and the exclusions, like every real method; `save`/`load` round-trip.
    """

    method = "fake"

    def __init__(self, catalogue: Sequence[str] = DEFAULT_CATALOGUE) -> None:
        self.catalogue = tuple(catalogue)

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        out: list[Ranked] = []
        for _seq, ex in zip(seqs, exclude, strict=True):
            row = [(item, 1.0 / (1 + rank)) for rank, item in enumerate(self.catalogue)
                   if item not in ex]
            out.append(row[:k])
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.json").write_text(json.dumps(list(self.catalogue)), "utf-8")

    @classmethod
    def load(cls, directory: Path) -> FakeRecommender:
        return cls(json.loads((directory / "fake.json").read_text("utf-8")))


class FakePredictor:
    """A `Predictor` with known, deterministic answers, that records how it was called.

    Recommendations: the catalogue in order, minus the trigger item and `exclude_items`, at
    most `context.k` (none when `context.recommend` is False). Risk: `features[risk_feature]
    / risk_scale` clipped to [0, 1], with that feature as the one reason when it is positive.
    `fail_with` makes `predict_batch` raise it (to test error paths). Thread-safe counters:
    the worker calls from a thread pool. With `keeps_seq_state`, a context's `seq_state`
    advances as the hybrid's does: its bytes are the history's items joined by b"|", one item
    appended to a kept state, the whole history written out for b"" (a re-encode).
    """

    def __init__(self, name: str = "fake", version: str = "fake-v1", *,
                 catalogue: Sequence[str] = DEFAULT_CATALOGUE,
                 risk_feature: str = "count_purchase_1m", risk_scale: float = 5.0,
                 risk_version: str = "fake-risk-v1",
                 fail_with: BaseException | None = None, keeps_seq_state: bool = False
                 ) -> None:
        self.name = name
        self.keeps_seq_state = keeps_seq_state
        self.version = version
        self.risk_version = risk_version
        self.recommender = FakeRecommender(catalogue)
        self.risk_feature = risk_feature
        self.risk_scale = risk_scale
        self.fail_with = fail_with
        self.batch_sizes: list[int] = []
        self.seen_event_ids: list[str] = []
        self.learned = 0
        self.closed = False
        self._lock = threading.Lock()

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        with self._lock:
            self.batch_sizes.append(len(contexts))
            self.seen_event_ids.extend(c.event_id for c in contexts)
        if self.fail_with is not None:
            raise self.fail_with
        out: list[Prediction] = []
        for c in contexts:
            items: tuple[ScoredItem, ...] = ()
            if c.recommend and c.k > 0:
                (row,) = self.recommender.recommend([c.sequence], c.k,
                                                    [c.exclude_items | {c.item_id}])
                items = tuple(ScoredItem(i, s, 1.0) for i, s in row)
            out.append(Prediction(items=items, risk=self.risk(c.features), model=self.name,
                                  model_version=self.version,
                                  risk_model_version=self.risk_version,
                                  seq_state=self._advance(c)))
        return out

    def _advance(self, c: PredictionContext) -> bytes | None:
        if not self.keeps_seq_state or c.seq_state is None:
            return None
        if c.seq_state:
            return c.seq_state + b"|" + c.item_id.encode()
        return b"|".join(e.item_id.encode() for e in c.sequence)

    def risk(self, features: dict[str, float]) -> RiskOutput:
        value = float(features.get(self.risk_feature, 0.0))
        score = min(1.0, max(0.0, value / self.risk_scale))
        reasons = (Reason(self.risk_feature, value, score),) if score > 0 else ()
        return RiskOutput(score=score, reasons=reasons)

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        with self._lock:
            self.learned += len(contexts)

    def close(self) -> None:
        self.closed = True


# --- the Predictor contract --------------------------------------------------------------
# What the worker relies on from any Predictor (its own or a user's, LAMSTREAM_PREDICTOR):
# check_predictor runs these rules and says in plain words which ones a predictor breaks.
CONTRACT_RULES: dict[str, str] = {
    "protocol": "has `name`, `version`, `predict_batch` and `learn_batch` (model.predictor)",
    "identity": "`name` and `version` are non-empty strings",
    "answers": "predict_batch returns a list with one Prediction per context, in order, "
               "without raising (also for an empty batch, unknown items, missing features)",
    "labels": "each Prediction names the predictor (`model` == name, `model_version` == "
              "version) and a non-empty `risk_model_version`",
    "k": "at most `context.k` items, and none when `context.recommend` is False",
    "exclusions": "never the event's own item nor one of `context.exclude_items`",
    "unique": "no item twice in one recommendation",
    "order": "items best first: finite scores that never increase down the list",
    "propensity": "every item's propensity is in (0, 1]",
    "risk": "risk.score is a probability in [0, 1]; each reason has finite numbers",
    "deterministic": "the same contexts twice give the same items and risk scores (not asked "
                     "of a predictor with `learns_online = True`, which learns as it predicts)",
    "batch_of_one": "a context alone gets what it got inside the batch (not asked of one "
                    "with `learns_online = True`)",
    "learns": "learn_batch accepts the contexts it was just asked about",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One broken rule of CONTRACT_RULES: its name and what went wrong, in plain words."""

    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def contract_contexts() -> list[PredictionContext]:
    """The contexts the contract asks about: cold and long histories, k of 0, 1, 5 and 30,
    exclusions, an item no catalogue holds, no features at all, and a non-recommending
    event (risk only)."""
    full = {name: float(i % 7) for i, name in enumerate(FEATURE_NAMES)}

    def seq(n: int, t0: int) -> tuple[SeqItem, ...]:
        return tuple(SeqItem(DEFAULT_CATALOGUE[(3 * j) % 20], ("view", "click")[j % 2],
                             t0 + j * 1000) for j in range(n))

    def ctx(i: int, history: tuple[SeqItem, ...], features: dict[str, float], k: int,
            event_type: str = "view", **kw: Any) -> PredictionContext:
        item = kw.pop("item_id", history[-1].item_id if history else DEFAULT_CATALOGUE[0])
        ts = history[-1].ts_ms if history else 1_000
        return PredictionContext(user_id=f"contract-u{i}", event_id=f"contract-e{i}",
                                 item_id=item, event_type=event_type, ts_ms=ts,
                                 category=kw.pop("category", "c1"), sequence=history,
                                 features=features, k=k, **kw)

    return [ctx(0, seq(3, 1_000), full, 5),
            ctx(1, seq(1, 2_000), {}, 1, "click", category=None),
            ctx(2, seq(4, 3_000), full, 10, "purchase", recommend=False),
            ctx(3, seq(20, 4_000), full, 30, exclude_items=frozenset(DEFAULT_CATALOGUE[:5])),
            ctx(4, (SeqItem("contract-unknown-item", "view", 9_000),), full, 10,
                item_id="contract-unknown-item"),
            ctx(5, seq(2, 6_000), full, 0, "add_to_cart")]


def check_predictor(predictor: object,
                    contexts: Sequence[PredictionContext] | None = None) -> list[Failure]:
    """The rules of CONTRACT_RULES that `predictor` breaks; an empty list when it passes.

    Asks about `contexts` (default: contract_contexts()), each rule reported once, at the
    first context that breaks it. Exceptions the predictor raises are failures, not errors.
    """
    ctxs = list(contexts) if contexts is not None else contract_contexts()
    if not isinstance(predictor, Predictor):
        missing = [a for a in ("name", "version", "predict_batch", "learn_batch")
                   if not hasattr(predictor, a)]
        return [Failure("protocol", f"{type(predictor).__name__} lacks {', '.join(missing)}: "
                        "it is not a model.predictor.Predictor")]
    fails = [Failure("identity", f"{attr} is {value!r}, not a non-empty string")
             for attr, value in (("name", predictor.name), ("version", predictor.version))
             if not isinstance(value, str) or not value]
    first, answer_fails = _answers(predictor, ctxs)
    fails += answer_fails
    if first is None:
        return fails
    found: dict[str, str] = {}
    for i, (c, p) in enumerate(zip(ctxs, first, strict=True)):
        for rule, message in _prediction_faults(predictor, c, p):
            found.setdefault(rule, f"context {i} ({_describe(c)}): {message}")
    fails += [Failure(rule, message) for rule, message in found.items()]
    if not learns_online(predictor):
        fails += _repeatable(predictor, ctxs, first)
    try:
        predictor.learn_batch(ctxs)
    except Exception as exc:  # noqa: BLE001 - the contract reports what the model raised
        fails.append(Failure("learns", f"learn_batch raised {_raised(exc)}"))
    return fails


def learns_online(predictor: object) -> bool:
    """The predictor says it learns inside predict_batch (`learns_online = True`, as the
    online baseline does): its answers change by design, so the repeat rules do not apply."""
    return getattr(predictor, "learns_online", False) is True


def _raised(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _describe(c: PredictionContext) -> str:
    return (f"{c.event_type} of {c.item_id!r}, k={c.k}"
            + ("" if c.recommend else ", recommend=False"))


def _answers(predictor: Predictor, ctxs: list[PredictionContext]
             ) -> tuple[list[Prediction] | None, list[Failure]]:
    """predict_batch over the contexts (None when it cannot be used), and what broke."""
    fails: list[Failure] = []
    try:
        empty = predictor.predict_batch([])
        if list(empty) != []:
            fails.append(Failure("answers", f"an empty batch gave {len(empty)} predictions"))
    except Exception as exc:  # noqa: BLE001 - the contract reports what the model raised
        fails.append(Failure("answers", f"an empty batch raised {_raised(exc)}"))
    try:
        out = predictor.predict_batch(ctxs)
    except Exception as exc:  # noqa: BLE001 - the contract reports what the model raised
        return None, [*fails, Failure("answers", f"predict_batch raised {_raised(exc)}")]
    if not isinstance(out, list) or len(out) != len(ctxs):
        got = f"{len(out)} answers" if isinstance(out, Sequence) else type(out).__name__
        return None, [*fails, Failure("answers", f"{len(ctxs)} contexts gave {got}")]
    bad = [i for i, p in enumerate(out) if not isinstance(p, Prediction)]
    if bad:
        return None, [*fails, Failure("answers", f"answer {bad[0]} is a "
                                      f"{type(out[bad[0]]).__name__}, not a Prediction")]
    return out, fails


def _prediction_faults(predictor: Predictor, c: PredictionContext, p: Prediction
                       ) -> Iterator[tuple[str, str]]:
    """(rule, message) for each rule one prediction breaks."""
    if p.model != predictor.name or p.model_version != predictor.version:
        yield "labels", (f"the prediction says {p.model!r} {p.model_version!r}, the predictor "
                         f"is {predictor.name!r} {predictor.version!r}")
    if not isinstance(p.risk_model_version, str) or not p.risk_model_version:
        yield "labels", "risk_model_version is empty"
    limit = c.k if c.recommend else 0
    if len(p.items) > limit:
        yield "k", f"{len(p.items)} items, at most {limit} allowed"
    ids = [s.item_id for s in p.items]
    banned = [i for i in ids if i == c.item_id or i in c.exclude_items]
    if banned:
        yield "exclusions", (f"recommended {banned[0]!r}, the event's own item or an "
                             "excluded one")
    if len(set(ids)) != len(ids):
        yield "unique", f"an item appears twice: {ids}"
    scores = [s.score for s in p.items]
    if not all(math.isfinite(s) for s in scores) or any(
            b > a for a, b in itertools.pairwise(scores)):
        yield "order", f"scores {scores} are not finite and best first"
    if any(not 0.0 < s.propensity <= 1.0 for s in p.items):
        yield "propensity", f"propensities {[s.propensity for s in p.items]} outside (0, 1]"
    yield from _risk_faults(p.risk)


def _risk_faults(risk: RiskOutput) -> Iterator[tuple[str, str]]:
    score = getattr(risk, "score", None)
    if not isinstance(score, float | int) or not 0.0 <= score <= 1.0:
        yield "risk", f"risk.score is {score!r}, not a probability in [0, 1]"
    for r in getattr(risk, "reasons", ()):
        if not (isinstance(r.feature, str) and math.isfinite(r.value)
                and math.isfinite(r.contribution)):
            yield "risk", f"reason {tuple(r)!r} is not (feature name, finite, finite)"
            return


def _answer_key(p: Prediction) -> tuple[tuple[str, ...], float]:
    return tuple(s.item_id for s in p.items), round(float(p.risk.score), 5)


def _repeatable(predictor: Predictor, ctxs: list[PredictionContext],
                first: list[Prediction]) -> list[Failure]:
    """The deterministic and batch_of_one rules: ask again, all together and one by one."""
    want = [_answer_key(p) for p in first]
    fails: list[Failure] = []
    try:
        again = [_answer_key(p) for p in predictor.predict_batch(ctxs)]
        diff = [i for i, (a, b) in enumerate(zip(want, again, strict=True)) if a != b]
        if diff:
            fails.append(Failure("deterministic", f"context {diff[0]} got {again[diff[0]]} "
                                 f"the second time, {want[diff[0]]} the first (items, risk)"))
    except Exception as exc:  # noqa: BLE001 - the contract reports what the model raised
        fails.append(Failure("deterministic", f"the second call raised {_raised(exc)}"))
    for i, c in enumerate(ctxs):
        try:
            alone = _answer_key(predictor.predict_batch([c])[0])
        except Exception as exc:  # noqa: BLE001 - the contract reports what the model raised
            fails.append(Failure("batch_of_one", f"context {i} alone raised {_raised(exc)}"))
            break
        if alone != want[i]:
            fails.append(Failure("batch_of_one", f"context {i} alone got {alone}, in the "
                                 f"batch {want[i]} (items, risk)"))
            break
    return fails
