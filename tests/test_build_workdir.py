"""What a job sees: exactly the selected files, its inputs and out/; exactly the documented
environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import GitRepo, Qwex, drv_text, job


def _report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def test_work_dir_holds_only_selected_files_inputs_and_outputs(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    (tmp_path / "datasets/images").mkdir()
    (tmp_path / "datasets/images/a.png").write_bytes(b"\x89PNG")
    (tmp_path / "datasets/images/b.png").write_bytes(b"\x89PNG2")
    git_repo.commit("code", {
        "src/model.py": "W = 1\n", "src/data/loader.py": "L = 1\n", "docs/guide.md": "no\n",
        "notes.txt": "no\n", "src/scratch.tmp": "excluded\n",
        "t.drv": drv_text(job("--report", str(report), "--out", "a=1"), include=["job.py", "src"],
                          exclude=["**/*.tmp"],
                          inputs={"data/raw.csv": "file:../datasets/raw.csv",
                                  "images": "file:../datasets/images"}),
    })
    git_repo.write({"src/untracked.py": "x\n", "scratch.txt": "x\n",  # ignored: never staged
                    ".git/info/exclude": "untracked.py\nscratch.txt\n"})
    qwex.build("t.drv", cwd=git_repo.path)
    r = _report(report)
    assert r["files"] == sorted([
        "job.py", "src/model.py", "src/data/loader.py", "data/raw.csv", "images/a.png", "images/b.png",
    ])
    assert r["top"] == sorted(["job.py", "src", "data", "images", "out"])


def test_job_environment_is_exactly_controlled(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    git_repo.commit("drv", {"t.drv": drv_text(
        job("--report", str(report), "--out", "a=1"),
        vars={"PYTHONHASHSEED": "0", "LR": "0.5"}, pass_=["WANDB_API_KEY", "NOT_SET_ANYWHERE"],
    )})
    cp = qwex.ok("build", "t.drv", cwd=git_repo.path,
                 env={"SECRET_X": "1", "WANDB_API_KEY": "wk-123", "VIRTUAL_ENV": "/nope", "LR": "9"})
    key = cp.stdout.split("key", 1)[1].split()[0]
    run_id = cp.stdout.split("\nrun", 1)[1].split()[0]
    r = _report(report)
    env = r["env"]
    assert "SECRET_X" not in env
    assert "VIRTUAL_ENV" not in env
    assert "QWEX_HOME" not in env  # qwex's own settings are not the job's business
    assert "NOT_SET_ANYWHERE" not in env  # a pass name absent from qwex's env is absent
    assert env["WANDB_API_KEY"] == "wk-123"
    assert env["PYTHONHASHSEED"] == "0"
    assert env["LR"] == "0.5"  # vars win over the submitter's environment
    assert env["QWEX_KEY"] == key
    assert env["QWEX_RUN_ID"] == run_id
    run_dir = os.path.realpath(env["QWEX_RUN_DIR"])
    assert os.path.realpath(r["cwd"]) == run_dir
    for name in ("HOME", "TMPDIR"):  # private to the run, beside the work dir (never in it)
        p = os.path.realpath(env[name])
        assert os.path.dirname(p) == os.path.dirname(run_dir), (name, p, run_dir)
    assert not run_dir.startswith(str(git_repo.path))  # never the user's checkout
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "LR", "WANDB_API_KEY",
               "QWEX_KEY", "QWEX_RUN_ID", "QWEX_RUN_DIR"}
    # The interpreter may add a few of its own (e.g. LC_CTYPE); nothing from the submitter.
    extra = set(env) - allowed - {"LC_CTYPE", "PWD", "SHLVL", "_"}
    assert not extra, extra


def test_pass_value_is_recorded_nowhere(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"), pass_=["WANDB_API_KEY"])})
    b = qwex.build("t.drv", cwd=git_repo.path, env={"WANDB_API_KEY": "sk-very-secret-9071"})
    show = qwex.ok("show", b.key, "--json").stdout
    assert "WANDB_API_KEY" in show  # the name is recorded (pass_env)
    for dirpath, _dirs, files in os.walk(qwex.home):
        for f in files:
            assert b"sk-very-secret-9071" not in (Path(dirpath) / f).read_bytes(), f
