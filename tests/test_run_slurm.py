"""Building through a real SLURM (tests/slurm_server.py): same key and outputs as a local
build, --dry-run, --detach / runs / attach / cancel, attach after the client is killed,
and a failing or cancelled job recorded as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY, GitRepo, Qwex, drv_text, job, parse_build

pytestmark = pytest.mark.usefixtures("slurm")

RUNNER = '[runners.cluster]\nlayers = [{ kind = "slurm", partition = "debug" }]\n'


@pytest.fixture
def env(slurm: object, qwex: Qwex) -> Qwex:
    qwex.env.update(slurm.env)  # type: ignore[attr-defined]
    return qwex


def _jobs_named(slurm: object, run_id: str) -> int:
    """How many SLURM jobs carry this run's name (sacct reads the jobcomp file)."""
    cp = slurm.run("sacct", "-c", "-n", "-P", "-o", "JobName", check=False)  # type: ignore[attr-defined]
    live = slurm.run("squeue", "-h", "-o", "%j", check=False)  # type: ignore[attr-defined]
    names = set(cp.stdout.split()) | set(live.stdout.split())
    return sum(1 for n in (cp.stdout + live.stdout).split() if n == f"qwex-{run_id}") if names else 0


def _repo(git_repo: GitRepo, command: list[str], **kw: object) -> Path:
    git_repo.commit(files={"train.drv": drv_text(command, name="train", **kw),  # type: ignore[arg-type]
                           ".qwex/config.toml": RUNNER})
    return git_repo.path / "train.drv"


def test_slurm_build_has_the_local_key_and_outputs(env: Qwex, git_repo: GitRepo, slurm: object) -> None:
    drv = _repo(git_repo, job("--print", "hello from slurm", "--out", "a.txt=A", "--report", "/dev/null"))
    local_key = env.hash(drv)
    cp = env.ok("build", str(drv), "--runner", "cluster", cwd=git_repo.path)
    built = parse_build(cp.stdout)
    assert built.key == local_key and not built.cached
    assert "hello from slurm" in cp.stdout + cp.stderr
    assert _jobs_named(slurm, built.run_id) == 1
    again = env.build(drv, "--runner", "cluster", cwd=git_repo.path)
    assert again.cached and again.run_id == built.run_id
    show = env.json("show", built.key)
    assert show["run"]["status"] == "succeeded"
    assert env.ok("log", built.run_id).stdout.strip() == "hello from slurm"


def test_dry_run_prints_the_script_and_runs_nothing(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    drv = _repo(git_repo, job("--count", str(marker)), vars={"API_TOKEN": "sekret", "A": "it's $(x)"})
    cp = env.ok("build", str(drv), "--runner", "cluster", "--dry-run", cwd=git_repo.path)
    assert "sbatch --parsable" in cp.stdout and "--partition=debug" in cp.stdout
    assert "sekret" not in cp.stdout and "API_TOKEN=***" in cp.stdout
    assert not marker.exists()
    assert env.ok("runs").stderr.strip() == "no jobs in flight"


def test_detach_runs_attach(env: Qwex, git_repo: GitRepo) -> None:
    drv = _repo(git_repo, job("--sleep", "2", "--print", "done", "--out", "x=1"))
    cp = env.ok("build", str(drv), "--runner", "cluster", "--detach", cwd=git_repo.path)
    run_id = cp.stdout.strip()
    rows = env.json("runs")
    assert [r["run_id"] for r in rows] == [run_id] and rows[0]["state"] in ("pending", "running")
    att = env.ok("attach", run_id[:12])
    assert parse_build(att.stdout).run_id == run_id
    assert "done" in att.stdout
    assert env.json("runs") == []
    assert env.build(drv, "--runner", "cluster", cwd=git_repo.path).cached


def test_cancel_records_cancelled(env: Qwex, git_repo: GitRepo, slurm: object) -> None:
    drv = _repo(git_repo, job("--sleep", "60"))
    run_id = env.ok("build", str(drv), "--runner", "cluster", "--detach", cwd=git_repo.path).stdout.strip()
    env.ok("cancel", run_id)
    assert env.json("runs") == []
    runs = env.json("show", run_id)
    assert runs["run"]["status"] == "cancelled"
    q = slurm.run("squeue", "-h", "-n", f"qwex-{run_id}", "-o", "%T", check=False)  # type: ignore[attr-defined]
    assert q.stdout.strip() in ("", "CANCELLED", "COMPLETING")


def test_failing_job_is_failed(env: Qwex, git_repo: GitRepo) -> None:
    drv = _repo(git_repo, job("--eprint", "boom", "--exit", "3"))
    cp = env("build", str(drv), "--runner", "cluster", cwd=git_repo.path)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert "status 3" in cp.stderr


def test_client_killed_then_build_attaches_once(env: Qwex, git_repo: GitRepo, slurm: object,
                                                tmp_path: Path) -> None:
    count = tmp_path / "count"
    drv = _repo(git_repo, job("--count", str(count), "--sleep", "3", "--out", "y=2"))
    p = env.popen("build", str(drv), "--runner", "cluster", cwd=git_repo.path,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not list((env.store / "tmp" / "jobs").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    handles = [h for h in (env.store / "tmp" / "jobs").glob("*") if ".tmp-" not in h.name]
    assert handles, "no job handle was saved"
    run_id = json.loads(handles[0].read_bytes())["run_id"]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    built = env.build(drv, "--runner", "cluster", cwd=git_repo.path)
    assert built.run_id == run_id and not built.cached
    assert count.read_text().count("ran") == 1
    assert _jobs_named(slurm, run_id) == 1
    assert env.json("runs") == []


def test_python_is_the_same(env: Qwex) -> None:
    assert os.path.exists(PY)
