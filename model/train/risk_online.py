"""Continuous training of the risk model from labelled scored events, with a prequential gate.

Input: `risk-feedback` records (stream.state.labels): the features and sequence exactly as the
risk model saw them when it scored an event, the score and version that served, and the
ground-truth label (fraud = 1). Each incoming batch is first *scored* by the candidate (the
net being fine-tuned) and by the serving model, and only then trained on (prequential), so
the gate's window holds only records the candidate had not seen when it scored them.

The gate metric is ROC-AUC, compared with a paired bootstrap, not log loss:
  * fraud labels are rare, and what the worker needs from the model is that frauds outrank
    legitimate events; ROC-AUC measures exactly that and is defined with a single positive
    and a single negative, its noise shrinking with the number of positives, which is what
    `min_positives` and the bootstrap's confidence control;
  * it ignores calibration. The candidate is recalibrated (Platt) on the window before it is
    published, which leaves its ranking, hence its AUC, unchanged; and the rule score that
    serves before any risk model is published is not a probability: on log loss a net
    predicting the base rate for every event (catching no fraud at all) would beat the rules.
The log losses are reported next to it, for information.

What serves is what the stream logged (model.train.risk_data.RiskServing). No faust, no
Kafka: stream/trainer.py drives this.
"""

from __future__ import annotations

import copy
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import torch

from model.encoding import signed_log1p
from model.nets import RiskConfig, RiskNet
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.train.metrics import log_loss, paired_auc_bootstrap, roc_auc
from model.train.risk import fit_platt
from model.train.risk_data import (
    RiskExample,
    RiskServing,
    example_from_risk_feedback,
    net_probs,
    tensors,
)

__all__ = ["OnlineRiskTrainer", "RiskGate", "RiskOnlineConfig", "fresh_net"]

_STD_FLOOR = 0.25  # a fresh net's scaler: features constant during warm-up must not explode


@dataclass(frozen=True)
class RiskOnlineConfig:
    replay_size: int = 10_000  # labelled records kept for replay (newest)
    replay_ratio: float = 2.0  # replayed records mixed into each step, per new record
    step_records: int = 64  # new records per gradient step
    lr: float = 1e-3  # Adam; small: fine-tuning a published model, not training anew
    window: int = 3000  # held-out recent records the gate compares on
    min_positives: int = 30  # no gate decision with fewer frauds in the window
    min_negatives: int = 300  # ... or fewer legitimate events
    margin: float = 0.01  # candidate ROC-AUC must exceed serving's by this (absolute)
    confidence: float = 0.9  # paired-bootstrap P(candidate AUC > serving AUC) needed
    bootstrap: int = 200
    warmup: int = 100  # a fresh net: records before its scaler is fit and training starts
    dedupe: int = 50_000  # feedback ids remembered to drop repeats (delivery is at least once)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RiskGate:
    decided: bool  # False: too few positives or negatives in the window to compare
    passed: bool
    reason: str
    n: int
    positives: int
    negatives: int
    candidate_auc: float
    serving_auc: float
    p_better: float
    candidate_log_loss: float
    serving_log_loss: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fresh_net(seed: int = 0) -> RiskNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return RiskNet(RiskConfig())


class OnlineRiskTrainer:
    """The candidate RiskNet (fine-tuned in place), the serving model (frozen), the replay
    buffer and the prequential window; `observe` then `gate`; when it passes, `recalibrate`,
    publish, `promote`."""

    def __init__(self, cfg: RiskOnlineConfig, candidate: RiskNet, serving: RiskServing,
                 *, scaled: bool = True) -> None:
        self.cfg = cfg
        self.candidate = candidate.eval()
        self.serving = serving
        self.scaled = scaled  # False for a fresh net: its scaler is fit after the warm-up
        self.replay: deque[RiskExample] = deque(maxlen=cfg.replay_size)
        # (example, candidate probability, serving score) per held-out record
        self.window: deque[tuple[RiskExample, float, float]] = deque(maxlen=cfg.window)
        self.opt = torch.optim.Adam(self.candidate.parameters(), lr=cfg.lr)
        self.rng = random.Random(cfg.seed)
        self.ids: dict[str, None] = {}  # recent feedback ids, oldest first
        self.seen = self.skipped = self.duplicates = self.trained = 0
        self.span: list[int] = []  # [first, last] event time trained on
        self.last_loss = math.nan

    @property
    def config(self) -> RiskConfig:
        return self.candidate.config

    # -- scoring + training ------------------------------------------------------------
    def candidate_probs(self, examples: Sequence[RiskExample]) -> list[float]:
        x, seq, _ = tensors(examples, self.config.max_len)
        return net_probs(self.candidate, x, seq)

    def observe(self, records: Sequence[dict[str, Any]], *, train: bool = True
                ) -> dict[str, Any]:
        """Score the new records with both models (held out), then train on them with replay
        (unless `train` is False: a fixed candidate is only being compared). Repeated
        feedback ids are dropped."""
        fresh: list[tuple[dict[str, Any], RiskExample]] = []
        for rec in records:
            fid = rec.get("feedback_id")
            if isinstance(fid, str):
                if fid in self.ids:
                    self.duplicates += 1
                    continue
                self._remember(fid)
            ex = example_from_risk_feedback(rec, self.config)
            if ex is None:
                self.skipped += 1
            else:
                fresh.append((rec, ex))
        self.seen += len(records)
        if not fresh:
            return self.stats()
        examples = [ex for _, ex in fresh]
        cand = self.candidate_probs(examples)
        serv = self.serving.score_records([r for r, _ in fresh])
        self.window.extend(zip(examples, cand, serv, strict=True))
        if train:
            self._learn(examples)
        return self.stats()

    def _remember(self, fid: str) -> None:
        self.ids[fid] = None
        if len(self.ids) > self.cfg.dedupe:
            del self.ids[next(iter(self.ids))]

    def _learn(self, examples: list[RiskExample]) -> None:
        step = self.cfg.step_records
        if not self.scaled:  # a fresh net: hold the records until its scaler can be fit
            self.replay.extend(examples)
            if len(self.replay) < self.cfg.warmup:
                return
            held = list(self.replay)
            self._fit_scaler(held)
            self.scaled = True
            for i in range(0, len(held), step):
                self._step(held[i:i + step])
            return
        for i in range(0, len(examples), step):
            chunk = examples[i:i + step]
            n_replay = min(len(self.replay), int(len(chunk) * self.cfg.replay_ratio))
            mixed = chunk + (self.rng.sample(list(self.replay), n_replay) if n_replay else [])
            self._step(mixed)
            self.replay.extend(chunk)

    def _fit_scaler(self, examples: Sequence[RiskExample]) -> None:
        z = signed_log1p(torch.tensor([e.x for e in examples], dtype=torch.float32))
        with torch.no_grad():
            self.candidate.mean.copy_(z.mean(0))
            self.candidate.std.copy_(z.std(0).nan_to_num(1.0).clamp(min=_STD_FLOOR))

    def _step(self, examples: Sequence[RiskExample]) -> None:
        net = self.candidate
        x, seq, y = tensors(examples, self.config.max_len)
        net.train()
        # through the current calibration (a buffer, not trained): the prequential scores
        # stay probabilities, comparable across steps
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net.calibrated_logit(net.standardise(x), seq), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        net.eval()
        self.trained += len(examples)
        self.last_loss = float(loss.detach())
        ts = [e.event_ts for e in examples]
        self.span = [min([*ts, *self.span[:1]]), max([*ts, *self.span[1:]])]

    # -- gate --------------------------------------------------------------------------
    def gate(self) -> RiskGate:
        rows = list(self.window)
        y = [r[0].y for r in rows]
        pos = sum(y)
        neg = len(y) - pos
        n = len(rows)
        if pos < self.cfg.min_positives or neg < self.cfg.min_negatives:
            return RiskGate(False, False, f"no decision: the window has {pos} frauds and {neg} "
                            f"legitimate events, needs {self.cfg.min_positives} and "
                            f"{self.cfg.min_negatives}", n, pos, neg, math.nan, math.nan,
                            math.nan, math.nan, math.nan)
        cand = [r[1] for r in rows]
        serv = [r[2] for r in rows]
        auc_c, auc_s = roc_auc(y, cand), roc_auc(y, serv)
        p = paired_auc_bootstrap(y, cand, serv, self.cfg.bootstrap, self.cfg.seed + self.seen)
        ll = (log_loss(y, cand), log_loss(y, serv))
        if auc_c < auc_s + self.cfg.margin or auc_c <= auc_s:
            return RiskGate(True, False, f"candidate ROC-AUC {auc_c:.4f} below serving "
                            f"{auc_s:.4f} + margin {self.cfg.margin}", n, pos, neg, auc_c,
                            auc_s, p, *ll)
        if p < self.cfg.confidence:
            return RiskGate(True, False, f"candidate ROC-AUC {auc_c:.4f} > serving {auc_s:.4f}"
                            f" but P(better) {p:.2f} < {self.cfg.confidence}", n, pos, neg,
                            auc_c, auc_s, p, *ll)
        return RiskGate(True, True, f"candidate ROC-AUC {auc_c:.4f} beats serving "
                        f"{auc_s:.4f} (P(better) {p:.2f}, {pos} frauds)", n, pos, neg, auc_c,
                        auc_s, p, *ll)

    def recalibrate(self) -> dict[str, float] | None:
        """Platt scaling of the candidate on the window (the newest labelled records; the
        prior shift is dropped: probabilities are calibrated to the labelled stream). None,
        calibration unchanged, when the fit is not a positive slope (it would invert the
        ranking the gate judged)."""
        examples = [r[0] for r in self.window]
        if not examples:
            return None
        x, seq, y = tensors(examples, self.config.max_len)
        net = self.candidate.eval()
        with torch.no_grad():
            raw = net.raw_logit(net.standardise(x), seq)
        scale, bias = fit_platt(raw, y)
        if not (math.isfinite(scale) and math.isfinite(bias) and scale > 0):
            return None
        net.set_calibration(scale, bias, 0.0)
        after = log_loss([e.y for e in examples], net_probs(net, x, seq))
        return {"scale": scale, "bias": bias, "log_loss": after}

    def publish_metadata(self, gate: RiskGate, calibration: dict[str, float] | None
                         ) -> dict[str, Any]:
        window_ts = [r[0].event_ts for r in self.window]
        return {
            "metrics": {"risk_net": {"roc_auc": gate.candidate_auc,
                                     "log_loss": (calibration or {}).get(
                                         "log_loss", gate.candidate_log_loss)},
                        "serving": {"roc_auc": gate.serving_auc,
                                    "log_loss": gate.serving_log_loss}},
            "gate": gate.to_dict(), "compared_with": self.serving.version,
            "calibration": {"method": "platt", "fit_on": "gate window", **(calibration or {})},
            "data": {"source": "risk-feedback", "trained_records": self.trained,
                     "seen_records": self.seen, "trained_event_ts": self.span,
                     "window_event_ts": [min(window_ts), max(window_ts)] if window_ts else [],
                     "window_positives": gate.positives, "window_negatives": gate.negatives},
            "online": self.cfg.to_dict(), "config": self.config.to_dict()}

    def promote(self, version: str) -> None:
        """The candidate was published as `version`: it serves now; the window restarts
        (the new serving model has trained on every record in it)."""
        self.serving = RiskServing(version, copy.deepcopy(self.candidate).eval())
        self.window.clear()

    def set_serving(self, serving: RiskServing) -> None:
        """Another model serves (a rollback seen in the registry): rescore the window with
        it (its records came after the last publish, so no published version trained on
        them), or restart the window when its layout differs."""
        self.serving = serving
        rows = list(self.window)
        scores = serving.rescore([r[0] for r in rows], self.config) if rows else []
        self.window.clear()
        if scores is not None:
            self.window.extend((r[0], r[1], s) for r, s in zip(rows, scores, strict=True))

    def stats(self) -> dict[str, Any]:
        pos = sum(r[0].y for r in self.window)
        return {"seen": self.seen, "skipped": self.skipped, "duplicates": self.duplicates,
                "trained": self.trained, "replay": len(self.replay),
                "window": len(self.window), "window_positives": pos, "loss": self.last_loss,
                "serving": self.serving.version}

    # -- checkpoint --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a restart needs besides the weights and the optimizer (JSON-able)."""
        return {"replay": [e.to_json() for e in self.replay],
                "window": [[e.to_json(), c, s] for e, c, s in self.window],
                "ids": list(self.ids), "seen": self.seen, "skipped": self.skipped,
                "duplicates": self.duplicates, "trained": self.trained, "span": self.span,
                "scaled": self.scaled, "serving": self.serving.version}

    def load_state(self, state: dict[str, Any]) -> None:
        self.replay.extend(RiskExample.from_json(r) for r in state.get("replay", []))
        self.window.extend((RiskExample.from_json(r[0]), float(r[1]), float(r[2]))
                           for r in state.get("window", []))
        self.ids = dict.fromkeys(state.get("ids", []))
        for key in ("seen", "skipped", "duplicates", "trained"):
            setattr(self, key, int(state.get(key, 0)))
        self.span = [int(t) for t in state.get("span", [])]
        self.scaled = bool(state.get("scaled", True))
        if state.get("serving") != self.serving.version:  # a rollback while it was down
            self.set_serving(self.serving)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        RiskScorer(self.candidate).save(directory / "candidate")
        torch.save(self.opt.state_dict(), directory / "optimizer.pt")
        (directory / "state.json").write_bytes(orjson.dumps(self.state()))

    @classmethod
    def restore(cls, directory: Path, cfg: RiskOnlineConfig, serving: RiskServing
                ) -> OnlineRiskTrainer:
        """The trainer `save` wrote to `directory`, comparing against `serving`."""
        net = RiskScorer.load(directory / "candidate").net
        trainer = cls(cfg, net, serving)
        trainer.load_state(orjson.loads((directory / "state.json").read_bytes()))
        opt = directory / "optimizer.pt"
        if opt.is_file():
            trainer.opt.load_state_dict(torch.load(opt, weights_only=True))
        return trainer

    @classmethod
    def start(cls, cfg: RiskOnlineConfig, registry: ModelRegistry, seed: int = 0
              ) -> OnlineRiskTrainer:
        """A trainer whose candidate starts from the registry's latest risk model, or from a
        fresh net (scaler fit after the warm-up) when none is published."""
        serving = RiskServing.from_registry(registry)
        if serving.net is not None:
            return cls(cfg, copy.deepcopy(serving.net), serving)
        return cls(cfg, fresh_net(seed), serving, scaled=False)
