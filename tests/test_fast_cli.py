"""The fast paths of the ``qwex`` entry point (cli/qwex/main.py): a cache hit, ``ls``,
``show``, ``--help`` and ``--version`` answered without the CLI framework.

Each fast answer must be byte for byte the typer application's answer (``QWEX_NO_FAST=1``
forces that path), exit status included, and must not import what only a miss, a remote
or a terminal needs. Timings are not asserted here (benchmarks/ measures them).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, QWEX, GitRepo, Qwex, drv_text, job, parse_build

#: Never imported by a fast answer (no CLI framework, no event loop, no remote client,
#: no driver, no templates).
HEAVY = ("typer", "click", "rich", "asyncio", "fsspec", "s3fs", "aiobotocore", "botocore", "aiohttp",
         "asyncssh", "sshfs", "qwex_drivers", "jinja2", "dulwich", "cryptography", "tomlkit")


def _both(qwex: Qwex, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    fast = qwex(*args, cwd=cwd)
    full = qwex(*args, cwd=cwd, env={"QWEX_NO_FAST": "1"})
    return fast, full


def imported(qwex: Qwex, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``qwex ARGS`` under ``-X importtime``: its result (stderr without the import
    lines) and the top-level names of every module it imported."""
    code = f"import sys; from qwex.main import main; sys.argv = ['qwex', *{list(args)!r}]; main()"
    cp = subprocess.run([PY, "-X", "importtime", "-c", code], cwd=cwd, env=qwex.env, capture_output=True,
                        text=True, check=False, stdin=subprocess.DEVNULL)
    lines = cp.stderr.splitlines()
    mods = {ln.split("|")[-1].strip().split(".")[0] for ln in lines if ln.startswith("import time:")}
    rest = "".join(ln + "\n" for ln in lines if not ln.startswith("import time:"))
    return subprocess.CompletedProcess(cp.args, cp.returncode, cp.stdout, rest), mods


@pytest.fixture
def built(qwex: Qwex, git_repo: GitRepo) -> Iterator[tuple[Qwex, GitRepo, str, str]]:
    """A two-stage pipeline, built: (qwex, repo, the last stage's key, its run id)."""
    git_repo.commit("drvs", {
        "prep.drv": drv_text(job("--out", "d=data", "--out", "sub/e=more"), name="prep"),
        "train.drv": drv_text(job("--copy", "data/out/d=model"), name="train",
                              inputs={"data": "drv:prep.drv"}),
    })
    b = qwex.build("train.drv", cwd=git_repo.path)
    assert not b.cached
    yield qwex, git_repo, b.key, b.run_id


# -- the same answer either way -----------------------------------------------------------


def test_every_fast_command_line_answers_as_typer_does(built: tuple[Qwex, GitRepo, str, str]) -> None:
    qwex, repo, key, run_id = built
    store = str(qwex.store)
    lines = [
        ["build", "train.drv"], ["build", "train.drv", "--json"], ["build", "--json", "prep.drv"],
        ["build", "train.drv", "--offline", "-j", "2", "-k", "--detach"], ["build", "train.drv", "--jobs=3"],
        ["build", "train.drv", "--allow-dirty"], ["--store", store, "build", "train.drv"],
        ["ls"], ["ls", "--json"], ["ls", "-n", "1"], ["ls", "-n1"], ["ls", "--limit=1", "--json"],
        ["ls", "-n", "0"],
        ["--store", store, "ls"], [f"--store={store}", "ls", "--json"],
        ["show", key[:20]], ["show", key, "--json"], ["show", run_id], ["show", "--json", run_id],
        ["--version"], ["--help"], ["-h"], [],
        # not fast, or errors: typer answers them all the same way
        ["ls", "-n", "x"], ["ls", "--bogus"], ["show"], ["show", "blake3:00"], ["show", "zz"],
        ["build", "missing.drv"], ["build", "train.drv", "--jobs", "0"], ["build", "train.drv", "--dry-run"],
        ["--store", str(repo.path / "nostore"), "ls"], ["--store"], ["ls", "--help"],
    ]
    for args in lines:
        fast, full = _both(qwex, *args, cwd=repo.path)
        got, want = (fast.returncode, fast.stdout, fast.stderr), (full.returncode, full.stdout, full.stderr)
        assert got == want, args
        assert "Traceback" not in fast.stderr, args


def test_a_hit_is_still_the_hit_the_full_command_reports(built: tuple[Qwex, GitRepo, str, str]) -> None:
    qwex, repo, key, run_id = built
    cp, mods = imported(qwex, "build", "train.drv", cwd=repo.path)
    b = parse_build(cp.stdout)
    assert cp.returncode == 0 and b.cached and (b.key, b.run_id) == (key, run_id)
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


@pytest.mark.parametrize("args", [["ls"], ["ls", "--json"], ["show", "KEY"], ["show", "KEY", "--json"],
                                  ["--help"], ["--version"]])
def test_fast_answers_import_nothing_heavy(built: tuple[Qwex, GitRepo, str, str], args: list[str]) -> None:
    qwex, repo, key, _ = built
    cp, mods = imported(qwex, *[key if a == "KEY" else a for a in args], cwd=repo.path)
    assert cp.returncode == 0 and cp.stdout, cp.stderr
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    if args[0] != "show":
        assert "subprocess" not in mods  # no git: ls and help read no repository


def test_piped_output_is_plain_text(built: tuple[Qwex, GitRepo, str, str]) -> None:
    """Not a terminal: no box drawing, no escape codes; columns a script can split."""
    qwex, repo, key, run_id = built
    ls = qwex.ok("ls", cwd=repo.path).stdout
    head, *rows = ls.splitlines()
    assert head.split() == ["key", "name", "status", "duration", "when", "run"]
    assert [r.split()[1:3] for r in rows] == [["train", "succeeded"], ["prep", "succeeded"]]
    assert rows[0].split()[-1] == run_id
    show = qwex.ok("show", key, cwd=repo.path).stdout
    assert show.splitlines()[0] == f"train  key {key}"
    assert "output" in show and "out/model" in show
    for text in (ls, show):
        assert not set(text) & set("┏━┃│─┡╇└┘\x1b"), text


# -- with runners, remotes and substituters configured -------------------------------------


def test_a_hit_with_runners_remotes_and_substituters_connects_nowhere(
        built: tuple[Qwex, GitRepo, str, str]) -> None:
    """Every kind of remote configured at a port we listen on, a runner through ssh to it:
    the hit (with and without --runner) connects to nothing and imports no driver."""
    qwex, repo, _, run_id = built
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        (qwex.home / "config.toml").write_text(
            'substituters = ["s3lab", "sshlab"]\n'
            f'[remotes.s3lab]\nurl = "s3://watched/store"\nendpoint = "http://127.0.0.1:{port}"\n'
            f'[remotes.sshlab]\nurl = "ssh://127.0.0.1:{port}/store"\n'
            f'[remotes.dirlab]\nurl = "{repo.path.parent / "elsewhere"}"\n'
            f'[runners.far]\nlayers = [{{ kind = "ssh", host = "127.0.0.1", port = {port} }}, '
            '{ kind = "slurm", partition = "gpu" }]\n'
        )
        for extra in ([], ["--runner", "far"], ["--runner", "far", "--json"], ["--substituter", "s3lab"]):
            cp, mods = imported(qwex, "build", "train.drv", *extra, cwd=repo.path)
            assert cp.returncode == 0, cp.stderr
            if "--json" not in extra:
                assert parse_build(cp.stdout).run_id == run_id
            assert not mods & set(HEAVY), (extra, sorted(mods & set(HEAVY)))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


def _on_a_terminal(qwex: Qwex, *args: str, cwd: Path) -> str:
    """``qwex ARGS`` with its stdout on a pseudo-terminal: what it wrote there."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([QWEX, *args], cwd=cwd, env={**qwex.env, "TERM": "xterm"}, stdout=slave,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    finally:
        os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_tables_are_rich(built: tuple[Qwex, GitRepo, str, str]) -> None:
    qwex, repo, key, run_id = built
    ls = _on_a_terminal(qwex, "ls", cwd=repo.path)
    assert "━" in ls and run_id in ls and "succeeded" in ls
    show = _on_a_terminal(qwex, "show", key, cwd=repo.path)
    assert show.startswith("\x1b[1mtrain\x1b[0m") and "━" in show  # a bold name, a table
    assert f"key {key}" in show  # not highlighted in parts


def test_stored_text_cannot_drive_the_terminal_or_break_rows(qwex: Qwex, git_repo: GitRepo) -> None:
    """A run's name and variables come from a .drv file (maybe a colleague's): escape
    sequences and newlines are shown escaped, on a pipe and on a terminal."""
    evil = "x\x1b]0;pwned\x07\x1b[2J\nfake row"
    git_repo.commit("evil", {"e.drv": drv_text(job("--out", "a=1"), name=evil, vars={"V": "1\x1b[31m\r2"})})
    b = qwex.build("e.drv", cwd=git_repo.path)
    ls = qwex.ok("ls", cwd=git_repo.path).stdout
    assert len(ls.splitlines()) == 2 and "\x1b" not in ls and "\\x1b]0;pwned\\x07\\x1b[2J\\nfake row" in ls
    show = qwex.ok("show", b.key, cwd=git_repo.path).stdout
    assert "\x1b" not in show and "\r" not in show and "var      V=1\\x1b[31m\\r2" in show.splitlines()
    assert json_name(qwex, git_repo) == evil  # --json keeps the exact text
    for args in (["ls"], ["show", b.key]):
        shown = _on_a_terminal(qwex, *args, cwd=git_repo.path)
        assert "pwned\x07" not in shown and "\x1b[2J" not in shown and "\x1b[31m\r" not in shown, args


def json_name(qwex: Qwex, repo: GitRepo) -> str:
    return str(qwex.json("ls", cwd=repo.path)[0]["name"])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["ls"]])
def test_a_reader_gone_ends_quietly(built: tuple[Qwex, GitRepo, str, str], args: list[str]) -> None:
    """``qwex --help | true``: exit 1 and nothing on stderr, buffered or not, fast or not."""
    qwex, repo, _, _ = built
    for extra in ({}, {"PYTHONUNBUFFERED": "1"}, {"QWEX_NO_FAST": "1"}):
        p = subprocess.Popen([QWEX, *args], cwd=repo.path, env={**qwex.env, **extra}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert p.stdout is not None
        p.stdout.close()  # the reader is gone before the first byte
        _, err = p.communicate(timeout=60)
        assert (p.returncode, err) == (1, b""), (args, extra, err)


def test_plain_columns_line_up_by_display_width() -> None:
    from qwex.table import plain

    rows = [["训练模型", "ok"], ["e\u0301\u0301x", "ok"], ["plain", "ok"]]
    lines = plain(["name", "status"], rows).splitlines()
    from qwex.table import width

    assert {width(ln[: ln.index("ok")]) for ln in lines[1:]} == {10}  # 8 columns + 2 spaces
    assert lines[0] == "name      status"


def test_ctrl_c_during_a_fast_hit_is_one_line_and_stops_git(built: tuple[Qwex, GitRepo, str, str],
                                                            tmp_path: Path) -> None:
    """Interrupted while planning (a slow git, here a clearly named stand-in that sleeps
    first): "qwex: interrupted", exit 130, no traceback, no git left running."""
    import os
    import shutil
    import signal
    import time

    qwex, repo, _, _ = built
    shim = tmp_path / "slow-git-standin"
    shim.mkdir()
    real = shutil.which("git", path=qwex.env["PATH"])
    marker = tmp_path / "git-started"
    (shim / "git").write_text(f"#!/bin/sh\ntouch {marker}\nsleep 30\nexec {real} \"$@\"\n")
    (shim / "git").chmod(0o755)
    env = {**qwex.env, "PATH": f"{shim}{os.pathsep}{qwex.env['PATH']}"}
    p = subprocess.Popen([QWEX, "build", "train.drv"], cwd=repo.path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "git was never started"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)  # to qwex alone: it must stop git itself
    out, err = p.communicate(timeout=10)
    assert (p.returncode, out, err) == (130, b"", b"qwex: interrupted\n")
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True).stdout
    assert not [ln for ln in ps.splitlines() if str(shim) in ln and not ln.startswith("Z")]
