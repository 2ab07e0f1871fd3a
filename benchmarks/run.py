#!/usr/bin/env python3
"""qwex benchmark suite: qwex vs. the tools a user would use instead.

Stdlib only. Every workload is built in a scratch directory (``--workdir``),
every figure is the wall time of a whole command (``time.perf_counter`` around
``subprocess.run``), and each qwex figure is measured in the same run, on the
same files, beside the figure of its peer.

    python benchmarks/run.py                       # everything
    python benchmarks/run.py --only cache_hit      # one benchmark (repeatable, or a,b)
    python benchmarks/run.py --qwex /path/to/qwex --json results.json
    python benchmarks/run.py --markdown results.json   # render a saved run
    python benchmarks/run.py --quick --qwex .venv/bin/qwex   # < 60 s; what CI prints (.ci/run)

See benchmarks/README.md for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from execute import bench_execute
from fastpath import bench_cache_hit
from harness import DVC_MISSING, Bench, CommandFailed, Ctx, Record, Skip, Tools, log, rmtree
from index_scale import bench_index_scale
from ingest import bench_ingest_1gib, bench_ingest_small
from materialize import bench_materialize
from pipelines import bench_pipeline_3stage
from remote import bench_remote
from report import README, merge_results, meta_info, render_markdown, update_readme
from snapshots import bench_snapshot, bench_snapshot_incremental, bench_snapshot_nanogpt

#: name (for --only) -> the benchmark; each returns one row of the table, or several.
BENCHMARKS: dict[str, Bench] = {
    "cache_hit": bench_cache_hit,
    "pipeline_3stage": bench_pipeline_3stage,
    "ingest_1gib": bench_ingest_1gib,
    "ingest_10k": bench_ingest_small,
    "materialize": bench_materialize,
    "snapshot": bench_snapshot,
    "snapshot_incremental": bench_snapshot_incremental,
    "snapshot_nanogpt": bench_snapshot_nanogpt,
    "index_scale": bench_index_scale,
    "remote": bench_remote,
    "execute": bench_execute,
}

#: ``--quick``: the fast paths and a small ingest, fewer repetitions (under a minute in all).
QUICK = ["cache_hit", "pipeline_3stage", "ingest_1gib"]
#: ``--quick``'s size of the big file (MiB), unless ``--big-mib`` is given.
QUICK_BIG_MIB = 100

#: The saved results the README table is generated from.
RESULTS = README.parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"benchmark(s) to run (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    ap.add_argument(
        "--qwex",
        help="qwex executable (or a command line, e.g. 'python -m cli'); default: $QWEX or `qwex` on PATH",
    )
    ap.add_argument("--dvc", help="dvc executable; default: `dvc` on PATH, else /tmp/benchvenv/bin/dvc")
    ap.add_argument(
        "--s5cmd", help="remote: s5cmd executable; default: `s5cmd` on PATH, else beside the dvc executable"
    )
    ap.add_argument(
        "--weed", help="remote: SeaweedFS `weed`; default: `weed` on PATH, else beside the qwex executable"
    )
    ap.add_argument("--blake3-python", help="python with the blake3 module (context row only)")
    ap.add_argument(
        "--workdir",
        help="scratch dir (same filesystem as QWEX_HOME: it is put inside). "
        "Generated data is cached here and reused on the next run.",
    )
    ap.add_argument("--keep", action="store_true", help="keep a fresh --workdir after the run")
    ap.add_argument(
        "--reps",
        type=int,
        default=0,
        help="timed repetitions per figure (default: 10 cache hits and index_scale, 5 snapshot, 3 ingest; "
        "--quick: 5, 2 ingest)",
    )
    ap.add_argument(
        "--qwex-python",
        help="the interpreter of the qwex under test, for index_scale's in-process part "
        "(default: found from the qwex command's shebang)",
    )
    ap.add_argument(
        "--index-entries",
        type=int,
        default=1_000_000,
        help="index_scale: synthetic realisations (and as many runs) added to the index",
    )
    ap.add_argument(
        "--ingest-mode",
        choices=["move", "link"],
        default="move",
        help="how the ingest jobs produce their output: mv a fresh private copy (default; link "
        "count 1, like a freshly written file) or hard-link the pre-made data (qwex then copies)",
    )
    ap.add_argument("--big-mib", type=int, help="size of the big file (MiB; default 1024, --quick 100)")
    ap.add_argument("--small-files", type=int, default=10_000, help="number of small files")
    ap.add_argument(
        "--json",
        help="write the results as JSON here; if the file exists, the rows of benchmarks not run "
        "this time (--only) are kept in it, marked as from their earlier run",
    )
    ap.add_argument(
        "--markdown",
        metavar="RESULTS_JSON",
        help="do not run: print the markdown tables of a saved --json file",
    )
    ap.add_argument(
        "--update-readme",
        action="store_true",
        help="write the tables into benchmarks/README.md (between the results markers); with "
        "--markdown, or after a run: then merged, like --json, with the --json file if given, "
        "else with benchmarks/results.json",
    )
    ap.add_argument("--list", action="store_true", help="list benchmark names")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"for visibility (CI prints it): {', '.join(QUICK)} (or --only), a {QUICK_BIG_MIB} MiB "
        "file, 5 repetitions (2 for ingest); exits 0 when targets are missed, 1 only on errors",
    )
    args = ap.parse_args(argv)
    if args.quick and args.update_readme:
        ap.error("--quick figures are for visibility: they do not go into the README")
    if args.big_mib is None:
        args.big_mib = QUICK_BIG_MIB if args.quick else 1024

    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    if args.markdown:
        md = render_markdown(json.loads(Path(args.markdown).read_text()))
        if args.update_readme:
            update_readme(md)
        else:
            print(md, end="")
        return 0

    only = [n for o in args.only for n in o.split(",") if n]
    for n in only:
        if n not in BENCHMARKS:
            ap.error(f"unknown benchmark {n!r}; choose from {', '.join(BENCHMARKS)}")
    names = only or (QUICK if args.quick else list(BENCHMARKS))
    started = time.perf_counter()

    fresh_workdir = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwex-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    tools = Tools(args)
    if not tools.qwex:
        log("qwex not found (pass --qwex PATH): measuring the peers only")
    if not tools.dvc:
        log(f"dvc not found (pass --dvc PATH): dvc's cells will say: {DVC_MISSING}")
    ctx = Ctx(args, tools, workdir)
    meta = meta_info(tools, workdir)
    meta["loadavg_start"] = os.getloadavg()
    if meta["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1):
        log(f"warning: the machine is busy (load {meta['loadavg_start'][0]:.2f}): figures will be noisy")

    records: list[Record] = []
    try:
        for n in names:
            log(f"== {n}")
            t0 = time.perf_counter()
            try:
                got = BENCHMARKS[n](ctx)
                rows = got if isinstance(got, list) else [got]
            except Skip as e:
                log(f"  SKIPPED: {e}")
                rows = [Record(n, n, peer_name="", status="skipped", message=str(e))]
            except (CommandFailed, OSError) as e:
                log(f"  ERROR: {e}")
                rows = [Record(n, n, peer_name="", status="error", message=str(e))]
            for rec in rows:
                rec.group = n
                records.append(rec.finish())
            log(f"  ({time.perf_counter() - t0:.1f} s)")
    finally:
        rmtree(workdir / "runs")
        if fresh_workdir and not args.keep:
            rmtree(workdir)

    meta["loadavg_end"] = os.getloadavg()
    result = {"meta": meta, "records": [asdict(r) for r in records]}
    print(render_markdown(result), end="")
    # merge with the saved results, so that an --only run does not drop the other rows
    saved = Path(args.json) if args.json else RESULTS if args.update_readme else None
    if saved and saved.exists():
        merged = merge_results(json.loads(saved.read_text()), result, list(BENCHMARKS))
        if len(merged["records"]) > len(records):
            log(f"kept {len(merged['records']) - len(records)} rows of earlier runs from {saved}")
        result = merged
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.update_readme:
        if not args.json:
            log(f"note: the README now shows this run's rows, but {RESULTS} was not rewritten (no --json)")
        update_readme(render_markdown(result))
    log(f"wall time {time.perf_counter() - started:.1f} s")
    if args.quick:  # visibility only: a missed target is not a failure, a broken benchmark is
        return 1 if any(r.status == "error" for r in records) else 0
    failed = [r for r in records if r.status == "error" or r.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
