"""The local driver: runs the command as a child process group on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from qwexstore.driver import LogSink, RunOutcome, RunPlan

__all__ = ["LocalDriver"]

#: Seconds between the polite signal (SIGINT, which ML frameworks handle), SIGTERM and SIGKILL.
GRACE_S = 5.0


async def _pump(stream: asyncio.StreamReader, name: str, logs: LogSink) -> None:
    while chunk := await stream.read(65536):
        logs(name, chunk)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalDriver:
    """Runs ``plan.argv`` in its own session (process group) with exactly ``plan.env``."""

    name = "local"

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome:
        started = time.time_ns()
        try:
            proc = await asyncio.create_subprocess_exec(
                *plan.argv,
                cwd=plan.workdir,
                env=plan.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as e:
            msg = f"cannot execute {plan.argv[0]!r}: {e.strerror}"
            logs("stderr", (msg + "\n").encode())
            return RunOutcome("failed", 127, started, time.time_ns(), msg)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = asyncio.gather(_pump(proc.stdout, "stdout", logs), _pump(proc.stderr, "stderr", logs))
        try:
            code = await proc.wait()
            # Stray children holding the pipes would keep us waiting: the job is over.
            _signal_group(proc.pid, signal.SIGKILL)
            await pumps
        except asyncio.CancelledError:
            await self._stop(proc)
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            raise
        finished = time.time_ns()
        if code == 0:
            return RunOutcome("succeeded", 0, started, finished)
        desc = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return RunOutcome("failed", code, started, finished, f"command {desc}")

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to the whole group, waiting GRACE_S between."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            _signal_group(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), GRACE_S)
                break
            except TimeoutError:
                continue
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
