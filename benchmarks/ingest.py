"""Ingest: `qwex build` of a job whose outputs are one big file or many small ones, vs `dvc add`."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from harness import (
    Ctx,
    Record,
    Timing,
    git,
    git_init_commit,
    log,
    measure,
    measure_many,
    qwex_env,
    rmtree,
    run,
    settle,
    time_cmd,
    write_drv,
)


def _dvc_add_once(ctx: Ctx, prefix: str, place: Callable[[Path], str]) -> Callable[[int], float]:
    """Fresh git+dvc repo per rep (hardlink cache); `place` puts the data in, untimed."""
    dvc = ctx.tools.need_dvc()
    env = ctx.env

    def once(i: int) -> float:
        d = ctx.fresh(prefix)
        git(env, d, "init", "-q", "-b", "main")
        run([*dvc, "init", "-q"], cwd=d, env=env)
        run([*dvc, "config", "cache.type", "hardlink"], cwd=d, env=env)
        target = place(d)
        settle()
        dt = time_cmd([*dvc, "add", "-q", target], cwd=d, env=env)
        rmtree(d)
        return dt

    return once


def _qwex_build_once(
    ctx: Ctx, q: list[str], prefix: str, make_command: Callable[[], list[str]]
) -> Callable[[int], float]:
    """Fresh repo + fresh QWEX_HOME per rep, so every build is a cache miss.

    ``make_command`` does the rep's untimed staging and returns the job's argv."""
    env = ctx.env

    def once(i: int) -> float:
        d = ctx.fresh(prefix)
        (d / ".gitignore").write_text("out/\n")
        write_drv(d / "ingest.drv", "ingest", make_command(), ["out/"])
        git_init_commit(env, d)
        home = ctx.fresh_home(prefix)
        settle()
        dt = time_cmd([*q, "build", "ingest.drv"], cwd=d, env=qwex_env(env, home))
        rmtree(home)
        rmtree(d)
        return dt

    return once


def _ingest_pair(ctx: Ctx, q: list[str] | None, src: Path, name: str, prefix: str) -> list[Timing]:
    """dvc add vs qwex build of the same data (a file or a tree), interleaved.

    --ingest-mode move (default): every rep gets a fresh private copy of the data
    (untimed; link count 1, like a file the job just wrote); dvc adds it in place, the
    qwex job `mv`s it into out/ (a rename). --ingest-mode link: the pre-made data is
    hard-linked instead (link count >= 2: qwex then copies, as it must not take over an
    inode that someone else can still write)."""
    env = ctx.env
    link = ctx.args.ingest_mode == "link"
    cp = [ctx.tools.cp, "-rl" if link else "-r"] if src.is_dir() else None

    def stage(dst: Path) -> None:  # untimed
        if cp:
            run([*cp, str(src), str(dst)], env=env)
        elif link:
            os.link(src, dst)
        else:
            run([ctx.tools.cp, str(src), str(dst)], env=env)

    def place(d: Path) -> str:
        stage(d / name)
        return name

    how = "hard-linked pre-made data" if link else "a fresh private copy, placed untimed"
    items = [(f"dvc add {name} (fresh repo+cache; {how})", _dvc_add_once(ctx, prefix + "-dvc", place))]
    if q:

        def make_command() -> list[str]:
            if link:
                verb = f"{ctx.tools.cp} -rl" if src.is_dir() else ctx.tools.ln
                shell = f"{ctx.tools.mkdir} -p out && {verb} {shlex.quote(str(src))} out/{name}"
            else:
                staged = ctx.fresh(prefix + "-staged") / name
                stage(staged)
                shell = f"{ctx.tools.mkdir} -p out && {ctx.tools.mv} {shlex.quote(str(staged))} out/{name}"
            return [ctx.tools.sh, "-c", shell]

        what = "cp -rl / ln of the pre-made data" if link else "mv of a fresh private copy"
        items.append(
            (
                f"qwex build (miss, fresh QWEX_HOME; the job is `{what}` into out/)",
                _qwex_build_once(ctx, q, prefix + "-qwex", make_command),
            )
        )
    return measure_many(items, ctx.reps(3))


def _ingest_record(ctx: Ctx, name: str, title: str, data: Path, dest: str, tag: str) -> Record:
    """qwex build vs dvc add on the same data: the part both ingest benchmarks share."""
    rec = Record(name, title, peer_name="dvc add (cache.type hardlink)", target_ratio=0.5)
    ctx.tools.need_dvc()
    ctx.tools.need_git()
    q = ctx.qwex()
    timings = _ingest_pair(ctx, q, data, dest, tag)
    rec.context += [t.as_dict() for t in timings]
    rec.set_peer(timings[0])
    if q:
        rec.set_qwex(timings[1])
    else:
        rec.status = "no-qwex"
    return rec


def bench_ingest_1gib(ctx: Ctx) -> Record:
    big = ctx.data.big_file()
    rec = _ingest_record(
        ctx, "ingest_1gib", f"ingest one {ctx.args.big_mib} MiB output file", big, "big.bin", "ingest1g"
    )
    env = ctx.env
    reps = ctx.reps(3)

    # context: hashing and copying the same file
    b3sum, b3py = ctx.tools.b3sum, ctx.tools.blake3_python
    if b3sum:
        rec.context.append(
            measure("b3sum (CLI, all cores)", reps, lambda i: time_cmd([b3sum, str(big)], env=env)).as_dict()
        )
    if b3py:
        code = (
            "import sys, blake3; h = blake3.blake3(max_threads=blake3.blake3.AUTO); "
            "h.update_mmap(sys.argv[1]); print(h.hexdigest())"
        )
        rec.context.append(
            measure(
                "python blake3, update_mmap, max_threads=AUTO (incl. interpreter start)",
                reps,
                lambda i: time_cmd([b3py, "-c", code, str(big)], env=env),
            ).as_dict()
        )
    else:
        log("  (python blake3 not importable: `pip install blake3` for that context row)")
    if shutil.which("md5sum"):
        rec.context.append(
            measure(
                "md5sum (the hash dvc uses)", reps, lambda i: time_cmd(["md5sum", str(big)], env=env)
            ).as_dict()
        )

    def cp_once(i: int) -> float:
        dst = ctx.workdir / "tmp" / "big-copy.bin"
        dst.unlink(missing_ok=True)
        settle()
        dt = time_cmd([ctx.tools.cp, str(big), str(dst)], env=env)
        dst.unlink()
        return dt

    rec.context.append(measure("cp (full copy)", reps, cp_once).as_dict())
    return rec


def bench_ingest_small(ctx: Ctx) -> Record:
    tree = ctx.data.small_tree()
    title = f"ingest {ctx.args.small_files:,} small files (1-4 KiB, ~100 dirs)"
    rec = _ingest_record(ctx, "ingest_10k", title, tree, "tree", "ingest10k")
    env = ctx.env
    reps = ctx.reps(3)

    for flag, label in (("-r", "cp -r (full copy)"), ("-rl", "cp -rl (hard-link tree)")):

        def cp_once(i: int, flag: str = flag) -> float:
            dst = ctx.workdir / "tmp" / "tree-copy"
            rmtree(dst)
            settle()
            dt = time_cmd([ctx.tools.cp, flag, str(tree), str(dst)], env=env)
            rmtree(dst)
            return dt

        rec.context.append(measure(label, reps, cp_once).as_dict())
    return rec
