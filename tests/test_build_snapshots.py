"""Source snapshots in the store: incremental git bundles that plain git accepts in order."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import msgspec
from conftest import GitRepo, Qwex, drv_text, job

from qwexstore.records import Snapshot


def _blob(qwex: Qwex, digest: str) -> Path:
    h = digest.removeprefix("blake3:")
    return qwex.store / "blobs" / h[:2] / h


def _snapshots(qwex: Qwex) -> dict[str, Snapshot]:
    """Every snapshot record in the store, by commit."""
    out = {}
    for p in (qwex.store / "snapshots").glob("*/*"):
        snap = msgspec.json.decode(p.read_bytes(), type=Snapshot)
        out[snap.commit] = snap
    return out


def _git(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], env=env, capture_output=True, text=True,
                          check=False)


def test_snapshots_are_incremental_and_valid_git_bundles(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    big = random.Random(1).randbytes(300_000)  # incompressible: the full bundle is large
    c1 = git_repo.commit("data", {"weights.bin": big, "params.txt": "lr=0.1\n",
                                  "t.drv": drv_text(job("--copy", "params.txt=p.txt"))})
    k1 = qwex.build("t.drv", cwd=git_repo.path).key
    c2 = git_repo.commit("tune", {"params.txt": "lr=0.2\n"})
    k2 = qwex.build("t.drv", cwd=git_repo.path).key
    assert k1 != k2

    snaps = _snapshots(qwex)
    assert set(snaps) == {c1, c2}
    s1, s2 = snaps[c1], snaps[c2]
    assert len(s1.bundles) == 1
    assert s2.bundles[:-1] == s1.bundles  # the chain extends the previous snapshot
    assert len(s2.bundles) == 2
    first, last = (_blob(qwex, d).stat().st_size for d in s2.bundles)
    assert first > 300_000
    assert last < 4096 and last * 50 < first, (first, last)
    # the derivation records point at these snapshots
    assert qwex.json("show", k2)["derivation"]["source"]["snapshot"] == s2.digest()

    # Plain git accepts every bundle applied in order, and refuses the increment alone.
    verify = tmp_path / "verify"
    assert _git(tmp_path, qwex.env, "init", "-q", "--bare", str(verify)).returncode == 0
    cp = _git(verify, qwex.env, "bundle", "verify", str(_blob(qwex, s2.bundles[1])))
    assert cp.returncode != 0  # it needs its prerequisite, c1
    for i, digest in enumerate(s2.bundles):
        path = str(_blob(qwex, digest))
        cp = _git(verify, qwex.env, "bundle", "verify", path)
        assert cp.returncode == 0, cp.stderr
        cp = _git(verify, qwex.env, "fetch", "-q", path, f"+refs/heads/*:refs/heads/b{i}/*")
        assert cp.returncode == 0, cp.stderr
    heads = _git(verify, qwex.env, "for-each-ref", "--format=%(objectname)", "refs/heads/").stdout.split()
    assert sorted(heads) == sorted([c1, c2])
    assert _git(verify, qwex.env, "fsck", "--no-dangling").returncode == 0
    assert _git(verify, qwex.env, "show", f"{c2}:params.txt").stdout == "lr=0.2\n"
    assert _git(verify, qwex.env, "cat-file", "-s", f"{c2}:weights.bin").stdout.strip() == str(len(big))


def test_rebuild_at_same_commit_reuses_snapshot(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a=1")), "b.drv": drv_text(job("--out", "b=1"))})
    ka = qwex.build("a.drv", cwd=git_repo.path).key
    kb = qwex.build("b.drv", cwd=git_repo.path).key  # a new key, the same commit
    assert ka != kb
    (snap,) = _snapshots(qwex).values()
    assert snap.commit == git_repo.head() and len(snap.bundles) == 1
    for k in (ka, kb):
        assert qwex.json("show", k)["derivation"]["source"]["snapshot"] == snap.digest()
