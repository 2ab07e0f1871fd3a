"""Building over ssh against a real OpenSSH server on loopback (its session environment
carries the real SLURM's SLURM_CONF, as a cluster's login node would): ssh alone, ssh →
slurm, what is sent, attach after a kill, cancel, an unreachable host, and doctor.

The "remote" is this machine under another root; its qwex is this venv's, named by the
ssh layer's ``qwex`` field (a non-interactive ssh session's PATH does not have it)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, GitRepo, Qwex, drv_text, job, parse_build
from servers import SshServer, free_port, start_sshd


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, slurm: object) -> Iterator[SshServer]:
    """An sshd whose sessions see SLURM_CONF (sshd_config SetEnv), alias ``qwex-login``."""
    conf = slurm.env["SLURM_CONF"]  # type: ignore[attr-defined]
    with start_sshd(tmp_path_factory.mktemp("login"), extra_config=f"SetEnv SLURM_CONF={conf}\n",
                    alias="qwex-login") as server:
        yield server


def _config(root: Path, *, host: str = "qwex-login", qwex: str = os.path.join(BIN, "qwex")) -> str:
    ssh = f'{{ kind = "ssh", host = "{host}", root = "{root}", qwex = "{qwex}" }}'
    return (f"[runners.remote]\nlayers = [{ssh}]\n"
            f'[runners.cluster]\nlayers = [{ssh}, {{ kind = "slurm", partition = "debug" }}]\n')


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
    jobs = env.store / "tmp" / "jobs"
    deadline = time.monotonic() + 60
    while not [h for h in jobs.glob("*") if ".tmp-" not in h.name] and time.monotonic() < deadline:
        time.sleep(0.1)
    handle = json.loads(next(h for h in jobs.glob("*") if ".tmp-" not in h.name).read_bytes())
    assert handle["host"] == "qwex-login" and handle["scheduler_id"].isdigit()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
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
    pgid = rows[0]["job"]
    alive = subprocess.run(["kill", "-0", "--", f"-{pgid}"], capture_output=True, check=False)
    assert alive.returncode != 0, "the remote job's process group is still alive"
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
