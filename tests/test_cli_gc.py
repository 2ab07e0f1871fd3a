"""``qwex gc`` and ``qwex pin``/``unpin``: remove what no realisation, pin or running build
reaches; never what a running build needs; clean up after killed builds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import blake3
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, read_lines, wait_for


def _store_files(qwex: Qwex) -> set[str]:
    """Every store object (tmp/ and the version file excluded)."""
    out = set()
    for dirpath, _dirs, files in os.walk(qwex.store):
        rel = os.path.relpath(dirpath, qwex.store)
        if rel == "tmp" or rel.startswith("tmp/"):
            continue
        out.update(f"{rel}/{f}" for f in files if rel != ".")
    return out


def _orphan_blob(qwex: Qwex, data: bytes) -> Path:
    """An unreferenced but valid blob, as a crashed build leaves behind."""
    hexd = blake3.blake3(data).hexdigest()
    path = qwex.store / "blobs" / hexd[:2] / hexd
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_gc_keeps_realised_closures_and_removes_the_rest(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("drvs", {
        "ok.drv": drv_text(job("--print", "fine", "--out", "m.bin=weights"), name="ok"),
        "bad.drv": drv_text(job("--print", "a log only the failed run has", "--exit", "3"), name="bad"),
    })
    ok = qwex.build("ok.drv", cwd=git_repo.path)
    failed = qwex("build", "bad.drv", cwd=git_repo.path)
    assert failed.returncode == 1
    bad_run = qwex.json("ls")[0]["run_id"]
    orphan = _orphan_blob(qwex, b"left by a crash" * 100)
    before = _store_files(qwex)

    dry = qwex.json("gc", "--dry-run")
    assert _store_files(qwex) == before  # nothing deleted
    assert dry["dry_run"] and dry["removed"] == {"run": 1, "derivation": 1, "blob": 2}  # + orphan, bad log
    assert dry["bytes"] >= 1500
    text = qwex.ok("gc", "-n").stdout
    assert "would remove 1 run, 1 derivation, 2 blobs" in text and "dry run: nothing was deleted" in text

    out = qwex.ok("gc").stdout
    assert "removed 1 run, 1 derivation, 2 blobs" in out
    after = _store_files(qwex)
    assert not orphan.exists() and f"runs/{bad_run}" in before - after
    assert len(before - after) == 4
    assert_user_error(qwex("log", bad_run), "no key, derivation or run matches")  # index agrees
    assert [r["run_id"] for r in qwex.json("ls")] == [ok.run_id]

    assert qwex.ok("gc").stdout.startswith("no unreachable store objects")
    assert qwex.build("ok.drv", cwd=git_repo.path).cached
    dest = tmp_path / "co"
    qwex.ok("checkout", ok.key, str(dest))
    assert (dest / "out/m.bin").read_text() == "weights" and (dest / "job.py").exists()
    assert qwex("log", ok.key).stdout == "fine\n"
    assert qwex("verify").returncode == 0


def test_older_than_drops_unpinned_realisations_only(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("drvs", {
        "a.drv": drv_text(job("--count", str(tmp_path / "a.count"), "--out", "a=1"), name="a"),
        "b.drv": drv_text(job("--count", str(tmp_path / "b.count"), "--out", "b=2"), name="b"),
    })
    a = qwex.build("a.drv", cwd=git_repo.path)
    b = qwex.build("b.drv", cwd=git_repo.path)
    assert qwex.ok("pin", a.key[7:15]).stdout.strip() == f"pinned {a.key}"
    assert qwex.ok("pin", a.run_id).stdout.strip() == f"{a.key} was already pinned"
    qwex.ok("index", "rebuild")  # pins live in the store, not the index
    assert qwex.json("pin") == [a.key]
    assert qwex.json("show", a.key)["pinned"] is True and qwex.json("show", b.key)["pinned"] is False
    assert "(pinned)" in qwex.ok("show", a.key).stdout.splitlines()[0]

    assert not qwex.json("gc", "--older-than", "30d")["dropped"]
    doc = qwex.json("gc", "--older-than", "0s")
    assert doc["dropped"] == [b.key] and doc["removed"]["realisation"] == 1
    assert qwex.build("a.drv", cwd=git_repo.path).cached
    assert not qwex.build("b.drv", cwd=git_repo.path).cached
    assert len(read_lines(tmp_path / "a.count")) == 1 and len(read_lines(tmp_path / "b.count")) == 2

    assert qwex.ok("unpin", a.key[7:13]).stdout.strip() == f"unpinned {a.key}"
    assert qwex.json("pin") == []
    assert qwex.json("show", a.key)["pinned"] is False
    assert qwex.json("gc", "--older-than", "0s")["dropped"] == sorted([a.key, b.key])
    assert qwex("verify").returncode == 0
    assert not qwex.build("a.drv", cwd=git_repo.path).cached


def test_a_kept_realisation_keeps_the_upstreams_it_was_built_from(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    """Pinning a pipeline's result keeps the whole pipeline cached through --older-than:
    building it again runs nothing, not even the upstream stages."""
    count = tmp_path / "count"
    git_repo.commit("drvs", {
        "up.drv": drv_text(job("--count", str(count), "--out", "u=1"), name="up", include=["job.py"]),
        "down.drv": drv_text(job("--count", str(count), "--copy", "up/out/u=d"), name="down",
                             include=["job.py"], inputs={"up": "drv:up.drv"}),
        "other.drv": drv_text(job("--out", "o=1"), name="other", include=["job.py"]),
    })
    down = qwex.build("down.drv", cwd=git_repo.path)
    other = qwex.build("other.drv", cwd=git_repo.path)
    qwex.ok("pin", down.key)
    doc = qwex.json("gc", "--older-than", "0s")
    assert doc["dropped"] == [other.key]  # up is spared: down, pinned, was built from it
    assert qwex.build("down.drv", cwd=git_repo.path).cached
    assert len(read_lines(count)) == 2  # up and down ran once each, before the gc
    assert qwex("verify").returncode == 0


def test_bad_arguments_are_one_line_errors(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drvs", {"f.drv": drv_text(job("--exit", "1"), name="f")})
    assert qwex("build", "f.drv", cwd=git_repo.path).returncode == 1
    for bad in ("3x", "10", "-1d", "d"):
        assert_user_error(qwex("gc", "--older-than", bad), "--older-than", "not an age")
    assert_user_error(qwex("pin", "ffffffff"), "no key, derivation or run matches")
    assert_user_error(qwex("pin", qwex.json("ls")[0]["run_id"]), "not realised")  # a failed key
    assert_user_error(qwex("unpin", "ffff"), "no pinned key matches")


def test_gc_refuses_to_sweep_when_a_needed_record_is_unreadable(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drvs", {"t.drv": drv_text(job("--out", "x=1"))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    manifest = qwex.json("show", key)["run"]["manifest"][7:]
    path = qwex.store / "manifests" / manifest[:2] / manifest
    path.chmod(0o644)
    path.write_bytes(b"{}")
    orphan = _orphan_blob(qwex, b"garbage")
    cp = qwex("gc")
    assert cp.returncode == 1 and "verify --repair" in cp.stderr and len(cp.stderr.splitlines()) == 1
    assert orphan.exists()  # nothing was deleted
    assert qwex("verify", "--repair").returncode == 1
    qwex.ok("gc")
    assert not orphan.exists()


GATED = "echo $$ > {pid}; while [ ! -e {gate} ]; do sleep 0.05; done; mkdir -p out; cp data.csv out/copy.csv"


def _start_gated(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``qwex build`` of a job with a file input that runs until ``gate`` exists."""
    pid, gate = tmp_path / "job.pid", tmp_path / "gate"
    git_repo.commit("drv", {"slow.drv": drv_text(GATED.format(pid=pid, gate=gate), name="slow",
                                                 inputs={"data.csv": f"file:{dataset}"})})
    proc = qwex.popen("build", "slow.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: pid.exists() and pid.read_text().strip(), 30, "the job to start")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, gate


def test_gc_during_a_running_build_keeps_everything_it_needs(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    proc, gate = _start_gated(qwex, git_repo, dataset, tmp_path)
    try:
        [run_id] = os.listdir(qwex.store / "tmp/roots")
        live = json.loads((qwex.store / "tmp/roots" / run_id).read_text())
        drv = live["drv"][7:]
        # Unreachable but for the live root: the derivation record, its snapshot and input.
        needed = {f"derivations/{drv[:2]}/{drv}", "blobs/" + _orphan_path(dataset.read_bytes())}
        orphan = _orphan_blob(qwex, b"an unrelated orphan")
        before = _store_files(qwex)
        assert needed <= before

        t0 = time.monotonic()
        out = qwex.ok("gc", timeout=20).stdout
        assert time.monotonic() - t0 < 10  # gc does not wait for the job
        assert f"kept running build {run_id}" in out
        assert _store_files(qwex) == before - {str(orphan.relative_to(qwex.store))}
        assert (qwex.store / "tmp/runs" / run_id / "work/data.csv").exists()
        assert proc.poll() is None
    finally:
        gate.touch()
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert b"(built" in stdout
    assert qwex("verify").returncode == 0
    assert qwex.build("slow.drv", cwd=git_repo.path).cached
    assert not (qwex.store / "tmp/roots" / run_id).exists()
    assert not (qwex.store / "tmp/runs" / run_id).exists()


def _orphan_path(data: bytes) -> str:
    h = blake3.blake3(data).hexdigest()
    return f"{h[:2]}/{h}"


def test_gc_removes_leftovers_of_a_killed_build(
    qwex: Qwex, git_repo: GitRepo, dataset: Path, tmp_path: Path
) -> None:
    proc, gate = _start_gated(qwex, git_repo, dataset, tmp_path)
    [run_id] = os.listdir(qwex.store / "tmp/roots")
    proc.kill()  # kill -9 of qwex; its job keeps running until we stop it too
    proc.communicate()
    with contextlib.suppress(ProcessLookupError):
        os.kill(int((tmp_path / "job.pid").read_text()), signal.SIGKILL)
    tmp = qwex.store / "tmp"
    (tmp / "put-0123abcd").write_bytes(b"half an object")
    (tmp / "bundle-4567").write_bytes(b"half a bundle")
    locks = set(os.listdir(tmp / "locks"))
    assert (tmp / "runs" / run_id / "work").is_dir()

    dry = qwex.json("gc", "--dry-run")
    assert set(dry["tmp"]) == {f"runs/{run_id}", f"roots/{run_id}", "put-0123abcd", "bundle-4567"}
    assert (tmp / "runs" / run_id).exists()
    qwex.ok("gc")
    assert sorted(os.listdir(tmp)) == ["gc.lock", "locks", "roots", "runs"]
    assert os.listdir(tmp / "runs") == [] and os.listdir(tmp / "roots") == []
    assert set(os.listdir(tmp / "locks")) == locks
    assert not any(p.startswith("derivations/") for p in _store_files(qwex))  # its drv was garbage

    gate.touch()
    assert not qwex.build("slow.drv", cwd=git_repo.path).cached
    assert qwex("verify").returncode == 0


def test_gc_keeps_bundles_that_later_snapshots_chain_onto(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    from qwexstore.digest import hash_bytes, hex_of
    from qwexstore.index import Index

    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "x=1"), name="t"), "big.txt": "x" * 5000})
    c1 = git_repo.head()
    first = qwex.build("t.drv", cwd=git_repo.path)
    c2 = git_repo.commit("small change", {"small.txt": "y\n"})
    second = qwex.build("t.drv", cwd=git_repo.path)
    snap2 = qwex.json("show", second.key)["derivation"]["source"]["snapshot"]
    qwex.ok("pin", second.key)

    doc = qwex.json("gc", "--older-than", "0s")
    assert doc["dropped"] == [first.key] and doc["removed"]["snapshot"] == 1
    index_dir = qwex.home / "index" / hex_of(hash_bytes(str(qwex.store).encode()))[:16]
    with Index(str(index_dir)) as index:
        assert index.snapshot_of(c1) is None and index.snapshot_of(c2) == snap2
    dest = tmp_path / "co"
    qwex.ok("checkout", second.key, str(dest))
    assert (dest / "big.txt").read_text() == "x" * 5000  # from the first bundle of the chain
    git_repo.commit("another", {"small.txt": "z\n"})
    third = qwex.build("t.drv", cwd=git_repo.path)
    qwex.ok("checkout", third.key, str(tmp_path / "co3"))
    assert qwex("verify").returncode == 0


def test_gc_lock_modes_and_live_roots(tmp_path: Path) -> None:
    """Writers share the gc lock, gc excludes them; a roots file is live while its lock is
    held and dead once its holder is gone (here: a child process killed with SIGKILL)."""
    import asyncio
    import sys

    from qwexstore.liveroots import GcLock, scan_roots

    scratch = str(tmp_path / "tmp")

    async def modes() -> list[str]:
        seen: list[str] = []
        gc_lock = GcLock(scratch, exclusive=True, on_wait=lambda: seen.append("gc waits"))
        async with GcLock(scratch, exclusive=False), GcLock(scratch, exclusive=False):
            gc = asyncio.create_task(gc_lock.acquire())
            await asyncio.sleep(0.2)
            assert not gc.done()
            seen.append("writers done")
        await asyncio.wait_for(gc, 5)
        seen.append("gc runs")
        gc_lock.release()
        return seen

    assert asyncio.run(modes()) == ["gc waits", "writers done", "gc runs"]

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qwexstore.liveroots import LiveRoot, LiveRootFile\n"
        f"LiveRootFile.create({scratch!r}, LiveRoot.now('run-1', 'blake3:' + 'ab' * 32))\n"
        "print('ready', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        scan = scan_roots(scratch)
        assert [lr.run_id for lr in scan.live] == ["run-1"] and scan.dead == []
    finally:
        holder.kill()
        holder.communicate()
    scan = scan_roots(scratch)
    assert scan.live == [] and scan.dead == ["run-1"]


def test_older_than_is_not_stopped_by_a_missing_run_record(qwex: Qwex, git_repo: GitRepo) -> None:
    """A missing object is verify's report; gc neither needs it nor refuses to run."""
    git_repo.commit("drvs", {"a.drv": drv_text(job("--out", "a=1"), name="a"),
                             "b.drv": drv_text(job("--out", "b=1"), name="b")})
    a = qwex.build("a.drv", cwd=git_repo.path)
    b = qwex.build("b.drv", cwd=git_repo.path)
    qwex.ok("pin", a.key)
    next((qwex.store / "runs").rglob(a.run_id)).unlink()  # the pinned key's run record
    doc = qwex.json("gc", "--older-than", "0s")
    assert doc["dropped"] == [b.key]
    assert qwex("verify").returncode == 1  # and verify does report the missing record
