"""``qwex doctor RUNNER``: check, on the execution host, everything a runner's layer stack
needs, and name the one command that fixes each missing piece (spec/drivers.md, "Doctor").

Checks, in order (a failed connection stops the rest): the connection (ssh), POSIX sh
tools the job script uses (``setsid``, ``date``), python3, git, qwex itself at this
client's version (ssh: the execution side stages and ingests with it), the scheduler's
commands (slurm), the container runtime (podman, apptainer), the execution store is
writable (ssh), and GPUs (informational).
"""

from __future__ import annotations

import shlex
from typing import Literal, NamedTuple

from qwexstore.compose import Stack
from qwexstore.errors import DriverError

from .transport import Transport

__all__ = ["Check", "run_checks"]


class Check(NamedTuple):
    name: str
    state: Literal["ok", "missing", "info"]
    detail: str  # what was found, or what is wrong
    fix: str = ""  # the one command (or setting) that fixes it


async def _probe(t: Transport, script: str) -> tuple[int, str]:
    """(status, first line of stdout, else of stderr) of ``script`` on the execution host."""
    done = await t.run(script)
    lines = (done.stdout or done.stderr).decode(errors="replace").strip().splitlines()
    return done.rc, lines[0] if lines else ""


async def run_checks(stack: Stack, t: Transport, version: str, root: str | None) -> list[Check]:
    """The checks for ``stack`` through transport ``t``; ``version`` is this client's qwex
    version; ``root`` the execution side's qwex root (ssh) or None."""
    where = f"on {stack.transport.host}" if stack.transport else "here"
    out: list[Check] = []
    try:
        rc, text = await _probe(t, "uname -sr")
    except DriverError as e:
        return [Check("connection", "missing", str(e), _connect_fix(stack))]
    out.append(Check("connection", "ok", f"{t.kind}: {text}"))
    for tool, pkg in (("setsid", "util-linux"), ("date", "coreutils")):
        rc, text = await _probe(t, f"command -v {tool}")
        out.append(Check(tool, "ok", text) if rc == 0 else
                   Check(tool, "missing", f"{tool} not found {where}", f"apt-get install {pkg}"))
    rc, text = await _probe(t, "python3 --version")
    out.append(Check("python3", "ok", text) if rc == 0 else
               Check("python3", "missing", f"python3 not found {where}", "apt-get install python3"))
    rc, text = await _probe(t, "git --version")  # not needed there: jobs stage from store objects
    out.append(Check("git", "ok", text) if rc == 0 else Check("git", "info", f"no git {where} (not needed)"))
    if stack.transport is not None:
        out.append(await _qwex(stack, t, version))
    if stack.scheduler is not None:
        for cmd in ("sbatch", "squeue", "sacct", "scancel"):
            rc, text = await _probe(t, f"{cmd} --version")
            out.append(Check(cmd, "ok", text) if rc == 0 else Check(
                cmd, "missing", f"{cmd} not found or not configured {where} ({text or 'no output'})",
                "apt-get install slurm-client, and set SLURM_CONF for non-interactive shells"))
    if stack.wrapper is not None:
        exe = stack.wrapper.executable
        rc, text = await _probe(t, f"{shlex.quote(exe)} --version")
        out.append(Check(exe, "ok", text) if rc == 0 else Check(
            exe, "missing", f"{exe} not found {where}",
            "apt-get install podman runc" if "podman" in exe else "install Apptainer (apptainer.org)"))
    if root is not None:
        store = shlex.quote(f"{root}/store")
        rc, text = await _probe(t, f"mkdir -p {store} && test -w {store} && echo {store}")
        out.append(Check("store", "ok", f"{root}/store writable") if rc == 0 else Check(
            "store", "missing", f"cannot write {root}/store {where}: {text}",
            "set `root` in the runner's ssh layer to a writable directory"))
    rc, text = await _probe(t, "nvidia-smi -L")
    out.append(Check("gpus", "info", text if rc == 0 else "no nvidia-smi (no NVIDIA GPU visible)"))
    return out


async def _qwex(stack: Stack, t: Transport, version: str) -> Check:
    assert stack.transport is not None
    exe = stack.transport.qwex or "qwex"
    rc, text = await _probe(t, f"{shlex.quote(exe)} --version")
    install = f"python3 -m pip install --user 'qwex=={version}'"
    if rc != 0:
        rc2, found = await _probe(t, "ls ~/.local/bin/qwex 2>/dev/null")
        fix = (f'set qwex = "{found}" in the runner\'s ssh layer (it is not on the PATH of a '
               "non-interactive shell)") if rc2 == 0 and found else f"ssh {stack.transport.host} {install}"
        return Check("qwex", "missing", f"{exe} not found on {stack.transport.host}", fix)
    theirs = text.split()[-1] if text else "?"
    if theirs != version:
        return Check("qwex", "missing", f"{stack.transport.host} has qwex {theirs}, this client {version}",
                     f"ssh {stack.transport.host} {install}")
    return Check("qwex", "ok", text)


def _connect_fix(stack: Stack) -> str:
    if stack.transport is None:
        return ""
    return f"ssh {stack.transport.host} true   (and see the error above)"
