"""Git sources: select a tree, check it is clean, digest it, snapshot it, stage it.

The identity of a source is the digest of its *selected tree* (spec/derivation.md,
"Source"): the sorted (path, mode, git object id) of every selected file, not the commit,
so rewording a commit message or touching unselected files is not a new run.

Reading the user's repository uses the ``git`` command (fast, and present wherever a repo
is); recreating a tree from the store (:mod:`qwexstore.restore`) needs only dulwich.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

import msgspec

from . import canonical
from .digest import hash_tagged
from .errors import SourceError
from .globs import Selector

__all__ = [
    "Repo",
    "SourceEntry",
    "SourceTree",
    "find_repo",
]

_GITLINK = "160000"


class SourceEntry(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One selected file: path, git mode (100644, 100755, 120000) and ``git-sha1:<hex>``."""

    path: str
    mode: str
    oid: str


class SourceTree(msgspec.Struct, forbid_unknown_fields=True):
    """The selected tree. Digest: ``blake3(b"qwex:source-tree:v1\\0" + canonical)``."""

    entries: list[SourceEntry]

    def digest(self) -> str:
        return hash_tagged("source-tree", canonical.encode(self))

    def paths(self) -> list[str]:
        return [e.path for e in self.entries]


def _git(repo: str, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    try:
        proc = subprocess.run(
            ["git", "-C", repo, *args],
            input=input,
            capture_output=True,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise SourceError("the git command is not installed; qwex reads repositories with it") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {args[0]} failed in {repo}: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def find_repo(start: str) -> str:
    """The top directory of the git work tree containing ``start``."""
    try:
        proc = subprocess.run(
            ["git", "-C", start, "rev-parse", "--show-toplevel"],
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise SourceError("the git command is not installed; qwex reads repositories with it") from None
    if proc.returncode != 0:
        raise SourceError(f"not a git repository: {start} (set [source] repo or run `git init`)")
    return proc.stdout.decode().strip()


class Repo:
    """A user's git repository, read through the git command."""

    def __init__(self, root: str) -> None:
        self.root = root

    def commit_of(self, rev: str) -> str:
        """Full commit id of ``rev``; SourceError naming the revision if it does not exist."""
        try:
            return _git(self.root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except SourceError:
            raise SourceError(f"unknown revision {rev!r} in {self.root}") from None

    def head(self) -> str | None:
        """The commit HEAD points at, or None in a repository without commits."""
        try:
            return _git(self.root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").decode().strip()
        except SourceError:
            return None

    def tree(self, commit: str, selector: Selector) -> SourceTree:
        """The selected entries of a commit's tree, sorted by path. Submodules are refused."""
        out = _git(self.root, "ls-tree", "-r", "-z", "--full-tree", commit)
        entries: list[SourceEntry] = []
        for rec in out.split(b"\0"):
            if not rec:
                continue
            meta, _, raw = rec.partition(b"\t")
            mode, _typ, oid = meta.decode().split(" ")
            try:
                path = raw.decode("utf-8")
            except UnicodeDecodeError:
                path = raw.decode("utf-8", errors="surrogateescape")
                if selector(path):
                    raise SourceError(
                        f"selected file name is not UTF-8: {raw!r}; rename it or add it to [source] exclude"
                    ) from None
                continue
            if not selector(path):
                continue
            if mode == _GITLINK:
                raise SourceError(
                    f"submodule {path} is selected; submodules are not supported: add it to [source] exclude"
                )
            entries.append(SourceEntry(path=path, mode=mode, oid=f"git-sha1:{oid}"))
        entries.sort(key=lambda e: e.path)
        return SourceTree(entries)

    def dirty(self, selector: Selector) -> list[str]:
        """Selected tracked files whose working-tree or index state differs from HEAD."""
        out = _git(self.root, "status", "--porcelain=v1", "-z", "--untracked-files=no")
        recs = out.split(b"\0")
        paths: list[str] = []
        i = 0
        while i < len(recs):
            rec = recs[i]
            i += 1
            if len(rec) < 4:
                continue
            paths.append(rec[3:].decode("utf-8", errors="surrogateescape"))
            if rec[:1] in (b"R", b"C"):
                paths.append(recs[i].decode("utf-8", errors="surrogateescape"))
                i += 1
        return sorted({p for p in paths if selector(p)})

    def snapshot_worktree(self) -> str:
        """A commit of the working tree's tracked files that no branch points to.

        Uses ``git stash create``: refs, index and working tree are left untouched.
        """
        out = _git(self.root, "stash", "create", "qwex --allow-dirty snapshot").decode().strip()
        head = self.head()
        if out:
            return out
        if head is None:
            raise SourceError(f"{self.root} has no commits; commit your source first")
        return head

    def ancestors(self, commit: str, limit: int) -> list[str]:
        """Up to ``limit`` commits reachable from ``commit``, newest first (itself included)."""
        return _git(self.root, "rev-list", f"--max-count={limit}", commit).decode().split()

    def pack_objects(self, commit: str, exclude: Sequence[str], dest: str) -> None:
        """Write a self-contained pack of ``commit``'s closure minus ``exclude``'s to ``dest``."""
        revs = "".join([f"{commit}\n", *(f"^{c}\n" for c in exclude)]).encode()
        with open(dest, "wb") as f:
            proc = subprocess.run(
                ["git", "-C", self.root, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset"],
                input=revs,
                stdout=f,
                stderr=subprocess.PIPE,
                check=False,
            )
        if proc.returncode != 0:
            raise SourceError(f"git pack-objects failed: {proc.stderr.decode(errors='replace').strip()}")

    def stage(self, commit: str, paths: Sequence[str], dest: str) -> None:
        """Write the listed paths of ``commit`` into directory ``dest`` (git checkout-index)."""
        os.makedirs(dest, exist_ok=True)
        if not paths:
            return
        idx = os.path.join(dest, ".qwex-index")
        env = {**os.environ, "GIT_INDEX_FILE": idx}
        try:
            _git(self.root, "read-tree", commit, env=env)
            stdin = b"\0".join(p.encode("utf-8", errors="surrogateescape") for p in paths) + b"\0"
            _git(
                self.root,
                "checkout-index",
                "-z",
                "--stdin",
                f"--prefix={dest.rstrip('/')}/",
                input=stdin,
                env=env,
            )
        finally:
            if os.path.exists(idx):
                os.unlink(idx)
