"""`make demo` serves what DATA_DIR's registry holds: its worker sees those models."""

from __future__ import annotations

from pathlib import Path

from model.registry import ModelRegistry
from stream.devtools.demo import use_registry
from stream.settings import Settings


def test_the_demo_worker_sees_the_trained_registry_and_says_what_it_holds(tmp_path: Path
                                                                          ) -> None:
    s = Settings(data_dir=tmp_path / "home")
    said = use_registry(s, tmp_path / "demo1")
    assert "no trained recommender" in said and "baseline serves" in said
    assert not (tmp_path / "demo1" / "models").exists()
    ModelRegistry(s.data_dir).publish(
        "recommender", lambda d: (d / "hybrid").mkdir(),
        metadata={"served": "hybrid", "methods": ["hybrid"]})
    said = use_registry(s, tmp_path / "demo2")
    assert "recommender v1" in said and "winner: hybrid" in said
    # the worker's registry (DATA_DIR/models of its state dir) is the trained one
    assert ModelRegistry(tmp_path / "demo2").latest("recommender") == "v1"
