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

See benchmarks/README.md for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: An optional real repository to snapshot (e.g. a local mirror of nanoGPT); unset: skipped.
NANOGPT_MIRROR = Path(os.environ.get("QWEX_BENCH_NANOGPT", "/nonexistent"))

# --------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------


@dataclass
class Timing:
    label: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "median_s": self.median,
            "min_s": self.min,
            "n": len(self.samples),
            "samples_s": self.samples,
        }


@dataclass
class Record:
    name: str
    title: str
    peer_name: str
    target_ratio: float | None = None  # qwex/peer must be <= this
    target_abs_s: float | None = None  # qwex must be < this (seconds)
    qwex_s: float | None = None
    qwex_min_s: float | None = None
    qwex_label: str = ""
    peer_s: float | None = None
    peer_min_s: float | None = None
    ratio: float | None = None
    passed: bool | None = None
    status: str = "ok"  # ok | no-qwex | skipped | error
    invalid: bool = False  # the qwex figure does not measure what it claims: FAIL
    message: str = ""
    context: list[dict[str, Any]] = field(default_factory=list)

    def set_peer(self, t: Timing) -> None:
        self.peer_s, self.peer_min_s = t.median, t.min

    def set_qwex(self, t: Timing) -> None:
        self.qwex_s, self.qwex_min_s, self.qwex_label = t.median, t.min, t.label

    def finish(self) -> Record:
        if self.qwex_s is not None and self.peer_s:
            self.ratio = self.qwex_s / self.peer_s
        checks = []
        if self.target_ratio is not None and self.ratio is not None:
            checks.append(self.ratio <= self.target_ratio)
        if self.target_abs_s is not None and self.qwex_s is not None:
            checks.append(self.qwex_s < self.target_abs_s)
        self.passed = all(checks) if checks else None
        if self.invalid:
            self.passed = False
        return self


class Skip(Exception):
    """A benchmark cannot run here (tool or data missing)."""


class CommandFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------
# running and timing commands
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(list(cmd), cwd=cwd, env=env, input=input, capture_output=True)
    if check and p.returncode != 0:
        raise CommandFailed(
            f"command failed (exit {p.returncode}): {shlex.join(map(str, cmd))}\n"
            f"cwd: {cwd}\nstdout: {p.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {p.stderr.decode(errors='replace')[-2000:]}"
        )
    return p


def time_cmd(cmd: Sequence[str], cwd: Path | str | None = None, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise CommandFailed(
            f"command failed (exit {p.returncode}): {shlex.join(map(str, cmd))}\n"
            f"cwd: {cwd}\nstdout: {p.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {p.stderr.decode(errors='replace')[-2000:]}"
        )
    return dt


def measure(label: str, reps: int, once: Callable[[int], float], warmup: int = 1) -> Timing:
    """``once(i)`` does its own untimed setup, returns the timed seconds.

    Warm-up calls get negative indices and are not recorded."""
    for w in range(warmup):
        once(-1 - w)
    samples = [once(i) for i in range(reps)]
    t = Timing(label, samples)
    log(f"  {label}: median {fmt_s(t.median)}  min {fmt_s(t.min)}  (n={reps})")
    return t


def measure_many(items: list[tuple[str, Callable[[int], float]]], reps: int, warmup: int = 1) -> list[Timing]:
    """Measure several commands interleaved (A B, B A, A B, ...), so that drift in
    the machine's load hits qwex and its peer alike."""
    for w in range(warmup):
        for _, once in items:
            once(-1 - w)
    samples: list[list[float]] = [[] for _ in items]
    for i in range(reps):
        order = list(range(len(items)))
        if i % 2:
            order.reverse()
        for k in order:
            samples[k].append(items[k][1](i))
    timings = [Timing(label, s) for (label, _), s in zip(items, samples, strict=True)]
    for t in timings:
        log(f"  {t.label}: median {fmt_s(t.median)}  min {fmt_s(t.min)}  (n={reps})")
    return timings


def settle() -> None:
    """Untimed: flush dirty pages left by the previous command, so its deferred
    writeback is not billed to the next one (used before the ingest/copy figures)."""
    os.sync()


def rmtree(path: Path) -> None:
    """rm -rf that copes with read-only files/dirs (stores make things read-only)."""
    if not os.path.lexists(path):
        return

    def onerror(func: Callable[[str], object], p: str, exc_info: object) -> None:
        try:
            parent = os.path.dirname(p)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
            func(p)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=onerror)


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


# --------------------------------------------------------------------------
# environment / tools
# --------------------------------------------------------------------------


class Tools:
    def __init__(self, args: argparse.Namespace):
        self.python = sys.executable
        self.qwex: list[str] | None = None
        qwex = args.qwex or os.environ.get("QWEX") or shutil.which("qwex")
        if qwex:
            parts = shlex.split(qwex)
            if "/" in parts[0]:  # the harness runs commands from other directories
                parts[0] = os.path.abspath(parts[0])
            if shutil.which(parts[0]) or Path(parts[0]).exists():
                self.qwex = parts
            else:
                log(f"qwex executable not found: {qwex!r} — qwex columns will be empty")
        self.dvc: list[str] | None = None
        dvc = args.dvc or shutil.which("dvc")
        if not dvc and Path("/tmp/benchvenv/bin/dvc").exists():
            dvc = "/tmp/benchvenv/bin/dvc"
        if dvc:
            parts = shlex.split(dvc)
            if "/" in parts[0]:
                parts[0] = os.path.abspath(parts[0])
            if shutil.which(parts[0]) or Path(parts[0]).exists():
                self.dvc = parts
        self.git = shutil.which("git")
        self.b3sum = shutil.which("b3sum")
        self.blake3_python = self._find_blake3_python(args.blake3_python)
        self.cp = shutil.which("cp") or "/bin/cp"
        self.ln = shutil.which("ln") or "/bin/ln"
        self.mkdir = shutil.which("mkdir") or "/bin/mkdir"
        self.mv = shutil.which("mv") or "/bin/mv"
        self.sh = shutil.which("sh") or "/bin/sh"
        self.true = shutil.which("true") or "/bin/true"

    @staticmethod
    def _find_blake3_python(explicit: str | None) -> str | None:
        cands = (
            [explicit] if explicit else [sys.executable, "/tmp/benchvenv/bin/python", "/tmp/venv/bin/python"]
        )
        for c in cands:
            if c and Path(c).exists():
                p = subprocess.run([c, "-c", "import blake3"], capture_output=True)
                if p.returncode == 0:
                    return c
        return None

    def need_dvc(self) -> list[str]:
        if not self.dvc:
            raise Skip(
                "dvc not installed — `pip install dvc` (e.g. "
                "`python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -r "
                "benchmarks/requirements-peers.txt`) or pass --dvc PATH"
            )
        return self.dvc

    def need_git(self) -> str:
        if not self.git:
            raise Skip("git not installed")
        return self.git

    def version(self, cmd: list[str] | None, *flag: str) -> str | None:
        if not cmd:
            return None
        try:
            p = subprocess.run([*cmd, *flag], capture_output=True, timeout=60)
            if p.returncode != 0:
                return None
            out = (p.stdout or p.stderr).decode(errors="replace").strip().splitlines()
            return out[0] if out else None
        except Exception as e:
            return f"error: {e}"


def base_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.invalid",
            "GIT_CONFIG_NOSYSTEM": "1",
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(workdir / "dvc-site-cache"),
            "TMPDIR": str(workdir / "tmp"),
            "LC_ALL": "C",
        }
    )
    env.pop("QWEX_HOME", None)
    env.pop("QWEX_STORE", None)
    return env


def qwex_env(env: dict[str, str], home: Path) -> dict[str, str]:
    e = dict(env)
    e["QWEX_HOME"] = str(home)
    return e


def git(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run(["git", *args], cwd=cwd, env=env)


def git_init_commit(env: dict[str, str], repo: Path, message: str = "init") -> None:
    git(env, repo, "init", "-q", "-b", "main")
    git(env, repo, "add", "-A")
    git(env, repo, "commit", "-q", "-m", message)


def toml_str(s: str) -> str:
    return json.dumps(s)  # JSON string escapes are valid TOML basic strings


def write_drv(
    path: Path,
    name: str,
    command: list[str],
    outputs: list[str],
    inputs: dict[str, str] | None = None,
    env_pass: list[str] | None = None,
) -> None:
    lines = [
        f"name = {toml_str(name)}",
        "command = [" + ", ".join(toml_str(c) for c in command) + "]",
        "outputs = [" + ", ".join(toml_str(o) for o in outputs) + "]",
    ]
    if env_pass:  # passed through to the job, not hashed into the key
        lines += ["", "[env]", "pass = [" + ", ".join(toml_str(v) for v in env_pass) + "]"]
    if inputs:
        lines.append("")
        lines.append("[inputs]")
        for k, v in inputs.items():
            lines.append(f"{toml_str(k)} = {toml_str(v)}")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# shared data (built once per workdir, reused across runs of the same workdir)
# --------------------------------------------------------------------------


class Data:
    def __init__(self, workdir: Path, env: dict[str, str], big_mib: int, small_files: int):
        self.dir = workdir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.big_mib = big_mib
        self.small_files = small_files

    def _done(self, p: Path) -> Path:
        return p.with_name(p.name + ".complete")

    def big_file(self) -> Path:
        p = self.dir / f"big-{self.big_mib}MiB.bin"
        if self._done(p).exists() and p.exists():
            return p
        log(f"creating {p} ({self.big_mib} MiB of random bytes)")
        chunk = 16 << 20
        total = self.big_mib << 20
        with open(p, "wb") as f:
            written = 0
            while written < total:
                n = min(chunk, total - written)
                f.write(os.urandom(n))
                written += n
            f.flush()
            os.fsync(f.fileno())
        self._done(p).touch()
        return p

    def small_tree(self) -> Path:
        p = self.dir / f"smalltree-{self.small_files}"
        if self._done(p).exists() and p.exists():
            return p
        rmtree(p)
        log(f"creating {p} ({self.small_files} files of 1-4 KiB in ~100 dirs)")
        rng = random.Random(10_000)
        ndirs = max(1, min(100, self.small_files // 100))
        for i in range(self.small_files):
            d = p / f"d{i % ndirs:03d}"
            if i < ndirs:
                d.mkdir(parents=True)
            (d / f"f{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(1024, 4096)))
        os.sync()
        self._done(p).touch()
        return p

    def synth_repo(self, commits: int = 220, files: int = 8) -> Path:
        """Deterministic nanoGPT-sized git repo made with `git fast-import`.

        ~220 commits; each commit rewrites one of `files` incompressible
        ~300 KB binaries and appends to a text file => ~70 MB of history."""
        p = self.dir / "synthrepo"
        if self._done(p).exists() and (p / ".git").exists():
            return p
        rmtree(p)
        log(f"creating synthetic repo {p} ({commits} commits)")
        p.mkdir(parents=True)
        run(["git", "init", "-q", "-b", "main"], cwd=p, env=self.env)
        rng = random.Random(220)
        stream = bytearray()

        def data(b: bytes) -> None:
            stream.extend(b"data %d\n" % len(b))
            stream.extend(b)
            stream.extend(b"\n")

        mark = 0
        texts = {
            "README.md": "# synthetic nanoGPT-sized repository\n",
            "model.py": "# model\nimport math\n",
            "train.py": "# training loop\n",
            "sample.py": "# sampling\n",
            "configurator.py": "# config overrides\n",
            "config/train_shakespeare_char.py": "out_dir = 'out'\n",
            "config/train_gpt2.py": "batch_size = 12\n",
            ".gitignore": "out/\n",
            "snapshot.drv": ('name = "snapshot"\ncommand = ["true"]\noutputs = []\n'),
        }
        text_names = [n for n in texts if n.endswith(".py") or n.endswith(".md")]
        t0 = 1_672_531_200  # 2023-01-01T00:00:00Z
        for c in range(commits):
            changes: list[tuple[str, int]] = []
            if c == 0:
                for name, body in texts.items():
                    mark += 1
                    stream.extend(b"blob\nmark :%d\n" % mark)
                    data(body.encode())
                    changes.append((name, mark))
                bins = list(range(files))
            else:
                name = text_names[c % len(text_names)]
                texts[name] += f"# change {c}: {rng.getrandbits(64):016x}\n"
                mark += 1
                stream.extend(b"blob\nmark :%d\n" % mark)
                data(texts[name].encode())
                changes.append((name, mark))
                bins = [c % files]
            for b in bins:
                mark += 1
                stream.extend(b"blob\nmark :%d\n" % mark)
                data(rng.randbytes(rng.randint(280_000, 340_000)))
                changes.append((f"assets/blob{b}.bin", mark))
            when = t0 + c * 3600
            stream.extend(b"commit refs/heads/main\n")
            stream.extend(b"author bench <bench@example.invalid> %d +0000\n" % when)
            stream.extend(b"committer bench <bench@example.invalid> %d +0000\n" % when)
            data(f"commit {c}\n".encode())
            for name, m in changes:
                stream.extend(b"M 100644 :%d %s\n" % (m, name.encode()))
            stream.extend(b"\n")
        run(["git", "fast-import", "--quiet"], cwd=p, env=self.env, input=bytes(stream))
        run(["git", "repack", "-adq"], cwd=p, env=self.env)
        run(["git", "reset", "-q", "--hard", "main"], cwd=p, env=self.env)
        self._done(p).touch()
        return p

    def nanogpt_repo(self) -> Path:
        if not (NANOGPT_MIRROR / "HEAD").exists():
            raise Skip(f"{NANOGPT_MIRROR} absent (optional real-repo workload)")
        p = self.dir / "nanogpt"
        if self._done(p).exists() and (p / ".git").exists():
            return p
        rmtree(p)
        log(f"cloning {NANOGPT_MIRROR} -> {p}")
        # --no-local: an ordinary clone of what the refs reach (the mirror may be a
        # partial clone; a local clone would copy its whole object store)
        run(["git", "clone", "-q", "--no-local", str(NANOGPT_MIRROR), str(p)], env=self.env)
        (p / "snapshot.drv").write_text('name = "snapshot"\ncommand = ["true"]\noutputs = []\n')
        git(self.env, p, "add", "snapshot.drv")
        git(self.env, p, "commit", "-q", "-m", "bench: add snapshot.drv")
        self._done(p).touch()
        return p


# --------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------


class Ctx:
    def __init__(self, args: argparse.Namespace, tools: Tools, workdir: Path):
        self.args = args
        self.tools = tools
        self.workdir = workdir
        self.env = base_env(workdir)
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.data = Data(workdir, self.env, args.big_mib, args.small_files)
        self._n = 0

    def reps(self, default: int) -> int:
        return self.args.reps or default

    def fresh(self, prefix: str) -> Path:
        self._n += 1
        p = self.workdir / "runs" / f"{prefix}-{self._n:04d}"
        rmtree(p)
        p.mkdir(parents=True)
        return p

    def fresh_home(self, prefix: str) -> Path:
        """A QWEX_HOME path that does not exist yet (qwex creates it)."""
        p = self.fresh(prefix + "-home")
        p.rmdir()
        return p

    def qwex(self) -> list[str] | None:
        return self.tools.qwex


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
# the harness counts how often the stage really ran (cache hits must not run it)
if os.environ.get("BENCH_RUNLOG"):
    with open(os.environ["BENCH_RUNLOG"], "a") as f:
        f.write("ran\\n")
"""


def make_csv(path: Path, rows: int = 5000) -> None:
    rng = random.Random(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("id,a,b,c,d,label\n")
        for i in range(rows):
            f.write(
                f"{i},{rng.random():.6f},{rng.random():.6f},{rng.random():.6f},"
                f"{rng.gauss(0, 1):.6f},{rng.randint(0, 9)}\n"
            )


def _count_lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.exists() else 0


def bench_cache_hit(ctx: Ctx) -> Record:
    """One-stage pipeline, up to date: dvc repro vs qwex build (cache hit)."""
    rec = Record(
        "cache_hit", "cache hit: up-to-date one-stage pipeline", peer_name="dvc repro", target_ratio=0.4
    )
    dvc = ctx.tools.need_dvc()
    ctx.tools.need_git()
    py = ctx.tools.python
    reps = ctx.reps(10)
    q = ctx.qwex()

    # --- peer: dvc repro on an up-to-date pipeline (git repo + dvc init)
    dvc_log = ctx.workdir / "tmp" / "cachehit-dvc.runlog"
    dvc_log.unlink(missing_ok=True)
    denv = dict(ctx.env, BENCH_RUNLOG=str(dvc_log))
    dd = ctx.fresh("cachehit-dvc")
    make_csv(dd / "data" / "raw.csv")
    (dd / "train.py").write_text(TRAIN_PY)
    (dd / "dvc.yaml").write_text(
        "stages:\n  train:\n"
        f"    cmd: {shlex.quote(py)} train.py\n"
        "    deps:\n    - train.py\n    - data/raw.csv\n"
        "    outs:\n    - out\n"
    )
    git_init_commit(denv, dd)
    run([*dvc, "init", "-q"], cwd=dd, env=denv)
    run([*dvc, "repro", "-q"], cwd=dd, env=denv)  # the miss that makes it up to date
    git(denv, dd, "add", "-A")
    git(denv, dd, "commit", "-q", "-m", "dvc repro")
    if not (dd / "out" / "model.json").exists():
        raise CommandFailed("dvc repro did not produce out/model.json")
    items = [("dvc repro (up to date)", lambda i: time_cmd([*dvc, "repro", "-q"], cwd=dd, env=denv))]

    # --- qwex: build train.drv once (miss), then time the hits
    if q:
        qwex_log = ctx.workdir / "tmp" / "cachehit-qwex.runlog"
        qwex_log.unlink(missing_ok=True)
        qd = ctx.fresh("cachehit-qwex")
        make_csv(qd / "raw.csv")
        (qd / "train.py").write_text(TRAIN_PY)
        (qd / ".gitignore").write_text("raw.csv\nout/\n")
        write_drv(
            qd / "train.drv",
            "train",
            [py, "train.py"],
            ["out/"],
            {"data/raw.csv": "file:raw.csv"},
            env_pass=["BENCH_RUNLOG"],
        )
        git_init_commit(ctx.env, qd)
        qenv = qwex_env(dict(ctx.env, BENCH_RUNLOG=str(qwex_log)), ctx.fresh_home("cachehit"))
        run([*q, "build", "train.drv"], cwd=qd, env=qenv)  # the miss that warms the cache
        items.append(
            (
                "qwex build train.drv (cache hit)",
                lambda i: time_cmd([*q, "build", "train.drv"], cwd=qd, env=qenv),
            )
        )

    timings = measure_many(items, reps)
    rec.context += [t.as_dict() for t in timings]
    rec.set_peer(timings[0])
    # cache hits must not run the stage: 1 run (the initial miss) is expected
    runs = _count_lines(dvc_log)
    if runs != 1:
        rec.message += f"dvc ran the stage {runs} times (expected 1). "
    if q:
        rec.set_qwex(timings[1])
        runs = _count_lines(qwex_log)
        if runs == 0:
            rec.message += (
                "could not verify that qwex's hits skip the command (BENCH_RUNLOG not passed to the job). "
            )
        elif runs > 1:
            rec.invalid = True
            rec.message += f"INVALID: qwex ran the stage {runs} times: the timed builds were not cache hits. "
    else:
        rec.status = "no-qwex"

    # context: the floor, and what the stage itself costs
    rec.context.append(
        measure("floor: python -c pass", reps, lambda i: time_cmd([py, "-c", "pass"], env=ctx.env)).as_dict()
    )
    rec.context.append(
        measure(
            "the stage's command run directly (python train.py)",
            reps,
            lambda i: time_cmd([py, "train.py"], cwd=dd, env=ctx.env),
        ).as_dict()
    )
    return rec


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


def bench_snapshot(ctx: Ctx) -> Record:
    ctx.tools.need_git()
    rec = Record(
        "snapshot",
        "source snapshot: first build in a nanoGPT-sized repo",
        peer_name="git bundle create x.bundle HEAD",
        target_ratio=4.0,
    )
    return _snapshot_bench(ctx, rec, ctx.data.synth_repo(), "snap", incremental=False)


def bench_snapshot_incremental(ctx: Ctx) -> Record:
    ctx.tools.need_git()
    rec = Record(
        "snapshot_incremental",
        "source re-snapshot after one small commit (same repo)",
        peer_name="git bundle create x.bundle HEAD",
        target_abs_s=0.3,
    )
    return _snapshot_bench(ctx, rec, ctx.data.synth_repo(), "snapinc", incremental=True)


def bench_snapshot_nanogpt(ctx: Ctx) -> Record:
    ctx.tools.need_git()
    rec = Record(
        "snapshot_nanogpt",
        "source snapshot: first build in a nanoGPT clone (optional, informational)",
        peer_name="git bundle create x.bundle HEAD",
    )
    return _snapshot_bench(ctx, rec, ctx.data.nanogpt_repo(), "nanogpt", incremental=False)


BENCHMARKS: dict[str, Callable[[Ctx], Record]] = {
    "cache_hit": bench_cache_hit,
    "ingest_1gib": bench_ingest_1gib,
    "ingest_10k": bench_ingest_small,
    "snapshot": bench_snapshot,
    "snapshot_incremental": bench_snapshot_incremental,
    "snapshot_nanogpt": bench_snapshot_nanogpt,
}

# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------


def _target(r: dict[str, Any]) -> str:
    parts = []
    if r.get("target_ratio") is not None:
        parts.append(f"≤ {r['target_ratio']:g}× peer")
    if r.get("target_abs_s") is not None:
        parts.append(f"< {fmt_s(r['target_abs_s'])}")
    return ", ".join(parts) or "—"


def _fig(med: float | None, mn: float | None) -> str:
    if med is None:
        return "—"
    if mn is None:
        return fmt_s(med)
    return f"{fmt_s(med)} (min {fmt_s(mn)})"


def render_markdown(result: dict[str, Any]) -> str:
    out = []
    meta = result.get("meta", {})
    load = ""
    if meta.get("loadavg_start"):
        load = f" (load average {meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end)"
    out.append(
        f"Run {meta.get('date', '?')} on {meta.get('machine', '?')}{load}; "
        f"figures are the median (min) wall time of the whole command over n runs (below)."
    )
    out.append("")
    out.append("| benchmark | qwex | peer | peer figure | ratio | target | result |")
    out.append("|---|---|---|---|---|---|---|")
    for r in result["records"]:
        if r["status"] in ("skipped", "error"):
            out.append(
                f"| {r['title']} | — | {r['peer_name']} | — | — | {_target(r)} | "
                f"{r['status'].upper()}: {r['message'].splitlines()[0] if r['message'] else ''} |"
            )
            continue
        if r["status"] == "no-qwex":
            q, res = "TODO (qwex not run)", "TODO"
        else:
            q = _fig(r["qwex_s"], r["qwex_min_s"])
            res = {True: "PASS", False: "FAIL", None: "—"}[r["passed"]]
        ratio = f"{r['ratio']:.2f}×" if r.get("ratio") is not None else "—"
        out.append(
            f"| {r['title']} | {q} | `{r['peer_name']}` | "
            f"{_fig(r['peer_s'], r['peer_min_s'])} | {ratio} | {_target(r)} | {res} |"
        )
    out.append("")
    out.append("Context (every figure measured in the same run):")
    out.append("")
    out.append("| benchmark | measurement | median | min | n |")
    out.append("|---|---|---|---|---|")
    for r in result["records"]:
        if r.get("message") and r["status"] in ("ok", "no-qwex"):
            out.append(f"| {r['name']} | note: {r['message'].strip()} | | | |")
        for c in r.get("context", []):
            if "ratio" in c:
                out.append(f"| {r['name']} | {c['label']} | {c['ratio']:.2f}× | | |")
            else:
                out.append(
                    f"| {r['name']} | {c['label']} | {fmt_s(c['median_s'])} | "
                    f"{fmt_s(c['min_s'])} | {c.get('n', '')} |"
                )
    out.append("")
    out.append("Tools: " + ", ".join(f"{k} = `{v}`" for k, v in meta.get("versions", {}).items() if v))
    out.append("")
    out.append(
        f"qwex: `{meta.get('qwex_cmd')}`; benchmarks/ at commit `{meta.get('bench_commit')}`; "
        f"command: `{shlex.join(meta.get('argv', []))}`"
    )
    return "\n".join(out) + "\n"


def _git_describe(path: Path) -> str | None:
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=path, capture_output=True)
    if p.returncode != 0:
        return None
    return p.stdout.decode().strip() or None


README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- results:begin (generated by run.py --update-readme) -->", "<!-- results:end -->"


def update_readme(md: str) -> None:
    text = README.read_text()
    a, b = text.index(BEGIN), text.index(END)
    README.write_text(text[: a + len(BEGIN)] + "\n" + md + text[b:])
    log(f"updated {README}")


def meta_info(tools: Tools, workdir: Path) -> dict[str, Any]:
    def fs_type(p: Path) -> str:
        try:
            return run(["df", "--output=fstype", str(p)]).stdout.decode().split()[-1]
        except Exception:
            return "?"

    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} cpus, fs {fs_type(workdir)}",
        "workdir": str(workdir),
        "bench_commit": _git_describe(Path(__file__).resolve().parent),
        "qwex_cmd": shlex.join(_portable(a) for a in tools.qwex) if tools.qwex else None,
        "argv": sys.argv,
        "versions": {
            "python": platform.python_version(),
            "qwex": tools.version(tools.qwex, "--version") if tools.qwex else None,
            "dvc": tools.version(tools.dvc, "--version"),
            "git": tools.version(["git"], "--version") if tools.git else None,
            "b3sum": tools.version([tools.b3sum], "--version") if tools.b3sum else None,
        },
    }


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def _portable(arg: str) -> str:
    """A path inside the repository as a relative path, so results carry no machine paths."""
    repo = str(Path(__file__).resolve().parent.parent) + "/"
    return arg.replace(repo, "")


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
        help="timed repetitions per figure (default: 10 cache hit, 5 snapshot, 3 ingest)",
    )
    ap.add_argument(
        "--ingest-mode",
        choices=["move", "link"],
        default="move",
        help="how the ingest jobs produce their output: mv a fresh private copy (default; link "
        "count 1, like a freshly written file) or hard-link the pre-made data (qwex then copies)",
    )
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big file (MiB)")
    ap.add_argument("--small-files", type=int, default=10_000, help="number of small files")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument(
        "--markdown",
        metavar="RESULTS_JSON",
        help="do not run: print the markdown tables of a saved --json file",
    )
    ap.add_argument(
        "--update-readme",
        action="store_true",
        help="write the tables into benchmarks/README.md (between the results markers) "
        "instead of printing them; with --markdown, or after a run",
    )
    ap.add_argument("--list", action="store_true", help="list benchmark names")
    args = ap.parse_args(argv)

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
    names = only or list(BENCHMARKS)

    fresh_workdir = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwex-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    tools = Tools(args)
    if not tools.qwex:
        log("qwex not found (pass --qwex PATH): measuring the peers only")
    if not tools.dvc:
        log("dvc not found: `pip install dvc` (or pass --dvc PATH); dvc benchmarks will be skipped")
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
                rec = BENCHMARKS[n](ctx)
            except Skip as e:
                log(f"  SKIPPED: {e}")
                rec = Record(n, n, peer_name="", status="skipped", message=str(e))
            except (CommandFailed, OSError) as e:
                log(f"  ERROR: {e}")
                rec = Record(n, n, peer_name="", status="error", message=str(e))
            records.append(rec.finish())
            log(f"  ({time.perf_counter() - t0:.1f} s)")
    finally:
        rmtree(workdir / "runs")
        if fresh_workdir and not args.keep:
            rmtree(workdir)

    meta["loadavg_end"] = os.getloadavg()
    result = {"meta": meta, "records": [asdict(r) for r in records]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    md = render_markdown(result)
    print(md, end="")
    if args.update_readme:
        update_readme(md)
    failed = [r for r in records if r.status == "error" or r.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
