"""The local driver: runs the command on this machine, under a shepherd process.

The shepherd (:mod:`qwex_drivers.shepherd`, spec/drivers.md) is the job's parent in a new
session: it makes itself a child subreaper, execs the command, and when the command's main
process exits, kills every process the job started before it reports; so when ``run``
returns, nothing the job started can still write to its work dir (spec/runs.md,
"Cancellation").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import msgspec

from qwexstore.driver import LogSink, RunOutcome, RunPlan
from qwexstore.errors import PermanentDriverError
from qwexstore.layers import LocalLayer

from . import shepherd

__all__ = ["LocalDriver"]

#: Seconds between the polite signal (SIGINT, which ML frameworks handle), SIGTERM and SIGKILL.
GRACE_S = 5.0
#: Once the shepherd has exited, how long the output pipes may stay open: only a process
#: outside the job's tree (e.g. one handed the pipe through a socket) can still hold them.
DRAIN_S = 1.0


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exec_error(argv0: str, err: int) -> str:
    shown = argv0 if len(argv0) <= 80 else argv0[:77] + "..."
    return f"cannot execute {shown!r}: {os.strerror(err) if err else 'exec failed'}"


def shepherd_spec(argv: list[str], env: dict[str, str]) -> bytes:
    """The job as the shepherd reads it on SPEC_FD (see :mod:`qwex_drivers.shepherd`)."""
    fields = [str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    return "".join(f + "\0" for f in fields).encode()


class _Pipes:
    """The job's stdout and stderr, read without threads by the event loop (so reading can
    stop at any time, even if a stray process keeps a pipe open)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: dict[str, int], logs: LogSink) -> None:
        self._loop = loop
        self._fds = dict(fds)
        self._logs = logs
        self._eof = {name: loop.create_future() for name in fds}
        for name, fd in fds.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, name)

    def _read(self, name: str) -> None:
        fd = self._fds[name]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._logs(name, chunk)
        else:
            self._finish(name)

    def _finish(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is None:
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        if not self._eof[name].done():
            self._eof[name].set_result(None)

    async def drain(self, bound: float) -> None:
        """Read until EOF on both, at most ``bound`` seconds; then stop reading and close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._eof.values())), bound)
        self.close()

    def close(self) -> None:
        for name in list(self._fds):
            with contextlib.suppress(BlockingIOError, OSError):
                while chunk := os.read(self._fds[name], 65536):  # what is already buffered
                    self._logs(name, chunk)
            self._finish(name)


class LocalDriver:
    """Runs ``plan.argv`` in a new session under the shepherd, with exactly ``plan.env``.

    The job's end is its main process's exit: the shepherd then kills every remaining
    descendant (even in other sessions), and the driver stops reading the output pipes
    after at most DRAIN_S, so a daemon the job started cannot hold the build.
    """

    name = "local"

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome:
        others = [type(layer).__struct_config__.tag for layer in plan.layers
                  if not isinstance(layer, LocalLayer)]
        if others:
            raise PermanentDriverError(
                f"the local driver cannot run layer {others[0]!r}; no driver for it is installed"
            )
        if plan.image is not None:
            raise PermanentDriverError(
                "the local driver runs on the host and cannot honour [env] image; "
                "add a container layer (singularity) to run in the image"
            )
        loop = asyncio.get_running_loop()
        started = time.time_ns()
        spec_r, spec_w = os.pipe()
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", shepherd.__file__, str(spec_r), str(status_w)],
                cwd=plan.workdir, env={}, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                pass_fds=(spec_r, status_w), start_new_session=True,
            )
        except BaseException:
            for fd in (spec_w, status_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (spec_r, status_w, out_w, err_w):
                os.close(fd)
        # Synchronous: the shepherd reads it at once (a spec beyond the pipe's buffer blocks
        # for its start-up, ~20 ms); closing the pipe is what lets the shepherd go on.
        _write_all(spec_w, shepherd_spec(plan.argv, plan.env))
        pipes = _Pipes(loop, {"stdout": out_r, "stderr": err_r}, logs)
        try:
            await asyncio.to_thread(proc.wait)
        except asyncio.CancelledError:
            await self._stop(proc)
            pipes.close()
            os.close(status_r)
            raise
        status = _read_status(status_r)
        if not status.reaper:
            _signal_group(proc.pid, signal.SIGKILL)  # the fallback: strays in the job's group
        await pipes.drain(DRAIN_S)
        await asyncio.sleep(0)
        finished = time.time_ns()
        if status.error is not None:
            msg = _describe_exec_error(plan.argv[0], status.error)
            logs("stderr", (msg + "\n").encode())
            return RunOutcome("failed", 127, started, finished, msg)
        if status.exit is not None:
            code = status.exit
        elif status.signal is not None:
            code = -status.signal
        else:  # the shepherd itself was killed: its own status is all there is
            code = proc.returncode
        if code == 0:
            return RunOutcome("succeeded", 0, started, finished)
        desc = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return RunOutcome("failed", code, started, finished, f"command {desc}")

    @staticmethod
    async def _stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGINT, then SIGTERM to the whole group, waiting GRACE_S between; then SIGUSR1 to
        the shepherd (it SIGKILLs every descendant), then SIGKILL to the group.

        Interrupted again while waiting (a second Ctrl-C), it goes straight to the kill: the
        job is always gone when this returns or raises."""
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                _signal_group(proc.pid, sig)
                try:
                    await asyncio.to_thread(proc.wait, GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            _kill_all(proc)


def _kill_all(proc: subprocess.Popen[bytes]) -> None:
    """Ask the shepherd to kill the job's tree, give it a moment, then kill the group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)  # not awaited, so a further cancel cannot skip the kill
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # the shepherd died; its exit status tells
    finally:
        os.close(fd)


class _Status(msgspec.Struct, frozen=True):
    """The shepherd's report (see :mod:`qwex_drivers.shepherd`); all absent if it was killed."""

    exit: int | None = None
    signal: int | None = None
    error: int | None = None
    reaper: bool = False


def _read_status(fd: int) -> _Status:
    """Parse ``key=N`` words; anything unreadable counts as no report."""
    chunks = []
    try:
        os.set_blocking(fd, False)
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    try:
        words = dict(w.split("=", 1) for w in b"".join(chunks).decode("ascii").split())
        nums = {k: int(v) for k, v in words.items() if k in ("exit", "signal", "error", "reaper")}
    except ValueError:
        return _Status()
    return _Status(exit=nums.get("exit"), signal=nums.get("signal"), error=nums.get("error"),
                   reaper=bool(nums.get("reaper")))
