"""Running a read-only git command without the subprocess module.

Planning a cache hit asks git three questions (spec/derivation.md, "Git calls while
planning"). Importing :mod:`subprocess` costs about 5 ms here (it brings threading,
selectors, signal handling and locale), a twentieth of a whole hit; this module starts the
command with ``os.posix_spawnp`` and reads its two pipes with ``poll``, importing only
``select``.

Contract, the same as ``subprocess.run(argv, env=env, capture_output=True,
stdin=DEVNULL)`` for these uses: the program is looked up on ``env``'s PATH; stdin is
/dev/null; SIGPIPE and SIGXFSZ are default in the child (Python ignores SIGPIPE); the
child gets no descriptor but its three standard ones (Python's are close-on-exec);
:meth:`Proc.finish` returns ``(returncode, stdout, stderr)`` with ``-N`` for a child killed
by signal N; a program that cannot be started raises the OSError ``subprocess`` would
(FileNotFoundError for a missing git); interrupted while waiting (Ctrl-C), the child is
sent SIGTERM and reaped before the exception goes on. Commands that need input keep using
subprocess.
"""

from __future__ import annotations

import os
import select

__all__ = ["Proc", "run"]

_SIGPIPE, _SIGXFSZ = 13, 25  # Linux's numbers; checked against signal in the tests
_DEFAULT_SIGNALS = (_SIGPIPE, _SIGXFSZ)


def _path_of(program: str, env: dict[str, str]) -> str:
    """``program`` on ``env``'s PATH (as subprocess finds it), else FileNotFoundError."""
    if "/" in program:
        return program
    for d in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(2, "No such file or directory", program)


class Proc:
    """A started command whose output is read at :meth:`finish`."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ]
            self.pid = os.posix_spawn(_path_of(argv[0], env), argv, env, file_actions=actions,
                                      setsigdef=_DEFAULT_SIGNALS)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._fds = (out_r, err_r)
        self.returncode: int | None = None

    def finish(self) -> tuple[int, bytes, bytes]:
        """Read both pipes to their end, reap the child: (returncode, stdout, stderr)."""
        out_r, err_r = self._fds
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        poller = select.poll()
        for fd in chunks:
            poller.register(fd, select.POLLIN)
        live = set(chunks)
        try:
            while live:
                for fd, _ in poller.poll():
                    data = os.read(fd, 1 << 16)
                    if data:
                        chunks[fd].append(data)
                    else:
                        poller.unregister(fd)
                        live.discard(fd)
        except BaseException:  # Ctrl-C while git runs: stop it rather than wait for it
            os.kill(self.pid, 15)
            raise
        finally:
            for fd in (out_r, err_r):
                os.close(fd)
            self._reap()
        assert self.returncode is not None
        return self.returncode, b"".join(chunks[out_r]), b"".join(chunks[err_r])

    def stop(self) -> None:
        """SIGTERM the child (git removes its own lock files then), close the pipes, reap."""
        if self.returncode is None:
            os.kill(self.pid, 15)
            for fd in self._fds:
                os.close(fd)
            self._reap()

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)


def run(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Start ``argv`` and wait for it: (returncode, stdout, stderr)."""
    return Proc(argv, env).finish()
