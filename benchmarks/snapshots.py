"""Source snapshots: the snapshot step of a first/incremental `qwex build` vs `git bundle`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness import Bench, Ctx, Record, git, log, measure_many, qwex_env, rmtree, run, time_cmd


def _snapshot_bench(ctx: Ctx, rec: Record, repo_src: Path, prefix: str, incremental: bool) -> Record:
    """Shared by the synthetic and the real (nanoGPT) repo."""
    env = ctx.env
    reps = ctx.reps(5)
    q = ctx.qwex()
    # work on a private clone so the cached repo stays pristine; --no-hardlinks +
    # repack so the clone has its own pack
    d = ctx.workdir / "runs" / f"{prefix}-repo"
    rmtree(d)
    run(["git", "clone", "-q", "--no-hardlinks", str(repo_src), str(d)], env=env)
    run(["git", "repack", "-adq"], cwd=d, env=env)
    size = sum(f.stat().st_size for f in (d / ".git" / "objects").rglob("*") if f.is_file())
    ncommits = int(git(env, d, "rev-list", "--count", "HEAD").stdout)
    head = git(env, d, "rev-parse", "--short=12", "HEAD").stdout.decode().strip()
    rec.message = f"{ncommits} commits, {size / 1e6:.1f} MB of git objects, HEAD {head}"
    log(f"  repo: {rec.message}")
    bundle = ctx.workdir / "tmp" / f"{prefix}.bundle"
    commit_no = [0]

    def small_commit() -> None:
        commit_no[0] += 1
        with open(d / "README.md", "a") as f:
            f.write(f"bench edit {commit_no[0]}\n")
        git(env, d, "commit", "-q", "-am", f"bench edit {commit_no[0]}")

    def bundle_once(spec: str, commit_first: bool = False) -> Callable[[int], float]:
        def once(i: int) -> float:
            if commit_first:
                small_commit()
            bundle.unlink(missing_ok=True)
            dt = time_cmd(["git", "bundle", "create", "-q", str(bundle), spec], cwd=d, env=env)
            bundle.unlink()
            return dt

        return once

    items = [("git bundle create x.bundle HEAD", bundle_once("HEAD"))]
    if not incremental:
        if q:
            # every build/hash is the first one: fresh QWEX_HOME each time
            def first(verb: str) -> Callable[[int], float]:
                def once(i: int) -> float:
                    home = ctx.fresh_home(prefix)
                    dt = time_cmd([*q, verb, "snapshot.drv"], cwd=d, env=qwex_env(env, home))
                    rmtree(home)
                    return dt

                return once

            items += [
                ("qwex build snapshot.drv (first build, fresh QWEX_HOME)", first("build")),
                ("qwex hash snapshot.drv (fresh QWEX_HOME)", first("hash")),
            ]
    else:
        items.append(
            (
                "git bundle create x.bundle HEAD~1..HEAD (after a small commit)",
                bundle_once("HEAD~1..HEAD", commit_first=True),
            )
        )
        if q:
            qenv = qwex_env(env, ctx.fresh_home(prefix))
            run([*q, "build", "snapshot.drv"], cwd=d, env=qenv)  # the first snapshot

            # each timed call runs on a commit nothing has seen yet (build and hash on
            # separate commits, so neither warms the other); the store stays warm
            def after_commit(verb: str) -> Callable[[int], float]:
                def once(i: int) -> float:
                    small_commit()
                    return time_cmd([*q, verb, "snapshot.drv"], cwd=d, env=qenv)

                return once

            items += [
                ("qwex build snapshot.drv after one small commit (warm QWEX_HOME)", after_commit("build")),
                ("qwex hash snapshot.drv after one small commit", after_commit("hash")),
            ]

    timings = measure_many(items, reps)
    peer = timings[0]
    rec.set_peer(peer)
    rec.context += [t.as_dict() for t in timings]
    if not q:
        rec.status = "no-qwex"
    else:
        b, h = timings[-2], timings[-1]
        snap = max(0.0, b.median - h.median)
        rec.qwex_s, rec.qwex_min_s = snap, None
        rec.qwex_label = "snapshot step = median(qwex build) − median(qwex hash); command is `true`"
        rec.context.append(
            {
                "label": "snapshot step = median(build) − median(hash)",
                "median_s": snap,
                "min_s": None,
                "n": "",
            }
        )
        rec.context.append({"label": "whole qwex build / git bundle HEAD", "ratio": b.median / peer.median})
    rmtree(d)
    return rec


def _bench(name: str, title: str, prefix: str, incremental: bool, real_repo: bool, **target: float) -> Bench:
    """A snapshot benchmark: ``git bundle create x.bundle HEAD`` is the peer of each."""

    def bench(ctx: Ctx) -> Record:
        ctx.tools.need_git()
        rec = Record(name, title, peer_name="git bundle create x.bundle HEAD", **target)
        repo = ctx.data.nanogpt_repo() if real_repo else ctx.data.synth_repo()
        return _snapshot_bench(ctx, rec, repo, prefix, incremental)

    return bench


bench_snapshot = _bench(
    "snapshot",
    "source snapshot: first build in a nanoGPT-sized repo",
    "snap",
    incremental=False,
    real_repo=False,
    target_ratio=4.0,
)
bench_snapshot_incremental = _bench(
    "snapshot_incremental",
    "source re-snapshot after one small commit (same repo)",
    "snapinc",
    incremental=True,
    real_repo=False,
    target_abs_s=0.3,
)
bench_snapshot_nanogpt = _bench(
    "snapshot_nanogpt",
    "source snapshot: first build in a nanoGPT clone (optional, informational)",
    "nanogpt",
    incremental=False,
    real_repo=True,
)
