#!/usr/bin/env python3
"""What qwex's fast paths import, and what each import costs: the budget in benchmarks/README.md.

    python benchmarks/importtime.py --qwex .venv/bin/qwex            # the hit and ls, 11 runs each
    python benchmarks/importtime.py --qwex .venv/bin/qwex -n 21 --cmd hit,ls,show,help

Builds the one-stage cache-hit workload of ``run.py`` (``fastpath.py``) in a scratch directory
(``--workdir``, default a fresh temp dir, deleted afterwards): a git repo with ``train.drv``
and a fresh ``QWEX_HOME``, built once, untimed. Then runs each command N times with
``PYTHONPROFILEIMPORTTIME=1`` (``-X importtime``; the console script runs unchanged, stdout a
pipe), and N times without it for the wall time, interleaved. Each module's figure is its
minimum over the runs (self and cumulative, separately).

Prints one markdown table per command: modules grouped as the stdlib by top-level module,
third-party packages by distribution-like top-level name (msgspec, lmdb, blake3, ...), and
``qwexstore.*``, ``qwex.*`` and ``qwex_drivers.*`` module by module; the modules that bare
``python -c pass`` (same interpreter) imports as well are one row. *cumulative* is
importtime's: a group's modules with everything they import, outside the group too. Then the
total, the wall time, and whether anything the hit path must not import was imported.
Stdlib only. Exit status 0 unless the workload cannot be built.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastpath import last_key, workload
from harness import CommandFailed, Ctx, Skip, Tools, log, rmtree
from pipelines import floor_python

#: Never on a fast path (issue 10): the CLI framework, rich, remote storage, ssh, the drivers.
FORBIDDEN = (
    "typer",
    "click",
    "rich",
    "fsspec",
    "s3fs",
    "aiobotocore",
    "botocore",
    "asyncssh",
    "qwex_drivers",
)
#: Listed module by module rather than as one group.
OURS = ("qwexstore", "qwex", "qwex_drivers")
#: The commands (after ``qwex``) that can be profiled; ``{key}`` is the built run's key.
COMMANDS = {
    "hit": ["build", "train.drv"],
    "ls": ["ls"],
    "show": ["show", "{key}"],
    "help": ["--help"],
}
#: What each command is, in its heading.
WHAT = {"hit": " (cache hit)", "ls": " (one run)", "show": " (that run)", "help": ""}
STARTUP = "interpreter start-up (bare `python -c pass` imports these too)"


@dataclass
class Module:
    name: str
    parent: str | None  # the module whose import triggered this one (None: top level)
    self_us: list[int] = field(default_factory=list)
    cum_us: list[int] = field(default_factory=list)


def parse(stderr: str) -> list[tuple[str, int, int, int]]:
    """``-X importtime`` lines as (module, depth, self µs, cumulative µs), in print order
    (a module is printed after everything it imported)."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_s, cum_s, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip(" "))) // 2
        out.append((name.strip(), depth, int(self_s), int(cum_s)))
    return out


def collect(runs: list[str], into: dict[str, Module]) -> None:
    """Add the samples of several runs' importtime output to ``into`` (module -> samples)."""
    for stderr in runs:
        pending: dict[int, list[str]] = {}  # depth -> modules printed at that depth, not yet adopted
        for name, depth, self_us, cum_us in parse(stderr):
            for child in pending.pop(depth + 1, []):
                if child in into and into[child].parent is None:
                    into[child].parent = name
            pending.setdefault(depth, []).append(name)
            m = into.setdefault(name, Module(name, None))
            m.self_us.append(self_us)
            m.cum_us.append(cum_us)


def group_of(name: str, startup: set[str]) -> tuple[str, str]:
    """(group, kind) of a module."""
    top = name.split(".")[0]
    if name in startup:
        return STARTUP, "start-up"
    if top in OURS:
        return name, "qwex"
    if top in sys.stdlib_module_names or top.lstrip("_") in sys.stdlib_module_names:
        return top, "stdlib"
    return top, "third-party"


def table(mods: dict[str, Module], startup: set[str], min_ms: float) -> tuple[list[str], float]:
    """The markdown rows, and the total of the modules' minimum self times (ms)."""
    groups: dict[tuple[str, str], list[Module]] = {}
    for m in mods.values():
        groups.setdefault(group_of(m.name, startup), []).append(m)
    rows = []
    for (g, kind), ms in groups.items():
        names = {m.name for m in ms}
        self_ms = sum(min(m.self_us) for m in ms) / 1000
        # the group's roots (imported from outside it) are disjoint subtrees: their sum
        cum_ms = sum(min(m.cum_us) for m in ms if m.parent not in names) / 1000
        rows.append((g, kind, len(ms), self_ms, cum_ms))
    rows.sort(key=lambda r: -r[3])
    small: dict[str, tuple[int, int, float]] = {}  # kind -> (groups, modules, self ms)
    out = ["| group | kind | modules | self ms | cumulative ms |", "|---|---|---|---|---|"]
    for g, kind, n, self_ms, cum_ms in rows:
        if self_ms < min_ms and kind != "qwex" and g != STARTUP:
            k, m, t = small.get(kind, (0, 0, 0.0))
            small[kind] = (k + 1, m + n, t + self_ms)
            continue
        out.append(f"| {g} | {kind} | {n} | {self_ms:.1f} | {cum_ms:.1f} |")
    for kind, (k, n, self_ms) in small.items():
        out.append(f"| other {kind} ({k} under {min_ms:g} ms each) | {kind} | {n} | {self_ms:.1f} | |")
    total = sum(r[3] for r in rows)
    out.append(f"| **total** | | {sum(r[2] for r in rows)} | **{total:.1f}** | |")
    return out, total


def run_n(argv: list[str], cwd: Path, env: dict[str, str], n: int) -> tuple[list[str], list[float]]:
    """``argv`` n times with importtime (their stderr) and n times without (wall s), alternating."""
    prof = dict(env, PYTHONPROFILEIMPORTTIME="1")
    err, wall = [], []
    for _ in range(n):
        p = subprocess.run(argv, cwd=cwd, env=prof, capture_output=True, text=True)
        if p.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr[-500:]}")
        err.append(p.stderr)
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)
        wall.append(time.perf_counter() - t0)
    return err, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qwex", help="qwex executable (default: $QWEX, then `qwex` on PATH)")
    ap.add_argument("-n", type=int, default=11, help="runs per command (default 11)")
    ap.add_argument("--cmd", default="hit,ls", help=f"commands, comma-separated: {', '.join(COMMANDS)}")
    ap.add_argument("--min-ms", type=float, default=0.5, help="fold smaller non-qwex groups into one row")
    ap.add_argument("--workdir", help="scratch dir for the workload (default: a fresh temp dir, deleted)")
    args = ap.parse_args(argv)
    cmds = [c for c in args.cmd.split(",") if c]
    for c in cmds:
        if c not in COMMANDS:
            ap.error(f"unknown command {c!r}; choose from {', '.join(COMMANDS)}")

    ns = argparse.Namespace(
        qwex=args.qwex, dvc=None, blake3_python=None, qwex_python=None, big_mib=1, small_files=1, reps=0
    )
    tools = Tools(ns)
    if not tools.qwex:
        print("importtime: qwex not found (pass --qwex PATH)", file=sys.stderr)
        return 2
    fresh = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwex-importtime-")).resolve()
    try:
        return _profile(Ctx(ns, tools, workdir), tools.qwex, cmds, args.n, args.min_ms)
    except (CommandFailed, Skip, OSError) as e:
        print(f"importtime: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        rmtree(workdir / "runs")
        if fresh:
            rmtree(workdir)


def _profile(ctx: Ctx, q: list[str], cmds: list[str], n: int, min_ms: float) -> int:
    hit = workload(ctx, q)  # the cache-hit benchmark's repo and store, built once
    key = last_key(q, hit)
    py = floor_python(ctx)
    base_err, base_wall = run_n([py, "-c", "pass"], hit.cwd, hit.env, n)
    base: dict[str, Module] = {}
    collect(base_err, base)
    floor_ms = statistics.median(base_wall) * 1000
    print(f"Imports of qwex's fast paths: each module's minimum over {n} runs (`-X importtime`).")
    print(f"Floor: `python -c pass` on the same interpreter, median {floor_ms:.1f} ms.")
    for c in cmds:
        argv = [*q, *(a.format(key=key) for a in COMMANDS[c])]
        log(f"{c}: {' '.join(argv[len(q) :])} x {n}")
        err, wall = run_n(argv, hit.cwd, hit.env, n)
        mods: dict[str, Module] = {}
        collect(err, mods)
        rows, total = table(mods, set(base), min_ms)
        wall_ms = statistics.median(wall) * 1000
        shown = " ".join(COMMANDS[c]).replace("{key}", "KEY")
        print(f"\n### `qwex {shown}`{WHAT[c]}\n")
        print("\n".join(rows))
        print(
            f"\nWall time (no importtime, interleaved with those runs): median {wall_ms:.1f} ms; "
            f"imports {total:.1f} ms of it; the rest (start-up, work, output) {wall_ms - total:.1f} ms."
        )
        bad = sorted({m.split(".")[0] for m in mods} & set(FORBIDDEN))
        print(
            f"Imported, and must not be on this path: {', '.join(bad)}."
            if bad
            else f"Not imported (as it must be): {', '.join(FORBIDDEN)}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
