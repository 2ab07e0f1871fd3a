"""Resident remote shells: many scripts through one SSH session channel (spec/drivers.md SSH6).

Every SSH exec request starts the user's login shell on the host, and on many hosts that
shell reads rc files even for ``bash -c`` (Debian's bash sources ``~/.bashrc`` under sshd;
``conda init``/``pyenv init`` there cost 0.2-1 s, per command). A build runs a dozen small
scripts (submit, each status poll, cleanup), so a :class:`ResidentShell` pays for the login
shell once: one channel runs ``sh -s``, and each script is written to its stdin framed as
below and run by that shell as ``sh -c SCRIPT sh``, as an exec request would.

Protocol (``T`` is a fresh random token per request, unknown to the script before it runs):

- start: remove this user's ``qwex-sh.*`` directories under ``$TMPDIR`` whose shell is gone
  (a shell killed by SIGKILL, or by SIGPIPE while answering a cancelled request, cannot
  clean up), ``mktemp -d`` a private one holding the shell's pid (removed when the shell
  exits or is hung up on, if it is still its own), then print ``\\nQWEXREADY_T\\n``.
  Whatever the rc files printed before that line is discarded.
- request: a quoted here-document writes the script plus one newline to ``D/T.sh``, only
  while ``D`` is still this user's own directory (not a link: a job that cleans ``/tmp``
  may remove it, and another user may then create one of that name); only if that file
  has exactly those bytes (a full ``$TMPDIR`` never runs a cut-off script)
  and the output files can be created, ``setsid -w sh -c "$(cat D/T.sh)" sh`` runs it (its
  own session and process group, as sshd gives an exec request, so ``kill 0`` stays
  inside; ``$(...)`` drops the added newline, so the shell sees the script's exact text;
  without ``setsid``, plain ``sh``), stdin ``/dev/null``, stdout and stderr into ``D/T.o``
  and ``D/T.e`` (redirected inside the child: the resident shell's own notice of a child
  killed by a signal, "Terminated", goes to its stderr, /dev/null, as no exec request
  would print one). The answer: ``\\nQWEXRC_T RC OUTLEN ERRLEN\\n`` (RC ``E``: the script could
  not be written and did not run), exactly OUTLEN and ERRLEN bytes of the two files (read
  through descriptors opened before the files are unlinked: a background process the
  script left writes to unlinked files, never into a later answer), then
  ``\\nQWEXEND_T\\n``.

Contract: :meth:`ResidentShell.run` returns what ``sh -c SCRIPT`` run through its own exec
request would (exit status, 128+N for signal N, byte-exact stdout and stderr, ``$0`` = sh),
except that stdin is always empty. :class:`ScriptNotWritten`: the script did not run (send it
another way); the shell answered, but a new one is the fix (a new directory, or on a full
``$TMPDIR`` no shell at all). :class:`ShellLost`: the channel ended, or the
answer did not parse, while the script may have run; the shell is closed. A cancelled
``run`` closes the shell too. :meth:`ResidentShell.start` returns None when the host cannot
keep one (no ``mktemp``, a shell that is not POSIX-like, rc files that swallow stdin).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import asyncssh

from .transport import Completed

__all__ = ["ResidentShell", "ScriptNotWritten", "ShellLost"]

_PREAMBLE = """\
qwex_t=${{TMPDIR:-/tmp}}
for qwex_o in "$qwex_t"/qwex-sh.*; do
  [ -O "$qwex_o" ] && [ -f "$qwex_o/pid" ] || continue
  kill -0 "$(cat "$qwex_o/pid")" 2>/dev/null || rm -rf "$qwex_o"
done
qwex_d=$(mktemp -d "$qwex_t/qwex-sh.XXXXXXXX") || exit 97
echo $$ >"$qwex_d/pid" || exit 97
trap '[ -O "$qwex_d" ] && [ ! -L "$qwex_d" ] && rm -rf "$qwex_d"' EXIT
trap 'exit 129' HUP
trap 'exit 143' TERM
if setsid -w true </dev/null >/dev/null 2>&1; then qwex_g='setsid -w'; else qwex_g=; fi
printf '\\nQWEXREADY_%s\\n' {tok}
"""

_REQUEST = """\
qwex_f="$qwex_d/{tok}"
qwex_w=-1
[ -d "$qwex_d" ] && [ ! -L "$qwex_d" ] && [ -O "$qwex_d" ] \
  && cat >"$qwex_f.sh" <<'QWEXEOF_{tok}' && qwex_w=$(($(wc -c <"$qwex_f.sh")))
{script}
QWEXEOF_{tok}
if [ "$qwex_w" -eq {size} ] && : >"$qwex_f.o" && : >"$qwex_f.e"; then
  (exec </dev/null >"$qwex_f.o" 2>"$qwex_f.e"; exec $qwex_g sh -c "$(cat "$qwex_f.sh")" sh)
  qwex_rc=$?
  qwex_n=$(($(wc -c <"$qwex_f.o"))) qwex_m=$(($(wc -c <"$qwex_f.e")))
  {{ rm -f "$qwex_f.sh" "$qwex_f.o" "$qwex_f.e"
    printf '\\nQWEXRC_%s %s %s %s\\n' {tok} "$qwex_rc" "$qwex_n" "$qwex_m"
    head -c "$qwex_n" <&3; head -c "$qwex_m" <&4; }} 3<"$qwex_f.o" 4<"$qwex_f.e" \
    || printf '\\nQWEXRC_%s garbled 0 0\\n' {tok}
else
  rm -f "$qwex_f.sh" "$qwex_f.o" "$qwex_f.e"
  printf '\\nQWEXRC_%s E 0 0\\n' {tok}
fi
printf '\\nQWEXEND_%s\\n' {tok}
"""


async def _until(out: asyncssh.SSHReader[bytes], end: bytes) -> bytes:
    """The bytes before ``end`` (not kept): read in chunks, as an answer may exceed the
    channel's window, which ``readuntil`` cannot. Nothing follows ``end`` in a shell's
    stream until the next request is sent."""
    buf = bytearray()
    while True:
        chunk = await out.read(1 << 16)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buf), None)
        buf += chunk
        at = buf.find(end, max(0, len(buf) - len(chunk) - len(end)))
        if at >= 0:
            if at + len(end) != len(buf):
                raise ValueError("bytes after the end of an answer")
            return bytes(buf[:at])


class ShellLost(Exception):
    """The resident shell's channel ended (or answered garbage) during a request: the script
    may have run. The shell is closed."""


class ScriptNotWritten(Exception):
    """The host could not store the script (a full ``$TMPDIR``, or the shell's directory
    gone or no longer its own): it did not run."""


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
        """Run ``script`` (stdin empty); see the module docstring. Raises :class:`ShellLost`
        or :class:`ScriptNotWritten`."""
        if not self.usable:
            raise ShellLost("the shell had ended")
        tok = secrets.token_hex(16)
        while tok in script:  # pragma: no cover - 2**-128 per line
            tok = secrets.token_hex(16)
        body = script.encode()
        request = _REQUEST.format(tok=tok, size=len(body) + 1, script=script).encode()
        out = self._proc.stdout
        try:
            self._proc.stdin.write(request)
            await out.readuntil(f"\nQWEXRC_{tok} ".encode())
            rc_text, n_out, n_err = (await out.readuntil(b"\n")).split()
            data = await _until(out, f"\nQWEXEND_{tok}\n".encode())
            if rc_text == b"E" and not data:
                raise ScriptNotWritten(script[:80])
            rc, n, m = int(rc_text), int(n_out), int(n_err)
            if len(data) != n + m:
                raise ValueError(f"answer of {len(data)} bytes, announced {n} + {m}")
        except (asyncio.IncompleteReadError, ValueError, OSError, asyncssh.Error) as e:
            self.close()
            raise ShellLost(str(e) or type(e).__name__) from e
        except ScriptNotWritten:
            raise
        except BaseException:  # cancelled, or the connection failed: the stream is mid-answer
            self.close()
            raise
        return Completed(rc, data[:n], data[n:])

    def close(self) -> None:
        """End the shell (its channel); idempotent. The host removes its directory."""
        if not self._dead:
            self._dead = True
            self._proc.close()

    async def aclose(self, timeout: float = 10.0) -> None:
        """:meth:`close`, then wait (at most ``timeout``) until the host has released the
        session: sshd counts it against ``MaxSessions`` until the shell has exited."""
        self.close()
        with contextlib.suppress(asyncio.TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self._proc.wait_closed(), timeout)
