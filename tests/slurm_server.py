"""A real single-node SLURM cluster for the tests (Debian's slurm-wlm 22.05 + munge).

The session fixture :func:`slurm` starts, once per test session:

- its own ``munged`` (as the ``munge`` user) on a private socket in ``/run/munge``, so two
  test sessions never share, or stop, each other's munge daemon;
- ``slurmctld -D`` and ``slurmd -D -N localhost`` (the machine's hostname is not
  ``localhost``) on free ports, with a fresh StateSaveLocation and SlurmdSpoolDir under
  ``tmp_path_factory``;

writes a ``slurm.conf`` tuned for fast tests (``batch_sched_delay=0``: submit to done in
about a second; small MinJobAge and KillWait; ``jobcomp/filetxt`` so ``sacct -c`` answers
for finished jobs), waits until the node is idle, and stops every daemon it started at the
end. Every SLURM client needs ``SLURM_CONF``: use :attr:`SlurmCluster.env`.

Time limits: SLURM stores them in whole minutes and slurmctld checks them every 30 s, so a
``--time=0:05`` job is killed 60 to 90 s after it starts. Tests of TIMEOUT are slow.

The fixture skips (not fails) when a binary is missing, naming the packages to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import _free_ports, _stop

__all__ = ["SlurmCluster", "slurm"]

_INSTALL = "apt-get install slurmctld slurmd slurm-client munge"
_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sacct", "scancel", "scontrol", "munged", "munge")
_MUNGE_DIR = Path("/run/munge")
_KEY = Path("/etc/munge/munge.key")

_CONF = """\
ClusterName=qwex
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/jobcomp.txt
JobRequeue=1
ReturnToService=2
MinJobAge=2
KillWait=1
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=60 DefaultTime=10 OverSubscribe=FORCE:4 State=UP
"""


@dataclass
class SlurmCluster:
    """A running single-node cluster. Run clients with ``env={**os.environ, **cluster.env}``."""

    conf: str  # path of slurm.conf
    env: dict[str, str]  # {"SLURM_CONF": conf}
    base: str  # the session directory: logs, state, jobcomp.txt
    partition: str = "debug"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command with this cluster's configuration."""
        return subprocess.run(
            list(argv),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )


def _hardware() -> str:
    """The node's CPUs, topology and RealMemory as ``slurmd -C`` reports this machine."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    words = out.split("\n", 1)[0].split()
    return " ".join(w for w in words if not w.startswith(("NodeName=", "UpTime=")))


def _ensure_key() -> None:
    if _KEY.exists():
        return
    _KEY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mungekey", "--create", f"--keyfile={_KEY}"], check=True, capture_output=True)
    shutil.chown(_KEY, "munge", "munge")
    _KEY.chmod(0o600)


def _start_munged(tag: str, base: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A private munged as the munge user; returns (process, socket path)."""
    _ensure_key()
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", str(_MUNGE_DIR)], check=True)
    sock = _MUNGE_DIR / f"{tag}.socket"
    log = base / "munged.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["munged", "--foreground", f"--socket={sock}", f"--pid-file={_MUNGE_DIR}/{tag}.pid",
             f"--seed-file={_MUNGE_DIR}/{tag}.seed", f"--log-file={_MUNGE_DIR}/{tag}.log"],
            user="munge", group="munge", extra_groups=[], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait(
        lambda: subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True).returncode == 0,
        proc,
        "munged",
        log,
    )
    return proc, sock


def _wait(
    pred: object, proc: subprocess.Popen[bytes], what: str, log: Path | None = None, timeout: float = 60.0
) -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s")
        time.sleep(0.1)


def _end_jobs(cluster: SlurmCluster, spool: Path, timeout: float = 15.0) -> None:
    """Cancel every job still queued or running, and wait until slurmd has cleaned up
    their spool dirs (so no job outlives the session)."""
    ids = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
    if ids:
        cluster.run("scancel", *ids, check=False)
    deadline = time.monotonic() + timeout
    while any(spool.glob("job*")) and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill_strays(spool: Path) -> None:
    """SIGKILL job processes that survived the daemons (their command line names a job
    script in this session's spool dir), and the slurmstepd above each."""
    needle = str(spool).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                parent_is_stepd = f.read().startswith(b"slurmstepd")
        except (OSError, ValueError, IndexError):
            continue
        for pid in (int(entry), ppid) if parent_is_stepd else (int(entry),):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _node_idle(cluster: SlurmCluster) -> bool:
    cp = cluster.run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T", check=False)
    return cp.returncode == 0 and cp.stdout.strip() in ("idle", "mixed", "allocated")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = [b for b in _BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        pytest.skip(f"SLURM missing ({', '.join(missing)}): {_INSTALL}")
    if os.geteuid() != 0:
        pytest.skip("the SLURM fixture runs slurmd and munged, which needs root")
    base = tmp_path_factory.mktemp("slurm")
    state, spool = base / "state", base / "spool"
    state.mkdir()
    spool.mkdir()
    tag = f"qwex-{uuid.uuid4().hex[:12]}"
    procs: list[subprocess.Popen[bytes]] = []
    munged = None
    try:
        munged, sock = _start_munged(tag, base)
        ctld_port, slurmd_port = _free_ports(2)
        conf = base / "slurm.conf"
        conf.write_text(_CONF.format(
            ctld_port=ctld_port, slurmd_port=slurmd_port, munge_socket=sock, state=state, spool=spool,
            base=base, hardware=_hardware(),
        ))  # fmt: skip
        cluster = SlurmCluster(str(conf), {"SLURM_CONF": str(conf)}, str(base), procs=procs)
        env = {**os.environ, **cluster.env}
        daemons = ((["slurmctld", "-D", "-i"], "slurmctld"), (["slurmd", "-D", "-N", "localhost"], "slurmd"))
        for argv, name in daemons:
            with open(base / f"{name}.out", "wb") as out:
                procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
            if name == "slurmctld":
                _wait(
                    lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
                    procs[-1],
                    "slurmctld",
                    base / "slurmctld.log",
                )
        _wait(lambda: _node_idle(cluster), procs[-1], "slurmd", base / "slurmd.log")
        yield cluster
    finally:
        if len(procs) == 2:
            _end_jobs(cluster, spool)
        for p in reversed(procs):
            _stop(p)
        _kill_strays(spool)
        if munged is not None:
            _stop(munged)
            for suffix in ("socket", "socket.lock", "pid", "seed", "log"):
                with contextlib.suppress(OSError):
                    (_MUNGE_DIR / f"{tag}.{suffix}").unlink()
