"""Index at scale: the local LMDB index with a million realisations and runs in it.

One tiny real derivation is built (untimed) in three fresh stores; then one store's index
gets ``--index-entries`` synthetic but well-formed realisations, runs and derivation names
(written straight through ``Index.writer()``, in large transactions). Measured:

* ``Index.realisation(key)`` in process, for random present and absent keys (median, p99);
* ``qwex ls -n 50`` as a subprocess, on the big index and on a small one;
* ``qwex build`` of the real, cached key with the big index vs the small ones (interleaved;
  the second small store is a noise control).

The harness side is stdlib-only like the rest; the in-process part runs this file as a
worker (``python index_scale.py populate|lookup ...``) under the interpreter of the qwex
being measured, since it imports ``qwexstore``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    CommandFailed,
    Ctx,
    Record,
    fmt_s,
    git_init_commit,
    log,
    measure_many,
    qwex_env,
    run,
    time_cmd,
    write_drv,
)

#: Synthetic runs are spaced this far apart and end a day before now, so that 1,000,000 of
#: them span about a year and the real build's run stays the newest.
_STEP_NS = 30 * 10**9
_NAMES = ("prepare", "train", "evaluate", "sweep-lr", "finetune", "export")
_FILES = ("out/model.safetensors", "out/metrics.json", "out/log.txt", "out/config.json")

TINY_PY = """\
import os
os.makedirs("out", exist_ok=True)
with open("out/result.txt", "w") as f:
    f.write("42\\n")
if os.environ.get("BENCH_RUNLOG"):
    with open(os.environ["BENCH_RUNLOG"], "a") as f:
        f.write("tiny\\n")
"""


# --------------------------------------------------------------------------
# worker: runs under qwex's interpreter
# --------------------------------------------------------------------------


def _keys(n: int, seed: int) -> list[str]:
    """The hex of the synthetic keys; key ``i`` belongs to synthetic run ``i``."""
    rng = random.Random(seed)
    return [rng.randbytes(32).hex() for _ in range(n)]


def _run_id(ns: int, i: int) -> str:
    """Shaped like ``qwexstore.build.new_run_id``: ``YYYYmmddTHHMMSSffffffZ-<4 hex>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
    return f"{stamp}{(ns // 1000) % 1_000_000:06d}Z-{i & 0xFFFF:04x}"


def _stats(ns: list[int]) -> dict[str, Any]:
    s = sorted(ns)
    return {
        "n": len(s),
        "median_s": s[len(s) // 2] / 1e9,
        "p99_s": s[max(0, math.ceil(0.99 * len(s)) - 1)] / 1e9,
        "min_s": s[0] / 1e9,
        "max_s": s[-1] / 1e9,
        "mean_s": sum(s) / len(s) / 1e9,
    }


def _populate(path: str, n: int, seed: int, batch: int) -> dict[str, Any]:
    from qwexstore.index import Index, IndexedRealisation, RunSummary

    t0 = time.perf_counter()
    keys = _keys(n, seed)
    rng = random.Random(seed + 1)
    first_ns = time.time_ns() - 86_400 * 10**9 - n * _STEP_NS
    run_ids = [_run_id(first_ns + i * _STEP_NS, i) for i in range(n)]
    t_gen = time.perf_counter() - t0
    with Index(path) as index:
        # runs in time order, as builds append them
        for lo in range(0, n, batch):
            with index.writer() as w:
                for i in range(lo, min(n, lo + batch)):
                    started = first_ns + i * _STEP_NS
                    w.run(
                        run_ids[i],
                        RunSummary(
                            "blake3:" + keys[i],
                            _NAMES[i % len(_NAMES)],
                            "succeeded",
                            0,
                            started,
                            started + (1 + i % 3600) * 10**9,
                        ),
                    )
        # each run's realisation and derivation name (a derivation without drv: inputs has
        # its key as its hash), in key order: LMDB appends instead of splitting random pages
        order = sorted(range(n), key=keys.__getitem__)
        for lo in range(0, n, batch):
            with index.writer() as w:
                for i in order[lo : lo + batch]:
                    key = "blake3:" + keys[i]
                    nfiles = 1 + i % len(_FILES)
                    listing = [(f, rng.randrange(100, 10**9)) for f in _FILES[:nfiles]]
                    finished = first_ns + i * _STEP_NS + (1 + i % 3600) * 10**9
                    w.realisation(
                        key,
                        IndexedRealisation(
                            "blake3:" + rng.randbytes(32).hex(),
                            run_ids[i],
                            finished,
                            nfiles,
                            sum(size for _, size in listing),
                            listing,
                        ),
                    )
                    w.derivation(key, _NAMES[i % len(_NAMES)])
        counts = {db: index.count(db) for db in ("real", "runs", "drv", "snap", "stat")}
    total = time.perf_counter() - t0
    data = os.stat(os.path.join(path, "data.mdb"))
    return {
        "seconds": total,
        "generate_s": t_gen,
        "write_s": total - t_gen,
        "batch": batch,
        "counts": counts,
        "data_mdb_bytes": data.st_size,
        "data_mdb_allocated_bytes": data.st_blocks * 512,
    }


def _lookup(path: str, n: int, seed: int, samples: int, real_key: str) -> dict[str, Any]:
    from qwexstore.index import Index

    keys = _keys(n, seed)
    present = ["blake3:" + keys[i] for i in random.Random(seed + 2).sample(range(n), min(n, samples))]
    rng = random.Random(seed + 3)
    absent = ["blake3:" + rng.randbytes(32).hex() for _ in range(samples)]
    t0 = time.perf_counter_ns()
    index = Index(path)
    hit = index.realisation(real_key)
    open_ns = time.perf_counter_ns() - t0
    if hit is None:
        raise SystemExit(f"the real key {real_key} is not in {path}")
    out: dict[str, Any] = {"open_and_first_lookup_s": open_ns / 1e9}
    clock = time.perf_counter_ns
    for label, ks, want in (("present", present, True), ("absent", absent, False)):
        ns = []
        for k in ks:
            t = clock()
            r = index.realisation(k)
            ns.append(clock() - t)
            if (r is not None) != want:
                raise SystemExit(f"{k}: expected {'a hit' if want else 'a miss'}")
        out[label] = _stats(ns)
    index.close()
    return out


def _worker(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="index_scale.py", description="index_scale's in-process worker")
    ap.add_argument("op", choices=["populate", "lookup"])
    ap.add_argument("index", help="the LMDB index directory")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--real-key", default="")
    a = ap.parse_args(argv)
    if a.op == "populate":
        res = _populate(a.index, a.n, a.seed, a.batch)
    else:
        res = _lookup(a.index, a.n, a.seed, a.samples, a.real_key)
    print(json.dumps(res))


# --------------------------------------------------------------------------
# harness side (stdlib only; imported by run.py)
# --------------------------------------------------------------------------


def bench_index_scale(ctx: Ctx) -> list[Record]:
    q = ctx.tools.need_qwex()
    ctx.tools.need_git()
    qpy = ctx.tools.need_qwex_python()
    n = ctx.args.index_entries
    reps = ctx.reps(10)
    env = ctx.env
    big = f"{n:,}"

    # a tiny real derivation, realised (untimed) in three fresh stores
    d = ctx.fresh("idx-repo")
    (d / "tiny.py").write_text(TINY_PY)
    (d / ".gitignore").write_text("out/\n")
    write_drv(d / "tiny.drv", "tiny", [ctx.tools.python, "tiny.py"], ["out/"], env_pass=["BENCH_RUNLOG"])
    git_init_commit(env, d)
    runlog = ctx.workdir / "tmp" / "index-scale.runlog"
    runlog.unlink(missing_ok=True)
    envs = {
        tag: qwex_env(dict(env, BENCH_RUNLOG=str(runlog)), ctx.fresh_home(f"idx-{tag}"))
        for tag in ("big", "small", "small2")
    }
    keys = {
        tag: json.loads(run([*q, "build", "--json", "tiny.drv"], cwd=d, env=e).stdout)["key"]
        for tag, e in envs.items()
    }
    key = keys["big"]
    if len(set(keys.values())) != 1:
        raise CommandFailed(f"the same .drv got different keys in three stores: {keys}")
    indexes = [p for p in (Path(envs["big"]["QWEX_HOME"]) / "index").iterdir() if p.is_dir()]
    if len(indexes) != 1:
        raise CommandFailed(f"expected one index under QWEX_HOME/index, found {indexes}")
    index = str(indexes[0])
    worker = [qpy, str(Path(__file__).resolve())]

    log(f"  populating the index with {big} realisations, runs and derivation names")
    t0 = time.perf_counter()
    pop = json.loads(run([*worker, "populate", index, "--n", str(n)], env=env).stdout)
    pop_wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(index).iterdir())
    log(f"  populated in {pop['seconds']:.1f} s ({pop_wall:.1f} s wall); index {size / 1e6:.0f} MB")
    look = json.loads(run([*worker, "lookup", index, "--n", str(n), "--real-key", key], env=env).stdout)
    for kind in ("present", "absent"):
        st = look[kind]
        log(f"  Index.realisation, {kind} key: median {fmt_s(st['median_s'])}, p99 {fmt_s(st['p99_s'])}")

    def ls_once(tag: str) -> Callable[[int], float]:
        return lambda i: time_cmd([*q, "ls", "-n", "50"], cwd=d, env=envs[tag])

    ls = measure_many(
        [
            (f"qwex ls -n 50, index with {big} runs (+1 real)", ls_once("big")),
            ("qwex ls -n 50, index with only the real run", ls_once("small")),
            (
                f"qwex ls -n 50 --json (no rich table), index with {big} runs",
                lambda i: time_cmd([*q, "ls", "-n", "50", "--json"], cwd=d, env=envs["big"]),
            ),
        ],
        reps,
    )
    listed = json.loads(run([*q, "ls", "-n", "50", "--json"], cwd=d, env=envs["big"]).stdout)

    def build_once(tag: str) -> Callable[[int], float]:
        return lambda i: time_cmd([*q, "build", "tiny.drv"], cwd=d, env=envs[tag])

    builds = measure_many(
        [
            ("qwex build tiny.drv (cache hit), index with only its own entries", build_once("small")),
            (
                f"qwex build tiny.drv (cache hit), index with {big} more realisations and runs",
                build_once("big"),
            ),
            (
                "qwex build tiny.drv (cache hit), a second index with only its own entries",
                build_once("small2"),
            ),
        ],
        reps,
    )

    scale = f"index of {big} realisations"
    note = (
        f"{big} realisations + {big} runs + {big} derivation names written through Index.writer() in "
        f"transactions of {pop['batch']:,}, in {pop['seconds']:.1f} s ({pop_wall:.1f} s wall, "
        f"interpreter start included); index {size / 1e6:.0f} MB on disk"
    )
    populate_rows: list[dict[str, Any]] = [
        {
            "label": "populate: generate the synthetic entries",
            "median_s": pop["generate_s"],
            "min_s": None,
            "n": 1,
        },
        {"label": "populate: write them (Index.writer)", "median_s": pop["write_s"], "min_s": None, "n": 1},
        {
            "label": "index size on disk (data.mdb, allocated)",
            "text": f"{pop['data_mdb_allocated_bytes'] / 1e6:.0f} MB",
            "bytes": pop["data_mdb_allocated_bytes"],
        },
        {
            "label": "index entries (real, runs, drv, snap, stat)",
            "text": ", ".join(f"{v:,}" for v in pop["counts"].values()),
            "counts": pop["counts"],
        },
        {
            "label": "Index(path) + the first lookup, in a fresh process",
            "median_s": look["open_and_first_lookup_s"],
            "min_s": None,
            "n": 1,
        },
    ]
    rows = []
    for kind, what in (("present", "random present keys"), ("absent", "random absent keys")):
        st = look[kind]
        rec = Record(
            "index_lookup" + ("" if kind == "present" else "_absent"),
            f"{scale}: `Index.realisation(key)` in process, {what}",
            peer_name="",
            target_abs_s=1e-4,
            qwex_s=st["median_s"],
            qwex_min_s=st["min_s"],
            qwex_p99_s=st["p99_s"],
            qwex_label=f"Index.realisation, {what}",
        )
        rec.context.append({"label": f"Index.realisation(key), {what}", **st})
        rows.append(rec)
    rows[0].message = note
    rows[0].context += populate_rows

    rec = Record("index_ls", f"{scale} and runs: `qwex ls` (newest 50)", peer_name="", target_abs_s=0.3)
    rec.set_qwex(ls[0])
    rec.context += [t.as_dict() for t in ls]
    if len(listed) != 50:
        rec.invalid = True
        rec.message = f"INVALID: qwex ls -n 50 --json listed {len(listed)} runs. "
    rows.append(rec)

    rec = Record(
        "index_cached_build",
        f"{scale}: `qwex build` cache hit vs the same key in a small index (no slower within noise)",
        peer_name="qwex build, same key, index with only its own entries",
        target_ratio=1.05,
    )
    rec.set_peer(builds[0])
    rec.set_qwex(builds[1])
    rec.context += [t.as_dict() for t in builds]
    rec.context.append(
        {
            "label": "noise control: second small index / first small index",
            "ratio": builds[2].median / builds[0].median,
        }
    )
    runs = len(runlog.read_text().splitlines()) if runlog.exists() else 0
    if runs != 3:  # one real build per store, the timed builds all hits
        rec.invalid = True
        rec.message = f"INVALID: the tiny stage ran {runs} times (expected 3: once per store). "
    rows.append(rec)
    return rows


if __name__ == "__main__":
    _worker(sys.argv[1:])
