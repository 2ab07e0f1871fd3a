"""The shepherd: the one parent of a local job, which ends every process the job started.

Run by the local driver as ``python -I -S shepherd.py SPEC_FD STATUS_FD`` (isolated, no
site: the job's variables such as PYTHONPATH cannot reach it, and it starts in ~15 ms),
in the job's new session, with the work dir as its current directory and the job's
stdin/stdout/stderr as its own. Standard library only: it is executed as a file, not
imported from the installed package.

Protocol (spec/drivers.md, "The local driver"):

- ``SPEC_FD`` carries the job, then EOF: ``ARGC NUL arg NUL ... NUL NAME=VALUE NUL ...``
  (UTF-8; no string of a job can hold a NUL). The job's argv and environment travel this
  way, not on the shepherd's own command line or environment, so that Python's start-up
  cannot alter them (locale coercion) and an argv too long for ``execve`` (E2BIG) is
  reported like any other failure to execute.
- ``STATUS_FD`` receives one ASCII line when the job is over: ``exit=N``, ``signal=N``
  (the main process was killed by signal N) or ``error=ERRNO`` (the command could not be
  executed; 0 if the error had no errno), then `` reaper=1`` or `` reaper=0`` (whether
  every descendant was found and ended). The shepherd then exits 0. No line means the
  shepherd itself was killed. (Not JSON: importing ``json`` would double start-up time.)

Behaviour:

1. It makes itself a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): every process the
   job starts, even in a new session or after a double fork, stays its descendant.
2. It forks; the child resets signal dispositions and execs the job (``execvpe``, PATH
   searched in the job's environment).
3. While the job lives it ignores SIGINT, SIGTERM and SIGHUP (they reach the job through
   the process group; the job decides what they mean). SIGUSR1 makes it SIGKILL every
   descendant at once (the driver's escalation).
4. When the main process has exited, it SIGKILLs every remaining descendant, reaps them,
   and repeats until none is left; only then does it write the status.

Without a subreaper (not Linux) or without ``/proc`` it cannot find processes that left
the tree; the driver then kills the process group after the shepherd exits, which misses
processes in other sessions or groups (spec/runs.md, "Cancellation").
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
_STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Python ignores these at start-up; an ignored disposition would survive exec.
_RESET = (*_STOP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1)


def _subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Live descendants of ``root``, from one scan of ``/proc/*/stat`` (empty without /proc)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(name))  # (state, ppid, ...)
    out: list[int] = []
    seen = {root}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:  # a snapshot of a changing table: never loop
                seen.add(c)
                out.append(c)
                todo.append(c)
    return out


def kill_tree(root: int) -> None:
    """SIGKILL every descendant of ``root`` found now."""
    for pid in descendants(root):
        try:  # noqa: SIM105 - contextlib would cost start-up time
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _end_all(me: int) -> None:
    """SIGKILL and reap descendants until this process has no child left. Polls (WNOHANG),
    because a process forked just before its parent was killed is missed by one scan and,
    handed to us, would keep a blocking wait from ever returning."""
    import time

    while True:
        kill_tree(me)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.005)


def _exec_job(argv: list[str], env: dict[str, str], err_w: int) -> None:
    """In the forked child: default signals, then exec; on failure report errno and exit."""
    try:
        for sig in _RESET:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(err_w, f"error={e.errno or 0}".encode())
    except BaseException:  # must never return into the shepherd's code
        os.write(err_w, b"error=0")
    os._exit(127)


def main(args: list[str]) -> int:
    spec_fd, status_fd = int(args[0]), int(args[1])
    os.set_inheritable(status_fd, False)
    with os.fdopen(spec_fd, "rb") as f:
        fields = f.read().decode().split("\0")
    argc = int(fields[0])
    argv = fields[1 : 1 + argc]
    env = dict(kv.split("=", 1) for kv in fields[1 + argc : -1])
    me = os.getpid()
    reaper = _subreaper() and os.path.isdir("/proc/self")
    for sig in _STOP:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda _s, _f: kill_tree(me))

    err_r, err_w = os.pipe()  # close-on-exec: EOF means the exec succeeded
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _exec_job(argv, env, err_w)
    os.close(err_w)
    chunks = []
    while chunk := os.read(err_r, 65536):
        chunks.append(chunk)
    os.close(err_r)
    status = b"".join(chunks).decode()

    main_status: int | None = None
    while main_status is None:
        try:
            reaped, st = os.waitpid(-1, 0)  # also reaps orphans handed to us as subreaper
        except ChildProcessError:
            break
        if reaped == pid:
            main_status = st
    if main_status is not None and not status:
        killed_by = os.WTERMSIG(main_status) if os.WIFSIGNALED(main_status) else 0
        status = f"signal={killed_by}" if killed_by else f"exit={os.waitstatus_to_exitcode(main_status)}"

    # The job is over: nothing it started may outlive it (or write to its outputs later).
    if reaper:
        _end_all(me)
    os.write(status_fd, f"{status} reaper={int(reaper)}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
