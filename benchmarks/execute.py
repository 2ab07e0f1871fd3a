"""Remote execution (issue 9): qwex's runners beside the raw commands they wrap.

Servers (``exec_servers.py``, the tests' recipes): a real single-node SLURM with its own
munged, and OpenSSH's sshd on loopback. One small repo (``README.md`` committed; ``.drv``
files and ``.qwex/config.toml`` written beside it, untracked: the source is ``README.md`` only).
Figures, each interleaved with its peer (``measure_many``, one untimed warm-up each):

* ``exec_slurm``: ``qwex build t.drv --runner cluster`` (one ``slurm`` layer, local
  transport; a fresh key each time: ``[env] vars`` REP) vs ``sbatch --wait --wrap true``.
  Target: qwex at most 0.5 s more.
* ``exec_ssh_cold``: ``qwex build t.drv --runner remote`` (one ``ssh`` layer) into a fresh
  remote root each time (empty remote store: everything is sent), fresh key, vs OpenSSH
  ``ssh -F CONFIG ALIAS true``. Target: at most 1 s more.
* ``exec_ssh_rebuild``: after a one-line commit to README.md, the same build on a warm remote
  root; the bytes it sent (``sent N objects, B bytes``) must be a few KiB (≤ 16 KiB).
* ``exec_sweep``: ``qwex build sweep.drv --runner cluster --detach``, sweep.drv having 100
  independent ``drv:`` inputs (``p0.drv`` … ``p99.drv``, ``true`` with a var each), in a fresh
  QWEX_HOME, vs a shell loop of 100 ``sbatch --wrap true``. Target: ≤ 2×. Every job is
  cancelled (``scancel --user``) and the queue drained before each timed command, untimed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from exec_servers import drain, start_slurm, start_sshd
from harness import (
    CommandFailed,
    Ctx,
    Record,
    Skip,
    Timing,
    git,
    git_init_commit,
    log,
    measure_many,
    toml_str,
)

SWEEP = 100
#: The rebuild after a one-line change must send no more than this ("a few KiB").
REBUILD_MAX_BYTES = 16 * 1024
SENT = re.compile(r"sent (\d+) objects, (\d+) bytes")
IS_JOB = re.compile(r"^qwex: .* is job \S+ on ", re.M)


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, str]:
    """Wall time, stdout and stderr of one command; a non-zero exit raises."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise CommandFailed(
            f"command failed (exit {p.returncode}): {shlex.join(cmd)}\ncwd: {cwd}\n"
            f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
        )
    return dt, p.stdout, p.stderr


def _drv(path: Path, name: str, var: str, inputs: dict[str, str] | None = None) -> None:
    """``command = ["true"]``, no outputs, source = README.md, ``[env] vars = {REP = var}``."""
    text = (
        f'name = {toml_str(name)}\ncommand = ["true"]\noutputs = []\n'
        f'[source]\ninclude = ["README.md"]\n[env]\nvars = {{ REP = {toml_str(var)} }}\n'
    )
    if inputs:
        text += "[inputs]\n" + "".join(f"{k} = {toml_str(v)}\n" for k, v in inputs.items())
    path.write_text(text)


def _runners(repo: Path, alias: str, root: Path, qwex: str) -> None:
    """``cluster`` = one slurm layer (local transport); ``remote`` = one ssh layer into ``root``."""
    ssh = (
        f'{{ kind = "ssh", host = {toml_str(alias)}, root = {toml_str(str(root))}, qwex = {toml_str(qwex)} }}'
    )
    (repo / ".qwex").mkdir(exist_ok=True)
    (repo / ".qwex" / "config.toml").write_text(
        '[runners.cluster]\nlayers = [{ kind = "slurm", partition = "debug" }]\n'
        f"[runners.remote]\nlayers = [{ssh}]\n"
    )


def _need_jobs(stderr: str, n: int, what: str) -> None:
    got = len(IS_JOB.findall(stderr))
    if got != n:
        raise CommandFailed(
            f"benchmark check failed: {what} submitted {got} jobs, not {n}:\n{stderr[-2000:]}"
        )


#: A process group that lives 0.2 s, started as the ``none`` scheduler starts a job (setsid, in
#: the background of a shell that exits): how long ``kill -0 -PGID`` still sees it (ms).
_REAP = (
    "pid=$(sh -c 'setsid sh -c \"sleep 0.2\" </dev/null >/dev/null 2>&1 & echo $!'); t0=$(date +%s%N); "
    'while kill -0 "-$pid" 2>/dev/null; do sleep 0.02; done; echo $(( ($(date +%s%N) - t0) / 1000000 ))'
)


def _reap_ms(sh: str, n: int = 3) -> list[int]:
    """Context for the ssh rows: this host's orphan-reaping delay, which the ``none`` scheduler's
    status check (``kill -0`` on the job's process group) waits out after the job has ended."""
    return [int(subprocess.run([sh, "-c", _REAP], capture_output=True, text=True).stdout) for _ in range(n)]


def _diff_row(rec: Record, peer: Timing, qwex: Timing, slack: float) -> Record:
    """Target ``qwex ≤ peer + slack`` as the absolute bound ``peer median + slack``."""
    rec.set_peer(peer)
    rec.set_qwex(qwex)
    rec.target_abs_s = peer.median + slack
    rec.context += [peer.as_dict(), qwex.as_dict()]
    rec.context.append(
        {
            "label": f"difference qwex − peer (target ≤ {slack:g} s)",
            "text": f"{qwex.median - peer.median:+.3f} s",
        }
    )
    return rec


def bench_execute(ctx: Ctx) -> list[Record]:
    q = ctx.tools.need_qwex()
    ctx.tools.need_git()
    qwex_exe = str(Path(q[0]).resolve())
    if len(q) != 1 or not Path(qwex_exe).is_file():
        raise Skip("the ssh runner needs --qwex to be one executable path (its `qwex =` on the remote)")
    root = ctx.fresh("execute")
    log("  starting SLURM (slurmctld, slurmd, munged) and sshd")
    with start_slurm(root / "slurm") as cluster, start_sshd(root / "sshd") as sshd:
        env = dict(ctx.env, **cluster.env, HOME=sshd.env["HOME"], QWEX_HOME=str(root / "qwex-home"))
        repo = root / "repo"
        repo.mkdir()
        (repo / "README.md").write_text("execution benchmark\n")
        git_init_commit(env, repo)
        rows = _slurm_and_ssh(ctx, cluster, sshd, repo, root, qwex_exe, env)
        rows.append(_sweep(ctx, cluster, repo, root, qwex_exe, env))
        drain(cluster)
    return rows


def _slurm_and_ssh(
    ctx: Ctx, cluster: Any, sshd: Any, repo: Path, root: Path, q: str, env: dict[str, str]
) -> list[Record]:
    alias, ssh_config = sshd.alias, sshd.ssh_config
    n = {"roots": 0, "edits": 0}
    sent: list[tuple[int, int]] = []  # (objects, bytes) of each timed rebuild
    warm_root = root / "remote-warm"

    def fresh_root() -> Path:
        n["roots"] += 1
        return root / f"remote-{n['roots']:03d}"

    def sbatch_wait(i: int) -> float:
        argv = ["sbatch", "--wait", "--wrap", "true", "--output=/dev/null", "--job-name=raw"]
        return _timed(argv, root, env)[0]

    def srun(i: int) -> float:
        return _timed(["srun", "--output=/dev/null", "--job-name=raw", "true"], root, env)[0]

    def qwex_slurm(i: int) -> float:
        _drv(repo / "t.drv", "t", f"slurm-{i}")
        dt, _, err = _timed([q, "build", "t.drv", "--runner", "cluster"], repo, env)
        _need_jobs(err, 1, "qwex build --runner cluster")
        return dt

    def ssh_true(i: int) -> float:
        return _timed(["ssh", "-F", ssh_config, alias, "true"], root, env)[0]

    def qwex_ssh_cold(i: int) -> float:
        _runners(repo, alias, fresh_root(), q)
        _drv(repo / "t.drv", "t", f"ssh-cold-{i}")
        dt, _, err = _timed([q, "build", "t.drv", "--runner", "remote"], repo, env)
        _need_jobs(err, 1, "qwex build --runner remote")
        return dt

    def qwex_ssh_rebuild(i: int) -> float:
        _runners(repo, alias, warm_root, q)
        _drv(repo / "t.drv", "t", "ssh-rebuild")
        n["edits"] += 1
        with open(repo / "README.md", "a") as f:
            f.write(f"one more line {n['edits']}\n")
        git(env, repo, "commit", "-q", "-am", f"edit {n['edits']}")
        dt, _, err = _timed([q, "build", "t.drv", "--runner", "remote"], repo, env)
        _need_jobs(err, 1, "qwex build --runner remote (rebuild)")
        m = SENT.search(err)
        if not m:
            raise CommandFailed(f"benchmark check failed: no `sent N objects, B bytes` in:\n{err[-2000:]}")
        if i >= 0:
            sent.append((int(m.group(1)), int(m.group(2))))
        return dt

    log("  setup: the first build on the warm remote root (untimed)")
    _runners(repo, alias, warm_root, q)
    _drv(repo / "t.drv", "t", "ssh-rebuild")
    _timed([q, "build", "t.drv", "--runner", "remote"], repo, env)
    tms = measure_many(
        [
            ("sbatch --wait --wrap true", sbatch_wait),
            ("qwex build t.drv --runner cluster (one slurm layer; `true`, a new key)", qwex_slurm),
            ("srun true (context: synchronous, no sbatch --wait poll)", srun),
            (f"ssh -F CONFIG {alias} true (OpenSSH)", ssh_true),
            ("qwex build t.drv --runner remote (ssh), a fresh remote root and key: cold", qwex_ssh_cold),
            (
                "qwex build t.drv --runner remote (ssh) after a one-line commit, warm remote root",
                qwex_ssh_rebuild,
            ),
        ],
        ctx.reps(5),
    )
    slurm = _diff_row(
        Record("exec_slurm", "a `true` job through SLURM: qwex build --runner cluster vs sbatch --wait "
               "(target: ≤ peer + 0.5 s)", "sbatch --wait --wrap true"),
        tms[0], tms[1], 0.5,
    )  # fmt: skip
    cold = _diff_row(
        Record("exec_ssh_cold", "cold build of a small repo's `true` job over ssh (empty remote store) "
               "vs `ssh host true` (target: ≤ peer + 1 s)", "ssh -F CONFIG HOST true"),
        tms[3], tms[4], 1.0,
    )  # fmt: skip
    rebuild = Record(
        "exec_ssh_rebuild",
        f"rebuild over ssh after a one-line change: bytes sent (target: ≤ {REBUILD_MAX_BYTES // 1024} KiB)",
        "ssh -F CONFIG HOST true",
    )
    rebuild.set_peer(tms[3])
    rebuild.set_qwex(tms[5])
    rebuild.context.append(tms[5].as_dict())
    slurm.context.append(tms[2].as_dict())
    reap = _reap_ms(ctx.tools.sh)
    cold.context.append({
        "label": "context: a 0.2 s setsid'd process group stays visible to `kill -0` (orphan reaping) for",
        "text": ", ".join(f"{ms} ms" for ms in reap),
    })  # fmt: skip
    most = max(b for _, b in sent)
    rebuild.context.append({
        "label": "sent by each timed rebuild (objects, bytes)",
        "text": "; ".join(f"{o} objects, {b:,} B" for o, b in sent),
    })  # fmt: skip
    rebuild.message = f"each rebuild sent at most {most:,} bytes ({max(o for o, _ in sent)} objects)"
    if most > REBUILD_MAX_BYTES:
        rebuild.invalid = True
        rebuild.message += f"; FAIL: more than {REBUILD_MAX_BYTES:,} bytes"
    return [slurm, cold, rebuild]


def _sweep(ctx: Ctx, cluster: Any, repo: Path, root: Path, q: str, env: dict[str, str]) -> Record:
    n = {"homes": 0}

    def raw(i: int) -> float:
        drain(cluster)
        loop = (
            f"for i in $(seq {SWEEP}); do"
            " sbatch --wrap true --output=/dev/null --job-name=raw || exit 1; done"
        )
        dt, out, _ = _timed([ctx.tools.sh, "-c", loop], root, env)
        if out.count("Submitted batch job") != SWEEP:
            raise CommandFailed(f"benchmark check failed: the sbatch loop submitted: {out[-500:]}")
        return dt

    def qwex_sweep(i: int) -> float:
        drain(cluster)
        ps = {f"p{k}": f"drv:p{k}.drv" for k in range(SWEEP)}
        for k in range(SWEEP):
            _drv(repo / f"p{k}.drv", f"p{k}", f"sweep-{i}-{k}")
        _drv(repo / "sweep.drv", "sweep", f"sweep-{i}", inputs=ps)
        n["homes"] += 1
        e = dict(env, QWEX_HOME=str(root / f"sweep-home-{n['homes']:03d}"))
        dt, _, err = _timed([q, "build", "sweep.drv", "--runner", "cluster", "--detach"], repo, e)
        _need_jobs(err, SWEEP, "qwex build sweep.drv --runner cluster --detach")
        return dt

    tms = measure_many(
        [
            (f"{SWEEP} × sbatch --wrap true (a shell loop)", raw),
            (f"qwex build sweep.drv --runner cluster --detach ({SWEEP} ready drv: inputs; fresh QWEX_HOME)",
             qwex_sweep),
        ],
        ctx.reps(3),
    )  # fmt: skip
    rec = Record(
        "exec_sweep", f"submit a {SWEEP}-derivation sweep to SLURM (--detach)",
        f"{SWEEP} × sbatch --wrap true", target_ratio=2.0,
    )  # fmt: skip
    rec.set_peer(tms[0])
    rec.set_qwex(tms[1])
    rec.context += [t.as_dict() for t in tms]
    rec.context.append({
        "label": "per job: qwex / sbatch",
        "text": f"{tms[1].median / SWEEP * 1000:.1f} ms / {tms[0].median / SWEEP * 1000:.1f} ms",
    })  # fmt: skip
    return rec
