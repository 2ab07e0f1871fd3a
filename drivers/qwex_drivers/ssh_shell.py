"""Resident remote shells: many scripts through one SSH session channel (spec/drivers.md SSH6).

Every SSH exec request starts the user's login shell on the host, and on many hosts that
shell reads rc files even for ``bash -c`` (Debian's bash sources ``~/.bashrc`` under sshd;
``conda init``/``pyenv init`` there cost 0.2-1 s, per command). A build runs a dozen small
scripts (submit, each status poll, cleanup), so a :class:`ResidentShell` pays for the login
shell once: one channel runs ``sh -s``, and each script is written to its stdin framed as
below; the shell runs it as ``sh FILE`` in a child, with stdin ``/dev/null`` and stdout and
stderr in files, then prints a header and both files.

Protocol (``T`` is a fresh random token per request, so no script or output can forge it):

- start: ``mktemp -d`` a private directory (removed when the shell exits or is hung up
  on; a shell killed by SIGKILL leaves it, empty or nearly), then print
  ``\\nQWEXREADY_T\\n``. Whatever the rc files printed before it is discarded.
- request: a quoted here-document writes the script to ``D/T.sh``; ``sh D/T.sh
  </dev/null >D/T.o 2>D/T.e``; then ``\\nQWEXRC_T RC OUTLEN ERRLEN\\n``, the two files'
  bytes, and the three files are removed. Per-request names: a background process the
  script left holding its stdout writes to a file already unlinked, never into a later
  answer.

Contract: :meth:`ResidentShell.run` returns exactly what ``sh -c SCRIPT`` run through its own
exec request would (exit status, 128+N for signal N, byte-exact stdout and stderr), except
that stdin is always empty. A shell whose channel ends, or whose answer cannot be parsed,
raises :class:`ShellLost` ("the script may have run"); a cancelled ``run`` closes the shell.
Either way the shell is dead and MUST NOT be reused. :meth:`ResidentShell.start` returns
None when the host cannot keep one (no ``mktemp``, a shell that is not POSIX-like, rc files
that swallow stdin): the caller then uses one exec request per script.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncssh

from .transport import Completed

__all__ = ["ResidentShell", "ShellLost"]

#: Sent once: the private directory, its removal on exit, then the ready line.
_PREAMBLE = (
    'qwex_d=$(mktemp -d "${{TMPDIR:-/tmp}}/qwex-sh.XXXXXXXX") || exit 97\n'
    "trap 'rm -rf \"$qwex_d\"' EXIT\n"
    "trap 'exit 129' HUP\n"
    "trap 'exit 143' TERM\n"
    "printf '\\nQWEXREADY_%s\\n' {tok}\n"
)

_REQUEST = (
    "cat >\"$qwex_d/{tok}.sh\" <<'QWEXEOF_{tok}'\n"
    "{script}"
    "QWEXEOF_{tok}\n"
    'sh "$qwex_d/{tok}.sh" </dev/null >"$qwex_d/{tok}.o" 2>"$qwex_d/{tok}.e"\n'
    "qwex_rc=$?\n"
    "printf '\\nQWEXRC_%s %s %s %s\\n' {tok} \"$qwex_rc\" "
    '"$(wc -c <"$qwex_d/{tok}.o")" "$(wc -c <"$qwex_d/{tok}.e")"\n'
    'cat "$qwex_d/{tok}.o" "$qwex_d/{tok}.e"\n'
    'rm -f "$qwex_d/{tok}.sh" "$qwex_d/{tok}.o" "$qwex_d/{tok}.e"\n'
)


class ShellLost(Exception):
    """The resident shell's channel ended (or answered garbage) during a request: the script
    may have run. The shell is closed."""


class ResidentShell:
    """One ``sh -s`` on the host, reading framed requests; see the module docstring."""

    def __init__(self, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.conn, self._proc = conn, proc
        self._dead = False

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, timeout: float) -> ResidentShell | None:
        """A ready shell on ``conn``, or None if the host cannot keep one (see the module
        docstring). Channel errors (a lost connection) propagate: nothing was run."""
        proc = await conn.create_process("sh -s 2>/dev/null", encoding=None, request_pty=False)
        shell = cls(conn, proc)
        tok = secrets.token_hex(16)
        try:
            proc.stdin.write(_PREAMBLE.format(tok=tok).encode())
            await asyncio.wait_for(proc.stdout.readuntil(f"\nQWEXREADY_{tok}\n".encode()), timeout)
        except (TimeoutError, asyncio.IncompleteReadError) as e:
            shell.close()
            if conn.is_closed():
                raise ConnectionResetError("the connection was lost while a shell started") from e
            return None
        except BaseException:
            shell.close()
            raise
        return shell

    @property
    def usable(self) -> bool:
        """Not closed, and its channel has not ended (checked before each request)."""
        return (
            not self._dead
            and not self.conn.is_closed()
            and self._proc.exit_status is None
            and not self._proc.stdout.at_eof()
        )

    async def run(self, script: str) -> Completed:
        """Run ``script`` (stdin empty); see the module docstring. Raises :class:`ShellLost`."""
        if not self.usable:
            raise ShellLost("the shell had ended")
        tok = secrets.token_hex(16)
        while tok in script:  # pragma: no cover - 2**-128 per line
            tok = secrets.token_hex(16)
        body = script if script.endswith("\n") else script + "\n"
        try:
            self._proc.stdin.write(_REQUEST.format(tok=tok, script=body).encode())
            await self._proc.stdout.readuntil(f"\nQWEXRC_{tok} ".encode())
            rc, n_out, n_err = (int(x) for x in (await self._proc.stdout.readuntil(b"\n")).split())
            out = await self._proc.stdout.readexactly(n_out)
            err = await self._proc.stdout.readexactly(n_err)
        except (asyncio.IncompleteReadError, ValueError, OSError, asyncssh.Error) as e:
            self.close()
            raise ShellLost(str(e) or type(e).__name__) from e
        except BaseException:  # cancelled, or the connection failed: the stream is mid-answer
            self.close()
            raise
        return Completed(rc, out, err)

    def close(self) -> None:
        """End the shell (its channel); idempotent. The host removes its directory."""
        if not self._dead:
            self._dead = True
            self._proc.close()
