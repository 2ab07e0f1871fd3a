"""Substitution end to end through the CLI: lab A builds (signed), lab B (another
QWEX_HOME, A's key trusted) asks A's store before building. Remotes: a local directory
(A's store itself) and a real S3 server (moto). A hit never connects anywhere."""

from __future__ import annotations

import asyncio
import filecmp
import json
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import PY, Qwex, assert_user_error, drv_text, job, make_repo, parse_build, read_lines
from servers import S3Server, free_port

#: Modules a cache hit must never import (remote clients and the CLI framework).
HEAVY = ("fsspec", "s3fs", "aiobotocore", "botocore", "asyncssh", "sshfs", "typer", "rich")


class Labs:
    def __init__(self, tmp_path: Path) -> None:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        self.a, self.b = Qwex(tmp_path / "a"), Qwex(tmp_path / "b")
        self.repo = make_repo(tmp_path / "repo", self.a.env)
        self.count = {"a": tmp_path / "count-a", "b": tmp_path / "count-b"}
        self.tmp = tmp_path
        self.a.ok("key", "generate", "alice")
        self.alice = (self.a.home / "keys" / "alice.public").read_text().strip()
        _config(self.a, 'signing-key = "alice"\n')

    def write_drvs(self) -> None:
        """``prep.drv`` (out/d) and ``train.drv`` (copies prep's output); runs counted per lab."""

        def counted(*args: str) -> list[str]:
            return job("--count", "$COUNT", *args)

        self.repo.commit(
            "drvs",
            {
                "prep.drv": drv_text(counted("--out", "d=data-v1"), name="prep", pass_=["COUNT"]),
                "train.drv": drv_text(
                    counted("--copy", "data/out/d=model"),
                    name="train",
                    pass_=["COUNT"],
                    inputs={"data": "drv:prep.drv"},
                ),
            },
        )

    def build(
        self, lab: str, drv: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        q = self.a if lab == "a" else self.b
        env = {"COUNT": str(self.count[lab]), **(env or {})}
        return q.ok("build", drv, *extra, cwd=self.repo.path, env=env)

    def trust_a_from_b(self, url: str, extra: str = "", trusted: bool = True) -> None:
        keys = json.dumps([self.alice] if trusted else [])
        text = f'substituters = ["lab"]\ntrusted-keys = {keys}\n[remotes.lab]\nurl = "{url}"\n{extra}'
        _config(self.b, text)


def _config(q: Qwex, text: str) -> None:
    q.home.mkdir(parents=True, exist_ok=True)
    (q.home / "config.toml").write_text(text)


@pytest.fixture
def labs(tmp_path: Path) -> Labs:
    lab = Labs(tmp_path)
    # $COUNT is not expanded by qwex: the job reads it from its environment instead.
    lab.repo.commit(
        "job reads COUNT",
        {
            "job.py": lab.repo.path.joinpath("job.py")
            .read_text()
            .replace('with open(val, "a")', 'with open(os.environ["COUNT"] if val == "$COUNT" else val, "a")')
        },
    )
    lab.write_drvs()
    return lab


def _realised_in(store: Path) -> list[Path]:
    return list(store.glob("realisations/*/*"))


def test_trusted_result_is_substituted_then_fetched_by_checkout(labs: Labs) -> None:
    a = parse_build(labs.build("a", "prep.drv").stdout)
    labs.trust_a_from_b(str(labs.a.store))
    cp = labs.build("b", "prep.drv")
    b = parse_build(cp.stdout)
    assert (b.key, b.run_id, b.cached) == (a.key, a.run_id, True)
    assert "substituted from lab" in cp.stderr
    assert read_lines(labs.count["b"]) == []  # nothing ran in lab B
    assert _realised_in(labs.b.store) == []  # only the index knows it: outputs not fetched yet

    show = labs.b.ok("show", a.key, cwd=labs.repo.path).stdout
    assert "remote   lab" in show and "out/d" in show
    labs.b.ok("verify", cwd=labs.repo.path)  # a substituted entry is not damage
    labs.b.ok("gc", cwd=labs.repo.path)
    again = labs.build("b", "prep.drv")  # still a hit after gc
    assert parse_build(again.stdout).cached and "substituted from lab" in again.stderr
    doc = json.loads(labs.build("b", "prep.drv", "--json").stdout)
    assert (doc["key"], doc["cached"], doc["remote"]) == (a.key, True, "lab")
    shown = json.loads(labs.b.ok("show", a.key, "--json", cwd=labs.repo.path).stdout)
    assert shown["remote"] == "lab" and shown["outputs"] == ["out/d"]
    log = labs.b("log", a.key, cwd=labs.repo.path)
    assert log.returncode == 2 and "substituted from lab" in log.stderr and "Traceback" not in log.stderr

    out = labs.b.ok("checkout", a.key[:20], str(labs.tmp / "co-b"), cwd=labs.repo.path)
    assert "fetching the outputs" in out.stderr
    labs.a.ok("checkout", a.key[:20], str(labs.tmp / "co-a"), cwd=labs.repo.path)
    assert (labs.tmp / "co-b" / "out" / "d").read_text() == "data-v1"
    cmp = filecmp.dircmp(labs.tmp / "co-a", labs.tmp / "co-b")
    assert not (cmp.diff_files or cmp.left_only or cmp.right_only)
    assert len(_realised_in(labs.b.store)) == 1  # fetched: the store holds it now
    assert "remote" not in labs.b.ok("show", a.key, cwd=labs.repo.path).stdout.split("\n")[0]


def test_untrusted_result_is_refused_and_built_locally(labs: Labs) -> None:
    labs.build("a", "prep.drv")
    labs.trust_a_from_b(str(labs.a.store), trusted=False)
    cp = labs.build("b", "prep.drv")
    assert not parse_build(cp.stdout).cached
    warnings = [ln for ln in cp.stderr.splitlines() if ln.startswith("qwex: warning: substituter lab")]
    assert len(warnings) == 1 and "refused" in warnings[0]
    assert len(read_lines(labs.count["b"])) == 1


@pytest.mark.parametrize("where", ["closed-port", "no-store"])
def test_unavailable_substituter_is_a_warning_and_a_miss(labs: Labs, where: str) -> None:
    if where == "closed-port":
        labs.trust_a_from_b("s3://nobucket/store", f'endpoint = "http://127.0.0.1:{free_port()}"\n')
    else:
        labs.trust_a_from_b(str(labs.tmp / "nothing-here"))
    env = {"QWEX_STORE_RETRY_S": "1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    cp = labs.build("b", "prep.drv", env=env)
    assert not parse_build(cp.stdout).cached
    warnings = [ln for ln in cp.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "substituter lab is unavailable" in warnings[0]
    assert len(read_lines(labs.count["b"])) == 1


def test_command_line_chooses_the_substituters(labs: Labs) -> None:
    labs.build("a", "prep.drv")
    labs.trust_a_from_b(str(labs.a.store))
    (labs.b.home / "config.toml").write_text(
        (labs.b.home / "config.toml").read_text().replace('substituters = ["lab"]', "substituters = []")
    )
    bad = labs.b("build", "prep.drv", "--substituter", "nope", cwd=labs.repo.path)
    assert_user_error(bad, "no remote named 'nope'")
    cp = labs.build("b", "prep.drv", "--substituter", "lab", "--offline")  # --offline wins
    assert not parse_build(cp.stdout).cached and "substituted" not in cp.stderr
    labs.b.ok("gc", "--older-than", "0s", cwd=labs.repo.path)  # forget the local result
    labs.b.ok("index", "rebuild", cwd=labs.repo.path)
    cp = labs.build("b", "prep.drv", "--substituter", "lab")
    assert parse_build(cp.stdout).cached and "substituted from lab" in cp.stderr


def test_downstream_staging_fetches_a_substituted_upstream(labs: Labs) -> None:
    labs.build("a", "prep.drv")  # lab A never built train
    labs.trust_a_from_b(str(labs.a.store))
    cp = labs.build("b", "train.drv")
    assert "prep: substituted from lab" in cp.stderr and "fetching the outputs" in cp.stderr
    train = parse_build(cp.stdout)
    assert not train.cached
    assert len(read_lines(labs.count["b"])) == 1  # train ran here; prep did not
    assert len(_realised_in(labs.b.store)) == 2  # prep fetched for staging, train built
    labs.b.ok("checkout", train.key[:20], str(labs.tmp / "co"), "--outputs-only", cwd=labs.repo.path)
    assert (labs.tmp / "co" / "out" / "model").read_text() == "data-v1"


def test_a_blake3_input_on_a_substituted_key_is_fetched_for_staging(labs: Labs) -> None:
    prep = parse_build(labs.build("a", "prep.drv").stdout)
    labs.trust_a_from_b(str(labs.a.store))
    labs.build("b", "prep.drv")  # substituted: B's index knows the key, its store does not
    text = drv_text(
        job("--count", "$COUNT", "--copy", "data/out/d=model"),
        name="by-key",
        pass_=["COUNT"],
        inputs={"data": f"drv:{prep.key}"},
    )
    labs.repo.write({"by-key.drv": text})
    cp = labs.build("b", "by-key.drv")
    assert "fetching the outputs of " + prep.key in cp.stderr
    built = parse_build(cp.stdout)
    labs.b.ok("checkout", built.key[:20], str(labs.tmp / "co"), "--outputs-only", cwd=labs.repo.path)
    assert (labs.tmp / "co" / "out" / "model").read_text() == "data-v1"


def test_s3_substituter_on_moto(labs: Labs, moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    a = parse_build(labs.build("a", "prep.drv").stdout)
    url = moto_s3.new_bucket()
    for k, v in moto_s3.env.items():  # the library push below runs in this process
        monkeypatch.setenv(k, v)

    async def push() -> None:
        from qwexstore.config import Remote
        from qwexstore.remotes import open_remote
        from qwexstore.store import open_store
        from qwexstore.transfer import push

        src = await open_store(str(labs.a.store), create=False)
        dst = await open_remote(Remote(url, endpoint=moto_s3.endpoint), create=True)
        try:
            await push(src, dst, [a.key])
        finally:
            await dst.storage.close()

    asyncio.run(push())
    labs.trust_a_from_b(url, f'endpoint = "{moto_s3.endpoint}"\n')
    cp = labs.build("b", "prep.drv", env=moto_s3.env)
    assert parse_build(cp.stdout).cached and "substituted from lab" in cp.stderr
    assert read_lines(labs.count["b"]) == []
    labs.b.ok("checkout", a.key[:20], str(labs.tmp / "co"), cwd=labs.repo.path, env=moto_s3.env)
    assert (labs.tmp / "co" / "out" / "d").read_text() == "data-v1"


def test_a_hit_connects_nowhere_and_imports_no_remote_client(labs: Labs) -> None:
    """Both kinds of hit (built here; substituted earlier) with a substituter configured at
    a port we listen on: no connection arrives, and no remote client is imported."""
    labs.build("a", "prep.drv")
    labs.trust_a_from_b(str(labs.a.store))
    labs.build("b", "prep.drv")  # substituted
    labs.build("b", "train.drv")  # built here (prep fetched)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        labs.trust_a_from_b("s3://watched/store", f'endpoint = "http://127.0.0.1:{port}"\n')
        for drv in ("prep.drv", "train.drv"):
            cp = labs.build("b", drv)
            assert parse_build(cp.stdout).cached
            code = f"import sys; from qwex.main import main; sys.argv = ['qwex', 'build', {drv!r}]; main()"
            env = {**labs.b.env, "COUNT": str(labs.count["b"])}
            t = subprocess.run(
                [PY, "-X", "importtime", "-c", code],
                cwd=labs.repo.path,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            lines = [ln for ln in t.stderr.splitlines() if ln.startswith("import time:")]
            imported = {ln.split("|")[-1].strip() for ln in lines}
            assert "qwex.main" in imported or "qwexstore.workspace" in imported
            assert not {m for m in imported if m.split(".")[0] in HEAVY}, drv
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
