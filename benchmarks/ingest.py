"""Ingest: `qwex build` of a job whose outputs are one big file or many small ones, vs `dvc add`."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import (
    DVC_MISSING,
    CommandFailed,
    Ctx,
    Item,
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


def _check_linked(added: Path) -> None:
    """Untimed: the workspace copy dvc added is hard-linked to its cache (one file checked),
    i.e. the ``cache.type hardlink`` setting took effect."""
    first = added
    if added.is_dir():
        first = next(p for p in sorted(added.rglob("*")) if p.is_file())
    if first.stat().st_nlink < 2:
        raise CommandFailed(f"dvc add did not hard-link {first} to its cache (cache.type hardlink ignored?)")


def _dvc_add_once(ctx: Ctx, prefix: str, place: Callable[[Path], str]) -> Callable[[int], float]:
    """Fresh git+dvc repo per rep (hardlink cache); `place` puts the data in, untimed."""
    dvc = ctx.tools.need_dvc()
    env = ctx.env

    def once(i: int) -> float:
        d = ctx.fresh(prefix)
        git(env, d, "init", "-q", "-b", "main")
        run([*dvc, "init", "-q"], cwd=d, env=env)
        # what `dvc config cache.type hardlink` writes (to a fresh, empty .dvc/config), without
        # another ~0.9 s dvc start-up per repetition
        with open(d / ".dvc" / "config", "a") as f:
            f.write("[cache]\n    type = hardlink\n")
        target = place(d)
        settle()
        dt = time_cmd([*dvc, "add", "-q", target], cwd=d, env=env)
        _check_linked(d / target)
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


def _ingest_pair(
    ctx: Ctx, q: list[str] | None, src: Path, name: str, prefix: str, extra: Sequence[Item] = ()
) -> dict[str, Timing]:
    """dvc add vs qwex build of the same data (a file or a tree), and the ``extra`` commands,
    interleaved; the timings by key (``"dvc"`` if dvc is installed, ``"qwex"``, the extra keys).

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
    items: list[Item] = []
    if ctx.tools.dvc:
        label = f"dvc add {name} (fresh repo+cache; {how})"
        items.append(("dvc", label, _dvc_add_once(ctx, prefix + "-dvc", place)))
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
        label = f"qwex build (miss, fresh QWEX_HOME; the job is `{what}` into out/)"
        items.append(("qwex", label, _qwex_build_once(ctx, q, prefix + "-qwex", make_command)))
    items += extra
    # --quick: no warm-up (every repetition is a fresh repo and store anyway; it saves ~5 s)
    warmup = 0 if ctx.quick else 1
    timings = measure_many([(label, once) for _, label, once in items], ctx.reps(3, quick=2), warmup)
    return {key: t for (key, _, _), t in zip(items, timings, strict=True)}


def _ingest_record(
    ctx: Ctx, name: str, title: str, data: Path, dest: str, tag: str, extra: Sequence[Item] = ()
) -> tuple[Record, dict[str, Timing]]:
    """qwex build vs dvc add on the same data (and ``extra``, interleaved): the part both
    ingest benchmarks share. Without dvc the peer's cells say ``DVC_MISSING``."""
    rec = Record(name, title, peer_name="dvc add (cache.type hardlink)", target_ratio=0.5)
    ctx.tools.need_git()
    q = ctx.qwex()
    got = _ingest_pair(ctx, q, data, dest, tag, extra)
    rec.context += [t.as_dict() for t in got.values()]
    if "dvc" in got:
        rec.set_peer(got["dvc"])
    else:
        rec.peer_note = DVC_MISSING
    if q:
        rec.set_qwex(got["qwex"])
    else:
        rec.status = "no-qwex"
    return rec, got


def bench_ingest_1gib(ctx: Ctx) -> list[Record]:
    """One big output file: qwex build vs dvc add, and vs cp (a second row, no target), all
    three interleaved; hashing the same file (b3sum, python blake3, md5sum) as context."""
    big = ctx.data.big_file()
    env = ctx.env

    def cp_once(i: int) -> float:
        dst = ctx.workdir / "tmp" / "big-copy.bin"
        dst.unlink(missing_ok=True)
        settle()
        dt = time_cmd([ctx.tools.cp, str(big), str(dst)], env=env)
        dst.unlink()
        return dt

    size = f"{ctx.args.big_mib} MiB"
    rec, got = _ingest_record(
        ctx, "ingest_1gib", f"ingest one {size} output file", big, "big.bin", "ingest1g",
        [("cp", "cp (full copy)", cp_once)],
    )  # fmt: skip
    vs_cp = Record("ingest_1gib_cp", f"ingest one {size} output file, against a plain copy", peer_name="cp")
    vs_cp.set_peer(got["cp"])
    if "qwex" in got:
        vs_cp.set_qwex(got["qwex"])
    else:
        vs_cp.status = "no-qwex"
    reps = ctx.reps(3, quick=2)

    # context: hashing the same file
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
    return [rec, vs_cp]


def bench_ingest_small(ctx: Ctx) -> Record:
    tree = ctx.data.small_tree()
    title = f"ingest {ctx.args.small_files:,} small files (1-4 KiB, ~100 dirs)"
    rec, _ = _ingest_record(ctx, "ingest_10k", title, tree, "tree", "ingest10k")
    env = ctx.env
    reps = ctx.reps(3, quick=2)

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
