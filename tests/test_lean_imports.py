"""The library's fast paths stay lean (issue 10): what they import, how they run, how often
they spawn git.

- The cache-hit path (``Workspace.plan`` + ``lookup``, what ``qwex build`` tries first), the
  ``ls`` path (locate the store, open the index through a Workspace, list runs) and the
  ``show`` path (the store's records read through :func:`qwexstore.syncrun.run_now`) each
  run in a fresh interpreter on a store made by the real CLI, and must not import what only
  a miss, a remote or a write needs; their answers equal the CLI's.
- :func:`run_now` returns, raises, and refuses (closing) a coroutine that suspends.
- Planning a realised one-stage derivation spawns git three times (not four), and a
  pipeline of three .drv files in one repository no more than that.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GitRepo, Qwex, drv_text, job, make_repo

from qwexstore.errors import QwexError, SourceError
from qwexstore.plan import plan_file
from qwexstore.syncrun import WouldSuspend, run_now

#: Never on any of the three paths: a miss, a remote, a write or the CLI framework needs them.
FORBIDDEN_ALWAYS = (
    "asyncio", "concurrent.futures", "tempfile", "shutil", "random", "hashlib", "jinja2", "dulwich",
    "fsspec", "s3fs", "botocore", "aiohttp", "asyncssh", "cryptography", "tomlkit", "qwex_drivers",
    "typer", "click", "rich",
)
#: Also never on ``ls`` and ``show`` (no config file exists in these tests): planning's.
FORBIDDEN_READ = (*FORBIDDEN_ALWAYS, "subprocess", "tomllib", "qwexstore.plan", "qwexstore.source",
                  "qwexstore.gittree")

_REPORT = """
import json, sys
print(json.dumps({"result": result, "modules": sorted(sys.modules)}))
"""

HIT = """
from qwexstore.location import locate_store
from qwexstore.workspace import Workspace

ws = Workspace(locate_store(None))
hit = ws.lookup(ws.plan("train.drv"))
ws.close()
result = None if hit is None else {"key": hit.key, "run_id": hit.run_id, "manifest": hit.manifest}
""" + _REPORT

LS = """
from qwexstore.location import locate_store
from qwexstore.workspace import Workspace

ws = Workspace(locate_store(None))
result = [[rid, s.key, s.status] for rid, s in ws.index.recent_runs(50)]
ws.close()
""" + _REPORT

SHOW = """
import sys

import msgspec
from qwexstore.checkout import resolve_run
from qwexstore.location import locate_store
from qwexstore.syncrun import run_now
from qwexstore.workspace import Workspace

ws = Workspace(locate_store(None))
store = run_now(ws.location.open(create=False))
run = run_now(resolve_run(store, ws.index, sys.argv[1]))
record = run_now(store.get_derivation(run.drv))
manifest = run_now(store.get_manifest(run.manifest))
paths = [store.pin_path(run.key), store.snapshot_path(record.source.snapshot)]
pinned, snap = run_now(store.storage.exists(paths))
ws.close()
result = {"run": msgspec.to_builtins(run), "derivation": msgspec.to_builtins(record),
          "outputs": msgspec.to_builtins(manifest.entries), "pinned": pinned, "source_missing": not snap}
""" + _REPORT


@pytest.fixture
def realised(qwex: Qwex, git_repo: GitRepo) -> Iterator[dict[str, Any]]:
    """A realised derivation ``train.drv`` (uncommitted: .drv files may be) in ``git_repo``;
    its ``qwex build --json`` document."""
    (git_repo.path / "train.drv").write_text(
        drv_text(job("--out", "model.txt=42"), name="train", outputs=["out/"], include=["job.py"]))
    qwex.ok("build", "train.drv", cwd=git_repo.path)
    yield qwex.json("build", "train.drv", cwd=git_repo.path)


def _run(qwex: Qwex, cwd: Path, code: str, *args: str) -> tuple[Any, set[str]]:
    """Run ``code`` in a fresh interpreter with the CLI's environment; (result, modules)."""
    cp = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=qwex.env, capture_output=True,
                        text=True, timeout=60, check=False)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    return doc["result"], set(doc["modules"])


def test_hit_path_imports_nothing_a_miss_needs(qwex: Qwex, git_repo: GitRepo,
                                               realised: dict[str, Any]) -> None:
    assert realised["cached"] is True
    result, modules = _run(qwex, git_repo.path, HIT)
    assert result == {"key": realised["key"], "run_id": realised["run_id"], "manifest": realised["manifest"]}
    assert sorted(modules.intersection(FORBIDDEN_ALWAYS)) == []


def test_hit_path_stays_lean_with_remotes_substituters_and_runners_configured(
        qwex: Qwex, git_repo: GitRepo, realised: dict[str, Any]) -> None:
    (qwex.home / "config.toml").write_text(
        'substituters = ["lab"]\n'
        '[remotes.lab]\nurl = "s3://bucket/prefix"\nendpoint = "http://127.0.0.1:9"\n'
        '[runners.cluster]\n'
        'layers = [{ kind = "ssh", host = "login1" }, { kind = "slurm", partition = "gpu" }]\n'
    )
    result, modules = _run(qwex, git_repo.path, HIT)
    assert result is not None and result["key"] == realised["key"]
    assert sorted(modules.intersection(FORBIDDEN_ALWAYS)) == []


def test_ls_path_imports_neither_planning_nor_asyncio(qwex: Qwex, git_repo: GitRepo,
                                                     realised: dict[str, Any]) -> None:
    result, modules = _run(qwex, git_repo.path, LS)
    listed = qwex.json("ls", cwd=git_repo.path)
    assert result == [[r["run_id"], r["key"], r["status"]] for r in listed]
    assert result[0][0] == realised["run_id"]
    assert sorted(modules.intersection(FORBIDDEN_READ)) == []


def test_show_path_reads_a_local_store_without_an_event_loop(qwex: Qwex, git_repo: GitRepo,
                                                            realised: dict[str, Any]) -> None:
    prefix = realised["key"].partition(":")[2][:12]
    result, modules = _run(qwex, git_repo.path, SHOW, prefix)
    assert result == qwex.json("show", prefix, cwd=git_repo.path)
    assert result["run"]["run_id"] == realised["run_id"]
    assert sorted(modules.intersection(FORBIDDEN_READ)) == []


# -- run_now ------------------------------------------------------------------------------
class _Yield:
    """An awaitable that suspends once, as waiting for an event loop does."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


def test_run_now_returns_the_value_of_a_coroutine_that_never_suspends() -> None:
    async def inner(x: int) -> int:
        return x + 1

    async def outer() -> list[int]:
        return [await inner(1), await inner(2)]

    assert run_now(outer()) == [2, 3]


def test_run_now_propagates_the_exception_unchanged() -> None:
    class Boom(Exception):
        pass

    async def fails() -> None:
        raise Boom("as raised")

    with pytest.raises(Boom, match="as raised"):
        run_now(fails())


def test_run_now_closes_a_coroutine_that_suspends_and_says_so() -> None:
    events: list[str] = []

    async def suspends() -> int:
        try:
            events.append("before")
            await _Yield()
            events.append("resumed")
            return 1
        finally:
            events.append("finally")

    coro = suspends()
    with pytest.raises(WouldSuspend):
        run_now(coro)
    assert events == ["before", "finally"]  # closed at once, never resumed
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # nothing left to await
    assert not issubclass(WouldSuspend, QwexError)


# -- git spawns while planning -------------------------------------------------------------
@pytest.fixture
def git_calls(qwex: Qwex, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every process this process starts while the test runs (``subprocess.run`` starts
    them through ``Popen`` too), in the order started; git runs with the CLI's environment
    (no user or system config)."""
    for name, value in qwex.env.items():
        monkeypatch.setenv(name, value)
    calls: list[list[str]] = []

    class Counting(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: list[str], *a: Any, **kw: Any) -> None:
            calls.append(list(args))
            if "status" in args:  # started unread in the background: it must take no lock
                assert (kw.get("env") or {}).get("GIT_OPTIONAL_LOCKS") == "0", "status may lock .git/index"
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", Counting)
    real_spawn = os.posix_spawn

    def spawn(path: str, argv: list[str], env: dict[str, str], **kw: Any) -> int:  # qwexstore.gitproc
        calls.append(list(argv))
        if "status" in argv:
            assert env.get("GIT_OPTIONAL_LOCKS") == "0", "status may lock .git/index"
        return real_spawn(path, argv, env, **kw)

    monkeypatch.setattr(os, "posix_spawn", spawn)
    return calls


def test_planning_one_stage_spawns_git_three_times(git_repo: GitRepo, git_calls: list[list[str]]) -> None:
    (git_repo.path / "train.drv").write_text(drv_text(job("--out", "a=1"), outputs=["out/"]))
    plan = plan_file(str(git_repo.path / "train.drv"), None)
    # status starts first and runs beside the call for the top directory with HEAD; then ls-tree
    assert [c[3] for c in git_calls] == ["status", "rev-parse", "ls-tree"]
    assert all(c[:2] == ["git", "-C"] for c in git_calls)
    assert plan.commit == git_repo.head()


def test_planning_a_pipeline_in_one_repository_reads_it_once(git_repo: GitRepo,
                                                            git_calls: list[list[str]]) -> None:
    git_repo.write({
        "a.drv": drv_text(job("--out", "a=1"), outputs=["out/"]),
        "b.drv": drv_text(job("--out", "b=1"), outputs=["out/"], inputs={"up": "drv:a.drv"}),
        "sub/c.drv": drv_text(job("--out", "c=1"), outputs=["out/"], inputs={"up": "drv:../b.drv"}),
    })
    plan_file(str(git_repo.path / "sub" / "c.drv"), None)
    # One top-directory-with-HEAD call per directory (sub/ and the root), one status, one ls-tree.
    assert len(git_calls) == 4


def test_planning_still_names_a_repository_without_commits(tmp_path: Path, qwex: Qwex,
                                                          git_calls: list[list[str]]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["git", "init", "-q", str(empty)], env=qwex.env, check=True)
    (empty / "train.drv").write_text(drv_text(job()))
    with pytest.raises(SourceError, match="has no commits"):
        plan_file(str(empty / "train.drv"), None)


def test_planning_still_refuses_a_directory_outside_git(tmp_path: Path, git_calls: list[list[str]]) -> None:
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "train.drv").write_text(drv_text(job()))
    with pytest.raises(SourceError, match="not a git repository"):
        plan_file(str(tmp_path / "loose" / "train.drv"), None)


def test_planning_a_source_repo_elsewhere_uses_its_head(tmp_path: Path, qwex: Qwex, git_repo: GitRepo,
                                                        git_calls: list[list[str]]) -> None:
    other = make_repo(tmp_path / "other", qwex.env, {"other.txt": "another project\n"})
    (git_repo.path / "train.drv").write_text(drv_text(job(), repo="../other"))
    plan = plan_file(str(git_repo.path / "train.drv"), None)
    assert plan.commit == other.head() != git_repo.head()
    assert plan.repo is not None and os.path.realpath(plan.repo.root) == os.path.realpath(other.path)


# -- qwexstore.gitproc: git without the subprocess module -------------------------------------


def test_gitproc_returns_both_streams_and_the_status() -> None:
    from qwexstore.gitproc import run

    env = dict(os.environ)
    assert run(["sh", "-c", "printf out; printf err >&2; exit 3"], env) == (3, b"out", b"err")
    big = run(["sh", "-c", "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2"], env)
    assert (big[0], len(big[1]), len(big[2])) == (0, 3000000, 2000000)  # both pipes drained: no deadlock
    assert run(["sh", "-c", "kill -TERM $$"], env)[0] == -signal.SIGTERM
    assert run(["cat"], env) == (0, b"", b"")  # stdin is /dev/null
    # SIGPIPE is default in the child (Python ignores it): `yes` dies quietly, as from a shell
    assert run(["sh", "-c", "yes | head -c 1"], env) == (0, b"y", b"")
    assert run(["sh", "-c", 'printf %s "$QX"'], {**env, "QX": "v"})[1] == b"v"
    with pytest.raises(FileNotFoundError):
        run(["no-such-program-qwex"], env)


def test_gitproc_stop_ends_a_running_command() -> None:
    from qwexstore import gitproc

    assert (gitproc._SIGPIPE, gitproc._SIGXFSZ) == (signal.SIGPIPE, signal.SIGXFSZ)
    p = gitproc.Proc(["sleep", "30"], dict(os.environ))
    p.stop()
    assert p.returncode == -signal.SIGTERM
