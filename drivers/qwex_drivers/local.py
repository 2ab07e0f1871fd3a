"""The local driver: runs the command as a child process group on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from typing import IO

from qwexstore.driver import LogSink, RunOutcome, RunPlan
from qwexstore.errors import PermanentDriverError
from qwexstore.layers import LocalLayer

__all__ = ["LocalDriver"]

#: Seconds between the polite signal (SIGINT, which ML frameworks handle), SIGTERM and SIGKILL.
GRACE_S = 5.0


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalDriver:
    """Runs ``plan.argv`` in its own session (process group) with exactly ``plan.env``.

    The job's end is its main process's exit: background children still holding its
    output pipes are then killed with the rest of the group, so they cannot hold the build.
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
        started = time.time_ns()
        try:
            proc = subprocess.Popen(
                plan.argv, cwd=plan.workdir, env=plan.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as e:
            msg = f"cannot execute {plan.argv[0]!r}: {e.strerror}"
            logs("stderr", (msg + "\n").encode())
            return RunOutcome("failed", 127, started, time.time_ns(), msg)
        loop = asyncio.get_running_loop()

        def pump(stream: IO[bytes], name: str) -> None:
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                loop.call_soon_threadsafe(logs, name, chunk)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.to_thread(pump, proc.stdout, "stdout"),
                 asyncio.to_thread(pump, proc.stderr, "stderr")]
        readers = asyncio.gather(*pumps)
        try:
            code = await asyncio.to_thread(proc.wait)
        except asyncio.CancelledError:
            await self._stop(proc)
            await readers
            raise
        _signal_group(proc.pid, signal.SIGKILL)  # strays holding the pipes: the job is over
        await readers
        await asyncio.sleep(0)  # deliver the last chunks scheduled by the readers
        finished = time.time_ns()
        if code == 0:
            return RunOutcome("succeeded", 0, started, finished)
        desc = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return RunOutcome("failed", code, started, finished, f"command {desc}")

    @staticmethod
    async def _stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to the whole group, waiting GRACE_S between.

        Interrupted again while waiting (a second Ctrl-C), it goes straight to SIGKILL: the
        group is always gone when this returns or raises."""
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                _signal_group(proc.pid, sig)
                try:
                    await asyncio.to_thread(proc.wait, GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()  # prompt after SIGKILL; not awaited, so a further cancel cannot skip it
