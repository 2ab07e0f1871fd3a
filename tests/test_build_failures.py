"""A failed command: exit 1 naming the exit code, the run recorded as failed with its logs,
never cached."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import GitRepo, Qwex, drv_text, job, read_lines


def _failing(git_repo: GitRepo, counter: Path, code: str = "3") -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job(
        "--count", str(counter), "--print", "epoch 1 loss 0.5", "--eprint", "CUDA out of memory",
        "--out", "partial=1", "--exit", code))})


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("qwex: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_failed_command_exits_1_names_code_and_is_not_cached(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    _failing(git_repo, counter)
    key = qwex.hash("t.drv", cwd=git_repo.path)
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    line = _last_error_line(cp.stderr)
    assert re.search(r"\b(status|code) 3\b", line), line
    assert "epoch 1 loss 0.5" in cp.stdout  # streamed while it ran
    assert "CUDA out of memory" in cp.stderr

    run_id = read_lines(counter)[0].split()[1]
    assert run_id in line  # the message says which run to look at
    show = qwex.json("show", run_id)
    assert show["run"]["status"] == "failed"
    assert show["run"]["exit_code"] == 3
    assert show["run"]["key"] == key
    assert show["outputs"] is None

    cp2 = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp2.returncode == 1
    assert len(read_lines(counter)) == 2  # ran again: failures are never cached
    assert "epoch 1 loss 0.5" in cp2.stdout


def test_log_prints_failed_run_output_by_run_id_and_key(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    _failing(git_repo, counter, "7")
    key = qwex.hash("t.drv", cwd=git_repo.path)
    assert qwex("build", "t.drv", cwd=git_repo.path).returncode == 1
    run_id = read_lines(counter)[0].split()[1]
    for ref in (run_id, key, key.removeprefix("blake3:")[:10]):
        log = qwex.ok("log", ref)
        assert "epoch 1 loss 0.5" in log.stdout, ref
        assert "CUDA out of memory" in log.stderr, ref
    out_only = qwex.ok("log", run_id, "--stream", "stdout")
    assert "epoch 1 loss 0.5" in out_only.stdout and "CUDA" not in out_only.stderr


def test_checkout_of_failed_run_is_refused(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    _failing(git_repo, tmp_path / "counter")
    key = qwex.hash("t.drv", cwd=git_repo.path)
    assert qwex("build", "t.drv", cwd=git_repo.path).returncode == 1
    cp = qwex("checkout", key, str(tmp_path / "co"))
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert not (tmp_path / "co").exists()


def test_ls_json_shows_failed_run(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    _failing(git_repo, counter)
    assert qwex("build", "t.drv", cwd=git_repo.path).returncode == 1
    runs = json.loads(qwex.ok("ls", "--json").stdout)
    run_id = read_lines(counter)[0].split()[1]
    (entry,) = [r for r in runs if r["run_id"] == run_id]
    assert entry["status"] == "failed"
    assert entry["exit_code"] == 3


def test_missing_declared_output_fails_and_is_not_cached(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("drv", {"t.drv": drv_text(job("--count", str(counter), "--out", "a=1"),
                                              outputs=["out/", "model.bin"])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "model.bin" in _last_error_line(cp.stderr)
    run_id = read_lines(counter)[0].split()[1]
    assert qwex.json("show", run_id)["run"]["status"] == "failed"
    assert qwex("build", "t.drv", cwd=git_repo.path).returncode == 1
    assert len(read_lines(counter)) == 2


def test_command_not_found_fails_cleanly(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(["./no-such-program", "--x"])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "no-such-program" in cp.stderr


def test_job_writing_its_input_harms_only_its_own_copy(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    # Inputs are private copies (spec/runs.md, "Inputs"): a job that writes to one (root
    # ignores the read-only mode) changes its own copy, never the store nor the user's file.
    git_repo.commit("drv", {"t.drv": drv_text(
        ["sh", "-c", "chmod u+w data/raw.csv; echo poisoned > data/raw.csv; mkdir -p out; echo x > out/x"],
        inputs={"data/raw.csv": "file:../datasets/raw.csv"})})
    qwex.build("t.drv", cwd=git_repo.path)
    assert dataset.read_text() == "a,b\n1,2\n"  # the user's file was copied, never linked
    # A clean job using the same input still gets the original bytes.
    git_repo.commit("drv2", {"u.drv": drv_text(job("--copy", "data/raw.csv=raw.csv"),
                                               inputs={"data/raw.csv": "file:../datasets/raw.csv"})})
    b = qwex.build("u.drv", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/raw.csv").read_text() == "a,b\n1,2\n"


def test_job_killed_by_signal_fails(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text("mkdir -p out; echo x > out/a; kill -KILL $$")})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "signal 9" in _last_error_line(cp.stderr)


def test_no_work_dirs_are_left_behind(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("drv", {
        "ok.drv": drv_text(job("--out", "a=1")),
        "fail.drv": drv_text(job("--out", "a=1", "--exit", "1")),
        "missing.drv": drv_text(job("--out", "a=1"), outputs=["nothing.bin"]),
    })
    qwex.build("ok.drv", cwd=git_repo.path)
    assert qwex("build", "fail.drv", cwd=git_repo.path).returncode == 1
    assert qwex("build", "missing.drv", cwd=git_repo.path).returncode == 1
    runs = qwex.store / "tmp" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
    assert [r["status"] for r in qwex.json("ls")] == ["failed", "failed", "succeeded"]


def test_output_name_that_is_not_utf8_fails_the_run_cleanly(qwex: Qwex, git_repo: GitRepo) -> None:
    """A run record is JSON text: a job's non-UTF-8 output name fails the run (recorded,
    with a readable message), never the build itself."""
    git_repo.commit("drv", {"t.drv": drv_text(
        ["python3", "-c", "import os; os.makedirs(b'out', exist_ok=True); open(b'out/\\xff.txt', 'w')"])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
    assert "not valid UTF-8" in cp.stderr.splitlines()[-1]
    (run,) = qwex.json("ls")
    assert run["status"] == "failed"
    assert not list((qwex.store / "tmp" / "runs").iterdir())


def test_output_dir_blocked_by_a_source_file_is_a_user_error(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"out": "a committed file named like the output dir\n",
                            "t.drv": drv_text(job("--out", "a=1"), outputs=["out/"])})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "output 'out/' is a directory" in cp.stderr.splitlines()[-1]
    assert not list((qwex.store / "tmp" / "runs").iterdir())
