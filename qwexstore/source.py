"""Git sources: select a tree, check it is clean, digest it, snapshot it, stage it.

The identity of a source is the digest of its *selected tree* (spec/derivation.md,
"Source"): the sorted (path, mode, git object id) of every selected file, not the commit,
so rewording a commit message or touching unselected files is not a new run.

Reading the user's repository uses the ``git`` command (fast, and present wherever a repo
is); recreating a tree from the store (:mod:`qwexstore.snapshot`) needs only dulwich.
Both write files through :func:`qwexstore.gittree.write_tree`, from raw blobs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from . import canonical
from .digest import hash_tagged
from .errors import SourceError
from .gitproc import Proc, run
from .gittree import GitEntry, check_git_path, write_tree
from .globs import Selector

if TYPE_CHECKING:
    import subprocess  # used where input is written to git: not on the cache-hit path
    import threading

__all__ = [
    "Repo",
    "RepoCache",
    "SourceEntry",
    "SourceTree",
    "find_repo",
    "open_repo",
]

_GITLINK = "160000"
#: A ``ls-tree -z`` record (``<meta>\t<path>\0``; meta holds hex ids and type words, never
#: "git") whose path git might refuse contains one of these, once lowercased: a superset of
#: what gittree.check_git_path refuses (HFS ignorables are U+200C..U+206F and U+FEFF).
_SUSPECT_LS = (
    b"git", b"mailmap", b"\\", b"\xe2\x80", b"\xe2\x81", b"\xef\xbb\xbf", b"//", b"\t/", b"/\0", b"\t\0",
    b"/./", b"/../", b"\t./", b"\t../", b"/.\0", b"/..\0", b"\t.\0", b"\t..\0",
)
_LFS_ATTR = b"filter=lfs"
_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


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


def _env(**extra: str) -> dict[str, str]:
    """The environment of every git call: replace refs off, so objects are what their ids
    say; optional locks off, so reading the user's repository never writes to it (``git
    status`` would refresh ``.git/index`` under ``index.lock``, which a killed or
    concurrent status could leave behind or collide with)."""
    return {**os.environ, "GIT_NO_REPLACE_OBJECTS": "1", "GIT_OPTIONAL_LOCKS": "0", **extra}


def _git(repo: str, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    argv = ["git", "-C", repo, *args]
    try:
        if input is None:  # reading: without the subprocess module (qwexstore.gitproc)
            return _output(repo, args, *run(argv, env if env is not None else _env()))
        import subprocess

        proc = subprocess.run(argv, input=input, capture_output=True, env=env if env is not None else _env(),
                              check=False)
    except FileNotFoundError:
        raise SourceError("the git command is not installed; qwex reads repositories with it") from None
    return _output(repo, args, proc.returncode, proc.stdout, proc.stderr)


def _output(repo: str, args: tuple[str, ...], rc: int, out: bytes, err: bytes) -> bytes:
    """``out``, or SourceError with git's last line of stderr."""
    if rc != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {args[0]} failed in {repo}: {msg[-1] if msg else rc}")
    return out


def _start(cwd: str, args: tuple[str, ...]) -> Proc | None:
    """``git -C cwd ARGS`` started in the background (None if git cannot be started: the
    same call made later reports that). It takes no optional lock (:func:`_env`), so
    stopping it unread can never leave a lock behind that breaks the user's next commit."""
    try:
        return Proc(["git", "-C", cwd, *args], _env())
    except OSError:
        return None


def find_repo(start: str) -> str:
    """The top directory of the git work tree containing ``start``."""
    try:
        rc, out, _ = run(["git", "-C", start, "rev-parse", "--show-toplevel"], dict(os.environ))
    except FileNotFoundError:
        raise SourceError("the git command is not installed; qwex reads repositories with it") from None
    if rc != 0:
        raise SourceError(f"not a git repository: {start} (set [source] repo or run `git init`)")
    return out.decode().strip()


#: ``git rev-parse`` arguments of :meth:`Repo.head` (its memo key).
_HEAD_ARGS = ("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
#: ``git status`` arguments of :meth:`Repo.changes`.
_STATUS_ARGS = ("status", "--porcelain=v1", "-z", "--untracked-files=all")


def open_repo(start: str, *, status: bool = False) -> Repo:
    """``Repo(find_repo(start))`` with its HEAD already read, in one git call instead of two
    (``rev-parse --show-toplevel --verify --quiet HEAD^{commit}``; about 3 ms each).

    Same answers and errors as the two calls: when the combined call does not give a
    top directory and a commit id (not a repository, a repository without commits, an
    unusual path), the separate calls are made and their answers or errors stand.

    ``status``: also start ``git status`` (what :meth:`Repo.changes` reads) beside that
    call, since planning at HEAD needs both (its porcelain paths are relative to the top
    directory wherever it runs). The caller then owns :meth:`Repo.close`.
    """
    started = _start(start, _STATUS_ARGS) if status else None
    try:
        try:
            rc, out, _ = run(["git", "-C", start, "rev-parse", "--show-toplevel", *_HEAD_ARGS[1:]], _env())
        except FileNotFoundError:
            raise SourceError("the git command is not installed; qwex reads repositories with it") from None
        try:
            lines = out.decode().split("\n")
        except UnicodeDecodeError:
            lines = []
        if rc == 0 and len(lines) == 3 and not lines[2] and lines[0].strip() \
                and _is_oid(lines[1]):
            repo = Repo(lines[0].strip())  # as find_repo strips it
            repo._memo[_HEAD_ARGS] = f"{lines[1]}\n".encode()  # what `git rev-parse` prints
        else:
            repo = Repo(find_repo(start))
    except BaseException:
        _reap(started)
        raise
    if started is not None:
        repo._started[_STATUS_ARGS] = started
    return repo


def _reap(proc: Proc | None) -> None:
    """Stop and wait for a background git call nobody will read (SIGTERM: git removes any
    lock file of its own on that signal)."""
    if proc is not None:
        proc.stop()


def _is_oid(text: str) -> bool:
    """A full git object id (SHA-1 or SHA-256), lower-case hex."""
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


class RepoCache:
    """The repositories of one planning, each a :class:`Repo` (whose answers it memoizes):
    a planning of several .drv files in one repository finds it and reads HEAD once."""

    def __init__(self) -> None:
        self._by_root: dict[str, Repo] = {}
        self._by_start: dict[str, Repo] = {}

    def at(self, start: str) -> Repo:
        """:func:`open_repo`, once per ``start`` directory and once per repository."""
        repo = self._by_start.get(start)
        if repo is None:
            found = open_repo(start, status=not self._by_root)  # the first is the usual only one
            repo = self._by_start[start] = self._by_root.setdefault(found.root, found)
            if repo is not found:
                found.close()
        return repo

    def close(self) -> None:
        """Reap the git calls started for these repositories and never read."""
        for repo in self._by_root.values():
            repo.close()


class Repo:
    """A user's git repository, read through the git command."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._memo: dict[tuple[str, ...], bytes] = {}
        self._started: dict[tuple[str, ...], Proc] = {}  # see open_repo

    def _read(self, *args: str) -> bytes:
        """``git ARGS``'s output, asked once per Repo: planning a sweep of 100 derivations
        in one repository reads HEAD, its status and its tree once, not 100 times. A Repo
        lives for one planning (the answers are the repository's state at that moment)."""
        out = self._memo.get(args)
        if out is None:
            started = self._started.pop(args, None)
            if started is not None:
                out = _output(self.root, args, *started.finish())
            else:
                out = _git(self.root, *args)
            self._memo[args] = out
        return out

    def close(self) -> None:
        """Reap background git calls never read (a planning at another revision)."""
        while self._started:
            _reap(self._started.popitem()[1])

    def commit_of(self, rev: str) -> str:
        """Full commit id of ``rev``; SourceError naming the revision if it does not exist."""
        try:
            return self._read("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except SourceError:
            raise SourceError(f"unknown revision {rev!r} in {self.root}") from None

    def head(self) -> str | None:
        """The commit HEAD points at, or None in a repository without commits."""
        try:
            return self._read(*_HEAD_ARGS).decode().strip()
        except SourceError:
            return None

    def tree(self, commit: str, selector: Selector, *, strict: bool = False) -> SourceTree:
        """The selected entries of a commit's tree, sorted by path. Submodules are refused.

        ``strict`` (planning) also refuses, with SourceError naming the file or pattern: a
        selected name that git refuses to check out (:func:`qwexstore.gittree.check_git_path`),
        an ``include`` pattern that matches no path of the tree, and selected git-lfs
        pointer files (:meth:`_refuse_lfs_pointers`).
        """
        out = self._read("ls-tree", "-r", "-z", "--full-tree", commit)
        entries: list[SourceEntry] = []
        pending = {p: Selector([p], []) for p in selector.include} if strict else {}
        attrs: list[str] = []
        suspects = _suspect_paths(out) if strict else set()
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
            if pending:
                for pat in [p for p, sel in pending.items() if sel(path)]:
                    del pending[pat]
            if strict and path.rpartition("/")[2] == ".gitattributes" and mode != "120000":
                attrs.append(oid)
            if not selector(path):
                continue
            if mode == _GITLINK:
                raise SourceError(
                    f"submodule {path} is selected; submodules are not supported: add it to [source] exclude"
                )
            if raw in suspects and (why := check_git_path(path, int(mode, 8))) is not None:
                raise SourceError(
                    f"selected file {why}; git refuses to check such a name out: "
                    "rename it or add it to [source] exclude",
                    (path,),
                )
            entries.append(SourceEntry(path=path, mode=mode, oid=f"git-sha1:{oid}"))
        if pending:
            pat = next(iter(pending))
            raise SourceError(
                f"[source] include pattern {pat!r} matches no file of commit {commit[:12]} in {self.root}"
                " (is it committed? remove the pattern or fix it)",
            )
        entries.sort(key=lambda e: e.path)
        tree = SourceTree(entries)
        if strict:
            self._refuse_lfs_pointers(tree, attrs)
        return tree

    def _refuse_lfs_pointers(self, tree: SourceTree, attr_oids: list[str]) -> None:
        """SourceError naming the selected git-lfs pointer files, if any.

        Cheap gate first: only if one of the tree's ``.gitattributes`` files (or
        ``.git/info/attributes``) mentions ``filter=lfs`` are sizes read (one
        ``git cat-file --batch-check``) and the blobs under 1024 bytes read (one
        ``git cat-file --batch``) to look for the pointer header. A pointer is what git
        stores, so it is what the job would see: the data itself must be a ``file:`` input.
        """
        lfs = False
        info = os.path.join(self.root, ".git", "info", "attributes")
        if os.path.isfile(info):
            with open(info, "rb") as f:
                lfs = _LFS_ATTR in f.read()
        if not lfs and attr_oids:
            with _BatchReader(self.root, attr_oids) as reader:
                lfs = any(_LFS_ATTR in reader.read(o) for o in attr_oids)
        if not lfs:
            return
        files = [e for e in tree.entries if e.mode != "120000"]
        if not files:
            return
        ids = "".join(f"{_hex(e.oid)}\n" for e in files).encode()
        out = _git(self.root, "cat-file", "--batch-check", input=ids)
        small = [e for e, line in zip(files, out.decode().splitlines(), strict=True)
                 if int(line.split()[2]) < 1024]
        if not small:
            return
        with _BatchReader(self.root, [_hex(e.oid) for e in small]) as reader:
            pointers = [e.path for e in small if reader.read(_hex(e.oid)).startswith(_LFS_POINTER)]
        if pointers:
            shown = ", ".join(pointers[:5]) + (f" and {len(pointers) - 5} more" if len(pointers) > 5 else "")
            raise SourceError(
                f"selected files are git-lfs pointers, not data: {shown}; the job would see the "
                "pointer text: declare the data as a `file:` input (or add the files to [source] exclude)",
                tuple(pointers),
            )

    def changes(self, selector: Selector) -> tuple[list[str], list[str]]:
        """(changed, untracked): selected tracked files whose working-tree or index state
        differs from HEAD, and selected untracked files that are not ignored. One
        ``git status``."""
        out = self._read(*_STATUS_ARGS)
        recs = out.split(b"\0")
        changed: set[str] = set()
        untracked: set[str] = set()
        i = 0
        while i < len(recs):
            rec = recs[i]
            i += 1
            if len(rec) < 4:
                continue
            path = rec[3:].decode("utf-8", errors="surrogateescape")
            (untracked if rec[:2] == b"??" else changed).add(path)
            if rec[:1] in (b"R", b"C"):
                changed.add(recs[i].decode("utf-8", errors="surrogateescape"))
                i += 1
        return sorted(p for p in changed if selector(p)), sorted(p for p in untracked if selector(p))

    def snapshot_worktree(self, paths: Sequence[str]) -> str:
        """A commit of HEAD with ``paths`` taken from the working tree (added, changed or
        deleted), that no ref points to; HEAD itself if nothing differs.

        Built with a temporary index outside the repository (``read-tree HEAD``,
        ``add -A``, ``write-tree``, ``commit-tree -p HEAD``): refs, the real index and the
        working tree are left untouched. Author, committer and date are fixed, so the same
        state gives the same commit (and its snapshot is reused).
        """
        head = self.head()
        if head is None:
            raise SourceError(f"{self.root} has no commits; commit your source first")
        if not paths:
            return head
        import tempfile  # shutil, random...: only a dirty snapshot pays for it

        fd, idx = tempfile.mkstemp(prefix="qwex-index-")
        os.close(fd)
        env = _env(
            GIT_INDEX_FILE=idx,
            GIT_LITERAL_PATHSPECS="1",
            GIT_AUTHOR_NAME="qwex", GIT_AUTHOR_EMAIL="qwex@localhost", GIT_AUTHOR_DATE="@0 +0000",
            GIT_COMMITTER_NAME="qwex", GIT_COMMITTER_EMAIL="qwex@localhost", GIT_COMMITTER_DATE="@0 +0000",
        )
        try:
            os.unlink(idx)  # git wants to create the index itself
            _git(self.root, "read-tree", head, env=env)
            stdin = b"\0".join(p.encode("utf-8", errors="surrogateescape") for p in paths) + b"\0"
            _git(self.root, "add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
                 input=stdin, env=env)
            tree = _git(self.root, "write-tree", env=env).decode().strip()
            return _git(self.root, "commit-tree", tree, "-p", head, "-m", "qwex --allow-dirty snapshot",
                        env=env).decode().strip()
        finally:
            for p in (idx, idx + ".lock"):
                if os.path.exists(p):
                    os.unlink(p)

    def ancestors(self, commit: str, limit: int) -> list[str]:
        """Up to ``limit`` commits reachable from ``commit``, newest first (itself included)."""
        return _git(self.root, "rev-list", f"--max-count={limit}", commit).decode().split()

    def pack_objects(self, commit: str, exclude: Sequence[str], dest: str) -> None:
        """Write a self-contained pack of ``commit``'s closure minus ``exclude``'s to ``dest``."""
        import subprocess

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

    def stage(self, tree: SourceTree, dest: str) -> None:
        """Write ``tree``'s entries into directory ``dest`` from the raw git objects.

        Blobs are read with one ``git cat-file --batch`` (raw bytes: no attributes, no
        ``core.autocrlf``, no smudge filters, no replace refs) and written by
        :func:`qwexstore.gittree.write_tree`, the code path of snapshot restore, which
        re-hashes every blob against its entry. ``dest`` then holds exactly the tree's
        files and nothing else. SourceError if a name is unsafe or an object is missing or
        does not hash to its id.
        """
        entries = [GitEntry(e.path, int(e.mode, 8), _hex(e.oid)) for e in tree.entries]
        if not entries:
            os.makedirs(dest, exist_ok=True)
            return
        with _BatchReader(self.root, [e.oid for e in entries]) as reader:
            write_tree(entries, reader.read, dest, lambda m: SourceError(f"{self.root}: {m}"))


def _suspect_paths(listing: bytes) -> set[bytes]:
    """The raw paths of ``ls-tree -z`` records that git might refuse: a few substring scans
    of the whole listing (about a millisecond per MB), so a clean tree costs no per-path check."""
    low = listing.lower()
    found: set[bytes] = set()
    for needle in _SUSPECT_LS:
        i = low.find(needle)
        while i >= 0:
            end = listing.find(b"\0", i)
            end = len(listing) if end < 0 else end
            found.add(listing[listing.rfind(b"\0", 0, i) + 1 : end].partition(b"\t")[2])
            i = low.find(needle, end + 1)
    return found


def _hex(oid: str) -> str:
    """The hex part of a ``git-sha1:<hex>`` object id."""
    return oid.partition(":")[2]


class _BatchReader:
    """Raw blobs from one ``git cat-file --batch`` process, read in a fixed order.

    A thread feeds every requested id up front (so git streams without a round trip per
    object); :meth:`read` must be called once per id, in the same order. ``--batch``
    without ``--filters``/``--textconv`` prints an object's stored content unconverted.
    """

    def __init__(self, root: str, oids: Sequence[str]) -> None:
        self.root = root
        self.oids = list(oids)
        self.proc: subprocess.Popen[bytes] | None = None
        self.feeder: threading.Thread | None = None

    def __enter__(self) -> _BatchReader:
        import subprocess

        try:
            self.proc = subprocess.Popen(
                ["git", "-C", self.root, "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_env(),
            )
        except FileNotFoundError:
            raise SourceError("the git command is not installed; qwex reads repositories with it") from None
        stdin = self.proc.stdin
        assert stdin is not None
        data = "".join(f"{o}\n" for o in self.oids).encode()

        def feed() -> None:
            try:
                stdin.write(data)
                stdin.close()
            except OSError:  # git exited early; read() reports it
                pass

        import threading

        self.feeder = threading.Thread(target=feed, daemon=True)
        self.feeder.start()
        return self

    def read(self, oid: str) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        header = out.readline().split()
        if len(header) != 3 or header[0].decode() != oid or header[1] != b"blob":
            shown = b" ".join(header).decode(errors="replace") or "no answer"
            raise SourceError(f"{self.root}: cannot read git blob {oid}: {shown}")
        size = int(header[2])
        data = out.read(size)
        if len(data) != size or out.read(1) != b"\n":
            raise SourceError(f"{self.root}: git cat-file returned a short object {oid}")
        return data

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.feeder is not None:
            self.feeder.join()
