"""Inputs edited after planning are refused; a snapshot with unsafe tree names is refused."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_objects

from qwexstore.build import realize
from qwexstore.errors import StoreError, UserError
from qwexstore.index import Index
from qwexstore.plan import plan_file
from qwexstore.records import Snapshot
from qwexstore.snapshot import restore
from qwexstore.store import Store, open_store


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_input_edited_after_planning_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    (repo / "x.drv").write_text('command = ["true"]\noutputs = []\n[inputs]\n"d" = "file:../data.txt"\n')
    _git(repo, "add", "x.drv")
    _git(repo, "commit", "-qm", "x")
    data = tmp_path / "data.txt"
    data.write_text("planned\n")
    with Index(str(tmp_path / "index")) as index:
        plan = plan_file(str(repo / "x.drv"), index)
        data.write_text("edited!\n")  # same size: only a re-hash notices

        async def go() -> None:
            store = await open_store(str(tmp_path / "store"))
            await realize(store, index, plan, on_log=lambda s, b: None)

        with pytest.raises(UserError, match="changed while"):
            asyncio.run(go())
        assert index.realisation(plan.key) is None


def test_restore_refuses_unsafe_tree_entry_names(tmp_path: Path) -> None:
    blob = Blob.from_string(b"pwned\n")
    tree = Tree()
    tree.add(b"..", 0o100644, blob.id)
    commit = Commit()
    commit.tree = tree.id
    commit.author = commit.committer = b"t <t@example.invalid>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"evil"
    pack = io.BytesIO()
    objs = [(o, None) for o in (blob, tree, commit)]
    try:  # dulwich >= 1.0 names the object format; older versions take none
        from dulwich.object_format import DEFAULT_OBJECT_FORMAT

        write_pack_objects(pack.write, objs, DEFAULT_OBJECT_FORMAT)
    except ImportError:
        write_pack_objects(pack.write, objs)  # type: ignore[call-arg]
    bundle = b"# v2 git bundle\n" + commit.id + b" refs/heads/x\n\n" + pack.getvalue()

    async def go() -> None:
        store: Store = await open_store(str(tmp_path / "store"))
        digest = await store.put_blob(bundle)
        snap = await store.put_snapshot(Snapshot(commit=commit.id.decode(), bundles=[digest]))
        dest = tmp_path / "a" / "dest"
        dest.mkdir(parents=True)
        with pytest.raises(StoreError, match="unsafe tree entry"):
            await restore(store, snap, None, str(dest))

    asyncio.run(go())
    assert not os.path.exists(tmp_path / "a" / "pwned")
    assert not (tmp_path / "a" / "..").resolve().joinpath("pwned").exists()
