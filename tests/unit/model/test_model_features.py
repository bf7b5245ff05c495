"""A published model declares its input features; one the stream does not produce is refused,
and every risk output names at least one reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.errors import FeatureMismatch, RegistryError
from model.features import check_features, declared_features, missing_features
from model.nets import RiskConfig, RiskNet
from model.recommenders.baseline import BaselinePredictor
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.risk.overlay import overlay_risk
from model.train.pipeline import train_risk
from model.types import FEATURE_NAMES

CARD_COLUMNS = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")


def _card_csv(path: Path, rows: int = 60) -> Path:
    lines = [",".join((*CARD_COLUMNS, "Class"))]
    for i in range(rows):
        lines.append(",".join([str(i), *(f"{(i * j) % 7 - 3}.5" for j in range(1, 29)),
                               str(10 + i), str(int(i % 10 == 0))]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_check_passes_the_streams_own_features_and_names_the_missing_ones() -> None:
    check_features("risk v1", FEATURE_NAMES)
    assert missing_features(("gap_s", "V1", "Amount")) == ("V1", "Amount")
    with pytest.raises(FeatureMismatch, match=r"risk v2 reads 30 of its 30 .*V1, V2, V3, "
                                              r"V4, V5 and 25 more") as err:
        check_features("risk v2", CARD_COLUMNS[1:] + ("Time",))
    assert isinstance(err.value, RegistryError)  # the model in use keeps serving


def test_declared_features_from_the_manifest_or_an_older_risk_config() -> None:
    assert declared_features({"features": ["a", "b"]}) == ("a", "b")
    assert declared_features({"config": {"feature_names": ["c"]}}) == ("c",)
    assert declared_features({"name": "recommender"}) == ()


def _publish_net(reg: ModelRegistry, names: tuple[str, ...]) -> str:
    scorer = RiskScorer(RiskNet(RiskConfig(feature_names=names)))
    return reg.publish("risk", scorer.save, metadata={"features": list(names)})


def test_loading_a_foreign_risk_net_is_refused_before_it_serves(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    good = _publish_net(reg, FEATURE_NAMES)
    bad = _publish_net(reg, CARD_COLUMNS)
    RiskScorer.load(reg.path("risk", good), produced=FEATURE_NAMES)
    with pytest.raises(FeatureMismatch, match=f"risk {bad} reads"):
        RiskScorer.load(reg.path("risk", bad), produced=FEATURE_NAMES)
    with pytest.raises(FeatureMismatch):
        overlay_risk(BaselinePredictor(), reg, bad, "cpu", features=FEATURE_NAMES)
    RiskScorer.load(reg.path("risk", bad))  # without a produced set: no check (offline use)


def test_train_risk_refuses_the_credit_card_columns_before_publishing(tmp_path: Path) -> None:
    data = _card_csv(tmp_path / "creditcard.csv")
    with pytest.raises(FeatureMismatch, match="Nothing published .*--allow-foreign-features"):
        train_risk(data, tmp_path, epochs=1)
    reg = ModelRegistry(tmp_path)
    assert reg.versions("risk") == []
    version, _ = train_risk(data, tmp_path, epochs=1, allow_foreign_features=True)
    assert reg.versions("risk") == [version] and reg.latest("risk") is None  # never served
    assert declared_features(reg.manifest("risk", version)) == CARD_COLUMNS


def test_reasons_are_never_empty_even_when_no_feature_raised_the_risk() -> None:
    scorer = RiskScorer(RiskNet(RiskConfig(feature_names=("a", "b", "c"))))
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    contrib = torch.tensor([[-0.5, -0.1, -0.9], [0.2, -0.3, 0.4]])
    first, second = scorer.reasons(x, contrib)
    assert [r.feature for r in first] == ["b"]  # the top contributor, though negative
    assert first[0].value == 2.0 and first[0].contribution == pytest.approx(-0.1)
    assert [r.feature for r in second] == ["c", "a"]  # positive ones only, largest first


def test_explain_above_gives_reasons_to_the_scores_that_reach_it_and_the_same_scores() -> None:
    from model.bench import synthetic_contexts

    torch.manual_seed(3)
    net = RiskNet(RiskConfig(max_len=8))
    contexts = synthetic_contexts(64, [f"i{n}" for n in range(30)])
    full = RiskScorer(net).score(contexts)
    threshold = sorted(r.score for r in full)[48]  # the top quarter is explained
    part = RiskScorer(net, explain_above=threshold).score(contexts)
    explained = 0
    for every, some in zip(full, part, strict=True):
        assert some.score == pytest.approx(every.score, abs=1e-6)
        if some.score >= threshold:
            explained += 1
            assert [r.feature for r in some.reasons] == [r.feature for r in every.reasons]
            assert [r.contribution for r in some.reasons] == pytest.approx(
                [r.contribution for r in every.reasons], abs=1e-5)
        else:
            assert some.reasons == ()
    assert explained == 16
    with torch.inference_mode():  # as ModelPredictor runs it: the reasons need autograd
        assert all(r.reasons for r in RiskScorer(net, explain_above=0.0).score(contexts))
