"""Train and evaluate the risk net on labelled fraud data, against the baseline's rule score."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from model.encoding import SeqBatch, encode_sequences, feature_matrix
from model.errors import ConfigError, DataError
from model.nets import RiskConfig, RiskNet
from model.recommenders.baseline import BaselinePredictor
from model.risk.model import _NO_ITEMS, RiskScorer
from model.train.metrics import negative_weight, pr_auc, roc_auc
from model.train.progress import step
from model.types import FEATURE_NAMES, SeqItem

__all__ = [
    "Labelled", "ORIGINAL_RATES", "fit_platt", "load_labelled", "purchase_features", "rule_scores",
    "train_and_evaluate_risk",
]

# Fraud rates of the full public datasets our samples come from (PR-AUC depends on it).
ORIGINAL_RATES: dict[str, float] = {"fraud-ecommerce": 14151 / 151112,
                                    "creditcard": 492 / 284807}


@dataclass
class Labelled:
    kind: str
    feature_names: tuple[str, ...]
    features: list[dict[str, float]]
    seqs: list[tuple[SeqItem, ...]]
    labels: list[int]
    ts: list[int]


def _fraud_ms(text: str) -> int:
    for fmt in ("%m/%d/%y %H:%M", "%m/%d/%Y %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            return int(datetime.strptime(text.strip(), fmt).timestamp() * 1000)
        except ValueError:
            continue
    raise DataError(f"unreadable time {text!r}")


def purchase_features(signup_ms: int, purchase_ms: int, value: float) -> dict[str, float]:
    """The rolling features the stream would hold at a first purchase after a sign-up visit.

    The user has two events: the sign-up (read as a view) and the purchase. No item, IP or
    cross-user device data enters, because the stream's per-user features have none.
    """
    gap_s = max(0.0, (purchase_ms - signup_ms) / 1000.0)
    f: dict[str, float] = {"events_total": 2.0, "count_view": 1.0, "count_purchase": 1.0,
                           "count_purchase_1m": 1.0, "count_purchase_1h": 1.0,
                           "count_purchase_24h": 1.0, "spend_1h": value, "spend_24h": value,
                           "distinct_items": 1.0, "distinct_categories": 1.0,
                           "distinct_devices_24h": 1.0, "distinct_ips_24h": 1.0,
                           "gap_s": gap_s, "price": value, "new_device": 1.0, "new_ip": 1.0}
    views = {"1m": gap_s <= 60, "1h": gap_s <= 3600, "24h": gap_s <= 86400}
    for w, inside in views.items():
        f[f"count_view_{w}"] = 1.0 if inside else 0.0
    for w in ("1h", "24h"):
        f[f"purchase_rate_{w}"] = 1.0 / (1.0 + f[f"count_view_{w}"])
    f["purchase_to_view_1h"] = 1.0 / max(1.0, f["count_view_1h"])
    same_session = gap_s <= 1800
    f["session_length"] = 2.0 if same_session else 1.0
    f["session_duration_s"] = gap_s if same_session else 0.0
    return f


def load_labelled(path: Path) -> Labelled:
    """Fraud_Data.csv (Kaggle fraud e-commerce) or creditcard.csv (ULB), by header."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        col = {h.lower(): i for i, h in enumerate(header)}
        rows = list(reader)
    if {"signup_time", "purchase_time", "purchase_value", "class"} <= set(col):
        feats: list[dict[str, float]] = []
        seqs: list[tuple[SeqItem, ...]] = []
        labels: list[int] = []
        ts: list[int] = []
        for r in rows:
            s_ms, p_ms = _fraud_ms(r[col["signup_time"]]), _fraud_ms(r[col["purchase_time"]])
            value = float(r[col["purchase_value"]])
            feats.append(purchase_features(s_ms, p_ms, value))
            seqs.append((SeqItem("signup", "view", s_ms), SeqItem("purchase", "purchase", p_ms)))
            labels.append(int(r[col["class"]]))
            ts.append(p_ms)
        return Labelled("fraud-ecommerce", FEATURE_NAMES, feats, seqs, labels, ts)
    if {"time", "amount", "class", "v1"} <= set(col):
        names = tuple(h for h in header if h.lower() != "class")
        feats = [{n: float(r[col[n.lower()]]) for n in names} for r in rows]
        ts = [int(float(r[col["time"]]) * 1000) for r in rows]
        return Labelled("creditcard", names, feats, [() for _ in rows],
                        [int(float(r[col["class"]])) for r in rows], ts)
    raise DataError(f"{path}: not a known labelled layout (need Fraud_Data.csv columns "
                     "signup_time,purchase_time,purchase_value,class or creditcard Time,V1..,"
                     "Amount,Class)")


def rule_scores(ds: Labelled) -> tuple[str, list[float]]:
    """The baseline predictor's rule risk; on non-event features (creditcard) the amount."""
    if ds.kind == "creditcard":
        return "amount", [f.get("Amount", 0.0) for f in ds.features]
    base = BaselinePredictor()
    return "baseline-rules", [base.risk(f).score for f in ds.features]


def _split(ds: Labelled, how: str, seed: int) -> tuple[list[int], list[int], list[int]]:
    """60/20/20 by time (`temporal`) or shuffled and stratified by label (`random`)."""
    if how == "temporal":
        order = sorted(range(len(ds.labels)), key=lambda i: (ds.ts[i], i))
        a, b = int(len(order) * 0.6), int(len(order) * 0.8)
        return order[:a], order[a:b], order[b:]
    if how != "random":
        raise ConfigError("split must be temporal or random")
    g = torch.Generator().manual_seed(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in (0, 1):
        idx = [i for i, y in enumerate(ds.labels) if y == label]
        idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        a, b = int(len(idx) * 0.6), int(len(idx) * 0.8)
        parts[0].extend(idx[:a])
        parts[1].extend(idx[a:b])
        parts[2].extend(idx[b:])
    return parts


def _tensors(ds: Labelled, idx: Sequence[int], max_len: int
             ) -> tuple[torch.Tensor, SeqBatch, torch.Tensor]:
    x = feature_matrix([ds.features[i] for i in idx], ds.feature_names)
    seq = encode_sequences([ds.seqs[i] for i in idx], _NO_ITEMS, max_len)
    y = torch.tensor([float(ds.labels[i]) for i in idx])
    return x, seq, y


def fit_platt(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log loss of sigmoid(a * logit + b) on y."""
    ab = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits * ab[0] + ab[1], y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss
    opt.step(closure)  # type: ignore[no-untyped-call]
    a, b = ab.detach().tolist()
    return float(a), float(b)


def _ece(p: Sequence[float], y: Sequence[int], bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        sel = [i for i, v in enumerate(p) if b / bins <= v < (b + 1) / bins or (b == bins - 1
                                                                               and v == 1.0)]
        if sel:
            total += abs(sum(p[i] for i in sel) / len(sel) - sum(y[i] for i in sel) / len(sel)
                         ) * len(sel)
    return total / max(1, len(p))


def _fit_net(net: RiskNet, train: tuple[torch.Tensor, SeqBatch, torch.Tensor],
             valid: tuple[torch.Tensor, SeqBatch, torch.Tensor], epochs: int,
             say: Callable[[str], None]) -> None:
    """Fit `net` for `epochs` and keep the weights of its lowest validation loss."""
    xtr, str_, ytr = train
    xva, sva, yva = valid
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-5)
    best: tuple[float, dict[str, torch.Tensor]] = (math.inf, {})
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(ytr))
        for b in range(0, len(ytr), 1024):
            i = perm[b: b + 1024]
            sb = type(str_)(str_.items[i], str_.types[i], str_.gaps[i], str_.lengths[i])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net.raw_logit(net.standardise(xtr[i]), sb), ytr[i])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        net.eval()
        with torch.no_grad():
            vl = float(torch.nn.functional.binary_cross_entropy_with_logits(
                net.raw_logit(net.standardise(xva), sva), yva))
        if vl < best[0]:
            best = (vl, {k: v.clone() for k, v in net.state_dict().items()})
        step(say, epoch, epochs, f"validation loss {vl:.4f}")
        if epoch % 10 == 0 or epoch == epochs:
            say(f"risk: epoch {epoch}/{epochs} validation loss {vl:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    net.load_state_dict(best[1])


def train_and_evaluate_risk(ds: Labelled, epochs: int = 20, seed: int = 0,
                            base_rate: float | None = None, split: str = "random",
                            progress: Callable[[str], None] | None = None
                            ) -> tuple[RiskScorer, dict[str, Any]]:
    """60/20/20 split: fit on the first part, early-stop and calibrate (Platt) on the middle,
    report ROC-AUC / PR-AUC on the last, next to the rule baseline on the same rows.

    `random` is the default because the public fraud set is not stationary in time: all of
    its instant-purchase frauds fall in the first weeks, so a temporal test has none of them
    (use split="temporal" to see that).
    """
    say = progress or (lambda _m: None)
    torch.manual_seed(seed)
    tr, va, te = _split(ds, split, seed)
    cfg = RiskConfig(feature_names=ds.feature_names, use_sequence=any(ds.seqs), max_len=8)
    net = RiskNet(cfg)
    xtr, str_, ytr = _tensors(ds, tr, cfg.max_len)
    xva, sva, yva = _tensors(ds, va, cfg.max_len)
    xte, ste, yte = _tensors(ds, te, cfg.max_len)
    net.fit_scaler(xtr)
    _fit_net(net, (xtr, str_, ytr), (xva, sva, yva), epochs, say)
    with torch.no_grad():
        scale, bias = fit_platt(net.raw_logit(net.standardise(xva), sva), yva)
    sample_rate = sum(ds.labels[i] for i in tr + va) / max(1, len(tr) + len(va))
    shift = 0.0
    if base_rate is not None:
        shift = math.log(base_rate / (1 - base_rate)) - math.log(sample_rate / (1 - sample_rate))
    net.set_calibration(scale, bias, 0.0)
    with torch.no_grad():
        p_net = net(xte, ste).tolist()
    net.set_calibration(scale, bias, shift)
    y_te = [ds.labels[i] for i in te]
    rule_name, rules_all = rule_scores(ds)
    p_rule = [rules_all[i] for i in te]
    test_rate = sum(y_te) / max(1, len(y_te))
    target = base_rate if base_rate is not None else ORIGINAL_RATES.get(ds.kind, test_rate)
    w = negative_weight(test_rate, target)

    def block(p: list[float]) -> dict[str, float]:
        return {"roc_auc": round(roc_auc(y_te, p), 4), "pr_auc": round(pr_auc(y_te, p), 4),
                "pr_auc_at_base_rate": round(pr_auc(y_te, p, w), 4)}
    report: dict[str, Any] = {
        "dataset": ds.kind,
        "methods": {"risk_net": {**block(p_net), "ece": round(_ece(p_net, y_te), 4)},
                    rule_name: block(p_rule)},
        "split": {"kind": f"{split} 60/20/20 (train / calibrate+early-stop / test)",
                  "seed": seed, "train_rows": len(tr),
                  "valid_rows": len(va), "test_rows": len(te)},
        "base_rate": {"test_sample": round(test_rate, 5), "reported_at": round(target, 5),
                      "negative_weight": round(w, 4), "served_prior_shift": round(shift, 4),
                      "note": "pr_auc_at_base_rate reweights negatives so positives make up "
                              "reported_at of the weight (the full dataset's fraud rate)"},
        "calibration": {"method": "platt", "scale": round(scale, 4), "bias": round(bias, 4)},
        "features": list(ds.feature_names)}
    return RiskScorer(net), report
