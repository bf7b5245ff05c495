"""`lamstream bench pipeline --predictor`: which registry the bench's workers read."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.registry import ModelRegistry
from stream.devtools.bench_pipeline import models_for, run_pipeline_bench
from stream.errors import UsageError
from stream.settings import Settings


def test_the_bench_serves_the_registrys_models_and_never_forces_the_baseline(
        tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "home")
    said: list[str] = []
    # an empty registry: auto serves what a worker would (the baseline), nothing trained
    assert models_for(s, "auto", None, 100, tmp_path, said.append) is None
    assert models_for(s, "baseline", None, 100, tmp_path, said.append) is None
    reg = ModelRegistry(s.data_dir)
    reg.publish("recommender", lambda d: (d / "covisitation").mkdir(),
                metadata={"served": "covisitation", "methods": ["covisitation"]})
    assert models_for(s, "auto", None, 100, tmp_path, said.append) == reg.root
    reg.publish("recommender", lambda d: (d / "hybrid").mkdir(),
                metadata={"served": "hybrid", "methods": ["hybrid"]})
    for predictor in ("auto", "hybrid", "both"):
        assert models_for(s, predictor, None, 100, tmp_path, said.append) == reg.root
    assert models_for(s, "baseline", None, 100, tmp_path, said.append) is None
    assert said == []  # nothing was trained
    with pytest.raises(UsageError, match="--predictor must be one of"):
        run_pipeline_bench(s, n_events=10, data=None, log=said.append, predictor="gru")
