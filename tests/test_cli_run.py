"""``qwex run`` (ad-hoc derivations) and the ``--json`` documents of build/show/ls/checkout."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import PY, GitRepo, Qwex, parse_build

MAKE_OUT = "import os; os.makedirs('out', exist_ok=True); open('out/a.txt', 'w').write('A'); print('ran-it')"


def test_run_builds_ad_hoc_derivation_and_ls_lists_it(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    cp = qwex.ok("run", "--", PY, "-c", MAKE_OUT, cwd=git_repo.path)
    b = parse_build(cp.stdout)
    assert not b.cached
    assert b.outputs == ["out/a.txt"]
    assert "ran-it" in cp.stdout
    again = qwex.ok("run", "--", PY, "-c", MAKE_OUT, cwd=git_repo.path)
    b2 = parse_build(again.stdout)
    assert b2.cached and b2.key == b.key
    assert "ran-it" not in again.stdout

    table = qwex.ok("ls").stdout
    assert b.key.removeprefix("blake3:")[:12] in table
    runs = qwex.json("ls")
    assert [r["run_id"] for r in runs] == [b.run_id]
    assert runs[0]["status"] == "succeeded" and runs[0]["key"] == b.key

    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/a.txt").read_text() == "A"
    assert (co / "job.py").is_file()  # the repo at HEAD is the source


def test_run_with_output_option_and_failures(qwex: Qwex, git_repo: GitRepo) -> None:
    code = "open('result.bin', 'wb').write(b'R')"
    b = parse_build(qwex.ok("run", "-o", "result.bin", "--", PY, "-c", code, cwd=git_repo.path).stdout)
    assert b.outputs == ["result.bin"]
    fail = qwex("run", "--", PY, "-c", "import sys; sys.exit(4)", cwd=git_repo.path)
    assert fail.returncode == 1 and "4" in fail.stderr.splitlines()[-1]
    git_repo.write({"job.py": "changed"})
    dirty = qwex("run", "--", PY, "-c", code, cwd=git_repo.path)
    assert dirty.returncode == 2 and "job.py" in dirty.stderr


def test_json_documents(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    build = json.loads(qwex.ok("run", "--json", "--", PY, "-c", MAKE_OUT, cwd=git_repo.path).stdout)
    assert set(build) >= {"key", "cached", "run_id", "manifest", "files", "size", "outputs"}
    assert build["cached"] is False
    assert build["outputs"] == ["out/a.txt"] and build["files"] == 1 and build["size"] == 1
    assert build["key"].startswith("blake3:") and build["manifest"].startswith("blake3:")

    again = json.loads(qwex.ok("run", "--json", "--", PY, "-c", MAKE_OUT, cwd=git_repo.path).stdout)
    assert again == {**build, "cached": True}

    show = qwex.json("show", build["key"][:16])
    assert set(show) >= {"run", "derivation", "outputs"}
    run = show["run"]
    assert run["run_id"] == build["run_id"] and run["key"] == build["key"]
    assert run["status"] == "succeeded" and run["exit_code"] == 0
    assert run["manifest"] == build["manifest"]
    assert run["finished_ns"] >= run["started_ns"] > 0
    assert "PATH" in run["impure"]  # no image: PATH is an impure input, recorded
    drv = show["derivation"]
    assert drv["derivation"]["command"] == [PY, "-c", MAKE_OUT]
    assert drv["derivation"]["outputs"] == ["out/"]
    assert drv["source"]["commit"] == git_repo.head()
    assert [(o["path"], o["size"]) for o in show["outputs"]] == [("out/a.txt", 1)]

    ls = qwex.json("ls")
    assert len(ls) == 1
    assert set(ls[0]) >= {"run_id", "key", "name", "status", "exit_code", "started_ns", "finished_ns"}

    co = qwex.json("checkout", build["run_id"], str(tmp_path / "co"))
    assert co == {"key": build["key"], "run_id": build["run_id"], "dest": str(tmp_path / "co"),
                  "source_files": 2, "output_files": 1}
