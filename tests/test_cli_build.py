"""``qwex build`` and ``qwex hash`` end to end: outputs, cache hits, and what the key covers."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import GitRepo, Qwex, drv_text, job, parse_build, read_lines


def test_build_prints_key_and_outputs_then_cache_hit_runs_nothing(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("add train", {"train.drv": drv_text(
        job("--count", str(counter), "--print", "MARKER-7f3a", "--copy", "data/raw.csv=raw.csv",
            "--out", "metrics.json={}"),
        name="train", outputs=["out/"], vars={"PYTHONHASHSEED": "0"}, pass_=["WANDB_API_KEY"],
        inputs={"data/raw.csv": "file:../datasets/raw.csv"},
    )})
    first = qwex.ok("build", "train.drv", cwd=git_repo.path)
    b1 = parse_build(first.stdout)
    assert not b1.cached
    assert first.stdout.count("MARKER-7f3a") == 1  # the job's output is shown
    assert sorted(b1.outputs) == ["out/metrics.json", "out/raw.csv"]
    assert read_lines(counter) == [f"ran {b1.run_id}"]

    second = qwex.ok("build", "train.drv", cwd=git_repo.path)
    b2 = parse_build(second.stdout)
    assert b2.cached
    assert (b2.key, b2.run_id) == (b1.key, b1.run_id)
    assert sorted(b2.outputs) == sorted(b1.outputs)
    assert "MARKER-7f3a" not in second.stdout + second.stderr
    assert len(read_lines(counter)) == 1  # the command did not run again


def test_hash_equals_build_key_and_is_stable_across_processes(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"), outputs=["out/", "out/"],
                                              vars={"B": "2", "A": "1", "C": "3"})})
    git_repo.write({"untracked.txt": "never part of the key", ".git/info/exclude": "untracked.txt\n"})
    # Different hash seeds per process: no set/dict iteration order may leak into the key.
    keys = {qwex.hash("t.drv", cwd=git_repo.path, env={"PYTHONHASHSEED": s}) for s in ("1", "2", "3")}
    assert len(keys) == 1
    (key,) = keys
    assert qwex.build("t.drv", cwd=git_repo.path).key == key
    doc = json.loads(qwex.ok("hash", "t.drv", "--json", cwd=git_repo.path).stdout)
    assert doc["key"] == key


BASE = dict(outputs=["out/"], vars={"LR": "0.1", "SEED": "1"}, pass_=["WANDB_API_KEY"],
            inputs={"data/raw.csv": "file:../datasets/raw.csv"})


def _write(repo: GitRepo, file: str, command: list[str] | None = None, **over: object) -> str:
    fields = {**BASE, **over}
    repo.write({file: drv_text(command or job("--out", "a=1"), **fields)})  # type: ignore[arg-type]
    return file  # untracked .drv files are not part of the source tree


def test_key_ignores_toml_layout_order_and_comments(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    _write(git_repo, "plain.drv")
    cmd = json.dumps(job("--out", "a=1"))
    git_repo.write({"fancy.drv": f"""# a comment
outputs = [
  "out/",   # the only output
]
command = {cmd}

[inputs]
  "data/raw.csv" = 'file:../datasets/raw.csv'

[env]
pass = [ "WANDB_API_KEY", ]
vars.SEED = "1"
vars.LR = "0.1"
"""})
    assert qwex.hash("fancy.drv", cwd=git_repo.path) == qwex.hash("plain.drv", cwd=git_repo.path)


def test_key_ignores_name_and_pass_values(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    _write(git_repo, "a.drv", name="first")
    _write(git_repo, "b.drv", name="second")
    k = qwex.hash("a.drv", cwd=git_repo.path, env={"WANDB_API_KEY": "one"})
    assert qwex.hash("b.drv", cwd=git_repo.path, env={"WANDB_API_KEY": "two"}) == k
    assert qwex.hash("a.drv", cwd=git_repo.path, unset=["WANDB_API_KEY"]) == k


def test_key_changes_with_each_identity_field(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    base = qwex.hash(_write(git_repo, "base.drv"), cwd=git_repo.path)
    variants = {
        "command": _write(git_repo, "c1.drv", command=job("--out", "a=2")),
        "vars value": _write(git_repo, "c2.drv", vars={"LR": "0.2", "SEED": "1"}),
        "vars name": _write(git_repo, "c3.drv", vars={"LR": "0.1", "SEED": "1", "X": ""}),
        "outputs": _write(git_repo, "c4.drv", outputs=["out/", "model.bin"]),
        "input dest": _write(git_repo, "c5.drv", inputs={"data/other.csv": "file:../datasets/raw.csv"}),
        "pass becomes var": _write(git_repo, "c6.drv", pass_=[],
                                   vars={"LR": "0.1", "SEED": "1", "WANDB_API_KEY": ""}),
    }
    keys = {what: qwex.hash(f, cwd=git_repo.path) for what, f in variants.items()}
    assert base not in keys.values(), keys
    assert len(set(keys.values())) == len(keys), keys


def test_key_changes_with_input_content(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    drv = _write(git_repo, "t.drv")
    k1 = qwex.hash(drv, cwd=git_repo.path)
    dataset.write_text("a,b\n1,3\n")  # same size: the stat cache must still notice
    k2 = qwex.hash(drv, cwd=git_repo.path)
    dataset.write_text("a,b\n1,2\n")
    k3 = qwex.hash(drv, cwd=git_repo.path)
    assert k1 != k2
    assert k3 == k1


def test_key_changes_with_input_directory_content(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    d = tmp_path / "images"
    d.mkdir()
    (d / "a.png").write_bytes(b"A")
    git_repo.write({"t.drv": drv_text(job("--out", "a=1"), inputs={"images": "file:../images"})})
    keys = [qwex.hash("t.drv", cwd=git_repo.path)]
    (d / "b.png").write_bytes(b"B")
    keys.append(qwex.hash("t.drv", cwd=git_repo.path))
    (d / "b.png").rename(d / "c.png")
    keys.append(qwex.hash("t.drv", cwd=git_repo.path))
    (d / "c.png").unlink()
    keys.append(qwex.hash("t.drv", cwd=git_repo.path))
    assert len(set(keys[:3])) == 3
    assert keys[3] == keys[0]


def test_key_changes_with_selected_source_only(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    git_repo.commit("more", {"src/model.py": "W = 1\n", "docs/notes.md": "v1\n"})
    drv = _write(git_repo, "t.drv", include=["job.py", "src/"])
    k1 = qwex.hash(drv, cwd=git_repo.path)
    git_repo.commit("docs only", {"docs/notes.md": "v2\n", "README.md": "changed\n"})
    assert qwex.hash(drv, cwd=git_repo.path) == k1  # unselected files are not identity
    git_repo.commit("model", {"src/model.py": "W = 2\n"})
    k2 = qwex.hash(drv, cwd=git_repo.path)
    assert k2 != k1
    os.chmod(git_repo.path / "src/model.py", 0o755)
    git_repo.commit("mode")
    assert qwex.hash(drv, cwd=git_repo.path) not in (k1, k2)  # the executable bit is content


def test_amended_commit_message_is_a_cache_hit(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("add drv", {"t.drv": drv_text(job("--count", str(counter), "--out", "a=1"))})
    b1 = qwex.build("t.drv", cwd=git_repo.path)
    old = git_repo.head()
    git_repo.git("commit", "-q", "--amend", "-m", "reworded message")
    assert git_repo.head() != old
    b2 = qwex.build("t.drv", cwd=git_repo.path)
    assert b2.cached and b2.key == b1.key
    assert len(read_lines(counter)) == 1


def test_command_string_runs_through_sh(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"s.drv": 'command = "mkdir -p out && echo $((6*7)) > out/answer"\n'})
    b = qwex.build("s.drv", cwd=git_repo.path)
    assert b.outputs == ["out/answer"]
    co = git_repo.path.parent / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/answer").read_text() == "42\n"


def test_store_and_index_live_under_qwex_home(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    git_repo.commit("drv", {"t.drv": drv_text(job("--count", str(counter), "--out", "a=1"))})
    qwex.build("t.drv", cwd=git_repo.path)
    assert (qwex.home / "store" / "qwex-store.json").is_file()
    assert (qwex.home / "index").is_dir()
    assert not (qwex.user_home / ".qwex").exists()
    other = tmp_path / "other-store"
    b = qwex.build("t.drv", cwd=git_repo.path, env={"QWEX_STORE": str(other)})
    assert not b.cached  # another store has not seen this key
    assert (other / "qwex-store.json").is_file()
    b2 = qwex.ok("--store", str(other), "build", "t.drv", cwd=git_repo.path)
    assert parse_build(b2.stdout).cached
    assert len(read_lines(counter)) == 2


def test_store_is_the_truth_when_the_index_is_lost_or_another_home(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    import shutil

    counter = tmp_path / "counter"
    git_repo.commit("drv", {"t.drv": drv_text(job("--count", str(counter), "--out", "a=1"))})
    b1 = qwex.build("t.drv", cwd=git_repo.path)
    shutil.rmtree(qwex.home / "index")
    b2 = qwex.build("t.drv", cwd=git_repo.path)
    assert b2.cached and (b2.key, b2.run_id) == (b1.key, b1.run_id)
    # A colleague with their own QWEX_HOME, sharing the store
    other_home = tmp_path / "colleague"
    b3 = qwex.build("t.drv", cwd=git_repo.path,
                    env={"QWEX_HOME": str(other_home), "QWEX_STORE": str(qwex.store)})
    assert b3.cached and b3.run_id == b1.run_id
    assert len(read_lines(counter)) == 1


def test_build_from_another_directory(qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path) -> None:
    git_repo.commit("drv", {"sub/t.drv": drv_text(job("--copy", "data/raw.csv=raw.csv"),
                                                  inputs={"data/raw.csv": "file:../../datasets/raw.csv"})})
    k_inside = qwex.hash("t.drv", cwd=git_repo.path / "sub")
    b = qwex.build(os.path.join("repo", "sub", "t.drv"), cwd=tmp_path)
    assert b.key == k_inside
    assert qwex.build(str(git_repo.path / "sub/t.drv"), cwd="/").cached
