"""The execution side of a remote run (qwexstore/agent.py, ``qwex agent``): a derivation
built locally in store A, its job closure pushed to a fresh store B (a plain directory, no
git repository), then staged and ingested from B alone. Real git repositories, real
stores, the real local driver and the real ``qwex`` command."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, make_repo

from qwexstore.agent import JobClosureReport, ingest, push_job_closure, stage
from qwexstore.driver import LogSink, RunOutcome, RunPlan, load_driver
from qwexstore.errors import ObjectNotFound, StoreError, UserError
from qwexstore.manifest import FileEntry, SymlinkEntry
from qwexstore.store import Store, open_store
from qwexstore.workspace import Workspace

Listing = dict[str, tuple[str, int, str]]


def listing(root: str) -> Listing:
    """Every path below ``root``: (type, permission bits, content digest or link target),
    never following a symlink."""
    out: Listing = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), "")
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode), hashlib.sha256(f.read()).hexdigest())
    return out


class Snooping:
    """The real local driver, after noting what the build staged in the work dir."""

    name = "local"

    def __init__(self) -> None:
        self.inner = load_driver("local")
        self.staged: list[Listing] = []

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome:
        self.staged.append(listing(plan.workdir))
        return await self.inner.run(plan, logs)


class Lab:
    """A repository with ``a.drv`` (selected source with an executable, a symlink and an
    excluded directory; a file input and a directory input; an output directory), built
    through the library into store A."""

    def __init__(self, tmp: Path, repo: GitRepo) -> None:
        self.tmp, self.repo = tmp, repo
        self.driver = Snooping()

    async def build(self) -> tuple[str, str]:
        """Build a.drv into store A; return (derivation hash, output manifest digest)."""
        with Workspace.open(str(self.tmp / "a"), cwd=str(self.repo.path), create=True, offline=True) as ws:
            plan = ws.plan(str(self.repo.path / "a.drv"))
            result = await ws.build(plan, driver=self.driver)
            store = await ws.store()
            run = await store.get_run(result.run_id)
            return run.drv, result.manifest

    async def stores(self) -> tuple[Store, Store]:
        return (await open_store(str(self.tmp / "a"), create=False),
                await open_store(str(self.tmp / "b"), create=True))


@pytest.fixture
def lab(tmp_path: Path, qwex: Qwex, monkeypatch: pytest.MonkeyPatch) -> Lab:
    for k in ("QWEX_HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.setenv(k, qwex.env[k])
    monkeypatch.delenv("QWEX_STORE", raising=False)
    data = tmp_path / "datasets"
    (data / "corpus" / "sub").mkdir(parents=True)
    (data / "raw.csv").write_text("a,b\n1,2\n")
    (data / "corpus" / "one.txt").write_text("one\n")
    (data / "corpus" / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(data / "corpus" / "sub" / "run.sh", 0o755)
    repo = make_repo(tmp_path / "repo", qwex.env, {
        "tools/go.sh": "#!/bin/sh\ntrue\n",
        "secret/notes.txt": "not selected\n",
        "docs/a.md": "".join(f"line {i}\n" for i in range(200)),
    })
    os.chmod(repo.path / "tools" / "go.sh", 0o755)
    os.symlink("README.md", repo.path / "readme-link")
    repo.commit("drv", {"a.drv": drv_text(
        job("--out", "x=1", "--exec", "sub/run=#!/bin/sh", "--copy", "data/raw.csv=raw.csv"),
        name="a", outputs=["out/"], exclude=["secret/**"],
        inputs={"data/raw.csv": "file:../datasets/raw.csv", "corpus": "file:../datasets/corpus"},
    )})
    return Lab(tmp_path, repo)


def run_job(workdir: Path, *args: str) -> None:
    subprocess.run(job(*args), cwd=workdir, check=True, stdin=subprocess.DEVNULL)


def test_push_stage_ingest_equal_a_local_build(lab: Lab) -> None:
    async def go() -> None:
        drv, manifest = await lab.build()
        a, b = await lab.stores()
        first = await push_job_closure(a, b, drv)
        assert first.objects > 0 and first.bytes > 0 and first.skipped == 0
        # Only what stage needs: no realisation, run record or output went to B.
        assert not any(p.startswith(("realisations/", "runs/")) for p in first.paths)
        assert Store.manifest_path(manifest) not in first.paths

        work = lab.tmp / "jobs" / "1" / "work"
        await stage(b, drv, str(work))
        assert listing(str(work)) == lab.driver.staged[0]
        staged = listing(str(work))
        assert "secret/notes.txt" not in staged and staged["readme-link"] == ("l", 0, "README.md")
        assert staged["tools/go.sh"][1] & 0o111
        assert staged["data/raw.csv"][1] == 0o444 and staged["corpus/sub/run.sh"][1] == 0o555
        assert staged["out"][0] == "d"

        again = await push_job_closure(a, b, drv)
        assert (again.objects, again.bytes, again.paths) == (0, 0, [])
        assert again.skipped == first.objects and again.skipped_bytes == first.bytes

        run_job(work, "--out", "x=1", "--exec", "sub/run=#!/bin/sh", "--copy", "data/raw.csv=raw.csv")
        assert await ingest(b, drv, str(work)) == manifest
        got = await b.get_manifest(manifest)
        for e in got.files():
            assert (await b.storage.exists([b.blob_path(e.digest)])) == [True]
        assert not os.listdir(work)  # outputs moved into the store; the rest discarded

    asyncio.run(go())


def test_one_line_change_sends_a_few_kib(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> JobClosureReport:
        drv1, _ = await lab.build()
        a, b = await lab.stores()
        await push_job_closure(a, b, drv1)
        text = (lab.repo.path / "docs" / "a.md").read_text().replace("line 100\n", "line one hundred\n")
        lab.repo.commit("one line", {"docs/a.md": text})
        drv2, _ = await lab.build()
        assert drv2 != drv1
        report = await push_job_closure(a, b, drv2)
        kinds = sorted(p.split("/")[0] for p in report.paths)
        assert kinds == ["blobs", "derivations", "snapshots"]  # one small bundle, two records
        assert report.bytes < 4096
        assert report.skipped_bytes > report.bytes
        work = lab.tmp / "w2"
        await stage(b, drv2, str(work))
        assert listing(str(work)) == lab.driver.staged[1]
        return report

    report = asyncio.run(go())
    with capsys.disabled():
        print(f"\n[agent] 1-line change: {report.objects} objects, {report.bytes} bytes sent; "
              f"{report.skipped} objects, {report.skipped_bytes} bytes skipped")


def test_planted_symlinks_are_stored_as_links_never_followed(lab: Lab) -> None:
    secret = lab.tmp / "secret.txt"
    secret.write_bytes(b"the user's secret, outside the work dir\n")
    outside = lab.tmp / "elsewhere"
    outside.mkdir()
    (outside / "big.txt").write_bytes(b"not an output\n")

    async def go() -> None:
        drv, _ = await lab.build()
        a, b = await lab.stores()
        await push_job_closure(a, b, drv)
        secret_blob = Store.blob_path(_digest_of(secret))
        # A link inside the outputs to a file outside: the link is stored, not the file.
        w1 = lab.tmp / "w1"
        await stage(b, drv, str(w1))
        os.symlink(str(secret), w1 / "out" / "leak")
        m = await b.get_manifest(await ingest(b, drv, str(w1)))
        links = [(e.path, e.target) for e in m.entries if isinstance(e, SymlinkEntry)]
        assert links == [("out/leak", str(secret))]
        # The output directory itself replaced by a link to a directory outside: not walked.
        w2 = lab.tmp / "w2"
        await stage(b, drv, str(w2))
        os.rmdir(w2 / "out")
        os.symlink(str(outside), w2 / "out")
        m2 = await b.get_manifest(await ingest(b, drv, str(w2)))
        assert m2.entries == [SymlinkEntry(path="out", target=str(outside))]
        assert (outside / "big.txt").exists()  # nothing moved out of the user's directory
        assert (await b.storage.exists([secret_blob, Store.blob_path(_digest_of(outside / "big.txt"))])
                ) == [False, False]
        # The work dir itself a symlink: refused, never followed.
        w3 = lab.tmp / "w3"
        await stage(b, drv, str(w3))
        run_job(w3, "--out", "x=1")
        os.symlink(str(w3), lab.tmp / "w3-link")
        with pytest.raises(UserError, match="symbolic link"):
            await ingest(b, drv, str(lab.tmp / "w3-link"))
        assert (w3 / "out" / "x").exists()

    asyncio.run(go())


def _digest_of(path: Path) -> str:
    from qwexstore.digest import hash_file

    return hash_file(str(path))


def test_missing_output_and_missing_objects(lab: Lab) -> None:
    async def go() -> None:
        drv, _ = await lab.build()
        a, b = await lab.stores()
        with pytest.raises(ObjectNotFound):  # nothing pushed yet
            await stage(b, drv, str(lab.tmp / "w0"))
        await push_job_closure(a, b, drv)
        w = lab.tmp / "w"
        await stage(b, drv, str(w))
        with pytest.raises(UserError, match="'out/'") as err:  # the job wrote nothing
            await ingest(b, drv, str(w))
        assert "\n" not in str(err.value)
        with pytest.raises(UserError, match="not an empty directory"):
            await stage(b, drv, str(w))
        # A lost input blob at B is one StoreError naming it; the next push sends it again.
        m = await b.get_manifest(next(iter(
            i.manifest for i in (await b.get_derivation(drv)).derivation.inputs.values()
            if hasattr(i, "manifest"))))
        blob = b.blob_path(next(e for e in m.entries if isinstance(e, FileEntry)).digest)
        os.unlink(lab.tmp / "b" / blob)
        with pytest.raises(StoreError) as lost:
            await stage(b, drv, str(lab.tmp / "w4"))
        assert blob in str(lost.value) and "\n" not in str(lost.value)
        again = await push_job_closure(a, b, drv)
        assert again.paths == [blob]
        await stage(b, drv, str(lab.tmp / "w5"))

    asyncio.run(go())


def test_cli_stage_and_ingest(lab: Lab, qwex: Qwex) -> None:
    async def prepare() -> tuple[str, str]:
        drv, manifest = await lab.build()
        a, b = await lab.stores()
        await push_job_closure(a, b, drv)
        return drv, manifest

    drv, manifest = asyncio.run(prepare())
    store, work = str(lab.tmp / "b"), lab.tmp / "job" / "work"
    qwex.ok("agent", "stage", "--store", store, "--drv", drv, "--workdir", str(work))
    assert listing(str(work)) == lab.driver.staged[0]
    run_job(work, "--out", "x=1", "--exec", "sub/run=#!/bin/sh", "--copy", "data/raw.csv=raw.csv")
    out = qwex.ok("agent", "ingest", "--store", store, "--drv", drv, "--workdir", str(work)).stdout
    assert out == manifest + "\n"
    assert "agent" not in qwex("--help").stdout  # hidden
    empty = lab.tmp / "job2"
    qwex.ok("agent", "stage", "--store", store, "--drv", drv, "--workdir", str(empty))
    assert_user_error(qwex("agent", "ingest", "--store", store, "--drv", drv, "--workdir", str(empty)),
                      "'out/'")
    assert_user_error(qwex("agent", "stage", "--store", store, "--drv", "nope", "--workdir", "w"), "nope")
    missing: Any = qwex("agent", "stage", "--store", store, "--drv", "blake3:" + "0" * 64,
                        "--workdir", str(lab.tmp / "w9"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert "Traceback" not in missing.stderr and missing.stderr.startswith("qwex: error: ")
