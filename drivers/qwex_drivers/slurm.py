"""The ``slurm`` scheduler: submit ``job.sh`` with ``sbatch`` (template ``slurm.sh.j2``),
poll every job with one query, cancel with ``scancel`` (spec/drivers.md, "SLURM").

Contracts:

- **Submission** prints ``ID`` or ``ID;CLUSTER`` (``sbatch --parsable``); :meth:`parse_submit`
  returns ``ID``. The job is named ``qwex-<run id>`` and writes its logs to the job dir,
  appended (``--open-mode=append``) so a requeued job never truncates a log a client is
  following by offset.
- **Status** is ONE shell command per poll cycle for all ids: ``squeue`` (live jobs, and
  finished ones for MinJobAge seconds), then ``sacct -X`` (the accounting database, where
  there is one) and ``sacct -c`` (the ``jobcomp/filetxt`` file) for jobs squeue forgot.
  A live squeue state wins (a requeued job has an old terminal record in sacct); else the
  last terminal sacct record; else squeue's terminal state; else ``unknown``. A state
  squeue shows that is not a known end (a flag this table lacks) counts as live: the
  controller still holds the job. When squeue itself failed, nothing is concluded
  (TransientDriverError): without it an old sacct record cannot be told from the end of a
  job that is being requeued.
- **States** map by their FIRST token (``CANCELLED by 0`` is ``CANCELLED``), see
  :data:`BUCKETS`. Anything unlisted, ``UNKNOWN`` included, is ``unknown``: never success.
  The marker, not this hint, decides the outcome.
- **Cancel** is ``scancel``; cancelling a finished job is not an error.

Ids are validated (digits, optionally ``_N`` for an array task) before they reach a shell.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Final

from qwexstore.errors import PermanentDriverError, TransientDriverError
from qwexstore.jobs import JobState, JobStatus
from qwexstore.layers import SlurmLayer

__all__ = ["BUCKETS", "SlurmScheduler", "parse_exit_code", "sbatch_placement"]

#: First token of a SLURM job state -> qwex bucket. Unlisted states are "unknown".
BUCKETS: Final[dict[str, JobState]] = {
    "PENDING": "pending",
    "CONFIGURING": "pending",  # allocated, nodes still booting: the script has not started
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "SPECIAL_EXIT": "pending",  # requeued and held after a special exit code
    "RESV_DEL_HOLD": "pending",
    "EXPEDITING": "pending",  # requeued with top priority
    "POWER_UP_NODE": "pending",
    "LAUNCH_FAILED": "pending",  # the launch failed; SLURM requeues or holds it
    "RUNNING": "running",
    "COMPLETING": "running",  # processes may still be alive: not done until they are gone
    "SUSPENDED": "running",
    "STOPPED": "running",
    "RESIZING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "UPDATE_DB": "running",
    "COMPLETED": "succeeded",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "PREEMPTED": "failed",  # a preempted job that requeues shows REQUEUED/PENDING instead
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",  # federation: a sibling runs it
    "RECONFIG_FAIL": "failed",
}

_WHY: Final = {
    "FAILED": "non-zero exit",
    "TIMEOUT": "time limit",
    "NODE_FAIL": "node failure",
    "OUT_OF_MEMORY": "out of memory",
    "BOOT_FAIL": "node boot failure",
    "DEADLINE": "deadline passed",
    "PREEMPTED": "preempted and not requeued",
    "RECONFIG_FAIL": "node configuration failed",
}

_ID: Final = re.compile(r"[0-9]+(_[0-9]+)?")
_LIVE: Final = ("pending", "running")


def parse_exit_code(text: str) -> tuple[int, int] | None:
    """SLURM's ``ExitCode`` ``code:signal`` as two ints, or None if it is not that."""
    code, sep, sig = text.strip().partition(":")
    if not sep or not code.isdigit() or not sig.isdigit():
        return None
    return int(code), int(sig)


def sbatch_placement(layer: SlurmLayer | None) -> list[str]:
    """The sbatch options for a slurm layer's placement fields, one argument each
    (``--name=value``, so a value with spaces stays one word once quoted), in a fixed order;
    ``extra_args`` last and verbatim. None (no slurm layer) gives no options."""
    if layer is None:
        return []
    out: list[str] = []
    for opt, value in (
        ("partition", layer.partition), ("account", layer.account), ("qos", layer.qos),
        ("time", layer.time), ("nodes", layer.nodes), ("cpus-per-task", layer.cpus_per_task),
        ("mem", layer.mem), ("gres", layer.gres), ("gpus", layer.gpus),
        ("constraint", layer.constraint), ("signal", layer.signal),
    ):  # fmt: skip
        if value is not None:
            out.append(f"--{opt}={value}")
    if layer.requeue:
        out.append("--requeue")
    out.extend(layer.extra_args)
    return out


def _ids(ids: Sequence[str]) -> str:
    bad = [i for i in ids if not _ID.fullmatch(i)]
    if bad:
        raise PermanentDriverError(f"not a SLURM job id: {bad[0]!r}")
    return ",".join(ids)


def _status(state_text: str, exit_code: str = "", wait_reason: str = "") -> JobStatus:
    """The bucket of one state (by its first token) with the scheduler's words as reason."""
    text = state_text.strip()
    first = text.split(" ", 1)[0].rstrip("+")  # sacct without -P truncates with "+"
    bucket = BUCKETS.get(first, "unknown")
    if bucket == "failed":
        reason = f"{text}: {_WHY.get(first, first.lower())}"
        if parse_exit_code(exit_code) is not None:
            reason += f"; ExitCode {exit_code.strip()}"
    elif bucket == "pending":
        reason = first if first != "PENDING" else ""
        if wait_reason and wait_reason != "None":
            reason = f"{reason}: {wait_reason}" if reason else wait_reason
    elif bucket in ("cancelled", "unknown"):
        reason = text or "no state"
    else:
        reason = ""
    return JobStatus(bucket, reason)


class SlurmScheduler:
    """The :class:`Scheduler` for SLURM (kind ``slurm``, template ``slurm``)."""

    kind = "slurm"
    template = "slurm"

    def parse_submit(self, out: bytes) -> str:
        """The job id from ``sbatch --parsable`` (``ID`` or ``ID;CLUSTER``, last line)."""
        lines = out.decode(errors="replace").strip().splitlines()
        job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
        if not job_id.isdigit():
            raise PermanentDriverError(f"sbatch printed no job id (got {out[-200:]!r}; see its stderr)")
        return job_id

    def status_script(self, ids: Sequence[str]) -> str:
        """One sh command asking squeue, then sacct (database and jobcomp file), for ``ids``.
        Lines: ``Q|ID|STATE|REASON`` (squeue), ``ID|STATE|EXITCODE`` (sacct),
        ``R|squeue|RC`` (squeue's exit status)."""
        j = shlex.quote(_ids(ids))
        return (
            "squeue --me -h -t all -o 'Q|%i|%T|%r' 2>/dev/null; echo \"R|squeue|$?\"; "
            f"sacct -X -n -P -o JobID,State,ExitCode -j {j} 2>/dev/null; "
            f"sacct -c -n -P -o JobID,State,ExitCode -j {j} 2>/dev/null; exit 0"
        )

    def parse_status(self, rc: int, out: bytes, ids: Sequence[str]) -> dict[str, JobStatus]:
        """Every id's status from :meth:`status_script`'s output (rules in the module doc).
        Raises TransientDriverError when squeue failed and did not show a job live: the
        controller may be restarting, and sacct's records may predate a requeue."""
        wanted = set(ids)
        live: dict[str, JobStatus] = {}
        queued_done: dict[str, JobStatus] = {}
        finished: dict[str, JobStatus] = {}
        squeue_rc = None
        for line in out.decode(errors="replace").splitlines():
            parts = line.split("|")
            if parts[0] == "R" and len(parts) == 3:
                squeue_rc = int(parts[2]) if parts[2].isdigit() else 1
            elif parts[0] == "Q" and len(parts) >= 4 and parts[1] in wanted:
                st = _status(parts[2], wait_reason="|".join(parts[3:]))
                if st.state == "unknown":  # a flag we do not know: the controller holds it
                    st = JobStatus("pending", f"SLURM state {st.reason}")
                (live if st.state in _LIVE else queued_done)[parts[1]] = st
            elif len(parts) == 3 and parts[0] in wanted:  # steps (ID.batch) never match an id
                st = _status(parts[1], exit_code=parts[2])
                if st.state not in _LIVE:
                    finished[parts[0]] = st  # the last record wins: the file is in time order
        result: dict[str, JobStatus] = {}
        for i in ids:
            if i in live:
                result[i] = live[i]
                continue
            if squeue_rc != 0:
                raise TransientDriverError(
                    f"squeue failed (exit {squeue_rc}) while polling SLURM job {i}; is slurmctld up? "
                    "Run `squeue --me` on the execution host"
                )
            found = finished.get(i) or queued_done.get(i)
            result[i] = found if found is not None else JobStatus("unknown", "SLURM no longer knows this job")
        return result

    def cancel_script(self, ids: Sequence[str]) -> str:
        """``scancel`` for every id (SIGTERM to the job's processes, SIGKILL after KillWait).
        Idempotent: scancel's complaint about a job that already ended does not count; the
        exit status is that of a final ``squeue``, non-zero only when the controller could
        not be reached."""
        return f"scancel {_ids(ids).replace(',', ' ')}; squeue --me -h -o %i >/dev/null"
