"""Bring your own model: LAMSTREAM_PREDICTOR / --predictor, `lamstream model check`, and the
example package (examples/custom_model) behind the worker's exploration policy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from model.predictor import Predictor
from model.testing import FakePredictor, contract_contexts
from model.types import Prediction, PredictionContext, ScoredItem
from stream.cli.main import app
from stream.errors import LamstreamError, SettingsError, UsageError
from stream.schemas import ModelUpdate
from stream.settings import load_settings
from stream.worker.custom import custom_loader, import_factory, load_custom, served_model
from stream.worker.exploration import exploring_holder
from stream.worker.holder import PredictorHolder
from stream.worker.model_updates import apply_update

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SPEC = "custom_model:make_predictor"
HERE = "tests.unit.stream.test_custom_model"


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield


def broken_predictor() -> Predictor:
    """A deliberately broken copy of the example: it recommends the item just seen."""
    from custom_model import TastePredictor, make_predictor

    class Broken(TastePredictor):
        def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
            out = super().predict_batch(contexts)
            for c, p in zip(contexts, out, strict=True):
                if p.items:
                    p.items = (ScoredItem(c.item_id, p.items[0].score + 1.0), *p.items[:-1])
            return out

    return Broken(make_predictor().net)


def not_a_predictor() -> object:
    return {"name": "a dict"}


def opted_in(version: str | None = None) -> FakePredictor:
    return FakePredictor(name="mine", version=version or "v0")


opted_in.accepts_announcements = True  # type: ignore[attr-defined]


def test_model_check_passes_the_example() -> None:
    result = CliRunner().invoke(app, ["model", "check", SPEC])
    assert result.exit_code == 0, result.output
    assert "custom-torch 1.0" in result.output
    assert "13 of 13 rules hold" in result.output


def test_model_check_names_the_rule_a_broken_copy_breaks() -> None:
    result = CliRunner().invoke(app, ["model", "check", f"{HERE}:broken_predictor"])
    assert result.exit_code == 1, result.output
    assert "FAIL  exclusions: context 0" in result.output
    assert "never the event's own item" in result.output  # the rule, in words
    report = orjson.loads(CliRunner().invoke(
        app, ["model", "check", f"{HERE}:broken_predictor", "--json"]).stdout)
    assert [f["rule"] for f in report["failed"]] == ["exclusions"]
    assert not report["ok"] and "deterministic" in report["passed"]


def test_model_check_says_what_a_non_predictor_lacks() -> None:
    result = CliRunner().invoke(app, ["model", "check", f"{HERE}:not_a_predictor"])
    assert result.exit_code == 1
    assert "FAIL  protocol: dict lacks name, version, predict_batch, learn_batch" in \
        result.output


@pytest.mark.parametrize(("spec", "says"), [
    ("no_such_package.mod:make", "cannot import 'no_such_package.mod'"),
    (f"{HERE}:nothing_here", "has no 'nothing_here'"),
    (f"{HERE}:SPEC", "not a factory"),
    ("no colon here", "expected package.module:factory"),
])
def test_a_factory_that_cannot_be_used_is_one_clear_line(spec: str, says: str) -> None:
    result = CliRunner().invoke(app, ["model", "check", spec])
    assert result.exit_code == 2
    assert says in result.output and "Traceback" not in result.output
    with pytest.raises(UsageError, match=says.replace("(", r"\(")):
        import_factory(spec, UsageError)


def test_the_setting_refuses_what_is_not_a_predictor() -> None:
    with pytest.raises(SettingsError, match="LAMSTREAM_PREDICTOR"):
        load_settings(predictor="not a spec")
    with pytest.raises(SettingsError, match="returned a dict, not a model.predictor"):
        load_custom(f"{HERE}:not_a_predictor")
    assert issubclass(SettingsError, LamstreamError)


def test_the_worker_option_is_the_setting_and_fails_before_any_broker() -> None:
    result = CliRunner().invoke(app, ["worker", "--predictor", "bad spec"])
    assert result.exit_code == 2
    assert "LAMSTREAM_PREDICTOR" in result.output
    # an unreachable broker would take 30 s to fail: the import is refused first
    result = CliRunner().invoke(app, ["worker", "--predictor", "no_such_package:make"],
                                env={"LAMSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "error: predictor 'no_such_package:make': cannot import 'no_such_package': "
        "ModuleNotFoundError: No module named 'no_such_package' (is it installed, or on "
        "PYTHONPATH?)")


def test_the_example_serves_through_the_exploration_policy() -> None:
    from stream.cli.service import build_predictor

    settings = load_settings(predictor=SPEC, policy="greedy")
    holder = exploring_holder(build_predictor(settings), settings)
    ctxs = contract_contexts()
    out = holder.current.predict_batch(ctxs)
    assert {(p.model, p.model_version) for p in out} == {("custom-torch", "1.0")}
    assert [len(p.items) for p in out] == [c.k if c.recommend else 0 for c in ctxs]
    assert out[0].trace is not None and out[0].trace.policy == "greedy"  # the decision log's
    assert served_model(holder.current).name == "custom-torch"


def _announce(version: str) -> bytes:
    return ModelUpdate(name="recommender", version=version, action="publish",
                       ts=1).model_dump_json().encode()


def test_announcements_are_ignored_unless_the_model_opts_in() -> None:
    settings = load_settings(predictor=SPEC)
    holder = PredictorHolder(load_custom(SPEC))
    load = custom_loader(settings, lambda: holder.current)
    assert asyncio.run(apply_update(_announce("v9"), holder, load)) is None
    assert holder.pending is None and holder.current.version == "1.0"

    settings = load_settings(predictor=f"{HERE}:opted_in")
    holder = PredictorHolder(load_custom(settings.predictor or ""))
    load = custom_loader(settings, lambda: holder.current)
    offered = asyncio.run(apply_update(_announce("v9"), holder, load))
    assert offered is not None and offered.version == "v9"  # the factory, asked for v9
    assert holder.pending is offered
