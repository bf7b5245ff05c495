"""stream.kafka.faust_patches refuses to run on a Faust it was not audited against."""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from stream.errors import FaustVersionError, LamstreamError
from stream.kafka import faust_patches

ROOT = Path(__file__).resolve().parents[3]


def _installed(versions: dict[str, str]) -> object:
    real = metadata.version

    def version(dist: str) -> str:
        return versions.get(dist) or real(dist)
    return version


def test_the_pinned_versions_are_pyprojects_pins() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    assert faust_patches.PINNED == {dist: pins[dist] for dist in faust_patches.PINNED}


def test_the_audited_versions_pass() -> None:
    faust_patches.check_versions()  # what this environment has installed


@pytest.mark.parametrize(("dist", "version"), [("faust-streaming", "0.15.4"),
                                               ("aiokafka", "0.13.0")])
def test_another_version_is_refused_with_the_audit_to_do(
        monkeypatch: pytest.MonkeyPatch, dist: str, version: str) -> None:
    monkeypatch.setattr(metadata, "version", _installed({dist: version}))
    with pytest.raises(FaustVersionError) as info:
        faust_patches.check_versions()
    message = str(info.value)
    assert f"{dist} {version} is installed" in message
    assert faust_patches.PINNED[dist] in message
    assert "re-read each of its functions" in message and "PINNED" in message
    assert isinstance(info.value, LamstreamError)  # the CLI prints it as one line


def test_the_check_runs_when_the_module_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "version", _installed({"faust-streaming": "0.16.0"}))
    spec = importlib.util.spec_from_file_location("faust_patches_copy", faust_patches.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(FaustVersionError, match="faust-streaming 0.16.0 is installed"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
