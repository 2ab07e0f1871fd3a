"""The LMDB index: round-trips, recent runs, prefix resolution, transactions, stat cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qwexstore.errors import KeyLookupError
from qwexstore.index import Index, IndexedRealisation, RunSummary, StatEntry


def key(hexstart: str) -> str:
    """A digest whose hex starts with ``hexstart`` (padded with zeros)."""
    return "blake3:" + hexstart.ljust(64, "0")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(str(tmp_path / "index"))
    yield idx
    idx.close()


def _real(n: int = 0) -> IndexedRealisation:
    return IndexedRealisation(
        manifest=key("ee"),
        run_id=f"run{n}",
        created_ns=10 + n,
        files=2,
        size=30,
        listing=[("out/a", 10), ("out/b", 20)],
    )


def _summary(k: str = key("aa"), started: int = 1) -> RunSummary:
    return RunSummary(
        key=k, name="train", status="succeeded", exit_code=0, started_ns=started, finished_ns=started + 5
    )


def _run_id(i: int) -> str:
    return f"2026010{1 + i // 10}T0000{i % 10}0000000Z-{i:04x}"


# ---------------------------------------------------------------------------------------
# round-trips
# ---------------------------------------------------------------------------------------


def test_round_trips(index: Index) -> None:
    st = os.stat(__file__)
    se = StatEntry.of(st, key("dd"))
    with index.writer() as w:
        w.realisation(key("a1"), _real())
        w.run("r1", _summary())
        w.derivation(key("b1"), "train")
        w.snapshot("c" * 40, key("c1"))
        w.stat("/abs/file", se)
    assert index.realisation(key("a1")) == _real()
    assert index.run("r1") == _summary()
    assert index.has_derivation(key("b1"))
    assert index.snapshot_of("c" * 40) == key("c1")
    assert index.stat("/abs/file") == se
    assert se.matches(st)
    # misses
    assert index.realisation(key("a2")) is None
    assert index.run("r2") is None
    assert not index.has_derivation(key("b2"))
    assert index.snapshot_of("d" * 40) is None
    assert index.stat("/abs/other") is None


def test_exit_code_none_and_unicode_round_trip(index: Index) -> None:
    s = RunSummary(
        key=key("aa"), name="tränïng ✓", status="cancelled", exit_code=None, started_ns=0, finished_ns=0
    )
    with index.writer() as w:
        w.run("r", s)
        w.stat("/dir/ünïcode ✓", StatEntry(1, 2, 3, 4, 5, key("01")))
    assert index.run("r") == s
    assert index.stat("/dir/ünïcode ✓") == StatEntry(1, 2, 3, 4, 5, key("01"))


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "index")
    with Index(path) as idx, idx.writer() as w:
        w.realisation(key("a1"), _real())
    with Index(path) as idx:
        assert idx.realisation(key("a1")) == _real()


def test_overwrite_replaces(index: Index) -> None:
    with index.writer() as w:
        w.realisation(key("a1"), _real(0))
    with index.writer() as w:
        w.realisation(key("a1"), _real(1))
    assert index.realisation(key("a1")) == _real(1)
    assert index.count("real") == 1


def test_counts_iter_and_runs_of(index: Index) -> None:
    with index.writer() as w:
        for i in range(3):
            w.realisation(key(f"a{i}"), _real(i))
        w.run(_run_id(0), _summary(key("a0"), 1))
        w.run(_run_id(1), _summary(key("a1"), 2))
        w.run(_run_id(2), _summary(key("a0"), 3))
    assert index.count("real") == 3
    assert index.count("runs") == 3
    assert index.count("drv") == 0
    assert sorted(index.iter_realisations()) == sorted((key(f"a{i}"), _real(i)) for i in range(3))
    assert [r for r, _ in index.runs_of(key("a0"))] == [_run_id(0), _run_id(2)]
    assert index.runs_of(key("ff")) == []


def test_drop_all_keeps_stat_cache(index: Index) -> None:
    with index.writer() as w:
        w.realisation(key("a1"), _real())
        w.run("r", _summary())
        w.derivation(key("b1"), "x")
        w.snapshot("c", key("c1"))
        w.stat("/p", StatEntry(1, 2, 3, 4, 5, key("d1")))
    with index.writer() as w:
        w.drop_all()
    for db in ("real", "runs", "drv", "snap"):
        assert index.count(db) == 0, db
    assert index.stat("/p") is not None


# ---------------------------------------------------------------------------------------
# recent runs
# ---------------------------------------------------------------------------------------


def test_recent_runs_newest_first(index: Index) -> None:
    ids = [_run_id(i) for i in range(25)]
    assert ids == sorted(ids)
    with index.writer() as w:
        for i in (7, 3, 24, 0, 11, *range(25)):  # insertion order is irrelevant
            w.run(ids[i], _summary(started=i))
    got = index.recent_runs(5)
    assert [r for r, _ in got] == ids[::-1][:5]
    assert [s.started_ns for _, s in got] == [24, 23, 22, 21, 20]
    assert [r for r, _ in index.recent_runs(100)] == ids[::-1]
    assert [r for r, _ in index.recent_runs(1)] == [ids[-1]]


def test_recent_runs_empty(index: Index) -> None:
    assert index.recent_runs(10) == []


def test_recent_runs_limit_zero(index: Index) -> None:
    with index.writer() as w:
        w.run(_run_id(0), _summary())
    assert index.recent_runs(0) == []


# ---------------------------------------------------------------------------------------
# prefix resolution
# ---------------------------------------------------------------------------------------


@pytest.fixture
def populated(index: Index) -> Index:
    with index.writer() as w:
        w.realisation(key("abc123"), _real())
        w.realisation(key("abd999"), _real())
        w.derivation(key("f00d"), "prep")
        w.derivation(key("abc123"), "train")  # its key is its hash: one thing, two names
        w.run("20260101T000000000000Z-0001", _summary())
        w.run("20260101T000000000000Z-0002", _summary())
        w.run("20270101T000000000000Z-0001", _summary())
    return index


@pytest.mark.parametrize(
    "prefix", ["abc1", "blake3:abc1", "abc123", "blake3:abc123", key("abc123")[7:], key("abc123")]
)
def test_unique_prefix(populated: Index, prefix: str) -> None:
    assert populated.resolve_prefix(prefix) == ("real", key("abc123"))


def test_derivation_prefix(populated: Index) -> None:
    assert populated.resolve_prefix("f0") == ("drv", key("f00d"))
    assert populated.resolve_prefix("blake3:f00") == ("drv", key("f00d"))


def test_run_id_prefix(populated: Index) -> None:
    assert populated.resolve_prefix("2027") == ("runs", "20270101T000000000000Z-0001")
    assert populated.resolve_prefix("20260101T000000000000Z-0002") == ("runs", "20260101T000000000000Z-0002")


def test_key_equal_to_derivation_counts_once(populated: Index) -> None:
    # abc123 is both a realised key and a derivation hash: one match, named by the first kind.
    assert populated.resolve_prefix("abc") == ("real", key("abc123"))
    assert populated.resolve_prefix("abc", kinds=("drv", "real")) == ("drv", key("abc123"))
    assert populated.resolve_prefix("abc", kinds=("drv",)) == ("drv", key("abc123"))


@pytest.mark.parametrize(
    ("prefix", "want"),
    [
        ("ab", (key("abc123"), key("abd999"))),
        ("blake3:ab", (key("abc123"), key("abd999"))),
        ("2026", ("20260101T000000000000Z-0001", "20260101T000000000000Z-0002")),
        ("20", ("20260101T000000000000Z-0001", "20260101T000000000000Z-0002", "20270101T000000000000Z-0001")),
    ],
)
def test_ambiguous_prefix(populated: Index, prefix: str, want: tuple[str, ...]) -> None:
    with pytest.raises(KeyLookupError) as ei:
        populated.resolve_prefix(prefix)
    assert ei.value.candidates == tuple(sorted(want))
    assert ei.value.prefix == prefix
    for c in want:
        assert c in str(ei.value)
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("prefix", ["abe", "blake3:abe", "0", "ffff", "2028", "abc1234", "zz", "blake3:zz"])
def test_unknown_prefix(populated: Index, prefix: str) -> None:
    with pytest.raises(KeyLookupError) as ei:
        populated.resolve_prefix(prefix)
    assert ei.value.candidates == ()


@pytest.mark.parametrize("prefix", ["", "blake3:"])
def test_empty_prefix(populated: Index, prefix: str) -> None:
    with pytest.raises(KeyLookupError):
        populated.resolve_prefix(prefix)


def test_resolve_on_empty_index(index: Index) -> None:
    with pytest.raises(KeyLookupError):
        index.resolve_prefix("a")


def test_many_candidates(index: Index) -> None:
    with index.writer() as w:
        for i in range(20):
            w.realisation(key(f"aa{i:02d}"), _real())
    with pytest.raises(KeyLookupError) as ei:
        index.resolve_prefix("aa")
    assert len(ei.value.candidates) >= 2
    assert all(c.startswith("blake3:aa") for c in ei.value.candidates)


# ---------------------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_aborted_writer_is_invisible(index: Index) -> None:
    with index.writer() as w:
        w.run("kept", _summary())
    with pytest.raises(Boom), index.writer() as w:
        w.realisation(key("a1"), _real())
        w.run("lost", _summary())
        w.derivation(key("b1"), "x")
        w.snapshot("c", key("c1"))
        w.stat("/p", StatEntry(1, 2, 3, 4, 5, key("d1")))
        w.run("kept", _summary(started=99))  # overwrite, also rolled back
        raise Boom
    assert index.realisation(key("a1")) is None
    assert index.run("lost") is None
    assert not index.has_derivation(key("b1"))
    assert index.snapshot_of("c") is None
    assert index.stat("/p") is None
    assert index.run("kept") == _summary()
    with pytest.raises(KeyLookupError):
        index.resolve_prefix("a1")


def test_aborted_drop_all_keeps_data(index: Index) -> None:
    with index.writer() as w:
        w.realisation(key("a1"), _real())
    with pytest.raises(Boom), index.writer() as w:
        w.drop_all()
        raise Boom
    assert index.realisation(key("a1")) == _real()


def test_writes_visible_only_after_commit(index: Index) -> None:
    with index.writer() as w:
        w.run("r", _summary())
        # another reader does not see the uncommitted write
        assert index.run("r") is None
    assert index.run("r") == _summary()


# ---------------------------------------------------------------------------------------
# StatEntry
# ---------------------------------------------------------------------------------------


def _fake_stat(st: os.stat_result, **changes: int) -> Any:
    fields = {
        f: getattr(st, f)
        for f in (
            "st_dev",
            "st_ino",
            "st_size",
            "st_mtime_ns",
            "st_ctime_ns",
            "st_mode",
            "st_atime_ns",
            "st_nlink",
            "st_uid",
            "st_gid",
        )
    }
    fields.update(changes)
    return SimpleNamespace(**fields)


def test_stat_entry_matches_itself(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = os.stat(f)
    e = StatEntry.of(st, key("aa"))
    assert (e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, e.digest) == (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        key("aa"),
    )
    assert e.matches(st)
    assert e.matches(_fake_stat(st))
    # fields outside the fingerprint do not matter
    assert e.matches(_fake_stat(st, st_atime_ns=st.st_atime_ns + 1, st_mode=0, st_nlink=9))


@pytest.mark.parametrize("field", ["st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns"])
@pytest.mark.parametrize("delta", [1, -1, 1_000_000_000])
def test_stat_entry_any_change_is_a_miss(tmp_path: Path, field: str, delta: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = os.stat(f)
    e = StatEntry.of(st, key("aa"))
    assert not e.matches(_fake_stat(st, **{field: getattr(st, field) + delta}))


def test_stat_cache_long_path(index: Index) -> None:
    path = "/" + "/".join(["d" * 200] * 4) + "/file"
    entry = StatEntry(1, 2, 3, 4, 5, key("aa"))
    with index.writer() as w:
        w.stat(path, entry)
    assert index.stat(path) == entry
