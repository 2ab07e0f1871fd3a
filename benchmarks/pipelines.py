"""Cached pipelines: `qwex build` of an up-to-date pipeline vs `dvc repro` of the same one.

The workloads, the shared setup (a git repo per tool, one untimed build/repro that makes
everything up to date) and the check that the timed commands really were cache hits: every
stage appends a line to ``$BENCH_RUNLOG`` when it runs, so after the timed repetitions each
tool must have run each stage exactly once. The three-stage benchmark is here; the
one-stage cache hit, with the other fast-path rows, is in ``fastpath.py``. Without dvc the
qwex figures are still measured and the peer's cells say so.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    DVC_MISSING,
    CommandFailed,
    Ctx,
    Item,
    Record,
    Skip,
    Timing,
    git,
    git_init_commit,
    measure,
    measure_many,
    qwex_env,
    run,
    time_cmd,
    write_drv,
)

# --------------------------------------------------------------------------
# workload: a CSV and small stdlib-only stage scripts
# --------------------------------------------------------------------------

#: Appended to every stage script: the harness counts how often each stage really ran.
_RUNLOG = """\
# the harness counts how often the stage really ran (cache hits must not run it)
if os.environ.get("BENCH_RUNLOG"):
    with open(os.environ["BENCH_RUNLOG"], "a") as f:
        f.write("{tag}\\n")
"""

TRAIN_PY = """\
import csv, json, os, statistics
with open("data/raw.csv", newline="") as f:
    rows = list(csv.DictReader(f))
cols = [c for c in rows[0] if c != "id"]
model = {c: statistics.fmean(float(r[c]) for r in rows) for c in cols}
os.makedirs("out", exist_ok=True)
with open("out/model.json", "w") as f:
    json.dump(model, f, indent=1, sort_keys=True)
with open("out/metrics.txt", "w") as f:
    f.write(f"rows={len(rows)}\\n")
""" + _RUNLOG.format(tag="ran")

# three stages; each takes its input and output paths as arguments, so the same scripts
# serve dvc's layout (prepared/, model/, eval/) and qwex's (inputs staged under data/, model/)
PREPARE_PY = """\
import csv, os, sys
src, out = sys.argv[1], sys.argv[2]
with open(src, newline="") as f:
    rows = list(csv.DictReader(f))
os.makedirs(out, exist_ok=True)
for split, test in (("train", False), ("test", True)):
    with open(os.path.join(out, split + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if (int(r["id"]) % 5 == 0) == test)
""" + _RUNLOG.format(tag="prepare")

STAGE_TRAIN_PY = """\
import csv, json, os, statistics, sys
src, out = sys.argv[1], sys.argv[2]
with open(src, newline="") as f:
    rows = list(csv.DictReader(f))
feats = ["a", "b", "c", "d"]
centroids = {}
for label in sorted({r["label"] for r in rows}):
    mine = [r for r in rows if r["label"] == label]
    centroids[label] = [statistics.fmean(float(r[c]) for r in mine) for c in feats]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.json"), "w") as f:
    json.dump({"features": feats, "centroids": centroids}, f, indent=1, sort_keys=True)
""" + _RUNLOG.format(tag="train")

EVALUATE_PY = """\
import csv, json, os, sys
model_path, test_path, out = sys.argv[1:4]
with open(model_path) as f:
    m = json.load(f)
with open(test_path, newline="") as f:
    rows = list(csv.DictReader(f))
def predict(r):
    x = [float(r[c]) for c in m["features"]]
    return min(m["centroids"], key=lambda k: sum((a - b) ** 2 for a, b in zip(x, m["centroids"][k])))
acc = sum(predict(r) == r["label"] for r in rows) / len(rows)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"accuracy": acc, "n": len(rows)}, f)
""" + _RUNLOG.format(tag="evaluate")


def raw_csv(rows: int = 5000) -> str:
    """The pipelines' input: ``rows`` rows × 6 columns (~200 KB for 5,000), deterministic."""
    rng = random.Random(1)
    lines = ["id,a,b,c,d,label\n"]
    for i in range(rows):
        lines.append(
            f"{i},{rng.random():.6f},{rng.random():.6f},{rng.random():.6f},"
            f"{rng.gauss(0, 1):.6f},{rng.randint(0, 9)}\n"
        )
    return "".join(lines)


#: The floor row's label: the bare start-up of the interpreter that runs qwex.
FLOOR_LABEL = "floor: python -c pass (qwex's interpreter)"


def _count_lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.exists() else 0


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> text) under ``root``; returns ``root``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# --------------------------------------------------------------------------
# shared setup: an up-to-date dvc pipeline, an up-to-date qwex pipeline
# --------------------------------------------------------------------------


@dataclass
class DvcStage:
    name: str
    cmd: list[str]
    deps: list[str]
    outs: list[str]


@dataclass
class Pipeline:
    """One tool's repo, made up to date by one untimed build: the command to time."""

    label: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    runlog: Path

    def once(self, i: int) -> float:
        return time_cmd(self.cmd, cwd=self.cwd, env=self.env)


def dvc_yaml(stages: list[DvcStage]) -> str:
    lines = ["stages:"]
    for s in stages:
        lines += [f"  {s.name}:", f"    cmd: {json.dumps(shlex.join(s.cmd))}", "    deps:"]
        lines += [f"    - {d}" for d in s.deps]
        lines += ["    outs:"] + [f"    - {o}" for o in s.outs]
    return "\n".join(lines) + "\n"


def dvc_pipeline(ctx: Ctx, prefix: str, files: dict[str, str], stages: list[DvcStage]) -> Pipeline:
    """A git repo with ``files`` committed, ``dvc init``, the stages in dvc.yaml, one
    ``dvc repro`` (the misses) and dvc.lock committed: the pipeline is up to date."""
    dvc = ctx.tools.need_dvc()
    ctx.tools.need_git()
    runlog = ctx.workdir / "tmp" / f"{prefix}-dvc.runlog"
    runlog.unlink(missing_ok=True)
    env = dict(ctx.env, BENCH_RUNLOG=str(runlog))
    d = ctx.fresh(prefix + "-dvc")
    write_files(d, files)
    (d / "dvc.yaml").write_text(dvc_yaml(stages))
    git_init_commit(env, d)
    run([*dvc, "init", "-q"], cwd=d, env=env)
    run([*dvc, "repro", "-q"], cwd=d, env=env)
    git(env, d, "add", "-A")
    git(env, d, "commit", "-q", "-m", "dvc repro")
    for out in (o for s in stages for o in s.outs):
        if not (d / out).exists():
            raise CommandFailed(f"dvc repro did not produce {out}")
    return Pipeline("dvc repro (up to date)", [*dvc, "repro", "-q"], d, env, runlog)


def qwex_pipeline(
    ctx: Ctx,
    q: list[str],
    prefix: str,
    files: dict[str, str],
    untracked: dict[str, str],
    drvs: dict[str, dict[str, Any]],
    target: str,
) -> Pipeline:
    """A git repo with ``files`` and the .drv files (``write_drv`` keyword arguments)
    committed, ``untracked`` files beside them (git-ignored, given as ``file:`` inputs), and
    one ``qwex build target`` in a fresh QWEX_HOME (the misses)."""
    runlog = ctx.workdir / "tmp" / f"{prefix}-qwex.runlog"
    runlog.unlink(missing_ok=True)
    d = ctx.fresh(prefix + "-qwex")
    write_files(d, {**files, **untracked, ".gitignore": "".join(f"{u}\n" for u in untracked) + "out/\n"})
    for fname, kw in drvs.items():
        write_drv(d / fname, **kw)
    git_init_commit(ctx.env, d)
    env = qwex_env(dict(ctx.env, BENCH_RUNLOG=str(runlog)), ctx.fresh_home(prefix))
    run([*q, "build", target], cwd=d, env=env)
    return Pipeline(f"qwex build {target} (cache hit)", [*q, "build", target], d, env, runlog)


def floor_python(ctx: Ctx) -> str:
    """The interpreter of the qwex under test (its bare start-up is the floor of any Python
    CLI), else, without a qwex, the harness's own."""
    if ctx.tools.qwex:
        try:
            return ctx.tools.need_qwex_python()
        except Skip:
            pass
    return ctx.tools.python


def cached_pair(
    ctx: Ctx,
    rec: Record,
    dvc: Pipeline | None,
    qwex: Pipeline | None,
    stages: int,
    reps: int,
    extra: Sequence[Item] = (),
) -> dict[str, Timing]:
    """Time the up-to-date pipelines (either may be absent), the floor (``python -c pass`` under
    qwex's interpreter) and the ``extra`` commands, all interleaved; then check that neither
    tool re-ran a stage (the extra commands share qwex's run log, so they are checked too).

    Fills ``rec`` (peer dvc, qwex; a missing dvc leaves the note ``DVC_MISSING``). Returns the
    timings by key: ``"dvc"``, ``"qwex"`` (when present), ``"floor"`` and the extra keys."""
    py = floor_python(ctx)
    items: list[Item] = [(k, p.label, p.once) for k, p in (("dvc", dvc), ("qwex", qwex)) if p]
    items.append(
        ("floor", FLOOR_LABEL, lambda i: time_cmd([py, "-c", "pass"], env=ctx.env)),
    )
    items += extra
    timings = measure_many([(label, once) for _, label, once in items], reps)
    got = {key: t for (key, _, _), t in zip(items, timings, strict=True)}
    rec.context += [t.as_dict() for t in timings]
    if dvc:
        rec.set_peer(got["dvc"])
        runs = _count_lines(dvc.runlog)
        if runs != stages:
            rec.message += f"dvc ran the stages {runs} times (expected {stages}). "
    else:
        rec.peer_note = DVC_MISSING
    if qwex:
        rec.set_qwex(got["qwex"])
        runs = _count_lines(qwex.runlog)
        if runs == 0:
            rec.message += (
                "could not verify that qwex's hits skip the command (BENCH_RUNLOG not passed to the job). "
            )
        elif runs > stages:
            rec.invalid = True
            rec.message += (
                f"INVALID: qwex ran the stages {runs} times (expected {stages}): "
                "the timed builds were not cache hits. "
            )
    else:
        rec.status = "no-qwex"
    return got


# --------------------------------------------------------------------------
# benchmarks (the one-stage cache hit, with its fast-path rows, is in fastpath.py)
# --------------------------------------------------------------------------


def bench_pipeline_3stage(ctx: Ctx) -> Record:
    """prepare → train → evaluate, up to date: dvc repro vs qwex build evaluate.drv."""
    rec = Record(
        "pipeline_3stage",
        "cache hit: up-to-date three-stage pipeline (prepare → train → evaluate)",
        peer_name="dvc repro",
        target_ratio=0.15,
    )
    py = ctx.tools.python
    reps = ctx.reps(10)
    q = ctx.qwex()
    scripts = {"prepare.py": PREPARE_PY, "train.py": STAGE_TRAIN_PY, "evaluate.py": EVALUATE_PY}
    # dvc: each stage's outputs in a directory of the repo; deps on the previous directories
    direct = [
        [py, "prepare.py", "data/raw.csv", "prepared"],
        [py, "train.py", "prepared/train.csv", "model"],
        [py, "evaluate.py", "model/model.json", "prepared/test.csv", "eval"],
    ]
    files = {"data/raw.csv": raw_csv(), **scripts}
    dvc = None
    if ctx.tools.dvc:
        dvc = dvc_pipeline(
            ctx,
            "pipe3",
            files,
            [
                DvcStage("prepare", direct[0], ["prepare.py", "data/raw.csv"], ["prepared"]),
                DvcStage("train", direct[1], ["train.py", "prepared"], ["model"]),
                DvcStage("evaluate", direct[2], ["evaluate.py", "model", "prepared"], ["eval"]),
            ],
        )
    qwex = None
    if q:
        # qwex: each stage's out/ is staged under its input's destination (data/out/, model/out/)
        def stage(name: str, command: list[str], inputs: dict[str, str]) -> dict[str, Any]:
            return {
                "name": name,
                "command": [py, *command],
                "outputs": ["out/"],
                "inputs": inputs,
                "env_pass": ["BENCH_RUNLOG"],
                "include": [command[0]],
            }

        drvs = {
            "prepare.drv": stage(
                "prepare", ["prepare.py", "data/raw.csv", "out"], {"data/raw.csv": "file:raw.csv"}
            ),
            "train.drv": stage(
                "train", ["train.py", "data/out/train.csv", "out"], {"data": "drv:prepare.drv"}
            ),
            "evaluate.drv": stage(
                "evaluate",
                ["evaluate.py", "model/out/model.json", "data/out/test.csv", "out"],
                {"model": "drv:train.drv", "data": "drv:prepare.drv"},
            ),
        }
        qwex = qwex_pipeline(ctx, q, "pipe3", scripts, {"raw.csv": raw_csv()}, drvs, "evaluate.drv")
    cached_pair(ctx, rec, dvc, qwex, 3, reps)

    if ctx.quick:
        return rec
    here = dvc.cwd if dvc else write_files(ctx.fresh("pipe3-direct"), files)

    def direct_once(i: int) -> float:
        return sum(time_cmd(c, cwd=here, env=ctx.env) for c in direct)

    rec.context.append(
        measure("the three stages' commands run directly, one after another", reps, direct_once).as_dict()
    )
    return rec
