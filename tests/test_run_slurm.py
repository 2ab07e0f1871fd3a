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
from conftest import BIN, PY, GitRepo, Qwex, drv_text, job, parse_build, wait_for_job_handle

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


def _wait_idle(slurm: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = slurm.run("sinfo", "-h", "-N", "-o", "%T", check=False)  # type: ignore[attr-defined]
        if cp.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.2)
    raise AssertionError(f"node not back in service: {cp.stdout!r}")


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
    try:
        run_id = wait_for_job_handle(env)["run_id"]
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    built = env.build(drv, "--runner", "cluster", cwd=git_repo.path)
    assert built.run_id == run_id and not built.cached
    assert count.read_text().count("ran") == 1
    assert _jobs_named(slurm, run_id) == 1
    assert env.json("runs") == []


def test_python_is_the_same(env: Qwex) -> None:
    assert os.path.exists(PY)


STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")


def test_gpu_facts_from_nvidia_smi_standin_are_impure(env: Qwex, git_repo: GitRepo) -> None:
    """With an nvidia-smi on the execution host (here a clearly named stand-in), the GPU
    model and driver are recorded as impure facts; the key does not change."""
    drv = _repo(git_repo, job("--out", "x=1"))
    key = env.hash(drv)
    path = f"{STANDINS}{os.pathsep}{env.env['PATH']}"
    built = env.build(drv, "--runner", "cluster", cwd=git_repo.path, env={"PATH": path})
    assert built.key == key
    impure = env.json("show", built.run_id)["run"]["impure"]
    assert impure["gpus"] == "NVIDIA A100-SXM4-80GB, 535.104.05; NVIDIA A100-SXM4-80GB, 535.104.05"


def test_two_users_one_shared_store_one_sbatch(env: Qwex, git_repo: GitRepo, tmp_path: Path,
                                               slurm: object) -> None:
    """Two clients (two QWEX_HOMEs) on one shared store submit the same key: exactly one
    sbatch; the second waits for the first and gets its result."""
    shared = tmp_path / "shared-store"
    other_base = tmp_path / "other"
    other_base.mkdir()
    other = Qwex(other_base)
    other.env.update(slurm.env)  # type: ignore[attr-defined]
    count = tmp_path / "count"
    drv = _repo(git_repo, job("--count", str(count), "--sleep", "2", "--out", "z=3"))
    args = ("--store", str(shared), "build", str(drv), "--runner", "cluster", "--json")
    procs = [q.popen(*args, cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for q in (env, other)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert docs[0]["key"] == docs[1]["key"] and docs[0]["run_id"] == docs[1]["run_id"]
    assert count.read_text().count("ran") == 1
    assert _jobs_named(slurm, docs[0]["run_id"]) == 1


def test_scheduler_kill_is_failed_with_its_reason(env: Qwex, git_repo: GitRepo, slurm: object) -> None:
    """The node fails under the job (scontrol sets it DOWN): SLURM kills the job, which
    never writes its marker; the run is failed with SLURM's reason, not cancelled."""
    runner = ('[runners.cluster]\nlayers = [{ kind = "slurm", partition = "debug", '
              'extra_args = ["--no-requeue"] }]\n')
    git_repo.commit(files={"train.drv": drv_text(job("--sleep", "60"), name="train"),
                           ".qwex/config.toml": runner})
    run_id = env.ok("build", "train.drv", "--runner", "cluster", "--detach", cwd=git_repo.path).stdout.strip()
    deadline = time.monotonic() + 30
    while env.json("runs")[0]["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    node = ("scontrol", "update", "NodeName=localhost")
    slurm.run(*node, "State=DOWN", "Reason=qwex-test")  # type: ignore[attr-defined]
    try:
        cp = env("attach", run_id)
    finally:  # back to service for the next tests (it may have returned by itself)
        slurm.run(*node, "State=RESUME", check=False)  # type: ignore[attr-defined]
        _wait_idle(slurm)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    line = cp.stderr.strip().splitlines()[-1]
    assert line.startswith("qwex: error:") and run_id in line and "NODE_FAIL" in line, line
    run = env.json("show", run_id)["run"]
    assert run["status"] == "failed" and "NODE_FAIL" in run["message"], run


def _pty_run(qwex: Qwex, args: list[str], cwd: Path) -> tuple[int, int]:
    """Start qwex on a new pseudo-terminal (its controlling terminal); (pid, master fd)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec qwex with the test's environment
        os.chdir(cwd)
        os.execve(os.path.join(BIN, "qwex"), ["qwex", *args], qwex.env)
    return pid, fd


def _read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never came; got {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.parametrize("answer", [b"n", b"y"])
def test_ctrl_c_on_a_terminal_asks_whether_to_cancel(env: Qwex, git_repo: GitRepo, answer: bytes) -> None:
    drv = _repo(git_repo, job("--print", "started", "--sleep", "4", "--out", "w=1"))
    pid, fd = _pty_run(env, ["build", str(drv), "--runner", "cluster"], git_repo.path)
    try:
        _read_until(fd, b"started")
        os.write(fd, b"\x03")  # Ctrl-C, delivered by the terminal as SIGINT
        _read_until(fd, b"[Y/n]")
        os.write(fd, answer + b"\n")
        _read_until(fd, b"left running" if answer == b"n" else b"cancelled")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    rows = env.json("runs")
    if answer == b"n":
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(rows) == 1 and rows[0]["state"] in ("pending", "running")
        built = parse_build(env.ok("attach", rows[0]["run_id"]).stdout)
        assert built.run_id == rows[0]["run_id"] and not built.cached
    else:
        assert os.waitstatus_to_exitcode(status) == 130
        assert rows == []
        assert env.json("ls")[0]["status"] == "cancelled"


LINGER = ["sh", "-c", "mkdir -p out; echo good > out/a; exec 3>>out/a; (sleep 2; echo EVIL >&3) & exit 0"]


def test_a_process_the_job_left_behind_cannot_change_a_stored_object(env: Qwex, git_repo: GitRepo) -> None:
    """SLURM ends the job while a child it left behind still holds an output open (this
    cluster's proctrack/linuxproc does not kill it): the store gets a copy, so the child's
    late write changes nothing stored (found by an adversarial review)."""
    drv = _repo(git_repo, LINGER)
    built = env.build(drv, "--runner", "cluster", cwd=git_repo.path)
    time.sleep(3)  # the child writes now
    env.ok("verify")
    co = git_repo.path.parent / "co"
    env.ok("checkout", built.key, str(co))
    assert (co / "out" / "a").read_text() == "good\n"


def test_cancel_of_a_job_that_already_ended_says_what_was_recorded(env: Qwex, git_repo: GitRepo) -> None:
    drv = _repo(git_repo, job("--out", "q=1"))
    run_id = env.ok("build", str(drv), "--runner", "cluster", "--detach", cwd=git_repo.path).stdout.strip()
    deadline = time.monotonic() + 30
    while env.json("runs")[0]["state"] in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
    doc = env.json("cancel", run_id)
    assert doc["status"] == "succeeded"
    assert env.json("show", run_id)["run"]["status"] == "succeeded"
