"""source.py: a selected tree must be hashable or refused with a SourceError, never crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qwexstore.errors import SourceError
from qwexstore.globs import Selector
from qwexstore.source import Repo

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")

_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=_ENV)


def _repo_with(tmp_path: Path, names: list[bytes]) -> Repo:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    for name in names:
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"x")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "m")
    return Repo(str(root))


def test_utf8_names_hash(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, ["café.txt".encode(), b"plain.txt"])
    head = repo.head()
    assert head is not None
    tree = repo.tree(head, Selector([], []))
    assert tree.paths() == ["café.txt", "plain.txt"]
    assert tree.digest().startswith("blake3:")


def test_non_utf8_name_is_hashed_or_refused(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, [b"caf\xe9.txt"])
    head = repo.head()
    assert head is not None
    with contextlib.suppress(SourceError):
        repo.tree(head, Selector([], [])).digest()


def test_non_utf8_name_outside_selection_is_fine(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, [b"caf\xe9.txt", b"keep.txt"])
    head = repo.head()
    assert head is not None
    tree = repo.tree(head, Selector(["keep.txt"], []))
    assert tree.paths() == ["keep.txt"]
    assert tree.digest().startswith("blake3:")
