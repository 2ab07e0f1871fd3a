"""``qwex index rebuild``: the index is an accelerator; the store alone recreates it, equal
to the original, after the index is deleted or corrupted."""

from __future__ import annotations

from pathlib import Path

import lmdb
from conftest import GitRepo, Qwex, drv_text, job

DBS = ("real", "runs", "drv", "snap")


def index_dir(qwex: Qwex) -> Path:
    (path,) = [p for p in (qwex.home / "index").iterdir() if ".unreadable-" not in p.name]
    return path


def dump(qwex: Qwex) -> dict[str, dict[bytes, bytes]]:
    """Every rebuildable sub-database of the index, raw (the stat cache is a local hint)."""
    env = lmdb.open(str(index_dir(qwex)), max_dbs=8, readonly=True)
    try:
        out = {}
        for name in DBS:
            db = env.open_db(name.encode(), create=False)
            with env.begin(db=db) as txn:
                out[name] = dict(txn.cursor())
        return out
    finally:
        env.close()


def populate(qwex: Qwex, repo: GitRepo) -> str:
    """Two commits, a pipeline of two, a plain build and a failed run; the root key."""
    repo.commit("drvs", {
        "up.drv": drv_text(job("--out", "u=1"), name="up", include=["job.py"]),
        "down.drv": drv_text(job("--copy", "up/out/u=u2"), name="down", include=["job.py"],
                             inputs={"up": "drv:up.drv"}),
        "fail.drv": drv_text(job("--exit", "4"), name="fail"),
    })
    root = qwex.build("down.drv", cwd=repo.path).key
    repo.commit("more", {"x.drv": drv_text(job("--out", "x=1"), name="x")})
    qwex.build("x.drv", cwd=repo.path)
    assert qwex("build", "fail.drv", cwd=repo.path).returncode == 1
    return root


def test_rebuild_after_deletion_equals_the_original(qwex: Qwex, git_repo: GitRepo) -> None:
    root = populate(qwex, git_repo)
    original = dump(qwex)
    assert [len(original[d]) for d in DBS] == [3, 4, 4, 2]
    for f in index_dir(qwex).iterdir():
        f.unlink()
    qwex.ok("index", "rebuild")
    assert dump(qwex) == original
    assert qwex.build("down.drv", cwd=git_repo.path).cached
    assert qwex.build("down.drv", cwd=git_repo.path).key == root


def test_corrupt_index_is_a_clear_error_and_rebuild_recovers(qwex: Qwex, git_repo: GitRepo) -> None:
    populate(qwex, git_repo)
    original = dump(qwex)
    data = index_dir(qwex) / "data.mdb"
    data.write_bytes(b"\x00garbage" * 4096)
    cp = qwex("build", "down.drv", cwd=git_repo.path)
    assert cp.returncode == 1
    assert cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr
    assert "index" in cp.stderr and "qwex index rebuild" in cp.stderr
    cp = qwex.ok("index", "rebuild")
    assert "unreadable" in cp.stderr
    assert dump(qwex) == original
    assert qwex.build("down.drv", cwd=git_repo.path).cached
    # the unreadable index was kept aside, not deleted
    assert [p for p in (qwex.home / "index").iterdir() if ".unreadable-" in p.name]
