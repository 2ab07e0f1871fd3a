"""The benchmark harness: records, timing, tools, environment and generated data.

Stdlib only, shared by every benchmark module (``pipelines``, ``ingest``, ``snapshots``,
``index_scale``) and by ``run.py``, which runs them and writes the tables (``report``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What a peer's cells say when dvc is absent: the qwex figures are still measured.
DVC_MISSING = "dvc not installed: skipped"

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
    """One row of the results table. A benchmark returns one or several."""

    name: str
    title: str
    peer_name: str  # "" when the row has no peer (an absolute target only)
    target_ratio: float | None = None  # qwex/peer must be <= this
    target_abs_s: float | None = None  # qwex must be < this (seconds); the p99 too, if given
    qwex_s: float | None = None
    qwex_min_s: float | None = None
    qwex_p99_s: float | None = None  # for many-sample in-process figures (shown instead of the min)
    qwex_label: str = ""
    peer_s: float | None = None
    peer_min_s: float | None = None
    peer_note: str = ""  # shown instead of the peer's figure when it was not measured (DVC_MISSING)
    ratio: float | None = None
    passed: bool | None = None
    status: str = "ok"  # ok | no-qwex | skipped | error
    invalid: bool = False  # the qwex figure does not measure what it claims: FAIL
    message: str = ""
    context: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""  # the benchmark (--only name) that produced the row; set by run.py

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
            if self.qwex_p99_s is not None:
                checks.append(self.qwex_p99_s < self.target_abs_s)
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


#: A command to time in an interleaving beside others: (key, label, once); ``once`` as in
#: :func:`measure`. The benchmark modules return their timings by key.
Item = tuple[str, str, Callable[[int], float]]


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
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
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
        self._qwex_python_arg: str | None = getattr(args, "qwex_python", None)
        self._qwex_python: str | None = None

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

    def need_qwex(self) -> list[str]:
        if not self.qwex:
            raise Skip("qwex not found (pass --qwex PATH)")
        return self.qwex

    def need_qwex_python(self) -> str:
        """The interpreter of the qwex under test (for in-process measurements): --qwex-python,
        else the qwex command itself if it is a python, else the shebang of its script."""
        if self._qwex_python:
            return self._qwex_python
        cands = [self._qwex_python_arg] if self._qwex_python_arg else _pythons_of(self.need_qwex())
        for c in cands:
            p = subprocess.run([c, "-c", "import qwexstore.index"], capture_output=True)
            if p.returncode == 0:
                self._qwex_python = c
                return c
        raise Skip(f"no interpreter that imports qwexstore (tried {cands}); pass --qwex-python PATH")

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


def _pythons_of(cmd: list[str]) -> list[str]:
    """Candidate interpreters behind a command: itself if it is a python, else its script's
    shebang (``#!/venv/bin/python``, ``#!/usr/bin/env python3``, or pip's ``'''exec' PY``)."""
    exe = shutil.which(cmd[0]) or cmd[0]
    if Path(exe).name.startswith("python"):
        return [exe]
    try:
        with open(exe, "rb") as f:
            head = f.read(1024).decode(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    if head and head[0].startswith("#!"):
        words = shlex.split(head[0][2:])
        if words and Path(words[0]).name == "env" and len(words) > 1:
            words = [shutil.which(words[1]) or words[1]]
        if words and Path(words[0]).name.startswith("python"):
            out.append(words[0])
    for line in head[1:3]:  # pip's wrapper for interpreter paths too long for a shebang
        if line.startswith("'''exec' "):
            out.append(shlex.split(line[len("'''exec' ") :])[0])
    return out


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
    include: list[str] | None = None,
) -> None:
    """A .drv file; ``include`` selects the source files (default: the whole repo)."""
    lines = [
        f"name = {toml_str(name)}",
        "command = [" + ", ".join(toml_str(c) for c in command) + "]",
        "outputs = [" + ", ".join(toml_str(o) for o in outputs) + "]",
    ]
    if include:
        lines += ["", "[source]", "include = [" + ", ".join(toml_str(g) for g in include) + "]"]
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

    @property
    def quick(self) -> bool:
        """``run.py --quick``: fewer repetitions, and the optional context rows left out."""
        return bool(getattr(self.args, "quick", False))

    def reps(self, default: int, quick: int = 5) -> int:
        """``--reps``, else ``quick`` under ``--quick``, else ``default``."""
        return self.args.reps or (quick if self.quick else default)

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


#: A benchmark: one row of the results table, or several (run.py's registry maps names to these).
Bench = Callable[[Ctx], Record | list[Record]]
