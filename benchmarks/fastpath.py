"""The one-stage cache hit and qwex's other fast paths (issue 10), each beside its peer.

One interleaved run (``pipelines.cached_pair``) times, in the same up-to-date repo and store:

* ``dvc repro`` of the same one-stage pipeline (the peer of the hit);
* ``qwex build train.drv``, a cache hit;
* the floor, ``python -c pass`` under qwex's own interpreter;
* the same hit with a runner, remotes and a substituter configured (``$QWEX_HOME/config.toml``
  written just before, removed just after its command): a runner whose ssh layer points at
  a closed port on 127.0.0.1, an ``s3://`` remote (also the substituter) whose endpoint is
  another closed port, and a directory remote. A hit must touch none of them;
* ``qwex ls``, ``qwex show KEY`` and ``qwex --help`` in that store.

Every command's stdout is a pipe (the plain-text path). Every hit is checked by the stage's
run log: the job ran once in all (the untimed first build), or the rows are INVALID.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from harness import CommandFailed, Ctx, Item, Record, Timing, measure, run, time_cmd, toml_str
from pipelines import (
    TRAIN_PY,
    DvcStage,
    Pipeline,
    cached_pair,
    dvc_pipeline,
    qwex_pipeline,
    raw_csv,
    write_files,
)
from remote_servers import free_ports

HOST = "127.0.0.1"

CONFIGURED_LABEL = "qwex build train.drv (cache hit), runner + remotes + substituter configured"

#: (key, command after `qwex`, title) of the read-only commands timed against the floor.
READ_ONLY = [
    ("cli_ls", ["ls"], "`qwex ls` (one run in the store)"),
    ("cli_show", ["show", "{key}"], "`qwex show KEY` (that run)"),
    ("cli_help", ["--help"], "`qwex --help`"),
]


def workload(ctx: Ctx, q: list[str]) -> Pipeline:
    """qwex's side of the one-stage workload: ``train.drv`` committed in a fresh repo, built once
    (untimed) in a fresh QWEX_HOME, so that the returned command is a cache hit."""
    train = {
        "name": "train",
        "command": [ctx.tools.python, "train.py"],
        "outputs": ["out/"],
        "inputs": {"data/raw.csv": "file:raw.csv"},
        "env_pass": ["BENCH_RUNLOG"],
    }
    tracked, untracked = {"train.py": TRAIN_PY}, {"raw.csv": raw_csv()}
    return qwex_pipeline(ctx, q, "cachehit", tracked, untracked, {"train.drv": train}, "train.drv")


def last_key(q: list[str], hit: Pipeline) -> str:
    """The key of the newest run in the hit's store (``qwex ls --json``)."""
    runs = json.loads(run([*q, "ls", "--json", "-n", "1"], cwd=hit.cwd, env=hit.env).stdout)
    return str(runs[0]["key"])


def configured_toml(ctx: Ctx, q: list[str], hit: Pipeline) -> str:
    """A user config naming everything a hit must not touch (untimed setup): a signing key and
    its public key as trusted (made by ``qwex key generate`` in the hit's QWEX_HOME), a runner
    with an ssh layer, an S3 remote and substituter, and a directory remote; the ssh and S3
    ports are closed (:func:`remote_servers.free_ports`: bound, then released, so a
    connection attempt is refused at once rather than hanging the benchmark)."""
    ssh_port, s3_port = free_ports(2)
    shelf = ctx.fresh("cachehit-dir-remote")
    public = run([*q, "key", "generate", "bench"], cwd=hit.cwd, env=hit.env).stdout.decode().split()[-1]
    return "\n".join(
        [
            'signing-key = "bench"',
            f"trusted-keys = [{toml_str(public)}]",
            'substituters = ["lab"]',
            "",
            "[remotes.lab]",
            'url = "s3://qwex-bench/lab"',
            f'endpoint = "http://{HOST}:{s3_port}"',
            "",
            "[remotes.shelf]",
            f"url = {toml_str(str(shelf))}",
            "",
            "[runners.remote]",
            f'layers = [{{ kind = "ssh", host = "{HOST}", port = {ssh_port}, root = "/nonexistent/qwex" }}]',
            "",
        ]
    )


def fast_items(ctx: Ctx, q: list[str], hit: Pipeline) -> list[Item]:
    """The configured hit and the read-only commands, to interleave with the hit and its peers."""
    cfg_path = Path(hit.env["QWEX_HOME"]) / "config.toml"
    cfg = configured_toml(ctx, q, hit)
    # the configuration must really be read: `qwex remote list` names both remotes
    cfg_path.write_text(cfg)
    listed = run([*q, "remote", "list"], cwd=hit.cwd, env=hit.env).stdout.decode()
    cfg_path.unlink()
    if "lab" not in listed or "shelf" not in listed:
        raise CommandFailed(f"qwex did not read {cfg_path}: `qwex remote list` printed {listed!r}")

    def configured(i: int) -> float:
        cfg_path.write_text(cfg)
        try:
            return hit.once(i)
        finally:
            cfg_path.unlink()

    key = last_key(q, hit)

    def command(args: list[str]) -> Callable[[int], float]:
        argv = [*q, *(a.format(key=key) for a in args)]
        return lambda i: time_cmd(argv, cwd=hit.cwd, env=hit.env)

    items: list[Item] = [("configured", CONFIGURED_LABEL, configured)]
    for k, args, _ in READ_ONLY:
        items.append((k, "qwex " + " ".join(args).replace("{key}", "KEY"), command(args)))
    return items


def fast_rows(hit: Record, got: dict[str, Timing]) -> list[Record]:
    """The rows the extra items give, each against its peer from the same interleaving; a hit
    that was not one (``hit.invalid``) invalidates the configured hit too."""
    floor = got["floor"]
    rows = [
        Record(
            "cache_hit_floor",
            "cache hit, `qwex build train.drv`, vs the interpreter's bare start-up",
            peer_name="python -c pass (qwex's interpreter)",
            target_ratio=5.0,
        ),
        Record(
            "cache_hit_configured",
            "cache hit with a runner (ssh), remotes (s3, dir) and a substituter configured, "
            "vs nothing configured (endpoints: closed ports)",
            peer_name="qwex build, same key, nothing configured",
            target_ratio=1.05,
        ),
    ]
    rows[0].set_qwex(got["qwex"])
    rows[0].set_peer(floor)
    rows[1].set_qwex(got["configured"])
    rows[1].set_peer(got["qwex"])
    for r in rows:
        r.invalid, r.message = hit.invalid, hit.message if hit.invalid else ""
    for key, _, title in READ_ONLY:
        r = Record(key, title, peer_name="python -c pass (qwex's interpreter)", target_ratio=3.0)
        r.set_qwex(got[key])
        r.set_peer(floor)
        rows.append(r)
    return rows


def bench_cache_hit(ctx: Ctx) -> list[Record]:
    """One-stage pipeline, up to date: dvc repro vs qwex build (cache hit), plus the fast-path
    rows (floor, configured hit, ls, show, --help)."""
    rec = Record(
        "cache_hit", "cache hit: up-to-date one-stage pipeline", peer_name="dvc repro", target_ratio=0.1
    )
    py = ctx.tools.python
    reps = ctx.reps(10)
    q = ctx.qwex()
    files = {"data/raw.csv": raw_csv(), "train.py": TRAIN_PY}
    dvc = None
    if ctx.tools.dvc:
        stage = DvcStage("train", [py, "train.py"], ["train.py", "data/raw.csv"], ["out"])
        dvc = dvc_pipeline(ctx, "cachehit", files, [stage])
    qwex, extra = None, []
    if q:
        qwex = workload(ctx, q)
        extra = fast_items(ctx, q, qwex)
    got = cached_pair(ctx, rec, dvc, qwex, 1, reps, extra)
    if ctx.quick:
        return [rec, *fast_rows(rec, got)] if qwex else [rec]
    here = dvc.cwd if dvc else write_files(ctx.fresh("cachehit-direct"), files)
    rec.context.append(
        measure(
            "the stage's command run directly (python train.py)",
            reps,
            lambda i: time_cmd([py, "train.py"], cwd=here, env=ctx.env),
        ).as_dict()
    )
    return [rec, *fast_rows(rec, got)] if qwex else [rec]
