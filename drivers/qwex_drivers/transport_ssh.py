"""The ssh transport: run sh scripts on, and read files from, another host through ONE
asyncssh connection (spec/drivers.md, "Transports: ssh").

Contract:

- **One connection per transport object**, opened on the first call (never in
  ``__init__``: a cache hit makes no connection) and shared by every concurrent ``run``
  (one SSH session channel each, at most ``max_channels`` open at once, below OpenSSH's
  default ``MaxSessions 10``) and ``read`` (one SFTP session, opened on the first read).
  ``connection()`` hands it out, so a store can speak SFTP over it
  (:meth:`SshTransport.sftp_storage`).
- **Reaching the host** is ``ssh HOST``'s behaviour (qwexstore.ssh_connect):
  ``~/.ssh/config`` aliases, ProxyJump, known_hosts (an unknown or changed host key is
  refused, never accepted), the agent. ``user``/``port`` override the config.
- ``run(script)`` (no ``input``) runs the script in a resident shell
  (:mod:`qwex_drivers.ssh_shell`, spec SSH6): the login shell, and whatever rc files it
  reads, starts once per shell, not once per script; stdin is empty. ``run(script,
  input=)``, or every ``run`` on a host that cannot keep a resident shell, sends the exec
  request ``sh -c '<script>'``: stdin gets ``input``, then EOF. Either way no pty (stdout
  and stderr stay apart and binary-exact), the remote login shell MUST be POSIX-like
  (sh, bash, dash, ksh, zsh), the result is the exit status, or 128+N when the script was
  killed by signal N, and a non-zero status never raises. Relative paths are relative to
  the remote home.
- **Lost connections.** A call that finds the cached connection closed opens a new one.
  ``run`` retries once on a new connection only when the old one failed before the command
  was sent (the session channel never opened), so a command never runs twice; a
  connection lost after that is a :class:`TransientDriverError` ("it may have run"), and
  the next call reconnects. ``read`` and ``home`` are idempotent and retry once whenever
  the connection was lost. A detached job (own session, output to files) outlives both.
- **Errors** (one line, naming the host and the fix; sorted by exception class and SSH
  reason code, never by message): refused, timed out or lost connections are
  :class:`TransientDriverError`; unknown or mismatched host keys, refused
  authentication, unknown aliases/names and anything else are
  :class:`PermanentDriverError`.
- Cancelling ``run`` closes its channel; the remote command is not reliably stopped (jobs
  are cancelled by a script, not by hanging up).
- Event loops: the connection belongs to the loop that opened it and is closed by
  ``close()`` or, failing that, when ``asyncio.run`` ends (an async-generator finalizer);
  a call from a new loop opens a new connection. After ``close()`` a call reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import stat
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncssh

from qwexstore.errors import DriverError, PermanentDriverError, TransientDriverError
from qwexstore.layers import SshLayer
from qwexstore.ssh_connect import failure_kind, resolved_target, ssh_connect
from qwexstore.storage_batch import read_upto
from qwexstore.storage_retry import describe

from .ssh_shell import ResidentShell, ScriptNotWritten, ShellLost
from .transport import Completed

if TYPE_CHECKING:
    from qwexstore.storage_sftp import SftpStorage

__all__ = ["SshTransport"]

T = TypeVar("T")

#: Linux's MAX_ARG_STRLEN (one argv string) is 128 KiB; the quoted script is one argument.
MAX_SCRIPT_BYTES = 120 * 1024
_CONNECT_ERRORS = (OSError, asyncssh.Error, ValueError, asyncssh.KeyImportError)


class SshTransport:
    """``kind = "ssh"``: see the module docstring for the contract."""

    kind = "ssh"

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int | None = None,
        connect_timeout: float = 30.0,
        max_channels: int = 8,
    ) -> None:
        self.host, self.user, self.port = host, user, port
        self.connect_timeout = connect_timeout
        self.max_channels = max_channels
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_conn: asyncssh.SSHClientConnection | None = None
        self._keeper: AsyncGenerator[None, None] | None = None
        self._lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(max_channels)
        self._home: str | None = None
        self._idle: list[ResidentShell] = []  # ready resident shells (SSH6)
        self._live: set[ResidentShell] = set()  # every open one, idle or running a script
        self._shells_ok = True  # False once the host could not keep one: exec requests only
        self._home_lock = asyncio.Lock()
        self._starting = self._closing = self._oneoff = 0  # shells starting, closing; exec requests

    @classmethod
    def from_layer(
        cls, layer: SshLayer, *, connect_timeout: float = 30.0, max_channels: int = 8
    ) -> SshTransport:
        """The transport for an ssh layer's placement (``host``, ``user``, ``port``)."""
        return cls(
            layer.host,
            user=layer.user,
            port=layer.port,
            connect_timeout=connect_timeout,
            max_channels=max_channels,
        )

    @property
    def target(self) -> str:
        """``[user@]host[:port]`` as configured (for messages and job handles)."""
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.host}{f':{self.port}' if self.port else ''}"

    async def __aenter__(self) -> SshTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the connection ------------------------------------------------------------------
    def _same_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the old loop's objects cannot be used (or closed) here
            self._loop, self._conn, self._sftp, self._sftp_conn = loop, None, None, None
            self._keeper = None  # the old loop's end closed its connection (see _keep)
            self._lock, self._channels = asyncio.Lock(), asyncio.Semaphore(self.max_channels)
            self._idle, self._live, self._home_lock = [], set(), asyncio.Lock()
            self._starting = self._closing = self._oneoff = 0

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The transport's connection, opened now if there is none or it was closed. The
        transport owns it: callers MUST NOT close it."""
        self._same_loop()
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = self._sftp = self._sftp_conn = None
            old, self._keeper = self._keeper, None
            if old is not None:
                await old.aclose()
            try:
                conn = await ssh_connect(
                    self.host, user=self.user, port=self.port, timeout=self.connect_timeout
                )
            except _CONNECT_ERRORS as e:
                raise await self._connect_error(e) from e
            keeper = self._keep(conn)
            await keeper.__anext__()  # now the loop's shutdown_asyncgens() will finalize it
            self._conn, self._keeper = conn, keeper
            return conn

    @staticmethod
    async def _keep(conn: asyncssh.SSHClientConnection) -> AsyncGenerator[None, None]:
        """Closes ``conn`` when closed by ``close()`` or a reconnect, or when the event loop
        finalizes its async generators (the end of ``asyncio.run``): no connection outlives
        its loop, even without ``close()``."""
        try:
            yield
        finally:
            conn.close()
            with contextlib.suppress(*_CONNECT_ERRORS):
                await conn.wait_closed()

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self.connection()
        if self._sftp is not None and self._sftp_conn is conn:
            return self._sftp
        async with self._lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp, self._sftp_conn = await conn.start_sftp_client(), conn
            return self._sftp

    def sftp_storage(self, root: str, *, concurrency: int = 16) -> SftpStorage:
        """An SFTP store at ``root`` on this host that borrows this transport's connection
        (its ``close()`` ends only its SFTP session)."""
        from qwexstore.storage_sftp import SftpStorage

        return SftpStorage(
            self.host,
            root,
            user=self.user,
            port=self.port,
            concurrency=concurrency,
            connection=self.connection,
        )

    async def close(self) -> None:
        """Close the connection (and the SFTP session); idempotent."""
        self._same_loop()
        sftp, keeper = self._sftp, self._keeper
        self._conn = self._sftp = self._sftp_conn = self._keeper = None
        live, self._idle, self._live = self._live, [], set()
        for shell in live:
            shell.close()
        if sftp is not None:
            sftp.exit()
        if keeper is not None:
            await keeper.aclose()

    # -- operations ----------------------------------------------------------------------
    async def run(self, script: str, *, input: bytes | None = None) -> Completed:
        """Run ``sh -c script`` on the host; see the module docstring."""
        command = "sh -c " + shlex.quote(script)
        if len(command.encode()) > MAX_SCRIPT_BYTES:
            raise PermanentDriverError(
                f"ssh {self.host}: the script is {len(command.encode())} bytes, more than the "
                f"{MAX_SCRIPT_BYTES} one ssh command may carry; move data into files"
            )
        self._same_loop()
        async with self._channels:
            if input is None and self._shells_ok:
                shell = await self._shell()
                if shell is not None:
                    done = await self._run_in(shell, script)
                    if done is not None:
                        return done
            self._oneoff += 1  # an exec request's channel, in the same budget as the shells
            try:
                return await self._exec(command, input)
            finally:
                self._oneoff -= 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exec(self, command: str, input: bytes | None) -> Completed:
        """``command`` as its own exec request (SSH3, SSH4)."""
        for attempt in (0, 1):
            conn = await self.connection()
            while self._idle and self._channels_used() > self.max_channels:
                shell = self._idle.pop()  # room for this channel (MaxSessions)
                self._live.discard(shell)
                self._closing += 1  # counted until the host has released its session
                try:
                    await shell.aclose()
                finally:
                    self._closing -= 1
            try:
                proc = await conn.create_process(command, encoding=None, request_pty=False)
            except asyncssh.ChannelOpenError as e:
                if conn.is_closed():
                    # OPEN_CONNECT_FAILED: the channel never opened and the exec request
                    # was never sent, so one retry cannot run the command twice.
                    if attempt == 0 and e.code == asyncssh.OPEN_CONNECT_FAILED:
                        continue
                    raise TransientDriverError(
                        f"ssh {self.host}: connection lost while starting a command (it may have run); retry"
                    ) from e
                raise self._op_error("start a command", e) from e
            except _CONNECT_ERRORS as e:
                raise self._op_error("start a command", e) from e
            return await self._finish(proc, input)
        raise AssertionError("unreachable")  # pragma: no cover

    async def warm(self) -> None:
        """Have a resident shell ready (SSH6), and the home learnt, before the first ``run``
        needs them, so the login overlaps other work (the stack driver sends the job's
        closure meanwhile). A host without an answer is the business of the calls that
        need one (an absolute ``root`` never asks for the home)."""
        with contextlib.suppress(PermanentDriverError):
            await self.home()

    async def _shell(self) -> ResidentShell | None:
        """An idle resident shell on the live connection, or a new one while the shells
        and exec requests hold fewer than ``max_channels`` channels (the SFTP sessions
        take the rest of OpenSSH's ``MaxSessions 10``); None: use an exec request (all
        busy, or the host cannot keep one). Reconnects as ``run`` does: a channel that
        could not open on a dead connection ran nothing."""
        for attempt in (0, 1):
            conn = await self.connection()
            while self._idle:
                idle = self._idle.pop()
                if idle.conn is conn and idle.usable:
                    return idle
                self._drop(idle)
            self._live = {sh for sh in self._live if sh.conn is conn and sh.usable}
            if self._channels_used() >= self.max_channels:
                return None
            self._starting += 1  # counted before the await: concurrent callers see it
            try:
                shell = await ResidentShell.start(conn, self.connect_timeout)
            except asyncssh.ChannelOpenError as e:
                if conn.is_closed() and attempt == 0 and e.code == asyncssh.OPEN_CONNECT_FAILED:
                    continue
                raise self._op_error("start a shell", e) from e
            except _CONNECT_ERRORS as e:
                raise self._op_error("start a shell", e) from e
            finally:
                self._starting -= 1
            if shell is None:
                self._shells_ok = False
            else:
                self._live.add(shell)
            return shell
        raise AssertionError("unreachable")  # pragma: no cover

    def _channels_used(self) -> int:
        """Session channels held by shells (open, starting, closing) and exec requests."""
        return len(self._live) + self._starting + self._closing + self._oneoff

    def _drop(self, shell: ResidentShell) -> None:
        shell.close()
        self._live.discard(shell)

    async def _run_in(self, shell: ResidentShell, script: str) -> Completed | None:
        """``script`` in ``shell``; None if the host could not store it (it did not run)."""
        try:
            done = await shell.run(script)
        except ScriptNotWritten:
            self._drop(shell)  # the next run starts a shell with a new directory, if it can
            return None
        except ShellLost as e:
            self._drop(shell)
            raise TransientDriverError(
                f"ssh {self.host}: connection lost while running a command (it may have run); retry"
            ) from e
        except BaseException:
            self._drop(shell)  # cancelled mid-answer: the shell's stream is out of step
            raise
        if shell.conn is self._conn and shell.usable:
            self._idle.append(shell)
        else:  # a reconnect or close() happened meanwhile
            self._drop(shell)
        return done

    async def _finish(self, proc: asyncssh.SSHClientProcess[bytes], input: bytes | None) -> Completed:
        try:
            if input:
                proc.stdin.write(input)
            proc.stdin.write_eof()
            out, err = await proc.communicate()
        except _CONNECT_ERRORS as e:
            raise self._op_error("run a command (it may have run)", e) from e
        finally:
            proc.close()
        if proc.exit_status is not None and proc.exit_status >= 0:
            return Completed(proc.exit_status, bytes(out or b""), bytes(err or b""))
        if proc.exit_signal is not None:
            name = proc.exit_signal[0]
            try:
                num = int(signal.Signals[f"SIG{name}"])
            except KeyError:
                num = 127  # a signal this machine does not know: still a failure, > 128
            return Completed(128 + num, bytes(out or b""), bytes(err or b""))
        raise TransientDriverError(
            f"ssh {self.host}: the connection was lost before the command's exit status arrived "
            "(it may have run); retry"
        )

    async def _idempotent(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        for attempt in (0, 1):
            try:
                return await op()
            except DriverError:
                raise
            except _CONNECT_ERRORS as e:
                if attempt == 0 and failure_kind(e) == "transient":
                    # a new SFTP session, on a new connection if this one is closed (a live
                    # connection is kept: other calls may be running on it)
                    self._sftp = self._sftp_conn = None
                    continue
                raise self._op_error(what, e) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes | None:
        """Bytes ``[offset, offset+limit)`` of ``path`` (fewer at its end) via SFTP on this
        connection; None if it does not exist."""

        async def op() -> bytes | None:
            sftp = await self._sftp_client()
            try:
                # Only a regular file, never through a link: a job may point its log at
                # /dev/zero (endless) or a FIFO (an open that never returns).
                attrs = await sftp.lstat(path)
                if attrs.permissions is None or not stat.S_ISREG(attrs.permissions):
                    return None
                async with sftp.open(path, "rb") as f:
                    await f.seek(offset)
                    return await read_upto(f.read, limit)
            except asyncssh.SFTPNoSuchFile:
                return None
            except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
                raise  # transient: _idempotent retries on a new connection
            except asyncssh.SFTPError as e:
                raise PermanentDriverError(f"ssh {self.host}: cannot read {path}: {describe(e)}") from e

        return await self._idempotent(f"read {path}", op)

    async def home(self) -> str:
        """The remote ``$HOME`` (absolute), asked once per transport."""
        self._same_loop()
        async with self._home_lock:  # asked once: concurrent callers wait for that answer
            return await self._ask_home()

    async def _ask_home(self) -> str:
        if self._home is None:
            res = await self.run('printf "%s" "$HOME"')
            home = res.stdout.decode(errors="replace")
            if res.rc != 0 or not home.startswith("/"):
                raise PermanentDriverError(
                    f"ssh {self.host}: the remote shell reports no absolute $HOME (rc {res.rc}); "
                    f"check `ssh {self.host} 'echo $HOME'`"
                )
            self._home = home
        return self._home

    # -- errors --------------------------------------------------------------------------
    def _op_error(self, what: str, e: BaseException) -> DriverError:
        if failure_kind(e) == "transient":
            return TransientDriverError(
                f"ssh {self.host}: connection lost while trying to {what} ({describe(e)}); retry"
            )
        return PermanentDriverError(f"ssh {self.host}: cannot {what}: {describe(e)}")

    async def _connect_error(self, e: BaseException) -> DriverError:
        h = self.host
        match failure_kind(e):
            case "transient":
                return TransientDriverError(
                    f"ssh {h}: cannot connect ({describe(e)}); check that it is up and reachable "
                    f"(`ssh {h} true`), then retry"
                )
            case "host_key":
                name, port = await resolved_target(h, user=self.user, port=self.port)
                return PermanentDriverError(
                    f"ssh {h}: the host key of {name} port {port} is unknown or does not match "
                    f"known_hosts; ssh {h} once to accept its key, or ssh-keyscan -p {port} {name} "
                    f">> ~/.ssh/known_hosts (if the host was reinstalled, ssh-keygen -R first)"
                )
            case "auth":
                return PermanentDriverError(
                    f"ssh {h}: authentication refused; check User and IdentityFile for {h} in "
                    "~/.ssh/config, or add the key to the agent with ssh-add"
                )
            case "no_host":
                return PermanentDriverError(
                    f"ssh {h}: no such host: not resolvable and not a Host alias in ~/.ssh/config; "
                    f"add `Host {h}` with its HostName there, or fix the runner's host"
                )
            case _:
                return PermanentDriverError(f"ssh {h}: cannot connect: {describe(e)}; try `ssh {h} true`")
