"""Shared fixtures: one broker for the session, a unique topic prefix and settings per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.kafka.broker import EmbeddedBroker, free_port
from stream.settings import Settings
from tests.helpers import make_settings


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LAMSTREAM_BOOTSTRAP_SERVERS when set, else one embedded broker for the whole session."""
    external = os.environ.get("LAMSTREAM_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with EmbeddedBroker(port=free_port(), log_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, so tests share the broker but not their topics."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def settings_factory(bootstrap: str, prefix: str, tmp_path: Path) -> Callable[..., Settings]:
    """settings_factory(**overrides) -> Settings for this test (see tests.helpers)."""

    def factory(**overrides: Any) -> Settings:
        return make_settings(bootstrap, prefix, tmp_path, **overrides)

    return factory
