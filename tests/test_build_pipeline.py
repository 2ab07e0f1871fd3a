"""Pipelines: drv: inputs form a DAG built in dependency order, in parallel, with early
cutoff, prefixed logs, a summary table, and failures that stop dependants only."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PY, GitRepo, Qwex, drv_text, parse_build, wait_for

#: A pipeline stage: logs "start/end NAME <time>" to LOG, prints a line, sleeps, then writes
#: out/NAME.txt = its inputs' text (files given with --read) plus its own tag.
STAGE = r'''
import os, sys, time
name, log, args = sys.argv[1], sys.argv[2], sys.argv[3:]
tag, sleep, fail, reads = name, 0.0, None, []
while args:
    opt, val, args = args[0], args[1], args[2:]
    if opt == "--sleep": sleep = float(val)
    elif opt == "--fail": fail = int(val)
    elif opt == "--read": reads.append(val)
    elif opt == "--tag": tag = val
with open(log, "a") as f: f.write("start %s %.6f\n" % (name, time.time()))
print("hello from %s" % name, flush=True)
print("warning from %s" % name, file=sys.stderr, flush=True)
time.sleep(sleep)
if fail is not None:
    sys.exit(fail)
text = "".join(open(p).read() for p in reads) + tag + "\n"
os.makedirs("out", exist_ok=True)
with open(os.path.join("out", name + ".txt"), "w") as f: f.write(text)
with open(log, "a") as f: f.write("end %s %.6f\n" % (name, time.time()))
'''


def stage(name: str, log: Path, *args: str, script: str = "stage.py") -> list[str]:
    return [PY, script, name, str(log), *args]


def events(log: Path) -> list[tuple[str, str, float]]:
    """(start|end, name, time) lines of the stages' shared log."""
    if not log.exists():
        return []
    return [(a, n, float(t)) for a, n, t in (line.split() for line in log.read_text().splitlines())]


def ran(log: Path) -> list[str]:
    return [n for a, n, _ in events(log) if a == "start"]


def span(log: Path, name: str) -> tuple[float, float]:
    ev = {(a, n): t for a, n, t in events(log)}
    return ev[("start", name)], ev[("end", name)]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "stages.log"


def three_stages(repo: GitRepo, log: Path) -> None:
    """prep -> train -> evaluate, each narrowed to its own script by [source] include."""
    repo.commit("pipeline", {
        "prep.py": STAGE, "train.py": STAGE, "evaluate.py": STAGE,
        "prep.drv": drv_text(stage("prep", log, script="prep.py"), name="prep", include=["prep.py"]),
        "train.drv": drv_text(stage("train", log, "--read", "data/out/prep.txt", script="train.py"),
                              name="train", include=["train.py"], inputs={"data": "drv:prep.drv"}),
        "evaluate.drv": drv_text(
            stage("evaluate", log, "--read", "model/out/train.txt", "--read", "data/out/prep.txt",
                  script="evaluate.py"),
            name="evaluate", include=["evaluate.py"],
            inputs={"model": "drv:train.drv", "data": "drv:prep.drv"}),
    })


def test_pipeline_builds_upstreams_in_order_then_is_fully_cached(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    three_stages(git_repo, log)
    cp = qwex.ok("build", "evaluate.drv", cwd=git_repo.path)
    assert ran(log) == ["prep", "train", "evaluate"]  # prep is shared by two inputs: built once
    first = parse_build(cp.stdout)
    again = qwex.build("evaluate.drv", cwd=git_repo.path)
    assert again.cached and again.key == first.key
    assert ran(log) == ["prep", "train", "evaluate"]
    out = qwex.ok("checkout", first.key, str(git_repo.path.parent / "co"))
    assert "Traceback" not in out.stderr
    assert (git_repo.path.parent / "co/out/evaluate.txt").read_text() == "prep\ntrain\nprep\nevaluate\n"


def test_early_cutoff_per_edge(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    three_stages(git_repo, log)
    qwex.build("evaluate.drv", cwd=git_repo.path)
    # prep.py changes but writes byte-identical data: prep re-runs, train and evaluate do not.
    git_repo.commit("comment", {"prep.py": STAGE + "# a comment\n"})
    b = qwex.build("evaluate.drv", cwd=git_repo.path)
    assert b.cached
    assert ran(log) == ["prep", "train", "evaluate", "prep"]
    # train.py changes its output: train and evaluate re-run, prep does not.
    git_repo.commit("tag", {"train.drv": drv_text(
        stage("train", log, "--read", "data/out/prep.txt", "--tag", "train-v2", script="train.py"),
        name="train", include=["train.py"], inputs={"data": "drv:prep.drv"})})
    b = qwex.build("evaluate.drv", cwd=git_repo.path)
    assert not b.cached
    assert ran(log)[4:] == ["train", "evaluate"]


def test_dot_destination_overlays_upstream_outputs_and_clash_is_an_error(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    git_repo.commit("overlay", {
        "stage.py": STAGE,
        "up.drv": drv_text(stage("up", log), name="up", include=["stage.py"]),
        "down.drv": drv_text(stage("down", log, "--read", "out/up.txt"), name="down",
                             outputs=["out/down.txt"], include=["stage.py"], inputs={".": "drv:up.drv"}),
        # the upstream's output out/up.txt clashes with a committed source file of that name
        "clash.drv": drv_text(stage("clash", log), name="clash", outputs=["out/clash.txt"],
                              inputs={".": "drv:up.drv"}),
        "out/up.txt": "a source file\n",
    })
    b = qwex.build("down.drv", cwd=git_repo.path)
    co = git_repo.path.parent / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/down.txt").read_text() == "up\ndown\n"
    cp = qwex("build", "clash.drv", cwd=git_repo.path)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    err = cp.stderr.strip().splitlines()[-1]
    assert err.startswith("qwex: error: ") and "clash" in err and "out/up.txt" in err, err
    assert "clash" not in ran(log)


def diamond(repo: GitRepo, log: Path, a: tuple[str, ...] = (), b: tuple[str, ...] = ()) -> None:
    """Two independent upstreams a and b, and a root that reads both."""
    repo.commit("diamond", {
        "stage.py": STAGE,
        "a.drv": drv_text(stage("a", log, *a), name="a", include=["stage.py"]),
        "b.drv": drv_text(stage("b", log, *b), name="b", include=["stage.py"]),
        "root.drv": drv_text(stage("root", log, "--read", "a/out/a.txt", "--read", "b/out/b.txt"),
                             name="root", include=["stage.py"],
                             inputs={"a": "drv:a.drv", "b": "drv:b.drv"}),
    })


def test_independent_derivations_build_in_parallel(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    diamond(git_repo, log, a=("--sleep", "1.5"), b=("--sleep", "1.5"))
    qwex.ok("build", "root.drv", "-j", "2", cwd=git_repo.path)
    (a0, a1), (b0, b1) = span(log, "a"), span(log, "b")
    assert a0 < b1 and b0 < a1, "a and b did not overlap with -j 2"
    assert span(log, "root")[0] > max(a1, b1)


def test_jobs_one_builds_one_at_a_time(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    diamond(git_repo, log, a=("--sleep", "0.5"), b=("--sleep", "0.5"))
    qwex.ok("build", "root.drv", "-j", "1", cwd=git_repo.path)
    (a0, a1), (b0, b1) = span(log, "a"), span(log, "b")
    assert a1 <= b0 or b1 <= a0, "a and b overlapped with -j 1"


def test_log_lines_are_prefixed_and_a_summary_table_ends_the_build(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    diamond(git_repo, log)
    qwex.ok("build", "a.drv", cwd=git_repo.path)  # a is cached in the pipeline build below
    cp = qwex.ok("build", "root.drv", cwd=git_repo.path)
    out_lines = cp.stdout.splitlines()
    assert "b    | hello from b" in out_lines and "root | hello from root" in out_lines
    assert "hello from a" not in cp.stdout
    assert "b    | warning from b" in cp.stderr.splitlines()
    table = cp.stderr[cp.stderr.index("qwex: 3 derivations"):].splitlines()
    assert table[0] == "qwex: 3 derivations: 2 built, 1 cached"
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert rows == {"a": "cached", "b": "built", "root": "built"}
    doc = json.loads(qwex.ok("build", "root.drv", "--json", cwd=git_repo.path).stdout)
    assert doc["cached"] is True  # fully cached: the hit path, no per-node table


def _failing_diamond(git_repo: GitRepo, log: Path) -> None:
    """a fails at once; b, independent of a, succeeds; root needs both."""
    diamond(git_repo, log, a=("--fail", "3"), b=("--sleep", "0.3"))


def test_failure_stops_dependants_and_new_starts_by_default(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    _failing_diamond(git_repo, log)
    cp = qwex("build", "root.drv", "-j", "1", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    assert ran(log) == ["a"]  # b was not started after a failed; root never runs
    assert cp.stderr.splitlines()[-1].startswith("qwex: error: a: command exited with status 3")
    rows = {ln.split()[0]: ln.split()[1] for ln in cp.stderr.splitlines() if ln.startswith("  ")}
    assert rows == {"a": "failed", "b": "skipped", "root": "skipped", "DERIVATION": "STATUS"}
    assert "--keep-going" in cp.stderr


def test_keep_going_builds_independent_branches(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    _failing_diamond(git_repo, log)
    cp = qwex("build", "root.drv", "-j", "1", "--keep-going", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert sorted(ran(log)) == ["a", "b"]
    assert "root" not in ran(log)
    assert "upstream a did not build" in cp.stderr
    b = qwex.build("b.drv", cwd=git_repo.path)
    assert b.cached  # what did build is realized: a retry does not redo it


def test_running_branch_finishes_after_another_fails(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    """Without --keep-going, a derivation already running when another fails is not killed:
    its hours of work are realized, and nothing half-written is left."""
    diamond(git_repo, log, a=("--sleep", "0.5", "--fail", "1"), b=("--sleep", "1.5"))
    cp = qwex("build", "root.drv", "-j", "2", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert sorted(ran(log)) == ["a", "b"]
    assert qwex.build("b.drv", cwd=git_repo.path).cached


def test_concurrent_processes_on_one_pipeline_execute_each_key_once(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    diamond(git_repo, log, a=("--sleep", "1"), b=("--sleep", "1"))
    docs = qwex.concurrently(4, "build", "root.drv", cwd=git_repo.path)
    assert sorted(ran(log)) == ["a", "b", "root"]  # four builders, one execution per key
    assert len({d["key"] for d in docs}) == 1
    assert sum(not d["cached"] for d in docs) == 1


def test_builders_of_different_keys_never_wait_on_each_other(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    diamond(git_repo, log, a=("--sleep", "1.5"), b=("--sleep", "1.5"))
    procs = [qwex.popen("build", d, cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for d in ("a.drv", "b.drv")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert b"waiting for" not in err
    (a0, a1), (b0, b1) = span(log, "a"), span(log, "b")
    assert a0 < b1 and b0 < a1, "two processes building different keys did not overlap"


def test_ctrl_c_stops_every_running_derivation_and_records_them_cancelled(
    qwex: Qwex, git_repo: GitRepo, log: Path
) -> None:
    diamond(git_repo, log, a=("--sleep", "30"), b=("--sleep", "30"))
    proc = qwex.popen("build", "root.drv", "-j", "2", cwd=git_repo.path, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    try:
        wait_for(lambda: sorted(ran(log)) == ["a", "b"], 20, "both upstreams to start")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    ours = [ln for ln in err.decode().splitlines() if " | " not in ln]  # not the jobs' own output
    assert not [ln for ln in ours if "Traceback" in ln]
    assert ours[-1].startswith("qwex: error: cancelled")
    assert "qwex: 3 derivations: 2 cancelled, 1 skipped" in ours
    runs = qwex.json("ls")
    assert sorted((r["name"], r["status"]) for r in runs) == [("a", "cancelled"), ("b", "cancelled")]
    assert [n for a_, n, _ in events(log) if a_ == "end"] == []  # both jobs were stopped


def test_any_node_error_fails_only_that_node(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    """A node that cannot even start (its output dir is blocked by a source file) fails
    alone: with --keep-going its sibling builds; the exit is that error's (2, one line)."""
    diamond(git_repo, log, b=("--sleep", "0.5"))
    git_repo.commit("block", {"out": "not a directory\n", "a.drv": drv_text(
        stage("a", log), name="a", outputs=["out/"])})  # a selects the whole tree: out is staged
    cp = qwex("build", "root.drv", "-j", "2", "--keep-going", cwd=git_repo.path)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr and "internal error" not in cp.stderr
    assert cp.stderr.splitlines()[-1].startswith("qwex: error: ")
    assert ran(log) == ["b"]
    rows = {ln.split()[0]: ln.split()[1] for ln in cp.stderr.splitlines() if ln.startswith("  ")}
    assert (rows["a"], rows["b"], rows["root"]) == ("failed", "built", "skipped")
    # without --keep-going, the same failure stops b from starting (-j 1: a is first)
    git_repo.commit("b2", {"b.drv": drv_text(stage("b", log, "--tag", "b2"), name="b",
                                             include=["stage.py"])})
    cp = qwex("build", "root.drv", "-j", "1", cwd=git_repo.path)
    assert cp.returncode == 2 and ran(log) == ["b"], cp.stderr


def test_json_reports_nodes_when_the_pipeline_fails(qwex: Qwex, git_repo: GitRepo, log: Path) -> None:
    diamond(git_repo, log, a=("--fail", "4"))
    cp = qwex("build", "root.drv", "-j", "1", "--keep-going", "--json", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    doc = json.loads(cp.stdout)
    assert "command exited with status 4" in doc["error"]
    assert {n["name"]: n["status"] for n in doc["nodes"]} == {"a": "failed", "b": "built", "root": "skipped"}
