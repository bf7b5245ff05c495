"""Continuous training of the reranker from feedback: replay, prequential evaluation, gate.

Each incoming batch of feedback records is first *scored* by the candidate (the net being
trained) and by the serving model, and only then trained on (prequential, "test then
train"), so the gate's window holds only records the candidate never saw. A record's value
under a model is the item-level self-normalised IPS estimate of that model's greedy slate
(model/ope.py): the logged reward is credited when the engaged item is in the model's top k,
reweighted by 1 / its logged inclusion probability.

The gate publishes the candidate when, over the window, its estimate beats the serving
model's by the relative `margin` and a paired bootstrap puts P(candidate > serving) at
`confidence` or above. No faust, no Kafka: stream/trainer.py drives this.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from model.policy.policies import top_k_indices
from model.policy.reranker import SEQ_WINDOW, Reranker, RerankInput, featurize

__all__ = [
    "Example", "GateResult", "OnlineConfig", "OnlineTrainer", "example_from_feedback",
    "slate_terms",
]

_HISTORY_KEEP = SEQ_WINDOW  # sequence entries kept per record: all that the reranker reads


@dataclass(frozen=True)
class OnlineConfig:
    replay_size: int = 20_000  # records kept for replay (newest)
    replay_ratio: float = 2.0  # replayed records mixed into each step, per new record
    step_records: int = 128  # new records per gradient step
    lr: float = 0.05
    # Per-part learning rates (lr x scale). The dense weights (base score, rank, repeat,
    # category taste: a handful of features every record shares) took thousands of records to
    # move at the tables' rate; an item's bias sees every showing of the item; the sparse
    # crosses (recent item -> candidate transitions, taste embeddings) see few records each
    # and at the full rate mostly learned noise (offline on simulator feedback: greedy-slate
    # engagement .37 with one rate for all, .41 with these)
    dense_lr_scale: float = 10.0
    item_lr_scale: float = 4.0
    cross_lr_scale: float = 0.2
    window: int = 3000  # held-out recent records the gate compares on
    min_window: int = 1500  # no decision below this
    margin: float = 0.02  # candidate must beat serving by this fraction
    confidence: float = 0.9  # paired-bootstrap P(candidate > serving) needed
    bootstrap: int = 200
    max_reward: float = 5.0  # rewards are scaled into [0, 1] by this
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Example:
    """A feedback record reduced to what training and evaluation need (JSON-able)."""

    seq: list[list[Any]]
    cands: list[str]
    base: list[float]
    shown: list[int]  # candidate indices shown
    mu: list[float]  # logged inclusion probability of each candidate
    engaged: int  # candidate index of the engaged item, -1 if none
    reward: float
    category: str | None = None
    cand_cats: list[str | None] | None = None  # per candidate, None: unknown
    recent_cats: list[str | None] | None = None  # the last items', oldest first

    def input(self) -> RerankInput:
        return RerankInput(self.seq, self.cands, self.base, self.category,
                           self.cand_cats or (), self.recent_cats or ())

    def to_json(self) -> list[Any]:
        return [self.seq, self.cands, self.base, self.shown, self.mu, self.engaged,
                self.reward, self.category, self.cand_cats, self.recent_cats]

    @classmethod
    def from_json(cls, row: list[Any]) -> Example:
        return cls(*row)


def example_from_feedback(rec: dict[str, Any]) -> Example | None:
    """None when the record cannot be used (no pool, shown items outside the pool, zero
    propensities): logged and skipped by the caller, never guessed."""
    cands = rec.get("candidates") or []
    shown_items = [s["item_id"] for s in rec.get("shown") or []]
    if not cands or not shown_items:
        return None
    pos = {c["item_id"]: j for j, c in enumerate(cands)}
    shown = [pos.get(i, -1) for i in shown_items]
    mu = [float(c.get("propensity", 0.0)) for c in cands]
    if any(j < 0 or mu[j] <= 0 for j in shown):
        return None
    base = rec.get("base_scores")
    if not base or len(base) != len(cands):
        base = [float(c.get("score", 0.0)) for c in cands]
    eng_item = rec.get("engaged_item")
    engaged = pos.get(eng_item, -1) if eng_item is not None else -1
    reward = float(rec.get("reward") or 0.0)
    if engaged < 0 or engaged not in shown:
        engaged, reward = -1, 0.0  # a reward for an item not shown is not this slate's
    seq = [[str(s[0]), str(s[1])] for s in (rec.get("sequence") or [])[-_HISTORY_KEEP:]]
    cat = rec.get("category")
    cc = rec.get("candidate_categories")
    cand_cats = ([None if c is None else str(c) for c in cc]
                 if isinstance(cc, list) and len(cc) == len(cands) else None)
    rc = rec.get("recent_categories")
    recent_cats = ([None if c is None else str(c) for c in rc][-_HISTORY_KEEP:]
                   if isinstance(rc, list) and cand_cats is not None else None)
    return Example(seq, [str(c["item_id"]) for c in cands], [float(x) for x in base], shown,
                   mu, engaged, reward, str(cat) if cat is not None else None, cand_cats,
                   recent_cats)


def slate_terms(ex: Example, scores: Sequence[float]) -> tuple[float, float]:
    """(ips, norm) of the greedy top-k slate by `scores`, k = the logged slate size."""
    k = len(ex.shown)
    top = set(top_k_indices(scores, k))
    w_sum = 0.0
    ips = 0.0
    for j in ex.shown:
        if j in top:
            w = 1.0 / ex.mu[j]
            w_sum += w
            if j == ex.engaged:
                ips = ex.reward * w
    return ips, w_sum / k


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    n: int
    candidate_value: float
    serving_value: float
    p_better: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OnlineTrainer:
    """Holds the candidate (trained in place), the serving model (frozen), the replay
    buffer and the prequential window; `observe` then `gate`, `promote` when it passes."""

    def __init__(self, cfg: OnlineConfig, candidate: Reranker,
                 serving: Reranker | None = None) -> None:
        self.cfg = cfg
        self.candidate = candidate
        self.serving = serving
        self.replay: deque[Example] = deque(maxlen=cfg.replay_size)
        # (candidate ips, candidate norm, serving ips, serving norm) per held-out record
        self.window: deque[tuple[float, float, float, float]] = deque(maxlen=cfg.window)
        net = self.candidate.net
        parts: list[tuple[list[torch.Tensor], float]] = [
            (list(net.dense.parameters()), cfg.dense_lr_scale),
            ([net.item_bias.weight], cfg.item_lr_scale),
            ([net.pair_bias.weight, net.cand_emb.weight, net.hist_emb.weight],
             cfg.cross_lr_scale)]
        placed = {id(p) for params, _ in parts for p in params}
        groups: list[dict[str, Any]] = [
            {"params": [p for p in net.parameters() if id(p) not in placed]},  # position
            *({"params": params, "lr": cfg.lr * scale} for params, scale in parts)]
        self.opt = torch.optim.Adagrad(groups, lr=cfg.lr)
        self.rng = random.Random(cfg.seed)
        self.seen = 0
        self.skipped = 0
        self.trained = 0
        self.last_loss = math.nan

    # -- scoring -----------------------------------------------------------------------
    def serving_scores(self, examples: Sequence[Example]) -> list[list[float]]:
        if self.serving is None:  # the base recommender's ranking is what serves
            return [ex.base for ex in examples]
        return self.serving.score([ex.input() for ex in examples])

    def observe(self, records: Sequence[dict[str, Any]], *, train: bool = True
                ) -> dict[str, Any]:
        """Evaluate the new records (held out), then train on them with replay (unless
        `train` is False: a fixed candidate is only being compared)."""
        examples = []
        for rec in records:
            ex = example_from_feedback(rec)
            if ex is None:
                self.skipped += 1
            else:
                examples.append(ex)
        self.seen += len(records)
        if not examples:
            return self.stats()
        cand = self.candidate.score([ex.input() for ex in examples])
        serv = self.serving_scores(examples)
        for ex, c, s in zip(examples, cand, serv, strict=True):
            self.window.append((*slate_terms(ex, c), *slate_terms(ex, s)))
        if not train:
            return self.stats()
        step = self.cfg.step_records
        for i in range(0, len(examples), step):
            chunk = examples[i:i + step]
            n_replay = min(len(self.replay), int(len(chunk) * self.cfg.replay_ratio))
            mixed = chunk + (self.rng.sample(list(self.replay), n_replay) if n_replay else [])
            self._step(mixed)
            self.replay.extend(chunk)
        return self.stats()

    def _step(self, examples: Sequence[Example]) -> None:
        batch = featurize([ex.input() for ex in examples], self.candidate.config,
                          rows=[ex.shown for ex in examples])
        target = [min(ex.reward, self.cfg.max_reward) / self.cfg.max_reward
                  if j == ex.engaged else 0.0 for ex in examples for j in ex.shown]
        # the slot each shown item had: the position effect is fit apart from the items
        positions = torch.tensor([pos for ex in examples for pos in range(len(ex.shown))],
                                 dtype=torch.long)
        net = self.candidate.net
        net.train()
        logits = self.candidate.logits(batch, positions)
        y = torch.tensor(target, dtype=torch.float32, device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        net.eval()
        self.trained += len(examples)
        self.last_loss = float(loss.detach())

    # -- gate --------------------------------------------------------------------------
    @staticmethod
    def _snips(rows: Sequence[tuple[float, float, float, float]]) -> tuple[float, float]:
        c_ips = math.fsum(r[0] for r in rows)
        c_norm = math.fsum(r[1] for r in rows)
        s_ips = math.fsum(r[2] for r in rows)
        s_norm = math.fsum(r[3] for r in rows)
        return c_ips / max(c_norm, 1e-12), s_ips / max(s_norm, 1e-12)

    def gate(self) -> GateResult:
        rows = list(self.window)
        n = len(rows)
        if n < self.cfg.min_window:
            return GateResult(False, f"window has {n} held-out records, needs "
                              f"{self.cfg.min_window}", n, math.nan, math.nan, math.nan)
        cand, serv = self._snips(rows)
        t = torch.tensor(rows, dtype=torch.float64)
        gen = torch.Generator().manual_seed(self.cfg.seed + self.seen)
        idx = torch.randint(n, (self.cfg.bootstrap, n), generator=gen)
        sums = t[idx].sum(1)  # [bootstrap, 4]
        c_b = sums[:, 0] / sums[:, 1].clamp_min(1e-12)
        s_b = sums[:, 2] / sums[:, 3].clamp_min(1e-12)
        p = float((c_b > s_b).double().mean()) if self.cfg.bootstrap else 0.0
        need = serv * (1.0 + self.cfg.margin)
        if cand < need or cand <= serv:
            return GateResult(False, f"candidate {cand:.4f} below serving {serv:.4f} "
                              f"x (1 + margin {self.cfg.margin})", n, cand, serv, p)
        if p < self.cfg.confidence:
            return GateResult(False, f"candidate {cand:.4f} > serving {serv:.4f} but "
                              f"P(better) {p:.2f} < {self.cfg.confidence}", n, cand, serv, p)
        return GateResult(True, f"candidate {cand:.4f} beats serving {serv:.4f} "
                          f"(P(better) {p:.2f})", n, cand, serv, p)

    def promote(self, version: str) -> None:
        """The candidate was published as `version`: it serves now; the window restarts."""
        self.set_serving(self.candidate.copy(version))

    def set_serving(self, serving: Reranker | None) -> None:
        """A different model serves (publish, or a rollback seen in the registry)."""
        self.serving = serving
        self.window.clear()

    def stats(self) -> dict[str, Any]:
        return {"seen": self.seen, "skipped": self.skipped, "trained": self.trained,
                "replay": len(self.replay), "window": len(self.window),
                "loss": self.last_loss,
                "serving": self.serving.version if self.serving else "base"}

    # -- checkpoint --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a restart needs besides the nets' weights (JSON-able)."""
        return {"replay": [ex.to_json() for ex in self.replay],
                "window": [list(r) for r in self.window], "seen": self.seen,
                "skipped": self.skipped, "trained": self.trained}

    def load_state(self, state: dict[str, Any]) -> None:
        self.replay.extend(Example.from_json(r) for r in state.get("replay", []))
        self.window.extend((r[0], r[1], r[2], r[3]) for r in state.get("window", []))
        self.seen = int(state.get("seen", 0))
        self.skipped = int(state.get("skipped", 0))
        self.trained = int(state.get("trained", 0))
