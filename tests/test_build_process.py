"""The build as a process: live output, Ctrl-C, and two builders racing for one key."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import GitRepo, Qwex, drv_text, job, read_lines, wait_for


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            out.append(int(name))
    return out


def test_job_output_streams_live(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--print", "first-line", "--sleep", "2",
                                                  "--print", "second-line", "--out", "a=1"))})
    t0 = time.monotonic()
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        t_first = time.monotonic()
        still_running = proc.poll() is None
        rest = proc.stdout.read()
        proc.wait(timeout=30)
        t_end = time.monotonic()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert first == b"first-line\n"
    assert still_running
    assert t_end - t_first > 1.5, (t_first - t0, t_end - t0)  # it arrived while the job slept
    assert b"second-line\n" in rest
    assert proc.returncode == 0


SLOW_GATED = """
echo started >> {counter}
if [ -e {gate} ]; then
  sleep 300 & echo $! >> {pids}
  ( trap '' INT TERM; exec sleep 301 ) & echo $! >> {pids}
  echo $$ >> {pids}
  echo waiting
  sleep 302
fi
mkdir -p out && echo done > out/x
"""


def test_ctrl_c_stops_the_job_group_and_records_cancelled(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    counter, gate, pids = tmp_path / "counter", tmp_path / "gate", tmp_path / "pids"
    gate.touch()
    script = SLOW_GATED.format(counter=counter, gate=gate, pids=pids)
    git_repo.commit("drv", {"t.drv": drv_text(script)})
    key = qwex.hash("t.drv", cwd=git_repo.path)

    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(read_lines(pids)) == 3, 10, "the job to start its children")
        job_pids = [int(x) for x in read_lines(pids)]
        shell = job_pids[-1]
        group = os.getpgid(shell)  # the job's group: led by its shepherd (spec/drivers.md)
        assert group == os.getsid(shell) and group != os.getpgid(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in read_lines(pids):  # never leave sleepers behind, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p), signal.SIGKILL)
    assert proc.returncode == 130, err
    assert elapsed < 10
    assert b"Traceback" not in err
    assert b"cancelled" in err
    wait_for(lambda: not any(_alive(p) for p in job_pids), 2, "the job's processes to be gone")
    assert _group_members(group) == []

    show = qwex.json("show", key)
    assert show["run"]["status"] == "cancelled"
    assert show["outputs"] is None
    ls = json.loads(qwex.ok("ls", "--json").stdout)
    assert ls[0]["status"] == "cancelled" and ls[0]["key"] == key
    assert "waiting" in qwex.ok("log", show["run"]["run_id"]).stdout  # its output was kept

    # Nothing was realized: building again runs the command (ungated, it now finishes).
    gate.unlink()
    b = qwex.build("t.drv", cwd=git_repo.path)
    assert not b.cached and b.key == key
    assert read_lines(counter) == ["started", "started"]


def test_concurrent_builds_of_one_key_run_it_once(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("drv", {"t.drv": drv_text(job("--count", str(counter), "--sleep", "2", "--out", "a=1"))})
    results = qwex.concurrently(2, "build", "t.drv", cwd=git_repo.path)
    assert len(read_lines(counter)) == 1
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["key"] == results[1]["key"]
    assert results[0]["manifest"] == results[1]["manifest"]
    assert results[0]["run_id"] == results[1]["run_id"]


def test_stray_background_child_does_not_hold_the_build(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    """The job ends when its main process exits; a background child still holding the output
    pipes is killed with the group (regression: asyncio's proc.wait() waited for the pipes)."""
    pid_file = tmp_path / "stray"
    git_repo.commit("drv", {"t.drv": drv_text(
        f"mkdir -p out; echo x > out/a; sleep 60 & echo $! > {pid_file}; sleep 0.5; echo main-done")})
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=3)  # the job's main process ends after 0.5 s
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("qwex build still waiting 3 s after the job's command exited") from None
    finally:
        for p in read_lines(pid_file):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p), signal.SIGKILL)
    assert proc.returncode == 0, err
    assert b"main-done" in out
    # the job is over: what it left behind was stopped with it
    stray = int(read_lines(pid_file)[0])
    wait_for(lambda: not _alive(stray), 2, "the stray child to be stopped")


def test_ctrl_c_while_waiting_for_another_build(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """Ctrl-C stops a build that waits for another process's build of the same key at once
    (regression: the blocking flock held the event loop until the other build ended)."""
    counter = tmp_path / "counter"
    slow = job("--count", str(counter), "--sleep", "2.5", "--out", "a=1")
    git_repo.commit("drv", {"t.drv": drv_text(slow)})
    first = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(read_lines(counter)) == 1, 10, "the first build to start its job")
        waiter = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        try:
            assert waiter.stderr is not None
            line = waiter.stderr.readline()  # "qwex: building ..." then "... waiting for ..."
            while b"waiting for" not in line and line:
                line = waiter.stderr.readline()
            assert b"waiting for" in line
            t0 = time.monotonic()
            waiter.send_signal(signal.SIGINT)
            waiter.communicate(timeout=10)
            elapsed = time.monotonic() - t0
        finally:
            if waiter.poll() is None:
                waiter.kill()
            waiter.communicate()
        assert waiter.returncode == 130
        _, err = first.communicate(timeout=30)
        assert first.returncode == 0, err  # the other build is not disturbed
        assert len(read_lines(counter)) == 1
        assert elapsed < 1.5, f"Ctrl-C took {elapsed:.1f}s to stop a waiting build"
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()


def test_second_ctrl_c_kills_a_job_that_ignores_the_first(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    """A job may handle SIGINT by finishing its epoch; a second Ctrl-C does not wait for
    that grace period: the group is killed at once and the run recorded as cancelled."""
    git_repo.commit("drv", {"t.drv": drv_text(
        # No `$(seq ...)`: a Ctrl-C that lands while the substitution runs would empty the loop.
        "trap 'echo got-INT' INT; echo started; i=0; while [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done; "
        "echo finished")})
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)
        time.sleep(1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert elapsed < 3, f"the second Ctrl-C took {elapsed:.1f}s"
    assert b"finished" not in out
    assert err.decode().splitlines()[1:] == ["qwex: interrupted"], err  # no asyncio noise
    assert [r["status"] for r in qwex.json("ls")] == ["cancelled"]


def test_reader_closing_the_pipe_does_not_disturb_the_build(qwex: Qwex, git_repo: GitRepo) -> None:
    """`qwex build x.drv | head -2`: the job goes on, its run is recorded, and qwex prints
    no traceback; the stored log has every line."""
    git_repo.commit("drv", {"t.drv": drv_text(
        "mkdir -p out; for i in $(seq 1 3000); do echo line $i; done; echo done > out/a")})
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 1\n"
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    proc.wait(timeout=30)
    assert proc.returncode == 1  # qwex could not print its result, like any tool behind `| head`
    assert b"Traceback" not in err and b"Exception" not in err, err
    (run,) = qwex.json("ls")
    assert run["status"] == "succeeded"
    assert qwex.ok("log", run["run_id"]).stdout.count("line ") == 3000
