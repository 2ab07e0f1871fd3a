"""Source snapshots: recreate a commit from the store alone (spec/store.md, "Snapshots").

A snapshot of commit C is a list of git bundles (v2 format, each a header plus a
self-contained pack), oldest first. The first holds a full closure; each later one holds
only the objects reachable from its commit and not from the previous snapshot's commit,
and names that commit as its prerequisite. So a re-snapshot after a small commit stores a
pack of a few objects, and ``git fetch`` accepts every bundle as it is.

Creation uses ``git pack-objects`` (it reuses the repository's existing deltas, ~20x faster
than packing in Python); restoring uses dulwich only, so the git command is not needed
where a run is checked out.
"""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Final

from .digest import hash_file
from .errors import CorruptObject, StoreError
from .faults import crashpoint
from .gittree import GitEntry, write_tree
from .index import Index
from .records import Snapshot
from .source import Repo
from .store import Store

__all__ = ["restore", "take_snapshot"]

_BUNDLE_REF: Final = b"refs/heads/qwex-snapshot"
#: Past this many bundles a snapshot starts a new full chain, bounding restore work.
_MAX_CHAIN: Final = 64
_ANCESTOR_SCAN: Final = 512


def _header(commit: str, prerequisites: Sequence[str]) -> bytes:
    lines = [b"# v2 git bundle\n"]
    lines += [f"-{p} qwex base\n".encode() for p in prerequisites]
    lines.append(commit.encode() + b" " + _BUNDLE_REF + b"\n\n")
    return b"".join(lines)


async def take_snapshot(store: Store, index: Index, repo: Repo, commit: str, tmpdir: str) -> str:
    """Store a snapshot of ``commit`` and return its digest; reuse earlier snapshots.

    Idempotent. Writes the bundle blob, then the snapshot record, then the index entry.
    ``tmpdir`` must be on the store's filesystem for the bundle to be moved, not copied.
    """
    known = index.snapshot_of(commit)
    if known and (await store.storage.exists([store.snapshot_path(known)]))[0]:
        return known
    base: Snapshot | None = None
    for anc in repo.ancestors(commit, _ANCESTOR_SCAN)[1:]:
        digest = index.snapshot_of(anc)
        if digest is None:
            continue
        try:
            cand = await store.get_snapshot(digest)
        except StoreError:
            continue
        if len(cand.bundles) < _MAX_CHAIN:
            base = cand
        break
    prereq = [base.commit] if base else []
    os.makedirs(tmpdir, exist_ok=True)
    path = os.path.join(tmpdir, f"bundle-{uuid.uuid4().hex}")
    try:
        repo.pack_objects(commit, prereq, path + ".pack")
        with open(path, "wb") as out, open(path + ".pack", "rb") as pack:
            out.write(_header(commit, prereq))
            while chunk := pack.read(1 << 20):
                out.write(chunk)
        os.unlink(path + ".pack")
        blob = hash_file(path)
        await store.storage.put_file(store.blob_path(blob), path, consume=True)
        crashpoint("snapshot")
    finally:
        for p in (path, path + ".pack"):
            if os.path.exists(p):
                os.unlink(p)
    snap = Snapshot(commit=commit, bundles=[*(base.bundles if base else []), blob])
    await store.storage.sync()
    digest = await store.put_snapshot(snap)
    with index.writer() as w:
        w.snapshot(commit, digest)
    return digest


def _split_bundle(data: bytes, where: str) -> bytes:
    """The pack inside a v2 bundle (header lines end at the first empty line)."""
    if not data.startswith(b"# v2 git bundle\n"):
        raise StoreError(f"{where} is not a git v2 bundle")
    end = data.find(b"\n\n")
    if end < 0:
        raise StoreError(f"{where}: bundle header is not terminated")
    return data[end + 2 :]


async def restore(
    store: Store,
    snapshot_digest: str,
    paths: Callable[[str], bool] | None,
    dest: str,
) -> list[str]:
    """Write the selected files of a snapshot's commit into ``dest``; return their paths.

    Every bundle is verified against its digest; files are written by
    :func:`qwexstore.gittree.write_tree` (the code path that stages a job's source), which
    re-hashes every blob and refuses, before writing anything, names that ``git fsck``
    refuses (StoreError). Needs dulwich, not the git command.
    """
    from dulwich.objects import Blob, Commit, Tree
    from dulwich.repo import Repo as DRepo

    snap = await store.get_snapshot(snapshot_digest)
    where = store.snapshot_path(snapshot_digest)
    with tempfile.TemporaryDirectory(prefix="qwex-restore-") as tmp:
        drepo = DRepo.init_bare(tmp)
        for digest in snap.bundles:
            pack = _split_bundle(await store.get_blob(digest), store.blob_path(digest))
            f, commit_pack, abort = drepo.object_store.add_pack()
            try:
                f.write(pack)
            except BaseException:
                abort()
                raise
            commit_pack()
        commit = drepo[snap.commit.encode()]
        if not isinstance(commit, Commit):
            raise CorruptObject(where, "a commit", snap.commit)

        entries: list[GitEntry] = []

        def walk(tree_id: bytes, prefix: str) -> None:
            tree = drepo[tree_id]
            if not isinstance(tree, Tree):
                raise CorruptObject(where, "a tree", tree_id.decode())
            for entry in tree.iteritems():
                name = entry.path.decode("utf-8", errors="surrogateescape")
                if name in ("", ".", "..") or "/" in name or "\0" in name:
                    raise StoreError(f"snapshot {snapshot_digest}: unsafe tree entry name {name!r}")
                rel = f"{prefix}{name}"
                if entry.mode == 0o160000:  # submodule: never selected (source.py refuses)
                    continue
                if stat.S_ISDIR(entry.mode):
                    walk(entry.sha, rel + "/")
                    continue
                if paths is not None and not paths(rel):
                    continue
                entries.append(GitEntry(rel, entry.mode, entry.sha.decode()))

        def read_blob(oid: str) -> bytes:
            obj = drepo[oid.encode()]
            if not isinstance(obj, Blob):
                raise CorruptObject(where, f"git blob {oid}", obj.type_name.decode())
            return obj.as_raw_string()

        try:
            walk(commit.tree, "")
            written = write_tree(
                entries, read_blob, dest, lambda m: StoreError(f"snapshot {snapshot_digest}: {m}")
            )
        finally:
            drepo.close()
    return written
