"""Issue 7, items 2, 3, 6 and 7: the bytes a job reads are the bytes in its key, and
nothing a job or a user does can change a stored object.

- Symlinks inside a ``file:`` directory input are followed: the key covers their targets'
  content, the job sees regular files, and a dangling or looping link is refused (item 2).
- Inputs are staged, and checkouts made, as verified copies: a job or a user (root
  included) can damage only its own copy; nothing deletes a store object because a job
  touched a file (items 3 and 6). Hard links only with ``checkout --link``.
- Every read that materializes a blob verifies it, and a corrupt blob never appears under
  the destination name (item 7).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import PY, GitRepo, Qwex, assert_user_error, drv_text, job

from qwexstore.blobcopy import LARGE
from qwexstore.digest import hash_bytes
from qwexstore.errors import CorruptObject, DrvFileError, ObjectNotFound, UserError
from qwexstore.index import Index
from qwexstore.manifest import FileEntry
from qwexstore.plan import _file_input
from qwexstore.store import BlobTarget, Store, open_store
from qwexstore.tree import hash_entries, scan

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _blob(qwex: Qwex, digest: str) -> Path:
    h = digest.removeprefix("blake3:")
    return qwex.store / "blobs" / h[:2] / h


def _overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # store blobs are read-only; their owner (or root) can still write
    path.write_bytes(data)


def _outputs(qwex: Qwex, key: str) -> dict[str, str]:
    return {e["path"]: e["digest"] for e in qwex.json("show", key)["outputs"] if "digest" in e}


def _blobs(qwex: Qwex) -> set[str]:
    return {str(p.relative_to(qwex.store)) for p in (qwex.store / "blobs").rglob("*") if p.is_file()}


def _error_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.startswith("qwex: error:")][-1]


# ---------------------------------------------------------------------------------------
# item 3: a job cannot poison an input for later runs
# ---------------------------------------------------------------------------------------


def test_job_overwriting_and_renaming_its_input_cannot_poison_later_runs(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    """The reported attack: chmod the input writable, overwrite it, rename it away (so a
    damage check that looks at the staged path finds nothing)."""
    git_repo.commit(
        "drv",
        {
            "evil.drv": drv_text(
                [
                    "sh",
                    "-c",
                    "chmod u+w data/raw.csv && echo poisoned > data/raw.csv && "
                    "mv data/raw.csv data/gone.csv && mkdir -p out && echo x > out/x",
                ],
                inputs={"data/raw.csv": "file:../datasets/raw.csv"},
                name="evil",
            )
        },
    )
    qwex.build("evil.drv", cwd=git_repo.path)  # the job harmed its own copy only
    git_repo.commit(
        "drv2",
        {
            "clean.drv": drv_text(
                job("--copy", "data/raw.csv=raw.csv"), inputs={"data/raw.csv": "file:../datasets/raw.csv"}
            )
        },
    )
    b = qwex.build("clean.drv", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/raw.csv").read_text() == "a,b\n1,2\n"
    assert dataset.read_text() == "a,b\n1,2\n"
    qwex.ok("verify")


def test_touching_an_intact_input_deletes_nothing(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """The second reported attack: an mtime change only, on an upstream's output staged as
    an input, made qwex delete the upstream's only blob (still "cached", then unusable)."""
    git_repo.commit(
        "drvs",
        {
            "up.drv": drv_text(job("--out", "a=upstream bytes\n"), name="up", include=["job.py"]),
            "down.drv": drv_text(
                ["sh", "-c", "touch up/out/a && mkdir -p out && cat up/out/a > out/b"],
                name="down",
                include=["job.py"],
                inputs={"up": "drv:up.drv"},
            ),
        },
    )
    up = qwex.build("up.drv", cwd=git_repo.path)
    before = _blobs(qwex)
    qwex.build("down.drv", cwd=git_repo.path)
    assert before <= _blobs(qwex)  # nothing was deleted from the store
    assert qwex.build("up.drv", cwd=git_repo.path).cached
    co = tmp_path / "up"
    qwex.ok("checkout", up.key, str(co))
    assert (co / "out/a").read_text() == "upstream bytes\n"
    qwex.ok("verify")


def test_job_overwriting_an_upstream_output_leaves_the_upstream_intact(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit(
        "drvs",
        {
            "up.drv": drv_text(job("--out", "a=upstream bytes\n"), name="up", include=["job.py"]),
            "down.drv": drv_text(
                [
                    "sh",
                    "-c",
                    "chmod u+w up/out/a && echo poisoned > up/out/a && mkdir -p out && cat up/out/a > out/b",
                ],
                name="down",
                include=["job.py"],
                inputs={"up": "drv:up.drv"},
            ),
        },
    )
    up = qwex.build("up.drv", cwd=git_repo.path)
    down = qwex.build("down.drv", cwd=git_repo.path)
    assert (qwex.store / "blobs").exists()
    co = tmp_path / "co"
    qwex.ok("checkout", up.key, str(co))
    assert (co / "out/a").read_text() == "upstream bytes\n"
    co2 = tmp_path / "co2"
    qwex.ok("checkout", down.key, str(co2))
    assert (co2 / "out/b").read_text() == "poisoned\n"  # what the job wrote, from its own copy
    qwex.ok("verify")


# ---------------------------------------------------------------------------------------
# item 6: no inode shared between the store and a place a job or user can write
# ---------------------------------------------------------------------------------------


def test_staged_inputs_are_private_read_only_copies(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    probe = (
        "import os, json; os.makedirs('out', exist_ok=True); st = os.stat('data/raw.csv'); "
        "open('out/st', 'w').write(json.dumps([st.st_mode & 0o777, st.st_nlink, st.st_ino]))"
    )
    git_repo.commit(
        "drv", {"t.drv": drv_text([PY, "-c", probe], inputs={"data/raw.csv": "file:../datasets/raw.csv"})}
    )
    key = qwex.build("t.drv", cwd=git_repo.path).key
    digest = hash_bytes(dataset.read_bytes())
    co = qwex.store.parent / "co"
    qwex.ok("checkout", key, str(co))
    mode, nlink, ino = json.loads((co / "out/st").read_text())
    assert mode == 0o444  # read-only, as a hint
    assert nlink == 1  # a copy: no other name, in the store or anywhere
    assert ino != os.stat(_blob(qwex, digest)).st_ino


def test_root_writing_through_a_checkout_changes_nothing_in_the_store(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", 'metrics.json={"acc": 0.9}\n'))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    first = tmp_path / "first"
    qwex.ok("checkout", key, str(first))
    f = first / "out/metrics.json"
    os.chmod(f, 0o644)  # a no-op for the copy; what a non-root owner would do to a link
    with open(f, "w") as fh:  # `echo x > checkout/out/metrics.json` (these tests run as root)
        fh.write("x\n")
    second = tmp_path / "second"
    qwex.ok("checkout", key, str(second))
    assert (second / "out/metrics.json").read_text() == '{"acc": 0.9}\n'
    qwex.ok("verify")


def test_checkout_link_is_opt_in_and_says_it_shares_the_store(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "r.txt=result\n"))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    blob = _blob(qwex, _outputs(qwex, key)["out/r.txt"])
    plain, linked = tmp_path / "plain", tmp_path / "linked"
    qwex.ok("checkout", key, str(plain))
    qwex.ok("checkout", key, str(linked), "--link")
    assert os.stat(plain / "out/r.txt").st_ino != os.stat(blob).st_ino
    assert os.stat(linked / "out/r.txt").st_ino == os.stat(blob).st_ino
    help_text = " ".join(qwex.ok("checkout", "--help").stdout.split())
    assert "--link" in help_text and "corrupts the store" in help_text


# ---------------------------------------------------------------------------------------
# item 7: every read that materializes a blob verifies it
# ---------------------------------------------------------------------------------------


def test_checkout_of_a_corrupt_blob_fails_naming_it_and_leaves_nothing(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "r.txt=result\n", "--out", "s.txt=other\n"))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    digest = _outputs(qwex, key)["out/r.txt"]
    _overwrite(_blob(qwex, digest), b"RESULT\n")  # same size, other bytes
    for extra in ([], ["--link"]):
        dest = tmp_path / f"co{len(extra)}"
        cp = qwex("checkout", key, str(dest), *extra)
        assert cp.returncode == 1, cp.stderr
        line = _error_line(cp.stderr)
        assert digest.removeprefix("blake3:") in line and "qwex verify --repair" in line, line
        assert "Traceback" not in cp.stderr
        assert not dest.exists()
        assert [p for p in tmp_path.iterdir() if p.name.startswith(f".{dest.name}")] == []


def test_staging_a_corrupt_upstream_blob_fails_the_build(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit(
        "drvs",
        {
            "up.drv": drv_text(job("--out", "a=upstream bytes\n"), name="up", include=["job.py"]),
            "down.drv": drv_text(
                job("--copy", "up/out/a=b"), name="down", include=["job.py"], inputs={"up": "drv:up.drv"}
            ),
        },
    )
    up = qwex.build("up.drv", cwd=git_repo.path)
    digest = _outputs(qwex, up.key)["out/a"]
    _overwrite(_blob(qwex, digest), b"UPSTREAM BYTES\n")
    cp = qwex("build", "down.drv", cwd=git_repo.path)
    assert cp.returncode != 0
    assert "Traceback" not in cp.stderr
    assert digest.removeprefix("blake3:") in cp.stderr and "qwex verify --repair" in cp.stderr, cp.stderr
    assert [r["status"] for r in qwex.json("ls") if r["name"] == "down"] in ([], ["failed"])
    runs = qwex.store / "tmp" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # the work dir went too


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return run(open_store(str(tmp_path / "store")))


def _corrupt(store: Store, digest: str, data: bytes) -> None:
    path = os.path.join(store.local_root or "", store.blob_path(digest))
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("size", [5, LARGE + 7], ids=["small", "large"])
@pytest.mark.parametrize("link", [False, True], ids=["copy", "link"])
def test_materialize_blob_verifies_and_never_publishes_wrong_bytes(
    store: Store, tmp_path: Path, size: int, link: bool
) -> None:
    good = os.urandom(size)
    digest = run(store.put_blob(good))
    out = tmp_path / "out"
    out.mkdir()
    run(store.materialize_blob(digest, str(out / "ok"), executable=False, link=link))
    assert (out / "ok").read_bytes() == good
    _corrupt(store, digest, bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(CorruptObject) as ei:
        run(store.materialize_blob(digest, str(out / "bad"), executable=False, link=link))
    assert ei.value.expected == digest and "qwex verify --repair" in str(ei.value)
    assert store.blob_path(digest) in str(ei.value)
    assert sorted(p.name for p in out.iterdir()) == ["ok"]  # no temp file, nothing under "bad"


def test_materialize_blob_from_a_remote_store_verifies(tmp_path: Path) -> None:
    store = run(open_store(f"memory://qwex-test-{uuid.uuid4().hex}"))
    digest = run(store.put_blob(b"remote bytes"))
    run(store.materialize_blob(digest, str(tmp_path / "ok"), executable=True))
    assert (tmp_path / "ok").read_bytes() == b"remote bytes"
    assert os.stat(tmp_path / "ok").st_mode & stat.S_IXUSR
    fs = store.storage.fs  # type: ignore[attr-defined]
    fs.pipe_file(f"{store.storage.root}/{store.blob_path(digest)}", b"REMOTE BYTES")  # type: ignore[attr-defined]
    with pytest.raises(CorruptObject):
        run(store.materialize_blob(digest, str(tmp_path / "bad"), executable=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
    with pytest.raises(ObjectNotFound):
        run(store.materialize_blob(hash_bytes(b"never"), str(tmp_path / "none"), executable=False))


def test_materialize_blob_modes_and_no_clobber(store: Store, tmp_path: Path) -> None:
    digest = run(store.put_blob(b"#!/bin/sh\n"))
    modes = {}
    for name, exe, ro in (("a", False, False), ("b", True, False), ("c", False, True), ("d", True, True)):
        run(store.materialize_blob(digest, str(tmp_path / name), executable=exe, read_only=ro))
        st = os.stat(tmp_path / name)
        modes[name] = (bool(st.st_mode & stat.S_IXUSR), bool(st.st_mode & stat.S_IWUSR), st.st_nlink)
    assert modes == {
        "a": (False, True, 1),
        "b": (True, True, 1),
        "c": (False, False, 1),
        "d": (True, False, 1),
    }
    victim = tmp_path / "victim"
    os.symlink(str(victim), tmp_path / "dangling")
    (tmp_path / "mine").write_bytes(b"mine")
    for name in ("mine", "dangling"):
        with pytest.raises(UserError, match="exists"):
            run(store.materialize_blob(digest, str(tmp_path / name), executable=False))
    assert (tmp_path / "mine").read_bytes() == b"mine" and not victim.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".qwex-tmp")]


def test_materialize_blobs_many_files_in_the_pool(store: Store, tmp_path: Path) -> None:
    datas = [os.urandom(i % 97) for i in range(200)]
    digests = [run(store.put_blob(d)) for d in datas]
    targets = [BlobTarget(d, str(tmp_path / f"f{i}"), i % 2 == 0) for i, d in enumerate(digests)]
    run(store.materialize_blobs(targets))
    for i, d in enumerate(datas):
        assert (tmp_path / f"f{i}").read_bytes() == d
    _corrupt(store, digests[150], b"x" * len(datas[150]) + b"!")
    more = [BlobTarget(d, str(tmp_path / f"g{i}"), False) for i, d in enumerate(digests)]
    with pytest.raises(CorruptObject):
        run(store.materialize_blobs(more))
    assert not (tmp_path / "g150").exists()


# ---------------------------------------------------------------------------------------
# item 2: symlinks inside a file: directory input are followed
# ---------------------------------------------------------------------------------------


def _dataset_with_link(tmp_path: Path) -> tuple[Path, Path]:
    """datasets/d/ holding own.csv and cur -> ../../outside/latest.csv (a link leaving it)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v1.csv").write_text("version 1\n")
    (outside / "v2.csv").write_text("version 2\n")
    os.symlink("v1.csv", outside / "latest.csv")
    d = tmp_path / "datasets" / "d"
    d.mkdir(parents=True)
    (d / "own.csv").write_text("own\n")
    os.symlink("../../outside/latest.csv", d / "cur")
    return d, outside


def _settle(*paths: Path) -> None:
    old = (1_600_000_000 * 10**9, 1_600_000_000 * 10**9)
    for p in paths:
        os.utime(p, ns=old, follow_symlinks=False)


def test_retargeting_a_link_in_a_dir_input_changes_the_key(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    _d, outside = _dataset_with_link(tmp_path)
    _settle(outside / "v1.csv", outside / "v2.csv")  # old enough for the stat cache
    git_repo.commit(
        "drv", {"t.drv": drv_text(job("--copy", "data/cur=cur"), inputs={"data": "file:../datasets/d"})}
    )
    k1 = qwex.hash("t.drv", cwd=git_repo.path)
    assert qwex.hash("t.drv", cwd=git_repo.path) == k1  # stable (and now in the stat cache)
    os.unlink(outside / "latest.csv")
    os.symlink("v2.csv", outside / "latest.csv")  # the link in the input still says the same
    k2 = qwex.hash("t.drv", cwd=git_repo.path)
    assert k2 != k1
    b = qwex.build("t.drv", cwd=git_repo.path)
    assert b.key == k2
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/cur").read_text() == "version 2\n"


def test_link_leaving_a_dir_input_reaches_the_job_as_a_regular_file(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    d, outside = _dataset_with_link(tmp_path)
    (outside / "tree").mkdir()
    (outside / "tree" / "f.txt").write_text("in a linked dir\n")
    os.symlink(str(outside / "tree"), d / "sub")  # absolute, to a directory outside
    probe = (
        "import os; os.makedirs('out', exist_ok=True); "
        "kinds = [p + (' link' if os.path.islink(p) else ' file' if os.path.isfile(p) else ' ?') "
        "for p in ('data/cur', 'data/sub', 'data/sub/f.txt', 'data/own.csv')]; "
        "open('out/kinds', 'w').write(chr(10).join(kinds)); "
        "open('out/cur', 'w').write(open('data/cur').read()); "
        "open('out/f', 'w').write(open('data/sub/f.txt').read())"
    )
    git_repo.commit("drv", {"t.drv": drv_text([PY, "-c", probe], inputs={"data": "file:../datasets/d"})})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    co = tmp_path / "co"
    qwex.ok("checkout", key, str(co))
    assert (co / "out/kinds").read_text().splitlines() == [
        "data/cur file",
        "data/sub ?",
        "data/sub/f.txt file",
        "data/own.csv file",
    ]
    assert (co / "out/cur").read_text() == "version 1\n"
    assert (co / "out/f").read_text() == "in a linked dir\n"


@pytest.mark.parametrize("kind", ["dangling", "loop", "cycle"])
def test_bad_link_in_a_dir_input_is_a_user_error_naming_it(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, kind: str
) -> None:
    d = tmp_path / "datasets" / "d"
    d.mkdir(parents=True)
    (d / "ok.csv").write_text("ok\n")
    if kind == "dangling":
        os.symlink("nowhere.csv", d / "badlink")
    elif kind == "loop":
        os.symlink("badlink2", d / "badlink")
        os.symlink("badlink", d / "badlink2")
    else:
        os.symlink("..", d / "badlink")  # back up to the input's own parent: endless
        (d / "x").mkdir()
        os.symlink("../..", d / "x" / "badlink")
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"), inputs={"data": "file:../datasets/d"})})
    for verb in ("hash", "build"):
        cp = qwex(verb, "t.drv", cwd=git_repo.path)
        assert_user_error(
            cp,
            "t.drv",
            "inputs.'data'",
            "badlink",
            {"dangling": "dangling", "loop": "loop", "cycle": "cycle"}[kind],
        )
    runs = qwex.store / "runs"
    assert not runs.exists() or not list(runs.iterdir())  # nothing ran


def test_scan_follow_mode_units(tmp_path: Path) -> None:
    d, outside = _dataset_with_link(tmp_path)
    os.symlink(str(outside), d / "all")
    found = {s.path: s for s in scan(str(d), follow=True)}
    assert set(found) == {"own.csv", "cur", "all/v1.csv", "all/v2.csv", "all/latest.csv"}
    assert all(stat.S_ISREG(s.st.st_mode) for s in found.values())
    entries = {e.path: e for e in hash_entries(list(found.values()))}
    assert entries["cur"] == FileEntry(path="cur", size=10, digest=hash_bytes(b"version 1\n"))
    # without follow, links stay links (outputs are scanned this way)
    assert {s.path for s in scan(str(d))} == {"own.csv", "cur", "all"}
    os.mkfifo(outside / "pipe")
    os.symlink(str(outside / "pipe"), d / "to_pipe")
    with pytest.raises(UserError, match="to_pipe"):
        list(scan(str(d), follow=True))


def test_file_input_stat_cache_sees_a_retargeted_link(tmp_path: Path) -> None:
    d, outside = _dataset_with_link(tmp_path)
    _settle(outside / "v1.csv", outside / "v2.csv", d / "own.csv")
    idx = Index(str(tmp_path / "index"))
    try:
        a = _file_input("data", str(d), idx, "t.drv")
        assert idx.stat(str(d / "cur")) is not None  # cached under the link's own path
        os.unlink(outside / "latest.csv")
        os.symlink("v2.csv", outside / "latest.csv")
        b = _file_input("data", str(d), idx, "t.drv")
        assert a.manifest is not None and b.manifest is not None
        assert {e.path: e.digest for e in b.manifest.files()}["cur"] == hash_bytes(b"version 2\n")
        os.unlink(outside / "v2.csv")
        with pytest.raises(DrvFileError, match="cur"):
            _file_input("data", str(d), idx, "t.drv")
    finally:
        idx.close()


def test_large_copy_falls_back_where_the_kernel_cannot_copy(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range fails across some filesystems (EXDEV): the copy continues in user
    space from where it stopped, and the destination is still verified."""
    import errno as errno_

    data = os.urandom(LARGE + 12345)
    digest = run(store.put_blob(data))
    calls = [0]
    real = os.copy_file_range

    def flaky(src: int, dst: int, count: int, *args: Any) -> int:
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno_.EXDEV, "cross-device")
        return real(src, dst, min(count, 1 << 20), *args)  # one partial chunk, then refuse

    monkeypatch.setattr(os, "copy_file_range", flaky)
    run(store.materialize_blob(digest, str(tmp_path / "big"), executable=False))
    assert (tmp_path / "big").read_bytes() == data and calls[0] > 1
