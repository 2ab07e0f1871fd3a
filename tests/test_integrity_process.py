"""Issue 7, the job as a process: nothing it starts outlives it (8), qwex never follows a
link it planted (9), declared outputs must match (12), SIGTERM/SIGHUP (16), and E2BIG, a
full disk and qwex's own names in the work dir (17)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GitRepo, Qwex, drv_text, read_lines, wait_for


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _kill_all(pid_file: Path) -> None:
    for p in read_lines(pid_file):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(p), signal.SIGKILL)


def _checkout(qwex: Qwex, key: str, dest: Path) -> None:
    qwex.ok("checkout", key, str(dest))


# -- 8: every process the job started has ended before its outputs are ingested -----------
def test_a_writer_in_a_new_session_cannot_change_an_ingested_output(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    pids, opened = tmp_path / "pids", tmp_path / "opened"
    git_repo.commit("drv", {"t.drv": drv_text(
        "mkdir -p out; echo first > out/x; "
        f"setsid sh -c 'exec 3>>out/x; echo $$ > {pids}; touch {opened}; sleep 2; echo LATE >&3' & "
        f"while [ ! -e {opened} ]; do sleep 0.05; done")})
    try:
        b = qwex.build("t.drv", cwd=git_repo.path)
        (daemon,) = [int(p) for p in read_lines(pids)]
        assert not _alive(daemon)  # ended with the job, before ingest
        time.sleep(2.5)  # when it would have written
    finally:
        _kill_all(pids)
    _checkout(qwex, b.key, tmp_path / "co")
    assert (tmp_path / "co/out/x").read_text() == "first\n"
    qwex.ok("verify")


def test_a_daemon_holding_stdout_does_not_hold_the_build(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    git_repo.commit("drv", {"t.drv": drv_text(
        f"mkdir -p out; echo x > out/a; (setsid sh -c 'echo $$ > {pids}; exec sleep 120' &); "
        f"while [ ! -s {pids} ]; do sleep 0.05; done; echo main-done")})
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("qwex build waited for a daemon that holds the job's stdout") from None
    finally:
        daemon = read_lines(pids)
        _kill_all(pids)
    assert proc.returncode == 0, err
    assert b"main-done" in out
    assert daemon and not _alive(int(daemon[0]))


# -- 9: qwex never follows a symlink the job planted in its run dir ------------------------
def test_a_log_replaced_by_a_link_leaves_its_target_alone(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    git_repo.commit("drv", {"t.drv": drv_text(
        "mkdir -p out; echo x > out/a; echo to-the-log; "
        f'rm "$QWEX_RUN_DIR/../stdout"; ln -s {victim} "$QWEX_RUN_DIR/../stdout"')})
    b = qwex.build("t.drv", cwd=git_repo.path)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.read_text() == "precious\n"
    assert qwex.ok("log", b.run_id).stdout == "to-the-log\n"  # what qwex wrote, not the link's target


def test_a_work_dir_replaced_by_a_link_leaves_the_linked_project_alone(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    (project / "out/thesis.tex").write_text("years of work\n")
    git_repo.commit("drv", {"t.drv": drv_text(
        'mkdir -p out; echo mine > out/a; cd "$QWEX_RUN_DIR/.."; '
        f"mv work work.old; ln -s {project} work")})
    b = qwex.build("t.drv", cwd=git_repo.path)
    assert (project / "out/thesis.tex").read_text() == "years of work\n"  # not moved into the store
    _checkout(qwex, b.key, tmp_path / "co")
    assert sorted(p.name for p in (tmp_path / "co/out").iterdir()) == ["a"]  # the real work dir's


def test_an_output_below_a_planted_link_is_refused(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.bin").write_text("not the job's\n")
    git_repo.commit("drv", {"t.drv": drv_text(f"mkdir -p out; ln -s {elsewhere} out/sub",
                                              outputs=["out/sub/model.bin"])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "out/sub" in cp.stderr and "never follows" in cp.stderr
    assert (elsewhere / "model.bin").read_text() == "not the job's\n"


# -- 12: a declared output that matches nothing fails the run -----------------------------
@pytest.mark.parametrize(("outputs", "named"), [(["results/"], "'results/'"), (["*.csv"], "'*.csv'"),
                                                (["out/", "logs/*.txt"], "'logs/*.txt'")])
def test_an_output_that_matches_nothing_fails_and_is_not_cached(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, outputs: list[str], named: str
) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("drv", {"t.drv": drv_text(f"echo ran >> {counter}; mkdir -p out; echo 1 > out/a",
                                              outputs=outputs)})
    for _ in range(2):
        cp = qwex("build", "t.drv", cwd=git_repo.path)
        assert cp.returncode == 1, cp.stderr
        (line,) = [x for x in cp.stderr.splitlines() if x.startswith("qwex: error:")]
        assert named in line and "matched no file" in line, line
    assert read_lines(counter) == ["ran", "ran"]  # never cached
    assert [r["status"] for r in qwex.json("ls")] == ["failed", "failed"]


def test_an_output_dir_with_files_still_succeeds(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text("echo 1 > results/a", outputs=["results/"])})
    b = qwex.build("t.drv", cwd=git_repo.path)  # the declared directory is made for the job
    assert b.outputs == ["results/a"] or "results/a" in qwex.ok("show", b.key).stdout


# -- 16: SIGTERM and SIGHUP behave like Ctrl-C ------------------------------------------
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_the_job_and_record_it_cancelled(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    pids = tmp_path / "pids"
    git_repo.commit("drv", {"t.drv": drv_text(
        f"sleep 300 & echo $! >> {pids}; (setsid sleep 301 & echo $! >> {pids}); echo $$ >> {pids}; "
        "echo waiting; wait")})
    key = qwex.hash("t.drv", cwd=git_repo.path)
    proc = qwex.popen("build", "t.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(read_lines(pids)) == 3, 15, "the job to start its children")
        job_pids = [int(x) for x in read_lines(pids)]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _kill_all(pids)
    assert proc.returncode == status, err
    assert b"Traceback" not in err
    assert b"cancelled" in err
    wait_for(lambda: not any(_alive(p) for p in job_pids), 3, "the job's processes to be gone")
    show = qwex.json("show", key)
    assert show["run"]["status"] == "cancelled"
    assert not list((qwex.store / "tmp" / "runs").iterdir())  # its run dir was removed


# -- 17: one-line errors, store consistent -------------------------------------------------
def test_an_argv_too_long_is_a_failed_run_with_one_line(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(["sh", "-c", "true " + "x" * 300_000])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
    (line,) = [x for x in cp.stderr.splitlines() if x.startswith("qwex: error:")]
    assert "cannot execute 'sh': Argument list too long" in line
    assert [r["status"] for r in qwex.json("ls")] == ["failed"]


@pytest.mark.parametrize("name", [".home", ".tmp"])
def test_an_input_or_tracked_file_may_be_named_like_qwex_private_dirs(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, name: str
) -> None:
    (tmp_path / "data.txt").write_text("data\n")
    git_repo.commit("drv", {
        f"src/{name}": "tracked\n",
        "t.drv": drv_text(f'mkdir -p out; cat {name} src/{name} > out/seen; test "$HOME" != "$PWD/.home"',
                          inputs={name: "file:../data.txt"}),
    })
    b = qwex.build("t.drv", cwd=git_repo.path)
    _checkout(qwex, b.key, tmp_path / "co")
    assert (tmp_path / "co/out/seen").read_text() == "data\ntracked\n"


@pytest.fixture
def small_store(qwex: Qwex) -> Iterator[Path]:
    """QWEX_HOME/store on a 2 MiB tmpfs (root only)."""
    store = qwex.store
    store.mkdir(parents=True)
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(store)],
                        capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {cp.stderr.strip()}")
    try:
        yield store
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def test_a_full_disk_while_writing_logs_is_one_line_and_the_store_stays_consistent(
    qwex: Qwex, git_repo: GitRepo, small_store: Path
) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(
        "mkdir -p out; echo 1 > out/a; head -c 4000000 /dev/zero | tr '\\0' 'x'; echo")})
    cp = qwex("build", "t.drv", cwd=git_repo.path, timeout=120)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr, cp.stderr[-2000:]
    errors = [x for x in cp.stderr.splitlines() if x.startswith("qwex:") and "building" not in x]
    assert len(errors) == 1, errors
    assert "No space left on device" in errors[0]
    verify = qwex("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not [p for p in small_store.rglob("*") if "realisation" in str(p) and p.is_file()]
    # ... and nothing of the run is left in scratch
    runs = small_store / "tmp" / "runs"
    assert not (runs.exists() and list(runs.iterdir()))


def test_shepherd_reports_exec_errors_and_statuses(tmp_path: Path) -> None:
    """The shepherd's protocol, directly (spec/drivers.md): exit codes, signals, errno."""
    import sys

    from qwex_drivers import shepherd
    from qwex_drivers.local import shepherd_spec

    def run(argv: list[str]) -> str:
        spec_r, spec_w = os.pipe()
        st_r, st_w = os.pipe()
        p = subprocess.Popen([sys.executable, "-I", "-S", shepherd.__file__, str(spec_r), str(st_w)],
                             pass_fds=(spec_r, st_w), cwd=tmp_path, start_new_session=True)
        os.close(spec_r)
        os.close(st_w)
        with os.fdopen(spec_w, "wb") as f:
            f.write(shepherd_spec(argv, {"PATH": os.defpath, "X": "a=b"}))
        assert p.wait(timeout=30) == 0
        with os.fdopen(st_r, "rb") as f:
            return f.read().decode()

    assert run(["sh", "-c", "exit 3"]) == "exit=3 reaper=1\n"
    assert run(["sh", "-c", 'test "$X" = a=b && kill -9 $$']) == "signal=9 reaper=1\n"
    assert run(["no-such-command-qwex"]) == "error=2 reaper=1\n"
    assert run(["sh", "-c", "x" * 200_000]) == "error=7 reaper=1\n"  # E2BIG
