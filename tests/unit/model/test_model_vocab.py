"""Item vocabulary: stable ids while growing, bounded with eviction, save/load."""

from __future__ import annotations

from pathlib import Path

from model.vocab import PAD, RESERVED, UNK, ItemVocab


def test_ids_are_stable_while_growing() -> None:
    v = ItemVocab(capacity=100)
    first = [v.add(f"a{i}") for i in range(10)]
    v.add_all(f"b{i}" for i in range(50))
    assert [v.id(f"a{i}") for i in range(10)] == first
    assert min(first) >= RESERVED and len(set(first)) == 10
    assert v.id("never-seen") == UNK and "never-seen" not in v
    assert v.item(PAD) is None and v.item(UNK) is None


def test_capacity_evicts_rare_items_and_reuses_their_ids() -> None:
    v = ItemVocab(capacity=20)
    for i in range(20):
        v.add(f"x{i}", count=100 if i < 10 else 1)
    frequent = {f"x{i}": v.id(f"x{i}") for i in range(10)}
    v.add("newcomer")
    assert len(v) <= 20
    assert v.size <= 22  # the table did not grow: an evicted id was reused
    assert {k: v.id(k) for k in frequent} == frequent  # frequent items keep their ids
    evicted = [f"x{i}" for i in range(10, 20) if f"x{i}" not in v]
    assert evicted, "a rare item must have been evicted"
    assert v.id(evicted[0]) == UNK
    recycled = v.take_recycled()
    assert recycled == [v.id("newcomer")]
    assert v.take_recycled() == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    v = ItemVocab(capacity=5)
    v.add_all(["a", "b", "c", "d", "e", "a", "f"])  # "f" forces an eviction
    v.save(tmp_path / "v.json")
    w = ItemVocab.load(tmp_path / "v.json")
    assert {k: w.id(k) for k in "abcdef"} == {k: v.id(k) for k in "abcdef"}
    assert w.count("a") == 2 and len(w) == len(v) and w.size == v.size
    g = w.add("g")
    assert w.id("a") == v.id("a") and g >= RESERVED
