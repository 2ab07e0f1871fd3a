"""The slurm scheduler (drivers/qwex_drivers/slurm.py) and its template, against a real
single-node SLURM (tests/slurm_server.py), plus pure tests of its parsers.

Jobs are submitted exactly as the stack driver does: the built-in ``slurm.sh.j2`` rendered
with ``placement = sbatch_placement(layer)`` and run with ``sh -c``; status and cancel run
the scheduler's own one-line scripts. The job scripts here are the tests' own (a gate file
holds a job running until the test opens it), not qwex's job.sh.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qwex_drivers.slurm import BUCKETS, SlurmScheduler, parse_exit_code, sbatch_placement
from slurm_server import SlurmCluster

from qwexstore.errors import PermanentDriverError, TransientDriverError
from qwexstore.jobs import JobStatus
from qwexstore.layers import SlurmLayer
from qwexstore.script import render

S = SlurmScheduler()
WAIT = 30.0  # generous: a job finishes in about a second, but the machine is shared


@dataclass
class Job:
    id: str
    run_id: str
    dir: Path  # the job dir: job.sh, stdout, stderr, and the test's marker files


def _sh(cluster: SlurmCluster, script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", script], env={**os.environ, **cluster.env}, capture_output=True, timeout=30, check=False
    )


def submit(
    cluster: SlurmCluster, base: Path, body: str, layer: SlurmLayer | None = None, dirname: str = "job"
) -> Job:
    """Render the slurm template for a job whose job.sh is ``body`` (``@DIR@``: the job
    dir, quoted), run it, parse the id."""
    run_id = f"r{uuid.uuid4().hex[:8]}"
    job_dir = base / run_id / dirname
    (job_dir / "work").mkdir(parents=True)
    # sbatch runs a spooled copy of job.sh: $0 is not in the job dir, so the body names it.
    (job_dir / "job.sh").write_text("#!/bin/sh\n" + body.replace("@DIR@", shlex.quote(str(job_dir))) + "\n")
    script = render("slurm", {
        "run_id": run_id, "key": "blake3:" + "0" * 64, "name": "t", "job_dir": str(job_dir),
        "workdir": str(job_dir / "work"), "home": str(job_dir / "home"), "tmpdir": str(job_dir / "tmp"),
        "layer": layer, "image": None, "command": [], "placement": sbatch_placement(layer),
    })  # fmt: skip
    cp = _sh(cluster, script)
    assert cp.returncode == 0, cp.stderr
    return Job(S.parse_submit(cp.stdout), run_id, job_dir)


def status(cluster: SlurmCluster, ids: Sequence[str]) -> dict[str, JobStatus]:
    cp = _sh(cluster, S.status_script(ids))
    return S.parse_status(cp.returncode, cp.stdout, ids)


def wait_status(
    cluster: SlurmCluster, job: Job, pred: Callable[[JobStatus], bool], what: str, timeout: float = WAIT
) -> JobStatus:
    """Poll (50 ms apart) until ``pred(status)``; AssertionError naming the last status."""
    deadline = time.monotonic() + timeout
    while True:
        st_ = status(cluster, [job.id])[job.id]
        if pred(st_):
            return st_
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.id}: waited for {what}, last status {st_}")
        time.sleep(0.05)


def gated(job_note: str = "") -> str:
    """A job body that records each start in ``runs`` and waits for the file ``gate``."""
    return (
        f'cd @DIR@; echo "run {job_note}" >> runs; '
        "while [ ! -e gate ]; do sleep 0.05; done; echo done > marker"
    )


def lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


# -- the time limit: SLURM counts minutes and checks every 30 s, so start it first ---------


@pytest.fixture(scope="session")
def early_jobs(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    """Submitted by the first test of this module (so ahead of the rest): a job killed by
    its time limit (60-90 s) and a quick job whose record squeue forgets meanwhile
    (MinJobAge), for the slow test. Session-scoped: the slow test runs last in the session
    (tests/conftest.py), so its wait overlaps every later module instead of adding to them."""
    base = tmp_path_factory.mktemp("early")
    jobs = {
        "timeout": submit(slurm, base, "sleep 300", SlurmLayer(time="0:05")),
        "quick": submit(slurm, base, "exit 0"),
    }
    yield jobs
    _sh(slurm, S.cancel_script([j.id for j in jobs.values()]))


# -- against the real cluster --------------------------------------------------------------


def test_lifecycle_pending_running_succeeded(
    slurm: SlurmCluster, tmp_path: Path, early_jobs: dict[str, Job]
) -> None:
    job = submit(slurm, tmp_path, gated(), SlurmLayer(extra_args=["--hold"]))
    held = status(slurm, [job.id])[job.id]
    assert held.state == "pending", held
    assert f"JobName=qwex-{job.run_id}" in slurm.run("scontrol", "show", "job", job.id).stdout.split()
    slurm.run("scontrol", "release", job.id)
    wait_status(slurm, job, lambda s: s.state == "running" and lines(job.dir / "runs") != [], "running")
    assert not (job.dir / "marker").exists()
    (job.dir / "gate").touch()
    done = wait_status(slurm, job, lambda s: s.state not in ("pending", "running"), "the end")
    assert done == JobStatus("succeeded", "")
    assert lines(job.dir / "marker") == ["done"]
    assert lines(job.dir / "runs") == ["run "]


def test_nonzero_exit_is_failed_with_exit_code(slurm: SlurmCluster, tmp_path: Path) -> None:
    job = submit(slurm, tmp_path, "echo out; echo err >&2; touch @DIR@/marker; exit 3")
    st_ = wait_status(slurm, job, lambda s: s.state not in ("pending", "running"), "the end")
    assert st_.state == "failed"
    assert st_.reason.startswith("FAILED") and "ExitCode 3:0" in st_.reason, st_
    assert (job.dir / "marker").exists()
    assert lines(job.dir / "stdout") == ["out"] and lines(job.dir / "stderr") == ["err"]
    sacct = slurm.run("sacct", "-c", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", job.id).stdout
    assert f"{job.id}|FAILED|3:0" in sacct.splitlines()


def test_cancel_is_cancelled_and_idempotent(slurm: SlurmCluster, tmp_path: Path) -> None:
    job = submit(slurm, tmp_path, gated())
    wait_status(slurm, job, lambda s: s.state == "running" and lines(job.dir / "runs") != [], "running")
    cp = _sh(slurm, S.cancel_script([job.id]))
    assert cp.returncode == 0, cp.stderr
    st_ = wait_status(slurm, job, lambda s: s.state not in ("pending", "running"), "the end")
    assert st_.state == "cancelled" and st_.reason.startswith("CANCELLED"), st_
    assert not (job.dir / "marker").exists()
    again = _sh(slurm, S.cancel_script([job.id]))
    assert again.returncode == 0, again.stderr  # cancelling an ended job is not an error


def test_unknown_id_is_unknown_never_success(slurm: SlurmCluster) -> None:
    assert status(slurm, ["987654321"])["987654321"].state == "unknown"


def test_one_query_covers_several_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    ok, bad = submit(slurm, tmp_path, "exit 0"), submit(slurm, tmp_path, "exit 3")
    held = submit(slurm, tmp_path, "exit 0", SlurmLayer(extra_args=["--hold"]))
    try:
        for j in (ok, bad):
            wait_status(slurm, j, lambda s: s.state not in ("pending", "running"), "the end")
        ids = [ok.id, bad.id, held.id, "987654321"]
        got = status(slurm, ids)  # ONE script, one round trip
        assert [got[i].state for i in ids] == ["succeeded", "failed", "pending", "unknown"], got
    finally:
        _sh(slurm, S.cancel_script([held.id]))


def test_hostile_values_reach_sbatch_exactly(slurm: SlurmCluster, tmp_path: Path) -> None:
    comment = """a b'c "d" $(touch pwned) `touch pwned2` ; x"""
    layer = SlurmLayer(extra_args=[f"--comment={comment}", "--hold"], time="7")
    job = submit(slurm, tmp_path / "dir with space %j", "echo hi", layer, dirname="job 'dir' %x")
    try:
        shown = slurm.run("scontrol", "show", "job", job.id).stdout
        assert f"Comment={comment}\n" in shown.replace(" \n", "\n"), shown
        assert f"WorkDir={job.dir}/work\n" in shown.replace(" \n", "\n"), shown
        assert "TimeLimit=00:07:00" in shown.split()
        assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()
        slurm.run("scontrol", "release", job.id)
        wait_status(slurm, job, lambda s: s.state == "succeeded", "success")
        assert lines(job.dir / "stdout") == ["hi"]  # "%j", "%x" in the job dir stayed literal
    finally:
        _sh(slurm, S.cancel_script([job.id]))


def test_requeued_job_is_followed_under_the_same_id(slurm: SlurmCluster, tmp_path: Path) -> None:
    job = submit(slurm, tmp_path, gated("$SLURM_RESTART_COUNT"), SlurmLayer(requeue=True))
    wait_status(slurm, job, lambda s: s.state == "running" and lines(job.dir / "runs") != [], "running")
    slurm.run("scontrol", "requeue", job.id)
    assert wait_status(slurm, job, lambda s: s.state != "running", "the requeue").state == "pending"
    # SLURM holds a requeued job back for 120 s (BeginTime); let it go, but not within the
    # second the requeue revoked its credential: slurmd refuses such a start ("Job
    # credential revoked", the job ends FAILED 1:0), which the hold exists to avoid.
    # (StartTime=now+2 would wait for the scheduler's next periodic pass, up to 30 s.)
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job.id}", "StartTime=now")
    seen: list[str] = []
    ended = 0
    deadline = time.monotonic() + WAIT
    while len(lines(job.dir / "runs")) < 2:  # the same id runs again
        cp = _sh(slurm, S.status_script([job.id]))
        st_ = S.parse_status(cp.returncode, cp.stdout, [job.id])[job.id]
        seen.append(st_.state)
        # Never an end while requeued, as follow() concludes one (spec/drivers.md L2: three
        # polls in a row that find it not live): a lone odd answer of a loaded controller
        # is shown with SLURM's own words if it ever repeats.
        ended = 0 if st_.state in ("pending", "running") else ended + 1
        assert ended < 3, (
            f"{st_}; states {seen}; the last answer:\n{cp.stdout.decode()}"
            f"job stdout: {(job.dir / 'stdout').read_text(errors='replace')!r}; "
            f"job stderr: {(job.dir / 'stderr').read_text(errors='replace')!r}"
        )
        assert time.monotonic() < deadline, f"not restarted; states {seen}"
        time.sleep(0.05)
    (job.dir / "gate").touch()
    end = wait_status(slurm, job, lambda s: s.state not in ("pending", "running"), "the end")
    assert end == JobStatus("succeeded", "")
    assert lines(job.dir / "runs") == ["run ", "run 1"]


@pytest.mark.slow
def test_time_limit_kill_is_failed_with_timeout(slurm: SlurmCluster, early_jobs: dict[str, Job]) -> None:
    job = early_jobs["timeout"]
    st_ = wait_status(slurm, job, lambda s: s.state not in ("pending", "running"), "TIMEOUT", timeout=150)
    assert st_.state == "failed" and st_.reason.startswith("TIMEOUT: time limit"), st_
    # By now squeue has purged the quick job (MinJobAge): its status comes from sacct -c.
    quick = early_jobs["quick"]
    deadline = time.monotonic() + 90
    while quick.id in slurm.run("squeue", "--me", "-h", "-t", "all", "-o", "%i").stdout.split():
        assert time.monotonic() < deadline, "squeue never purged the quick job"
        time.sleep(0.5)
    assert status(slurm, [quick.id])[quick.id] == JobStatus("succeeded", "")


# -- pure: parsers and options ---------------------------------------------------------------


def parse(text: str, ids: Sequence[str], squeue_rc: int = 0) -> dict[str, JobStatus]:
    return S.parse_status(0, f"{text}R|squeue|{squeue_rc}\n".encode(), ids)


def test_parse_status_tricky_lines() -> None:
    out = (
        "Q|1234_5|RUNNING|None\n"  # an array task: not job 1234
        "Q|77|PENDING|Resources\n"
        "Q|88|REQUEUED|BeginTime\n"
    )
    sacct = (
        "1234|CANCELLED by 0|0:15\n"
        "1234.batch|COMPLETED|0:0\n"  # a step line never stands for its job
        "55|COMPLETED|0:0\n"
        "56|FAILED|3:0\n"
        "57|OUT_OF_MEMORY|0:125\n"
        "88|PREEMPTED|0:15\n"  # its earlier run; squeue's live state wins
        "90|PREEMPTED|0:15\n90|COMPLETED|0:0\n"  # requeued, then done: the last record wins
        "91|UNKNOWN|0:0\n"
    )
    got = parse(out + sacct, ["1234", "77", "88", "55", "56", "57", "90", "91", "99"])
    assert got["1234"] == JobStatus("cancelled", "CANCELLED by 0")
    assert got["77"] == JobStatus("pending", "Resources")
    assert got["88"] == JobStatus("pending", "REQUEUED: BeginTime")
    assert got["55"] == JobStatus("succeeded", "")
    assert got["56"] == JobStatus("failed", "FAILED: non-zero exit; ExitCode 3:0")
    assert got["57"].state == "failed" and got["57"].reason.startswith("OUT_OF_MEMORY")
    assert got["90"] == JobStatus("succeeded", "")
    assert got["91"].state == "unknown"
    assert got["99"].state == "unknown"


def test_parse_status_squeue_failure_is_transient_even_when_sacct_answers() -> None:
    """Without squeue an old sacct record (a run before a requeue) cannot be told from
    the job's end: nothing is concluded. A job squeue did show live is still known."""
    with pytest.raises(TransientDriverError):
        parse("5|COMPLETED|0:0\n", ["5"], squeue_rc=1)
    with pytest.raises(TransientDriverError):
        parse("5|FAILED|1:0\n", ["5"], squeue_rc=1)
    assert parse("Q|6|RUNNING|None\n", ["6"], squeue_rc=1)["6"].state == "running"
    with pytest.raises(TransientDriverError):
        S.parse_status(127, b"", ["5"])


def test_parse_status_a_state_squeue_shows_but_we_do_not_know_is_live() -> None:
    """squeue still lists the job under a flag missing from the table (a newer SLURM):
    the requeued run's old FAILED record in sacct must not end it."""
    got = parse("Q|7|SOME_NEW_FLAG|None\n7|FAILED|1:0\n", ["7"])["7"]
    assert got == JobStatus("pending", "SLURM state SOME_NEW_FLAG")
    for flag in ("EXPEDITING", "POWER_UP_NODE", "LAUNCH_FAILED", "UPDATE_DB"):
        assert parse(f"Q|7|{flag}|None\n7|FAILED|1:0\n", ["7"])["7"].state in ("pending", "running")


_TOKENS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=14)


@given(
    first=st.one_of(st.sampled_from(sorted(BUCKETS)), _TOKENS),
    rest=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1), max_size=3),
    source=st.sampled_from(["squeue", "sacct"]),
)
def test_bucket_is_the_first_tokens(first: str, rest: list[str], source: str) -> None:
    state = " ".join([first, *rest])
    line = f"Q|42|{state}|None\n" if source == "squeue" else f"42|{state}|0:0\n"
    got = parse(line, ["42"])["42"]
    want = BUCKETS.get(first, "unknown")
    if source == "sacct" and want in ("pending", "running"):
        want = "unknown"  # sacct is only asked for ends; a live state there is not an answer
    if source == "squeue" and want == "unknown":
        want = "pending"  # the controller still holds it under a state we do not know
    assert got.state == want
    assert (got.state == "succeeded") == (first == "COMPLETED")


def test_parse_submit() -> None:
    assert S.parse_submit(b"4242\n") == "4242"
    assert S.parse_submit(b"4242;cluster-a\n") == "4242"
    for bad in (b"", b"sbatch: error: Batch job submission failed\n", b"12a\n"):
        with pytest.raises(PermanentDriverError):
            S.parse_submit(bad)


@given(st.text(max_size=20))
def test_ids_reaching_a_shell_are_job_ids(text: str) -> None:
    ok = (
        text.isascii()
        and text.replace("_", "", 1).isdigit()
        and not text.startswith("_")
        and not text.endswith("_")
    )
    for make in (S.status_script, S.cancel_script):
        if ok:
            assert text in make([text])
        else:
            with pytest.raises(PermanentDriverError):
                make([text])


def test_exit_code() -> None:
    assert parse_exit_code("3:0") == (3, 0)
    assert parse_exit_code("0:15") == (0, 15)
    assert parse_exit_code("3") is None and parse_exit_code("") is None


def test_sbatch_placement() -> None:
    assert sbatch_placement(None) == []
    assert sbatch_placement(SlurmLayer()) == []
    layer = SlurmLayer(
        partition="gpu",
        account="lab",
        qos="high",
        time="1:00:00",
        nodes=2,
        cpus_per_task=8,
        mem="16G",
        gres="gpu:a100:1",
        gpus="a100:2",
        constraint="a100&ib",
        signal="USR2@90",
        requeue=True,
        extra_args=["--exclusive", "--comment=a b"],
    )
    assert sbatch_placement(layer) == [
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--time=1:00:00",
        "--nodes=2",
        "--cpus-per-task=8",
        "--mem=16G",
        "--gres=gpu:a100:1",
        "--gpus=a100:2",
        "--constraint=a100&ib",
        "--signal=USR2@90",
        "--requeue",
        "--exclusive",
        "--comment=a b",
    ]
