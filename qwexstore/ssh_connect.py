"""Opening an asyncssh client connection as OpenSSH's ``ssh HOST`` would, and sorting its
failures (shared by the SFTP store and the ssh transport of qwex_drivers).

``asyncssh.connect(host)`` reads ``$HOME/.ssh/config`` (``Host`` aliases, ``HostName``,
``Port``, ``User``, ``IdentityFile``, ``IdentitiesOnly``, ``ProxyJump``,
``UserKnownHostsFile``, ``ServerAliveInterval``), ``~/.ssh/known_hosts`` and the agent at
``$SSH_AUTH_SOCK``. An explicit ``user`` or ``port`` wins over the config, as
``ssh -l USER -p PORT`` does. A host key that is not in known_hosts, or that differs from
it, is refused: asyncssh never trusts on first use, and neither do we.

:func:`failure_kind` sorts a connection failure by exception class, errno and SSH
disconnect/channel-open reason code, never by message wording:

============  ===========================================================================
kind          causes
============  ===========================================================================
transient     refused or reset TCP connection, unreachable network, timeout, connection
              lost (also under SFTP), server busy (too many connections), temporary DNS
              failure, a jump host that could not reach the target
host_key      the host key is unknown or does not match known_hosts
auth          every authentication method was refused, or the user name is illegal
no_host       the name is neither a ``~/.ssh/config`` alias with a HostName nor resolvable
other         anything else (protocol or key-exchange failure, bad config, bad key file)
============  ===========================================================================
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Literal

import asyncssh

__all__ = ["FailureKind", "failure_kind", "resolved_target", "ssh_connect"]

FailureKind = Literal["transient", "host_key", "auth", "no_host", "other"]

_TRANSIENT_ERRNO = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)  # fmt: skip
_TRANSIENT_DISC = frozenset(
    {asyncssh.DISC_CONNECTION_LOST, asyncssh.DISC_BY_APPLICATION, asyncssh.DISC_TOO_MANY_CONNECTIONS,
     asyncssh.DISC_SERVICE_NOT_AVAILABLE}
)  # fmt: skip
_TRANSIENT_OPEN = frozenset({asyncssh.OPEN_CONNECT_FAILED, asyncssh.OPEN_RESOURCE_SHORTAGE})


async def ssh_connect(
    host: str, *, user: str | None = None, port: int | None = None, timeout: float = 30.0
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate to ``host`` (an alias or a name), within ``timeout`` seconds
    (then :class:`TimeoutError`). Raises asyncssh's and the OS's exceptions unchanged; sort
    them with :func:`failure_kind`. The caller owns (and closes) the connection."""
    kw: dict[str, object] = {}
    if user:
        kw["username"] = user
    if port:
        kw["port"] = port
    return await asyncio.wait_for(asyncssh.connect(host, **kw), timeout=timeout)


def failure_kind(e: BaseException) -> FailureKind:
    """Which kind of connection failure ``e`` is (table in the module docstring)."""
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return "host_key"
    if isinstance(e, (asyncssh.PermissionDenied, asyncssh.IllegalUserName)):
        return "auth"
    if isinstance(e, asyncssh.DisconnectError):
        return "transient" if e.code in _TRANSIENT_DISC else "other"
    if isinstance(e, asyncssh.ChannelOpenError):
        return "transient" if e.code in _TRANSIENT_OPEN else "other"
    if isinstance(e, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
        return "transient"
    if isinstance(e, socket.gaierror):
        return "transient" if e.errno == socket.EAI_AGAIN else "no_host"
    if isinstance(e, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return "transient"
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
        return "transient"
    return "other"


async def resolved_target(host: str, *, user: str | None = None, port: int | None = None) -> tuple[str, int]:
    """``(HostName, Port)`` that ``host`` resolves to through ``~/.ssh/config`` (for messages
    that name a command which does not read the config, such as ssh-keyscan); ``(host, port
    or 22)`` when the config cannot be read."""
    kw: dict[str, object] = {"host": host, "config": ()}  # () = ~/.ssh/config, as connect()
    if user:
        kw["username"] = user
    if port:
        kw["port"] = port
    try:
        opts = await asyncssh.SSHClientConnectionOptions.construct(**kw)
        return str(opts.host), int(opts.port)
    except (OSError, asyncssh.Error, ValueError, asyncssh.KeyImportError):
        return host, port or 22
