"""Servers for the execution benchmark (``execute.py``): a real single-node SLURM with its own
munged, and OpenSSH's sshd, on loopback, started outside pytest.

The recipes are the tests' own, not copies: ``tests/slurm_server.py``'s session fixture
``slurm`` (called through ``__wrapped__``, the plain generator under pytest's decorator) and
``tests/servers.py``'s ``start_sshd``. Those modules import pytest at the top, so the harness's
interpreter must import pytest (the project's dev venv does); else the benchmark is skipped.
A ``pytest.skip`` inside them (a binary missing, not root) becomes a :class:`Skip`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import CommandFailed, Skip

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _tests() -> tuple[ModuleType, ModuleType, type[BaseException]]:
    """(``servers``, ``slurm_server``, pytest's skip exception), imported from ``tests/``."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    try:
        import pytest
        import servers  # type: ignore[import-not-found]  # tests/ is put on sys.path above
        import slurm_server  # type: ignore[import-not-found]
    except ImportError as e:
        raise Skip(f"the server recipes in tests/ need pytest importable by this python ({e})") from e
    return servers, slurm_server, pytest.skip.Exception


class _Mktemp:
    """The one method of pytest's ``tmp_path_factory`` the fixture uses, under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True)
        return p


@contextlib.contextmanager
def _skips(skip: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except skip as e:  # pytest.skip(...) in a recipe: a tool or a privilege is missing
        raise Skip(str(e)) from None


@contextlib.contextmanager
def start_slurm(root: Path) -> Iterator[Any]:
    """A running single-node cluster (``tests/slurm_server.SlurmCluster``: ``.env`` has
    ``SLURM_CONF``, ``.run(*argv)`` runs a client) with its state under ``root``; every job
    left is cancelled and every daemon stopped on exit."""
    _, slurm_server, skip = _tests()
    with _skips(skip):
        gen = slurm_server.slurm.__wrapped__(_Mktemp(root))
        cluster = next(gen)
    try:
        yield cluster
    finally:
        gen.close()  # runs the fixture's teardown (its `finally`)


@contextlib.contextmanager
def start_sshd(root: Path, *, extra_config: str = "", alias: str = "qwex-bench") -> Iterator[Any]:
    """OpenSSH's sshd on a free loopback port (``tests/servers.SshServer``): ``.env["HOME"]``
    holds ``.ssh/config`` with ``Host alias``, the key and known_hosts; ``.ssh_config`` is that
    file, for OpenSSH's ``ssh -F``. Stopped on exit."""
    servers, _, skip = _tests()
    if shutil.which("ssh") is None:
        raise Skip("ssh missing: apt-get install openssh-client")
    with _skips(skip), servers.start_sshd(root, extra_config=extra_config, alias=alias) as server:
        yield server


def drain(cluster: Any, timeout: float = 120.0) -> None:
    """Cancel every job of ``cluster`` and wait until none is queued or running."""
    cluster.run("scancel", "--user", str(os.getuid()), check=False)
    deadline = time.monotonic() + timeout
    while cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
        if time.monotonic() > deadline:
            raise CommandFailed(f"SLURM jobs still queued {timeout:.0f} s after scancel")
        time.sleep(0.2)
