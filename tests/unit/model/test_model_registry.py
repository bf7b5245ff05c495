"""Registry: versions appear whole under a concurrent reader; latest; rollback; list."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from model.errors import RegistryError
from model.registry import ModelRegistry


def _writer(tag: str, slow: float = 0.0):  # type: ignore[no-untyped-def]
    def write(d: Path) -> None:
        (d / "a.txt").write_text(tag)
        time.sleep(slow)  # a reader must never see a version between these two files
        (d / "b.txt").write_text(tag)
    return write


def test_publish_latest_list_and_manifest(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.latest("recommender") is None and reg.versions("recommender") == []
    v1 = reg.publish("recommender", _writer("one"), metadata={"metrics": {"hr@20": 0.1}})
    v2 = reg.publish("recommender", _writer("two"))
    assert (v1, v2) == ("v1", "v2")
    assert reg.latest("recommender") == "v2"
    assert reg.list() == {"recommender": ["v1", "v2"]}
    m = reg.manifest("recommender", "v1")
    assert m["metrics"] == {"hr@20": 0.1} and m["version"] == "v1"
    assert set(m["files"]) == {"a.txt", "b.txt"}
    assert (reg.path("recommender") / "a.txt").read_text() == "two"


def test_failed_publish_leaves_no_trace(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish("risk", _writer("ok"))

    def broken(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        reg.publish("risk", broken)
    assert reg.versions("risk") == ["v1"] and reg.latest("risk") == "v1"
    assert [p.name for p in (tmp_path / "models" / "risk").iterdir() if p.is_dir()] == ["v1"]


def test_concurrent_reader_never_sees_a_partial_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.publish("recommender", _writer("v1"))
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            v = reg.latest("recommender")
            assert v is not None
            d = reg.path("recommender", v)
            a, b = (d / "a.txt").read_text(), (d / "b.txt").read_text()
            if a != b or reg.manifest("recommender", v)["version"] != v:
                errors.append(f"{v}: {a!r} vs {b!r}")
            seen.add(v)
            for other in reg.versions("recommender"):  # listed versions are complete too
                od = reg.path("recommender", other)
                if not (od / "b.txt").exists():
                    errors.append(f"listed {other} without b.txt")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2, 7):
            reg.publish("recommender", _writer(f"v{i}", slow=0.02))
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert reg.latest("recommender") == "v6" and len(seen) >= 2


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    out: list[str] = []
    lock = threading.Lock()

    def pub(i: int) -> None:
        v = reg.publish("risk", _writer(str(i)))
        with lock:
            out.append(v)
    threads = [threading.Thread(target=pub, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 7)]


def test_rollback_moves_latest_back_one_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError):
        reg.rollback("risk")
    for tag in ("a", "b", "c"):
        reg.publish("risk", _writer(tag))
    assert reg.rollback("risk") == "v2" and reg.latest("risk") == "v2"
    assert (reg.path("risk") / "a.txt").read_text() == "b"
    assert reg.rollback("risk") == "v1"
    with pytest.raises(RegistryError, match="oldest"):
        reg.rollback("risk")
    assert reg.publish("risk", _writer("d")) == "v4"  # versions are never reused
    assert reg.latest("risk") == "v4"
