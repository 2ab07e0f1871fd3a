"""Crash safety: qwex killed with SIGKILL at any point leaves a consistent store.

Each named crash point (``qwexstore.faults.POINTS``) is hit through ``QWEX_TEST_CRASH_AT``,
which makes qwex SIGKILL itself there, exactly as ``kill -9`` would; a second test kills
from outside at random instants. After every kill: ``qwex verify`` passes (every object
hashes to its name, every realisation is complete), the next build succeeds, and
``qwex gc`` removes the orphans the kill left in ``tmp/``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GitRepo, Qwex, drv_text, job, parse_build

from qwexstore.faults import POINTS

BUILD_POINTS = [p for p in POINTS if p not in ("materialize", "delete", "transfer")]


def pipeline(repo: GitRepo, inputs_dir: Path, tag: str = "0") -> None:
    """up (a file input, several outputs) -> down (stages up's outputs, writes more)."""
    inputs_dir.mkdir(exist_ok=True)
    (inputs_dir / "data.bin").write_bytes(os.urandom(200_000))
    repo.commit("pipeline", {
        "up.drv": drv_text(
            job("--out", "a=1", "--out", "sub/b=2", "--random", "big=300000", "--exec", "run.sh=echo"),
            name="up", include=["job.py"], vars={"TAG": tag},
            inputs={"in/data.bin": f"file:{inputs_dir / 'data.bin'}"}),
        "down.drv": drv_text(job("--copy", "up/out/a=a2", "--out", "c=3"), name="down",
                             include=["job.py"], inputs={"up": "drv:up.drv"}),
    })


def leftovers(qwex: Qwex) -> list[str]:
    """Orphans in the store's tmp/ (temp files, run dirs), besides the lock files that
    builds and gc keep there."""
    tmp = qwex.store / "tmp"
    keep = {"locks", "gc.lock", "roots"}
    found = []
    for dirpath, _dirs, files in os.walk(tmp):
        rel = os.path.relpath(dirpath, tmp)
        if rel.split(os.sep)[0] not in keep:
            found += [os.path.normpath(os.path.join(rel, n)) for n in files if rel != "." or n not in keep]
    runs = tmp / "runs"
    return found + ([f"runs/{n}/" for n in os.listdir(runs)] if runs.is_dir() else [])


def assert_consistent(qwex: Qwex, after: str) -> None:
    cp = qwex("verify")
    assert cp.returncode == 0, f"verify after a kill at {after}:\n{cp.stdout}\n{cp.stderr}"
    assert "Traceback" not in cp.stderr


def killed(cp: subprocess.CompletedProcess[str]) -> bool:
    return cp.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_kill_at_each_crash_point_leaves_the_store_consistent(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, point: str
) -> None:
    pipeline(git_repo, tmp_path / "inputs")
    # The 2nd hit of a point is mid-build (e.g. after one output); a snapshot happens once.
    crash = {"QWEX_TEST_CRASH_AT": f"{point}:{1 if point == 'snapshot' else 2}"}
    cp = qwex("build", "down.drv", cwd=git_repo.path, env=crash)
    assert killed(cp), f"crash point {point} was not reached: exit {cp.returncode}\n{cp.stderr}"
    assert_consistent(qwex, point)
    b = qwex.build("down.drv", cwd=git_repo.path)
    assert_consistent(qwex, f"{point}, then a build")
    qwex.ok("gc")
    assert leftovers(qwex) == []
    again = qwex.build("down.drv", cwd=git_repo.path)
    assert again.cached and again.key == b.key
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/a2").read_text() == "1" and (co / "out/c").read_text() == "3"


def test_kill_mid_checkout_leaves_no_partial_destination(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    pipeline(git_repo, tmp_path / "inputs")
    key = qwex.build("up.drv", cwd=git_repo.path).key
    dest = tmp_path / "co"
    cp = qwex("checkout", key, str(dest), env={"QWEX_TEST_CRASH_AT": "materialize:3"})
    assert killed(cp), cp.stderr
    assert not dest.exists()  # never a half-written tree under the name asked for
    assert_consistent(qwex, "materialize")
    qwex.ok("checkout", key, str(dest))
    assert (dest / "out/sub/b").read_text() == "2"


@pytest.mark.parametrize("nth", [1, 3, 6, 10])
def test_kill_during_gc_leaves_the_store_consistent(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, nth: int
) -> None:
    pipeline(git_repo, tmp_path / "inputs")
    down = qwex.build("down.drv", cwd=git_repo.path)
    pipeline(git_repo, tmp_path / "inputs", tag="old")  # a second up; down is cut off (same key)
    qwex.build("down.drv", cwd=git_repo.path)
    git_repo.commit("fail", {"f.drv": drv_text(job("--out", "x=1", "--exit", "1"), name="f")})
    assert qwex("build", "f.drv", cwd=git_repo.path).returncode == 1  # a failed run: garbage
    qwex.ok("pin", down.key)
    cp = qwex("gc", "--older-than", "0s", env={"QWEX_TEST_CRASH_AT": f"delete:{nth}"})
    assert killed(cp), f"gc deleted fewer than {nth} objects: {cp.stdout}{cp.stderr}"
    assert_consistent(qwex, f"gc's deletion #{nth}")
    qwex.ok("gc", "--older-than", "0s")
    assert_consistent(qwex, "a second gc")
    assert qwex.build("down.drv", cwd=git_repo.path).key == down.key  # pinned: still realised


def test_kill_at_random_instants(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """SIGKILL from outside at random instants of a build (the job may be running, hashing,
    ingesting or recording); the store stays consistent and a later build succeeds."""
    rng = random.Random(20261128)
    pipeline(git_repo, tmp_path / "inputs")
    t0 = time.monotonic()
    qwex.build("down.drv", cwd=git_repo.path)
    full = time.monotonic() - t0  # an uninterrupted build of both derivations, from scratch
    for i in range(1, 13):
        pipeline(git_repo, tmp_path / "inputs", tag=str(i))  # a new key for up: it must run
        proc = qwex.popen("build", "down.drv", cwd=git_repo.path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _stop_orphaned_jobs(qwex)
        assert_consistent(qwex, f"random instant #{i}")
    qwex.ok("gc")
    assert leftovers(qwex) == []
    b = parse_build(qwex.ok("build", "down.drv", cwd=git_repo.path).stdout)
    assert_consistent(qwex, "the final build")
    assert qwex.build("down.drv", cwd=git_repo.path).key == b.key


def _stop_orphaned_jobs(qwex: Qwex) -> None:
    """A job whose qwex was killed keeps running (spec/runs.md); stop it so the next round
    starts clean. Jobs are found by their working directory inside the store."""
    runs = str(qwex.store / "tmp" / "runs")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.startswith(runs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
