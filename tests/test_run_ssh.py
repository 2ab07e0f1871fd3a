"""Building over ssh against a real OpenSSH server on loopback (its session environment
carries the real SLURM's SLURM_CONF, as a cluster's login node would): ssh alone, ssh →
slurm, what is sent, attach after a kill, cancel, an unreachable host, and doctor.

The "remote" is this machine under another root; its qwex is this venv's, named by the
ssh layer's ``qwex`` field (a non-interactive ssh session's PATH does not have it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, GitRepo, Qwex, drv_text, job, make_repo, parse_build, wait_for_job_handle
from servers import SshServer, free_port, start_sshd


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, slurm: object) -> Iterator[SshServer]:
    """An sshd whose sessions see SLURM_CONF and a PATH with this venv's python first
    (sshd_config SetEnv, as a cluster's login environment would), alias ``qwex-login``."""
    conf = slurm.env["SLURM_CONF"]  # type: ignore[attr-defined]
    setenv = f"SetEnv SLURM_CONF={conf} PATH={BIN}:/usr/local/bin:/usr/bin:/bin\n"
    with start_sshd(tmp_path_factory.mktemp("login"), extra_config=setenv, alias="qwex-login") as server:
        yield server


def _config(root: Path, *, host: str = "qwex-login", qwex: str = os.path.join(BIN, "qwex"),
            slurm_args: str = "[]") -> str:
    ssh = f'{{ kind = "ssh", host = "{host}", root = "{root}", qwex = "{qwex}" }}'
    slurm = f'{{ kind = "slurm", partition = "debug", extra_args = {slurm_args} }}'
    return f"[runners.remote]\nlayers = [{ssh}]\n[runners.cluster]\nlayers = [{ssh}, {slurm}]\n"


@pytest.fixture
def env(qwex: Qwex, login: SshServer, slurm: object) -> Qwex:
    qwex.env["HOME"] = login.env["HOME"]  # ~/.ssh/config with the alias, known_hosts, key
    qwex.env.update(slurm.env)  # type: ignore[attr-defined]
    return qwex


def _repo(git_repo: GitRepo, root: Path, command: list[str], **kw: object) -> Path:
    git_repo.commit(files={"train.drv": drv_text(command, name="train", **kw),  # type: ignore[arg-type]
                           ".qwex/config.toml": _config(root)})
    return git_repo.path / "train.drv"


def _sent(stderr: str) -> tuple[int, int]:
    m = re.search(r"sent (\d+) objects, (\d+) bytes", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def test_ssh_build_same_key_outputs_and_only_missing_objects_sent(env: Qwex, git_repo: GitRepo,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "remote-root"
    data = tmp_path / "data.bin"  # outside the repo: an input, not source
    data.write_bytes(os.urandom(1 << 20))
    drv = _repo(git_repo, root, job("--print", "over ssh", "--copy", "data.bin=copy.bin", "--out", "a=1"),
                inputs={"data.bin": f"file:{data}"})
    local_key = env.hash(drv, cwd=git_repo.path)
    cp = env.ok("build", str(drv), "--runner", "remote", cwd=git_repo.path)
    built = parse_build(cp.stdout)
    assert built.key == local_key
    assert "over ssh" in cp.stdout
    _objects, sent = _sent(cp.stderr)
    assert sent > 1 << 20  # the first run sends the input
    out = tmp_path / "co"
    env.ok("checkout", built.key, str(out))
    assert (out / "out" / "copy.bin").read_bytes() == data.read_bytes()
    assert (root / "store").is_dir()
    # A one-line change: a new key, and only the new source objects go over (a few KiB).
    git_repo.commit(files={"README": "one more line\n"})
    cp2 = env.ok("build", str(drv), "--runner", "remote", cwd=git_repo.path)
    assert parse_build(cp2.stdout).key != built.key
    objects2, sent2 = _sent(cp2.stderr)
    assert sent2 < 16 * 1024, f"sent {sent2} bytes for a one-line change"
    assert objects2 <= 4


def test_ssh_slurm_build_and_attach_after_kill(env: Qwex, git_repo: GitRepo, tmp_path: Path,
                                               slurm: object) -> None:
    root = tmp_path / "remote-root"
    count = tmp_path / "count"
    drv = _repo(git_repo, root, job("--count", str(count), "--sleep", "3", "--out", "y=2"))
    p = env.popen("build", str(drv), "--runner", "cluster", cwd=git_repo.path,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        handle = wait_for_job_handle(env)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert handle["host"] == "qwex-login" and handle["scheduler_id"].isdigit()
    built = env.build(drv, "--runner", "cluster", cwd=git_repo.path)
    assert built.run_id == handle["run_id"]
    assert count.read_text().count("ran") == 1
    acct = slurm.run("sacct", "-c", "-n", "-P", "-o", "JobName", check=False)  # type: ignore[attr-defined]
    assert acct.stdout.split().count(f"qwex-{handle['run_id']}") == 1


def test_ssh_cancel_kills_the_remote_job(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    root = tmp_path / "remote-root"
    count = tmp_path / "count"
    drv = _repo(git_repo, root, job("--sleep", "30", "--count", str(count)))
    run_id = env.ok("build", str(drv), "--runner", "remote", "--detach", cwd=git_repo.path).stdout.strip()
    rows = env.json("runs")
    assert rows[0]["run_id"] == run_id and rows[0]["state"] == "running"
    env.ok("cancel", run_id)
    assert env.json("show", run_id)["run"]["status"] == "cancelled"
    assert _live_in_group(rows[0]["job"]) == [], "the remote job's process group is still alive"
    assert not count.exists()


def test_unreachable_host_is_one_line_and_records_nothing(env: Qwex, git_repo: GitRepo,
                                                          tmp_path: Path) -> None:
    cfg = ('[runners.remote]\nlayers = [{ kind = "ssh", host = "127.0.0.1", '
           f'port = {free_port()}, root = "{tmp_path}/r" }}]\n')
    git_repo.commit(files={"train.drv": drv_text(job("--out", "a=1"), name="train"),
                           ".qwex/config.toml": cfg})
    cp = env("build", "train.drv", "--runner", "remote", cwd=git_repo.path)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert cp.stderr.strip().splitlines()[-1].startswith("qwex: error:")
    assert env.json("runs") == []
    assert env.json("ls") == []


def test_doctor(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    root = tmp_path / "remote-root"
    git_repo.commit(files={".qwex/config.toml": _config(root)})
    doc = env.json("doctor", "cluster", cwd=git_repo.path)
    states = {c["name"]: c["state"] for c in doc["checks"]}
    assert doc["ok"], doc
    assert states["connection"] == states["qwex"] == states["sbatch"] == states["store"] == "ok"
    git_repo.commit(files={".qwex/config.toml": _config(root, qwex="/nonexistent/qwex")})
    cp = env("doctor", "remote", cwd=git_repo.path)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert "MISSING qwex" in cp.stdout and "pip install" in cp.stdout


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_bundled_three_stage_example_on_ssh_to_slurm(env: Qwex, tmp_path: Path) -> None:
    """examples/digits (prepare → train → evaluate) through ssh → slurm: every stage runs
    there, the keys are those of a build on this machine, and a local build then hits."""
    import shutil

    repo = make_repo(tmp_path / "lab", env.env)
    shutil.copytree(EXAMPLES / "digits", repo.path / "examples" / "digits",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # The cluster's Python environment for the jobs (this venv: numpy, scikit-learn), set
    # by sbatch, as a lab would for a login shell whose rc files pick another python.
    path = f'["--export=ALL,PATH={BIN}:/usr/bin:/bin"]'
    repo.commit("example", {".qwex/config.toml": _config(tmp_path / "remote-root", slurm_args=path)})
    drv = repo.path / "examples" / "digits" / "evaluate.drv"
    remote = env.json("build", str(drv), "--runner", "cluster", cwd=repo.path)
    assert [n["status"] for n in remote["nodes"]] == ["built", "built", "built"]
    other_base = tmp_path / "elsewhere"
    other_base.mkdir()
    local = Qwex(other_base).json("build", str(drv), cwd=repo.path)  # a laptop with no runner
    assert local["key"] == remote["key"]
    assert {n["name"]: n["key"] for n in local["nodes"]} == {n["name"]: n["key"] for n in remote["nodes"]}
    again = env.json("build", str(drv), "--runner", "cluster", cwd=repo.path)
    assert again["cached"] and again["run_id"] == remote["run_id"]


def test_a_cache_hit_with_an_ssh_runner_connects_nowhere(env: Qwex, git_repo: GitRepo,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "remote-root"
    drv = _repo(git_repo, root, job("--out", "a=1"))
    first = env.build(drv, "--runner", "remote", cwd=git_repo.path)
    # The runner now points at a port nobody listens on: a hit must not notice.
    cfg = ('[runners.remote]\nlayers = [{ kind = "ssh", host = "127.0.0.1", '
           f'port = {free_port()}, root = "{root}" }}]\n')
    (git_repo.path / ".qwex" / "config.toml").write_text(cfg)
    again = env.build(drv, "--runner", "remote", cwd=git_repo.path, env={"QWEX_DEBUG": "1"})
    assert again.cached and again.run_id == first.run_id


def test_ssh_adversarial_jobs(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """Jobs that attack the ssh path (an adversarial review): a child left behind writing
    into an output cannot damage the execution store, and the next build on that runner
    works; a log pointed at /dev/zero is never read; a marker the job forged is refused;
    the job dir (its job.sh holds the environment) is removed once the run is recorded."""
    root = tmp_path / "remote-root"
    linger = ["sh", "-c", "mkdir -p out; echo good > out/a; exec 3>>out/a; (sleep 2; echo EVIL >&3) & exit 0"]
    drv = _repo(git_repo, root, linger)
    built = env.build(drv, "--runner", "remote", cwd=git_repo.path)
    time.sleep(3)
    env.ok("--store", str(root / "store"), "verify")  # the execution store is intact
    assert not list((root / "jobs").iterdir())  # cleaned up after recording
    git_repo.commit(files={"train.drv": drv_text(["sh", "-c", "mkdir -p out; echo b > out/b"], name="train")})
    assert not env.build(drv, "--runner", "remote", cwd=git_repo.path).cached
    co = tmp_path / "co"
    env.ok("checkout", built.key, str(co))
    assert (co / "out" / "a").read_text() == "good\n"
    # A log replaced by a link to /dev/zero: never followed, the build ends.
    zero = ['sh', '-c', 'J=$(dirname "$HOME"); rm "$J/stdout"; ln -s /dev/zero "$J/stdout"; '
            'mkdir -p out; echo z > out/z']
    git_repo.commit(files={"train.drv": drv_text(zero, name="train")})
    env.build(drv, "--runner", "remote", cwd=git_repo.path, timeout=60)
    # A forged marker (exit 0, no manifest), then the job script killed: refused.
    forge = ['sh', '-c', 'J=$(dirname "$HOME"); mkdir -p out; echo f > out/f; '
             'printf \'{"format":"qwex.marker/1","exit":0,"phase":"run","started_ns":1,"finished_ns":2,'
             '"manifest":null}\' > "$J/marker.json"; kill -9 $PPID']
    git_repo.commit(files={"train.drv": drv_text(forge, name="train")})
    cp = env("build", str(drv), "--runner", "remote", cwd=git_repo.path)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert "not written by the job script" in cp.stderr or "without finishing" in cp.stderr, cp.stderr


def test_dry_run_masks_secret_looking_values(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    drv = _repo(git_repo, tmp_path / "r", job("--out", "a=1"),
                vars={"DB_PASS": "hunter2", "api_tok": "abc123", "SEED": "7"})
    out = env.ok("build", str(drv), "--runner", "remote", "--dry-run", cwd=git_repo.path).stdout
    assert "hunter2" not in out and "abc123" not in out and "SEED=7" in out


def test_ssh_cancel_of_a_job_that_ignores_sigterm(env: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """A job that ignores SIGTERM (and its child) is killed after the grace period; the
    run is recorded cancelled and nothing of it is left running on the host."""
    root = tmp_path / "remote-root"
    count = tmp_path / "count"
    drv = _repo(git_repo, root, ["sh", "-c", f"trap '' TERM; (trap '' TERM; sleep 60; echo x >> {count}) & "
                                              f"sleep 60; echo y >> {count}"])
    run_id = env.ok("build", str(drv), "--runner", "remote", "--detach", cwd=git_repo.path).stdout.strip()
    pgid = env.json("runs")[0]["job"]
    env.ok("cancel", run_id, timeout=60)
    assert env.json("show", run_id)["run"]["status"] == "cancelled"
    assert _live_in_group(pgid) == [], "a process of the job survived the cancel"
    assert not count.exists()


def _live_in_group(pgid: str) -> list[str]:
    """Processes of a process group that are not zombies (this VM's init reaps slowly, and
    ``kill -0`` succeeds on a zombie)."""
    ps = subprocess.run(["ps", "-eo", "pgid=,stat=,pid="], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines()
            if line.split()[0] == pgid and not line.split()[1].startswith("Z")]


def test_a_damaged_execution_store_fails_loudly_never_a_success(env: Qwex, git_repo: GitRepo,
                                                                tmp_path: Path) -> None:
    """The remote store's copy of an input is damaged (a lying or broken remote): the next
    job there fails at staging, in one line, and nothing is recorded as succeeded."""
    root = tmp_path / "remote-root"
    data = tmp_path / "data.bin"
    data.write_bytes(b"the real input\n" * 100)
    drv = _repo(git_repo, root, job("--copy", "data.bin=d"), inputs={"data.bin": f"file:{data}"})
    env.build(drv, "--runner", "remote", cwd=git_repo.path)
    blobs = [p for p in (root / "store" / "blobs").rglob("*") if p.is_file() and p.stat().st_size == 1500]
    assert len(blobs) == 1
    blobs[0].chmod(0o644)
    blobs[0].write_bytes(b"X" * 1500)  # same size, other bytes
    git_repo.commit(files={"README": "a new key, the same input\n"})
    cp = env("build", str(drv), "--runner", "remote", cwd=git_repo.path)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert cp.stderr.strip().splitlines()[-1].startswith("qwex: error:")
    assert [r["status"] for r in env.json("ls")].count("succeeded") == 1  # only the first run


def test_connection_lost_mid_job_the_job_goes_on_and_is_recorded_once(
        env: Qwex, git_repo: GitRepo, tmp_path: Path, login: SshServer) -> None:
    """Every ssh session is killed while the client follows the job: the job (in its own
    session there) goes on; the client either reconnects and finishes, or fails in one
    line and the next build attaches. Either way the job ran once and one run succeeded."""
    root = tmp_path / "remote-root"
    count = tmp_path / "count"
    drv = _repo(git_repo, root, job("--count", str(count), "--sleep", "3", "--out", "z=1"))
    p = env.popen("build", str(drv), "--runner", "remote", cwd=git_repo.path,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_job_handle(env)
    except AssertionError:
        p.kill()
        p.communicate()
        raise
    assert login.drop_connections() >= 1
    _out, err = p.communicate(timeout=120)
    assert "Traceback" not in err.decode()
    if p.returncode != 0:
        assert err.decode().strip().splitlines()[-1].startswith("qwex: error:")
        env.build(drv, "--runner", "remote", cwd=git_repo.path)  # attaches
    assert count.read_text().count("ran") == 1
    assert [r["status"] for r in env.json("ls")] == ["succeeded"]
