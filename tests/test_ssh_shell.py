"""Resident shells of the ssh transport (drivers/qwex_drivers/ssh_shell.py, spec/drivers.md
SSH6) against a real OpenSSH sshd whose sessions source an rc file, as a cluster login
node's ``~/.bashrc`` (``conda init``) is sourced: through ``SetEnv BASH_ENV``, which the
login shell bash reads for ``bash -c``. The rc file prints to stdout and stderr and counts
how often it ran; sshd's log counts the exec requests ("Starting session: command").
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qwex_drivers.transport_ssh import SshTransport
from servers import SshServer, start_sshd

from qwexstore.errors import TransientDriverError

pytestmark = pytest.mark.skipif(
    not pwd.getpwuid(os.getuid()).pw_shell.endswith("bash"),
    reason="the rc file is sourced through BASH_ENV: the login shell must be bash",
)


class Host:
    def __init__(self, server: SshServer, base: Path) -> None:
        self.server, self.base = server, base
        self.login = base / "login"  # the sessions' HOME
        self.counter = base / "rc-count"
        self.log = base / "sshd.log"

    def rc_runs(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0

    def exec_requests(self) -> int:
        return self.log.read_text().count("Starting session: command")


def _host(base: Path, extra: str = "") -> Iterator[Host]:
    """An sshd whose sessions get ``HOME=base/login`` (``SetEnv``), so the login shell bash
    reads ``base/login/.bashrc`` (Debian's bash does for sshd's commands): it chatters on
    stdout and stderr and counts its runs."""
    login = base / "login"
    login.mkdir()
    (login / ".bashrc").write_text(f'echo "rc says hello"; echo "rc warns" >&2; echo x >> {base}/rc-count\n')
    with start_sshd(base, extra_config=f"SetEnv HOME={login}{extra}\n") as server:
        host = Host(server, base)
        ssh = ["ssh", "-F", server.ssh_config, "-o", "BatchMode=yes", server.alias, "true"]
        subprocess.run(ssh, capture_output=True, timeout=30, check=True)
        if host.rc_runs() != 1:
            pytest.skip("this host's bash does not read ~/.bashrc for ssh commands (Debian's does)")
        yield host


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    base = tmp_path_factory.mktemp("rcsshd")
    (base / "tmp").mkdir()
    yield from _host(base, f" TMPDIR={base / 'tmp'}")


@pytest.fixture(scope="module")
def small_tmp_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A host whose TMPDIR is a 64 KiB tmpfs, to be filled up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    base = tmp_path_factory.mktemp("rcsshd-smalltmp")
    tmp = base / "tmp"
    tmp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp)], check=True)
    try:
        yield from _host(base, f" TMPDIR={tmp}")
    finally:
        subprocess.run(["umount", "-l", str(tmp)], check=False)


@pytest.fixture(scope="module")
def no_tmp_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """A host where ``mktemp -d`` fails (TMPDIR does not exist): no resident shell."""
    yield from _host(tmp_path_factory.mktemp("rcsshd-notmp"), " TMPDIR=/nonexistent/qwex")


@pytest.fixture
def transport(host: Host, monkeypatch: pytest.MonkeyPatch) -> SshTransport:
    monkeypatch.setenv("HOME", host.server.home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return SshTransport(host.server.alias)


def test_one_login_serves_every_script_and_its_chatter_never_reaches_an_answer(
    host: Host, transport: SshTransport
) -> None:
    rc0, exec0 = host.rc_runs(), host.exec_requests()

    async def body() -> None:
        async with transport as t:
            assert await t.home() == str(host.login)  # the rc file's chatter is not in it
            for i in range(5):
                r = await t.run(f"echo out {i}; echo err {i} >&2; exit {i}")
                assert (r.rc, r.stdout, r.stderr) == (i, f"out {i}\n".encode(), f"err {i}\n".encode())

    asyncio.run(body())
    assert host.rc_runs() - rc0 == 1, "one login shell for six scripts"
    assert host.exec_requests() - exec0 == 1


def test_warming_and_asking_the_home_at_once_log_in_once(host: Host, transport: SshTransport) -> None:
    rc0, exec0 = host.rc_runs(), host.exec_requests()

    async def body() -> None:
        async with transport as t:
            got = await asyncio.gather(t.warm(), t.home(), t.home())
            assert got[1:] == [str(host.login), str(host.login)]
            assert (await t.run("echo hi")).stdout == b"hi\n"  # in the warm shell

    asyncio.run(body())
    assert (host.rc_runs() - rc0, host.exec_requests() - exec0) == (1, 1)


def test_concurrent_scripts_get_their_own_answers(host: Host, transport: SshTransport) -> None:
    async def body() -> None:
        async with transport as t:
            got = await asyncio.gather(*(t.run(f"sleep 0.{3 - i % 3}; echo {i}") for i in range(6)))
            assert [g.stdout for g in got] == [f"{i}\n".encode() for i in range(6)]
            again = await asyncio.gather(*(t.run(f"echo {i}") for i in range(6)))  # idle shells reused
            assert [g.stdout for g in again] == [f"{i}\n".encode() for i in range(6)]

    rc0 = host.rc_runs()
    asyncio.run(body())
    assert 1 <= host.rc_runs() - rc0 <= 6  # at most max_channels - 2 shells


def test_framing_cannot_be_forged_or_broken_by_a_script(host: Host, transport: SshTransport) -> None:
    scripts = {
        # stdin is empty: a script that reads it never eats the requests that follow
        "cat; echo done": b"done\n",
        'read line; echo "[$line]"': b"[]\n",
        # lines that look like the protocol's, and here-document ends
        "printf '\\nQWEXRC_0 0 5 0\\nabcde\\n'; echo EOF": b"\nQWEXRC_0 0 5 0\nabcde\nEOF\n",
        "cat <<'EOF'\nQWEXEOF_x\nEOF\n": b"QWEXEOF_x\n",
        "printf 'no newline at the end'": b"no newline at the end",
        "printf '\\000\\377'; exit 0": b"\x00\xff",
        "exit": b"",
    }

    async def body() -> None:
        async with transport as t:
            for script, out in scripts.items():
                r = await t.run(script)
                assert (r.rc, r.stdout, r.stderr) == (0, out, b""), script
            assert (await t.run("kill -TERM $$")).rc == 128 + signal.SIGTERM
            assert (await t.run("echo after")).stdout == b"after\n"

    asyncio.run(body())


def test_a_background_writer_never_leaks_into_a_later_answer(
    host: Host, transport: SshTransport, tmp_path: Path
) -> None:
    done = tmp_path / "late-done"

    async def body() -> None:
        async with transport as t:
            r = await t.run(f"(sleep 0.5; echo late; echo late >&2; touch {done}) & echo now")
            assert (r.stdout, r.stderr) == (b"now\n", b"")
            r = await t.run(f"while [ ! -e {done} ]; do sleep 0.05; done; echo next")
            assert (r.stdout, r.stderr) == (b"next\n", b"")
            assert (await t.run("echo last")).stdout == b"last\n"

    asyncio.run(body())


def test_a_killed_shell_is_replaced_and_no_script_runs_twice(
    host: Host, transport: SshTransport, tmp_path: Path
) -> None:
    count = tmp_path / "count"

    async def body() -> None:
        async with transport as t:
            shell_pid = int((await t.run(f"echo x >> {count}; echo $PPID")).stdout)
            os.kill(shell_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{shell_pid}").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the channel's close reaches the client
            assert (await t.run(f"echo x >> {count}; echo ok")).stdout == b"ok\n"

    asyncio.run(body())
    assert count.read_text() == "x\nx\n"


def test_a_shell_killed_mid_script_is_transient_and_may_have_run(
    host: Host, transport: SshTransport, tmp_path: Path
) -> None:
    pid = tmp_path / "pids"

    async def body() -> None:
        async with transport as t:
            task = asyncio.create_task(t.run(f"echo $PPID $$ > {pid}; exec sleep 30"))
            while not (pid.exists() and pid.read_text().strip()):
                await asyncio.sleep(0.02)
            shell, script = (int(p) for p in pid.read_text().split())
            try:
                os.kill(shell, signal.SIGKILL)
                with pytest.raises(TransientDriverError, match="may have run"):
                    await task
            finally:
                os.kill(script, signal.SIGKILL)
            assert (await t.run("echo again")).stdout == b"again\n"

    asyncio.run(body())


def test_cancelling_a_run_closes_its_shell_and_the_next_run_is_in_step(
    host: Host, transport: SshTransport
) -> None:
    async def body() -> None:
        async with transport as t:
            await t.run("true")
            task = asyncio.create_task(t.run("sleep 0.5; echo stale"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await t.run("echo fresh")).stdout == b"fresh\n"

    asyncio.run(body())


def test_a_host_without_mktemp_falls_back_to_one_exec_request_per_script(
    no_tmp_host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", no_tmp_host.server.home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    exec0 = no_tmp_host.exec_requests()

    async def body() -> None:
        async with SshTransport(no_tmp_host.server.alias) as t:
            for i in range(3):
                r = await t.run(f"echo {i}; exit {i}")
                # an exec request carries the rc file's chatter: the reason shells exist
                assert r.rc == i and r.stdout.endswith(f"{i}\n".encode())

    asyncio.run(body())
    assert no_tmp_host.exec_requests() - exec0 == 1 + 3  # the failed shell, then one per script


def test_a_full_tmpdir_never_runs_a_cut_off_script(
    small_tmp_host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell's here-document cannot store the script: it is not run there, but sent as
    its own exec request, whole, once."""
    h = small_tmp_host
    monkeypatch.setenv("HOME", h.server.home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    tmp, count = h.base / "tmp", h.base / "count"
    script = ":" + " " * 20_000 + f"\necho x >> {count}; echo whole"

    async def body() -> None:
        async with SshTransport(h.server.alias) as t:
            assert (await t.run("echo warm")).stdout == b"warm\n"  # the shell and its dir exist
            free = os.statvfs(tmp).f_bavail * os.statvfs(tmp).f_frsize
            (tmp / "filler").write_bytes(b"\0" * max(0, free - 4096))
            try:
                exec0 = h.exec_requests()
                r = await t.run(script)
                assert r.rc == 0 and r.stdout.endswith(b"whole\n"), r
                assert h.exec_requests() - exec0 == 1  # sent another way
            finally:
                (tmp / "filler").unlink()
            assert (await t.run("echo back")).stdout == b"back\n"  # in a new shell

    asyncio.run(body())
    assert count.read_text() == "x\n"


def test_a_background_writer_racing_the_answer_cannot_shift_it(host: Host, transport: SshTransport) -> None:
    lines = "".join(f"out{i}\n" for i in range(100_000)).encode()

    async def body() -> None:
        async with transport as t:
            for _ in range(3):
                writer = "(i=0; while [ $i -lt 100000 ]; do echo out$i; i=$((i+1)); done) &"
                r = await t.run(f"{writer} sleep 0.05; echo ERR >&2")
                assert r.stderr == b"ERR\n" and lines.startswith(r.stdout), (r.stderr, r.stdout[-40:])
                assert (await t.run("echo next")).stdout == b"next\n"

    asyncio.run(body())


def test_shells_and_exec_requests_share_the_channel_budget(
    host: Host, transport: SshTransport, tmp_path: Path
) -> None:
    """Idle shells hold channels: exec requests (a run with input) close idle ones rather
    than exceed OpenSSH's MaxSessions 10 beside the SFTP sessions."""

    async def body() -> None:
        async with transport as t:
            got = await asyncio.gather(*(t.run(f"sleep 0.3; echo {i}") for i in range(8)))
            assert [g.stdout for g in got] == [f"{i}\n".encode() for i in range(8)]
            assert await t.read(str(tmp_path / "none")) is None  # an SFTP session too
            fed = await asyncio.gather(*(t.run("cat", input=f"{i}".encode()) for i in range(8)))
            # exec requests: the rc file's chatter comes first
            assert [f.stdout.endswith(f"hello\n{i}".encode()) for i, f in enumerate(fed)] == [True] * 8
            mixed = await asyncio.gather(
                *(t.run("sleep 0.1; cat", input=b"in") if i % 2 else t.run("echo sh") for i in range(12))
            )
            assert [m.stdout.endswith(b"in" if i % 2 else b"sh\n") for i, m in enumerate(mixed)] == [
                True
            ] * 12

    asyncio.run(body())


def test_a_shell_that_died_unclean_leaves_no_directory_behind(host: Host, transport: SshTransport) -> None:
    """A run cancelled mid-script closes its shell's channel; when the script ends, the
    shell dies writing its answer (SIGPIPE: no exit trap). The next shell started removes
    the directories of shells that are gone."""
    tmp = host.base / "tmp"

    async def body() -> None:
        async with transport as t:
            task = asyncio.create_task(t.run("sleep 0.5; echo late"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        pids = [int(p.read_text()) for p in tmp.glob("qwex-sh.*/pid")]
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with SshTransport(host.server.alias) as t2:
            assert (await t2.run("echo ok")).stdout == b"ok\n"
            assert len(list(tmp.glob("qwex-sh.*"))) == 1  # its own

    asyncio.run(body())
    deadline = time.monotonic() + 10
    while list(tmp.glob("qwex-sh.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp.glob("qwex-sh.*")) == []


@pytest.mark.parametrize("foreign", [False, True], ids=["removed", "recreated-by-another-user"])
def test_a_shell_whose_directory_was_removed_never_writes_elsewhere(
    host: Host, transport: SshTransport, tmp_path: Path, foreign: bool
) -> None:
    """A job that cleans /tmp removes the shell's directory; another user may then create
    one of that name. The next script is not written there: it goes as an exec request,
    once, and the shell after it is a new one, in a new directory of its own."""
    tmp, count = host.base / "tmp", tmp_path / "count"

    async def body() -> None:
        async with transport as t:
            assert (await t.run("echo first")).stdout == b"first\n"
            (old,) = tmp.glob("qwex-sh.*")
            subprocess.run(["rm", "-rf", str(old)], check=True)
            if foreign:
                old.mkdir(mode=0o777)
                os.chown(old, 65534, 65534)  # nobody's
            exec0, rc0 = host.exec_requests(), host.rc_runs()
            r = await t.run(f"echo x >> {count}; echo ok")
            assert r.rc == 0 and r.stdout.endswith(b"ok\n"), r
            assert host.exec_requests() - exec0 == 1
            assert (await t.run("echo next")).stdout == b"next\n"
            assert host.rc_runs() - rc0 == 2  # the exec request's login, then a new shell's
            assert [p for p in tmp.glob("qwex-sh.*") if p != old and p.stat().st_uid == os.getuid()]
            if foreign:
                assert list(old.iterdir()) == []
                old.rmdir()

    asyncio.run(body())
    assert count.read_text() == "x\n"
