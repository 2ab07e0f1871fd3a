"""Shared fixtures for the integration tests that drive the real ``qwex`` command.

- :func:`qwex` runs ``qwex`` (the console script next to ``sys.executable``) in a
  controlled environment: ``QWEX_HOME`` and ``HOME`` inside ``tmp_path``, the venv's bin
  directory first on PATH, no git system/global config, git discovery stopped at
  ``tmp_path``. It returns a :class:`subprocess.CompletedProcess` with text.
- :func:`git_repo` is a real git repository (``tmp_path/repo``) with a local identity, a
  committed probe job (``job.py``, see :data:`JOB`) and a README; ``write``/``commit``
  add more.
- :func:`drv_text` renders a derivation file.

Jobs run ``PY`` (this interpreter, by absolute path), so they find the same Python.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from podman_image import podman_image  # noqa: F401  (session fixture: real podman + test image)
from servers import moto_s3, seaweed_s3, sshd  # noqa: F401  (session fixtures: real servers)
from slurm_server import slurm  # noqa: F401  (session fixture: a real single-node SLURM)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run last in the session, in their collected order. They wait
    on something started earlier by a session fixture (e.g. a SLURM time limit, tests/
    test_slurm.py), so every module in between overlaps that wait instead of adding to it."""
    slow = [it for it in items if it.get_closest_marker("slow") is not None]
    if slow:
        items[:] = [it for it in items if it.get_closest_marker("slow") is None] + slow


BIN = os.path.dirname(sys.executable)
QWEX = os.path.join(BIN, "qwex")
PY = sys.executable

#: A probe job, committed as ``job.py`` in every :func:`git_repo`. Actions run in order:
#:   --count PATH        append "ran <QWEX_RUN_ID>" to PATH (prove whether the job ran)
#:   --print TEXT        print TEXT to stdout (flushed)
#:   --eprint TEXT       print TEXT to stderr (flushed)
#:   --sleep SECONDS     sleep
#:   --out NAME=TEXT     write TEXT to out/NAME (parents created)
#:   --copy SRC=NAME     copy the file SRC (work-dir relative) to out/NAME
#:   --exec NAME=TEXT    like --out, and make it executable
#:   --link NAME=TARGET  create the symlink out/NAME -> TARGET
#:   --random NAME=N     write N pseudo-random bytes (seeded) to out/NAME
#:   --report PATH       write JSON {env, cwd, files, top} of the job to PATH (absolute)
#:   --exit CODE         exit with CODE
JOB = r'''
import json, os, random, sys, time

args = sys.argv[1:]
while args:
    opt, val = args[0], args[1]
    args = args[2:]
    if opt == "--count":
        with open(val, "a") as f:
            f.write("ran %s\n" % os.environ.get("QWEX_RUN_ID"))
    elif opt == "--print":
        print(val, flush=True)
    elif opt == "--eprint":
        print(val, file=sys.stderr, flush=True)
    elif opt == "--sleep":
        time.sleep(float(val))
    elif opt in ("--out", "--exec", "--link", "--random", "--copy"):
        name, _, text = val.partition("=")
        if opt == "--copy":
            name, text = text, name
        path = os.path.join("out", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if opt == "--link":
            os.symlink(text, path)
        elif opt == "--random":
            rnd = random.Random(name)
            with open(path, "wb") as f:
                f.write(bytes(rnd.getrandbits(8) for _ in range(int(text))))
        elif opt == "--copy":
            with open(text, "rb") as src, open(path, "wb") as f:
                f.write(src.read())
        else:
            with open(path, "w") as f:
                f.write(text)
            if opt == "--exec":
                os.chmod(path, 0o755)
    elif opt == "--report":
        cwd = os.getcwd()
        skip = {os.path.realpath(os.environ.get(n, "/nonexistent")) for n in ("HOME", "TMPDIR")}
        files = []
        for root, dirs, names in os.walk(cwd):
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip]
            for n in names:
                files.append(os.path.relpath(os.path.join(root, n), cwd))
        top = sorted(n for n in os.listdir(cwd) if os.path.realpath(os.path.join(cwd, n)) not in skip)
        with open(val, "w") as f:
            json.dump({"env": dict(os.environ), "cwd": cwd, "files": sorted(files), "top": top}, f)
    elif opt == "--exit":
        sys.exit(int(val))
    else:
        sys.exit("job.py: unknown option %s" % opt)
'''


# -- derivation files ---------------------------------------------------------------------
def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def drv_text(
    command: list[str] | str,
    *,
    name: str | None = None,
    outputs: list[str] | None = None,
    vars: Mapping[str, str] | None = None,
    pass_: list[str] | None = None,
    image: str | None = None,
    inputs: Mapping[str, str] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    repo: str | None = None,
    extra: str = "",
) -> str:
    """A derivation file with the given fields (only those given are written)."""
    lines = []
    if name is not None:
        lines.append(f"name = {_toml(name)}")
    lines.append(f"command = {_toml(command)}")
    if outputs is not None:
        lines.append(f"outputs = {_toml(outputs)}")
    if include is not None or exclude is not None or repo is not None:
        lines.append("[source]")
        if repo is not None:
            lines.append(f"repo = {_toml(repo)}")
        if include is not None:
            lines.append(f"include = {_toml(include)}")
        if exclude is not None:
            lines.append(f"exclude = {_toml(exclude)}")
    if vars is not None or pass_ is not None or image is not None:
        lines.append("[env]")
        if image is not None:
            lines.append(f"image = {_toml(image)}")
        if vars is not None:
            lines.append(f"vars = {_toml(dict(vars))}")
        if pass_ is not None:
            lines.append(f"pass = {_toml(pass_)}")
    if inputs is not None:
        lines.append("[inputs]")
        lines.extend(f"{json.dumps(k)} = {_toml(v)}" for k, v in inputs.items())
    text = "\n".join(lines) + "\n"
    return text + extra


def job(*args: str) -> list[str]:
    """The argv of the probe job with the given actions."""
    return [PY, "job.py", *args]


# -- parsing qwex output --------------------------------------------------------------------
@dataclass
class Built:
    key: str
    run_id: str
    cached: bool
    outputs: list[str] = field(default_factory=list)


_KEY_RE = re.compile(r"^key\s+(blake3:[0-9a-f]{64})\s*$", re.M)
_RUN_RE = re.compile(r"^run\s+(\S+)\s+\((cached|built[^)]*)\)\s*$", re.M)
_OUT_RE = re.compile(r"^  (\S.*?)  \(\d[^)]*\)\s*$", re.M)


def parse_build(stdout: str) -> Built:
    """The key, run id, cached flag and listed outputs from ``qwex build``'s human output."""
    k = _KEY_RE.search(stdout)
    r = _RUN_RE.search(stdout)
    assert k and r, f"no key/run lines in build output:\n{stdout}"
    return Built(k.group(1), r.group(1), r.group(2) == "cached", _OUT_RE.findall(stdout))


def assert_user_error(cp: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line ``qwex: error: ...`` containing every needle."""
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.splitlines()
    assert cp.returncode == 2, f"exit {cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    assert len(lines) == 1, f"want one stderr line, got:\n{cp.stderr}"
    assert lines[0].startswith("qwex: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


# -- the qwex runner ---------------------------------------------------------------------
def _sigint_not_ignored() -> None:
    """A test run started with SIGINT ignored passes that on to children; qwex must see Ctrl-C."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Qwex:
    """Runs the real ``qwex`` command with a controlled environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "qwexhome"
        self.user_home = tmp_path / "home"
        self.user_home.mkdir()
        self.cwd = tmp_path
        self.env: dict[str, str] = {
            "PATH": BIN + os.pathsep + os.environ.get("PATH", os.defpath),
            "HOME": str(self.user_home),
            "QWEX_HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CEILING_DIRECTORIES": str(tmp_path),
            "COLUMNS": "200",
        }

    @property
    def store(self) -> Path:
        return self.home / "store"

    def _env(self, env: Mapping[str, str] | None, unset: Iterable[str]) -> dict[str, str]:
        e = {**self.env, **(env or {})}
        for n in unset:
            e.pop(n, None)
        return e

    def __call__(self, *args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
                 unset: Iterable[str] = (), timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [QWEX, *args], cwd=cwd or self.cwd, env=self._env(env, unset), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run and assert exit 0 and no traceback."""
        cp = self(*args, **kw)
        assert cp.returncode == 0, f"qwex {' '.join(args)}: exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
        assert "Traceback" not in cp.stderr, cp.stderr
        return cp

    def json(self, *args: str, **kw: Any) -> Any:
        """Run with ``--json`` appended, assert success and return the parsed document."""
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def build(self, drv: str | Path, *extra: str, cwd: str | Path | None = None, **kw: Any) -> Built:
        cp = self.ok("build", str(drv), *extra, cwd=cwd, **kw)
        return parse_build(cp.stdout)

    def hash(self, drv: str | Path, *extra: str, cwd: str | Path | None = None, **kw: Any) -> str:
        out = self.ok("hash", str(drv), *extra, cwd=cwd, **kw).stdout.strip()
        assert re.fullmatch(r"blake3:[0-9a-f]{64}", out), out
        return out

    def concurrently(self, n: int, *args: str, cwd: str | Path | None = None, timeout: float = 60
                     ) -> list[Any]:
        """Start ``n`` processes of ``qwex ARGS --json`` at once; assert each succeeds and
        return their JSON documents."""
        procs = [self.popen(*args, "--json", cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(n)]
        docs = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            docs.append(json.loads(out))
        return docs

    def popen(self, *args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        _sigint_not_ignored()
        return subprocess.Popen(
            [QWEX, *args], cwd=cwd or self.cwd, env=self._env(env, ()), stdin=subprocess.DEVNULL, **kw,
        )


@pytest.fixture
def qwex(tmp_path: Path) -> Qwex:
    return Qwex(tmp_path)


# -- git repositories --------------------------------------------------------------------
class GitRepo:
    """A real git repository in a temporary directory."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = dict(env)

    def git(self, *args: str, check: bool = True) -> str:
        cp = subprocess.run(["git", "-C", str(self.path), *args], env=self.env, capture_output=True,
                            text=True, check=False)
        if check and cp.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {cp.stderr}")
        return cp.stdout

    def write(self, files: Mapping[str, str | bytes]) -> None:
        for rel, content in files.items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)

    def commit(self, message: str = "change", files: Mapping[str, str | bytes] | None = None) -> str:
        """Write ``files``, stage everything (``git add -A``), commit; return the commit id."""
        if files:
            self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()


def _init_repo(path: Path, env: Mapping[str, str], files: Mapping[str, str | bytes] | None) -> GitRepo:
    path.mkdir(parents=True)
    repo = GitRepo(path, env)
    repo.git("init", "-q")
    repo.git("config", "user.name", "Test User")
    repo.git("config", "user.email", "test@example.com")
    repo.git("config", "commit.gpgsign", "false")
    repo.commit("initial", {"job.py": JOB, "README.md": "# project\n", **(files or {})})
    return repo


_template: list[Path] = []  # the default repository, made once per session, then copied


def make_repo(path: Path, env: Mapping[str, str], files: Mapping[str, str | bytes] | None = None) -> GitRepo:
    """A new repository at ``path``: local identity, one commit ("initial") of ``job.py``,
    ``README.md`` and ``files``. Without ``files`` it is a copy of one made once per session
    (seven git processes saved per test; the copy's HEAD is the same commit every time)."""
    if files:
        return _init_repo(path, env, files)
    if not _template:
        base = Path(tempfile.mkdtemp(prefix="qwex-test-repo-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        _template.append(_init_repo(base / "repo", env, None).path)
    shutil.copytree(_template[0], path, symlinks=True)
    return GitRepo(path, env)


@pytest.fixture
def git_repo(tmp_path: Path, qwex: Qwex) -> GitRepo:
    return make_repo(tmp_path / "repo", qwex.env)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """An input file outside the repository: ``tmp_path/datasets/raw.csv``."""
    d = tmp_path / "datasets"
    d.mkdir()
    p = d / "raw.csv"
    p.write_text("a,b\n1,2\n")
    return p


def wait_for_job_handle(q: Qwex, timeout: float = 60) -> dict[str, Any]:
    """The first job handle a build of ``q`` saved (``<store>/tmp/jobs/<run-id>``), parsed:
    waits for the renamed file (it is written to a temp name, fsynced, then renamed)."""
    jobs = q.store / "tmp" / "jobs"
    found: list[Path] = []

    def saved() -> bool:
        found[:] = [h for h in jobs.glob("*") if ".tmp-" not in h.name]
        return bool(found)

    wait_for(saved, timeout, "a saved job handle")
    return dict(json.loads(found[0].read_bytes()))


def wait_for(pred: Any, timeout: float, what: str) -> None:
    """Poll ``pred()`` every 20 ms until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
