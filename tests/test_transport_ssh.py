"""The ssh transport (drivers/qwex_drivers/transport_ssh.py) against a real OpenSSH sshd.

Every test gets its own HOME (``home`` fixture) whose ``~/.ssh/config`` defines aliases
for the session's sshd: ``qwex-test`` (plain), ``qwex-jump`` (the same server reached via
``ProxyJump qwex-test``), and broken ones (unknown or wrong host key, refused key, refused
port, unresolvable name). The sshd runs on this machine, so its files are this machine's.

One connection is checked from this process's own TCP sockets (/proc/self/fd against
/proc/net/tcp): the sockets to the sshd's port that a transport opened.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pwd
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from qwex_drivers.transport_ssh import SshTransport
from servers import SshServer, free_port

from qwexstore.errors import PermanentDriverError, TransientDriverError
from qwexstore.layers import SshLayer

T = TypeVar("T")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll a condition (waiting for a state, not asserting a duration)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def await_until(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def sockets_to(port: int) -> dict[int, int]:
    """This process's established TCP sockets to ``port`` on loopback: inode -> local port."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:
                    out[inode] = int(local.rsplit(":", 1)[1], 16)
    return out


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return (path.parent / f"{path.name}.pub").read_text().split(maxsplit=2)[1]


@pytest.fixture
def home(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    ssh = h / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    other = ssh / "other_key"  # a key the server does not authorize
    other_pub = keygen(other)
    empty = ssh / "empty_known_hosts"
    empty.write_text("")
    wrong = ssh / "wrong_known_hosts"
    wrong.write_text(f"[{sshd.host}]:{sshd.port} ssh-ed25519 {other_pub}\n")
    server = f"  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
    key = f"  IdentityFile {sshd.identity_file}\n  IdentitiesOnly yes\n"
    known = f"  UserKnownHostsFile {sshd.known_hosts}\n"
    (ssh / "config").write_text(
        f"Host qwex-test\n{server}{key}{known}"
        f"Host qwex-jump\n{server}{key}{known}  ProxyJump qwex-test\n"
        f"Host qwex-agent\n{server}{known}"
        f"Host qwex-unknown-key\n{server}{key}  UserKnownHostsFile {empty}\n"
        f"Host qwex-wrong-key\n{server}{key}  UserKnownHostsFile {wrong}\n"
        f"Host qwex-bad-auth\n{server}  IdentityFile {other}\n  IdentitiesOnly yes\n{known}"
        f"Host qwex-refused\n  HostName {sshd.host}\n  Port {free_port()}\n{key}{known}"
        f"Host qwex-nohost\n  HostName qwex-no-such-host.invalid\n{key}{known}"
    )
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return h


@pytest.fixture
def rdir(sshd: SshServer) -> Path:
    """A fresh directory on the "remote" (the sshd runs on this machine)."""
    d = Path(sshd.root) / uuid.uuid4().hex[:12]
    d.mkdir()
    return d


# -- run ---------------------------------------------------------------------------------


def test_run_returns_exact_binary_output_and_status(home: Path) -> None:
    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            assert t.kind == "ssh"
            r = await t.run(r"printf '\000\377a\nb'; printf 'e\001\n' >&2; exit 3")
            assert (r.rc, r.stdout, r.stderr) == (3, b"\x00\xffa\nb", b"e\x01\n")
            r = await t.run("head -c 3000000 /dev/zero | tr '\\0' x")  # beyond any window size
            assert (r.rc, r.stdout, r.stderr) == (0, b"x" * 3_000_000, b"")
            hostile = 'it\'s "$(rm -rf /)" `x` $HOME\n\\n ;|&'
            r = await t.run("printf '%s' " + "'" + hostile.replace("'", "'\\''") + "'")
            assert r.stdout == hostile.encode()
            r = await t.run("kill -TERM $$")
            assert r.rc == 128 + signal.SIGTERM

    arun(body())


#: Scripts whose answer through a resident shell (no input) must be the exec request's
#: (input=b"": stdin empty too), byte for byte.
SAME_EITHER_WAY = [
    "echo a\\",  # a trailing backslash, no newline
    "cat <<EOF\nhi",  # an unterminated here-document
    "echo $0; exit 3",
    "kill 0; echo after",  # its own process group, as an exec request has
    "trap 'kill 0' EXIT; sleep 5 & echo hi",
    "kill -9 $$",
    "set -e; false; echo no",
    "umask; pwd; echo $HOME",
    "ls /proc/$$/fd",
    "printf '%s' \"$(cat)\"",
    "echo out; echo err >&2; (exit 250)",
    "syntax error (",
]


@pytest.mark.parametrize("script", SAME_EITHER_WAY)
def test_a_resident_shell_answers_as_an_exec_request(home: Path, script: str) -> None:
    async def body() -> tuple[object, object]:
        async with SshTransport("qwex-test") as t:
            return await t.run(script), await t.run(script, input=b"")

    shell, exec_request = arun(body())
    assert shell == exec_request


def test_run_delivers_stdin_then_eof(home: Path) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB with every byte value
    body_calls = [("cat", data, data), ("cat", None, b""), ("cat", b"", b""), ("wc -c", b"abc", b"3\n")]

    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            for script, given, expected in body_calls:
                r = await t.run(script, input=given)
                assert (r.rc, r.stdout.strip() if script == "wc -c" else r.stdout) == (
                    0,
                    expected.strip() if script == "wc -c" else expected,
                )

    arun(body())


def test_home_is_the_remote_users_home_and_cwd(home: Path, sshd: SshServer) -> None:
    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            expected = pwd.getpwnam(sshd.user).pw_dir
            assert await t.home() == expected
            assert (await t.run("pwd")).stdout.decode().strip() == expected

    arun(body())


def test_explicit_user_and_port_without_an_alias(home: Path, sshd: SshServer) -> None:
    layer = SshLayer(host="qwex-test", user=sshd.user, port=sshd.port)
    t = SshTransport.from_layer(layer)
    assert t.target == f"{sshd.user}@qwex-test:{sshd.port}"

    async def body() -> None:
        async with t:
            assert (await t.run("echo ok")).stdout == b"ok\n"

    arun(body())


# -- read --------------------------------------------------------------------------------


def test_read_offsets_limits_and_missing(home: Path, rdir: Path) -> None:
    data = os.urandom(300_000)
    (rdir / "f").write_bytes(data)
    f = str(rdir / "f")

    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            assert await t.read(f) == data
            assert await t.read(f, 100, 50) == data[100:150]
            assert await t.read(f, 1, 250_000) == data[1:250_001]
            assert await t.read(f, len(data) - 10, 100) == data[-10:]
            assert await t.read(f, len(data) + 5) == b""
            assert await t.read(f, 0, 0) == b""
            assert await t.read(str(rdir / "missing")) is None
            assert await t.read(str(rdir / "no" / "such" / "dir")) is None

    arun(body())


# -- one connection ----------------------------------------------------------------------


def test_concurrent_runs_and_reads_share_one_connection(home: Path, sshd: SshServer, rdir: Path) -> None:
    (rdir / "f").write_bytes(b"payload")

    async def body() -> None:
        before = set(sockets_to(sshd.port))
        async with SshTransport("qwex-test") as t:
            conn = await t.connection()
            ops = [t.run('echo "$SSH_CONNECTION"') for _ in range(20)]  # > OpenSSH's MaxSessions 10
            reads = [t.read(str(rdir / "f")) for _ in range(10)]
            results = await asyncio.gather(*ops, *reads)
            assert await t.connection() is conn
            mine = {i: p for i, p in sockets_to(sshd.port).items() if i not in before}
            assert len(mine) == 1, mine
            client_ports = {r.stdout.split()[1] for r in results[:20]}  # type: ignore[union-attr]
            assert client_ports == {str(next(iter(mine.values()))).encode()}
            assert all(r.rc == 0 for r in results[:20])  # type: ignore[union-attr]
            assert results[20:] == [b"payload"] * 10

    arun(body())


def test_sftp_storage_borrows_the_transports_connection(home: Path, sshd: SshServer, rdir: Path) -> None:
    async def body() -> None:
        before = set(sockets_to(sshd.port))
        async with SshTransport("qwex-test") as t:
            store = t.sftp_storage(str(rdir / "store"))
            assert await store.put("a/b", b"x")
            assert await store.get("a/b") == b"x"
            assert await t.read(str(rdir / "store" / "a" / "b")) == b"x"
            assert len(set(sockets_to(sshd.port)) - before) == 1
            await store.close()
            conn = await t.connection()
            assert not conn.is_closed()
            assert (await t.run("echo still")).stdout == b"still\n"

    arun(body())


def test_proxyjump_through_the_same_sshd(home: Path, sshd: SshServer) -> None:
    async def body() -> None:
        before = set(sockets_to(sshd.port))
        async with SshTransport("qwex-jump") as t:
            r = await t.run('echo "$SSH_CONNECTION"')
            assert r.rc == 0
            mine = {i: p for i, p in sockets_to(sshd.port).items() if i not in before}
            # one TCP socket from here (to the jump host); the job's session arrived from the
            # jump host's forward, not from that socket
            assert len(mine) == 1
            assert r.stdout.split()[1] != str(next(iter(mine.values()))).encode()

    arun(body())


def test_agent_keys_are_used(
    home: Path, tmp_path: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, "the ssh agent's socket")
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", sshd.identity_file], env=env, check=True)
        # qwex-agent names no IdentityFile and this HOME has no default key: only the agent.
        with pytest.raises(PermanentDriverError, match="qwex-agent"):
            arun(SshTransport("qwex-agent").run("true"))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))

        async def body() -> None:
            async with SshTransport("qwex-agent") as t:
                assert (await t.run("echo via-agent")).stdout == b"via-agent\n"

        arun(body())
    finally:
        agent.terminate()
        agent.wait()


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["qwex-unknown-key", "qwex-wrong-key"])
def test_untrusted_host_key_is_refused_naming_the_fix(home: Path, sshd: SshServer, alias: str) -> None:
    with pytest.raises(PermanentDriverError) as ei:
        arun(SshTransport(alias).run("true"))
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"ssh {alias} once" in msg
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> ~/.ssh/known_hosts" in msg


def test_refused_authentication_is_permanent(home: Path) -> None:
    with pytest.raises(PermanentDriverError) as ei:
        arun(SshTransport("qwex-bad-auth").read("/etc/hostname"))
    assert "qwex-bad-auth" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("alias", ["qwex-nohost", "qwex-undefined-alias.invalid"])
def test_unknown_alias_or_name_is_permanent(home: Path, alias: str) -> None:
    with pytest.raises(PermanentDriverError) as ei:
        arun(SshTransport(alias).home())
    assert alias in str(ei.value) and "~/.ssh/config" in str(ei.value)


def test_refused_port_is_transient(home: Path) -> None:
    with pytest.raises(TransientDriverError) as ei:
        arun(SshTransport("qwex-refused").run("true"))
    assert "qwex-refused" in str(ei.value) and "\n" not in str(ei.value)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything (no SSH banner)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield int(srv.getsockname()[1])


def test_connect_timeout_is_transient(home: Path, silent_port: int) -> None:
    t = SshTransport("127.0.0.1", port=silent_port, connect_timeout=0.3)
    with pytest.raises(TransientDriverError, match=r"127\.0\.0\.1"):
        arun(t.run("true"))


def test_script_too_long_for_one_command_is_refused_before_connecting(home: Path) -> None:
    with pytest.raises(PermanentDriverError, match="bytes"):
        arun(SshTransport("qwex-refused").run("#" * 200_000))  # a refused port: no connection tried


# -- lost connections, detached jobs -----------------------------------------------------


def test_detached_job_survives_dropped_connection_and_transport_reconnects(
    home: Path, sshd: SshServer, rdir: Path
) -> None:
    job = f"cd {rdir} && echo $$ > pid && while [ ! -e go ]; do sleep 0.05; done; echo done > f"
    start = f"setsid sh -c '{job}' </dev/null >/dev/null 2>&1 &"

    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            assert (await t.run(start)).rc == 0
            wait_until(lambda: (rdir / "pid").exists() and (rdir / "pid").read_text().strip() != "", "job")
            pid = int((rdir / "pid").read_text())
            conn = await t.connection()
            assert sshd.drop_connections() >= 1
            await conn.wait_closed()
            os.kill(pid, 0)  # the job outlived the connection
            # the next call finds the cached connection closed and opens a new one
            assert (await t.run("echo back")).stdout == b"back\n"
            assert await t.connection() is not conn
            (rdir / "go").touch()

            async def done() -> bool:
                return await t.read(str(rdir / "f")) == b"done\n"

            await await_until(done, "the detached job's output")

    arun(body())


def test_call_right_after_a_drop_reconnects_without_running_twice(
    home: Path, sshd: SshServer, rdir: Path
) -> None:
    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            for i in range(6):
                await t.read(str(rdir / "none"))  # the SFTP session is open too
                assert sshd.drop_connections() >= 1
                if i % 2:  # no wait for the client to notice: the very next call
                    assert await t.read(str(rdir / "count")) == b"x\n" * ((i + 1) // 2)
                else:
                    assert (await t.run(f"echo x >> {rdir}/count")).rc == 0
        assert (rdir / "count").read_text() == "x\n" * 3

    arun(body())


def test_connection_lost_mid_run_is_transient_and_next_call_reconnects(
    home: Path, sshd: SshServer, rdir: Path
) -> None:
    async def body() -> None:
        async with SshTransport("qwex-test") as t:
            task = asyncio.create_task(t.run(f"echo $$ > {rdir}/pid; exec sleep 60"))
            await await_until(lambda: asyncio.sleep(0, (rdir / "pid").exists()), "the command to start")
            pid = int((rdir / "pid").read_text())
            try:
                assert sshd.drop_connections() >= 1
                with pytest.raises(TransientDriverError, match="may have run"):
                    await task
            finally:
                os.kill(pid, signal.SIGKILL)
            assert (await t.run("echo again")).stdout == b"again\n"

    arun(body())


def test_transport_outlives_an_event_loop_without_leaking(home: Path, sshd: SshServer) -> None:
    """asyncio.run's end closes the loop's connection (no unclosed-socket warning, which
    pytest turns into an error); the next loop opens its own."""
    t = SshTransport("qwex-test")
    before = set(sockets_to(sshd.port))
    assert arun(t.run("echo 1")).stdout == b"1\n"  # no close(): the loop's end closes it
    gc.collect()
    assert set(sockets_to(sshd.port)) - before == set()
    assert arun(t.run("echo 2")).stdout == b"2\n"
    arun(t.close())
    gc.collect()
    assert set(sockets_to(sshd.port)) - before == set()
