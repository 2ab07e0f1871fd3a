"""The two-lab test of issue 8, end to end through the CLI, over a real SeaweedFS bucket.

Each lab is its own QWEX_HOME (and HOME); lab A builds and pushes, the others pull into
clones of A's repository. Every job appends a line to one shared count file, so "nothing
executes" is checked by counting. Step 5 builds into the bucket itself from two
QWEX_HOMEs at once (the lease protocol's own cases are in tests/test_leases.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GitRepo, Qwex, drv_text, job, make_repo, read_lines, wait_for
from test_cli_remote import clone, config, new_lab, remote_verify, signing_key, tree


class World:
    def __init__(self, root: Path, s3: Any) -> None:
        self.root, self.s3 = root, s3
        self.env = dict(s3.env)
        self.count = root / "count.txt"
        self.a = new_lab(root, "a")
        self.repo = make_repo(root / "a" / "repo", self.a.env)
        count = ["--count", str(self.count)]
        self.repo.commit(
            "pipeline",
            {
                "prep.drv": drv_text(
                    job(*count, "--out", "data.txt=rows", "--random", "blob.bin=200000"),
                    name="prep",
                    include=["job.py"],
                ),
                "train.drv": drv_text(
                    job(*count, "--copy", "prep/out/data.txt=model.txt", "--out", "w=1"),
                    name="train",
                    include=["job.py"],
                    inputs={"prep": "drv:prep.drv"},
                ),
                "report.drv": drv_text(
                    job(*count, "--copy", "train/out/model.txt=report.txt"),
                    name="report",
                    include=["job.py"],
                    inputs={"train": "drv:train.drv"},
                ),
            },
        )
        self.alice = signing_key(self.a, "alice")
        self.url = s3.new_bucket()
        self.add_remote(self.a)
        self.built = self.a.build("report.drv", cwd=self.repo.path, env=self.env)
        assert len(read_lines(self.count)) == 3

    def add_remote(self, lab: Qwex, name: str = "lab", url: str | None = None) -> None:
        lab.ok("remote", "add", name, url or self.url, "--endpoint", self.s3.endpoint, "--user")

    def lab(self, name: str, *, trust: bool) -> tuple[Qwex, GitRepo]:
        lab = new_lab(self.root, name)
        self.add_remote(lab)
        if trust:
            config(lab, f'trusted-keys = ["{self.alice}"]')
        return lab, clone(self.repo, self.root / name / "repo", lab)


@pytest.fixture
def world(tmp_path: Path, seaweed_s3: Any) -> World:
    w = World(tmp_path, seaweed_s3)
    w.a.ok("push", "lab", "report.drv", cwd=w.repo.path, env=w.env)  # step 1
    return w


def test_step2_trusted_lab_builds_nothing_and_checks_out_identical_files(world: World) -> None:
    b, b_repo = world.lab("b", trust=True)
    b.ok("pull", "lab", "report.drv", cwd=b_repo.path, env=world.env)
    hit = b.build("report.drv", cwd=b_repo.path, env=world.env)
    assert hit.cached and hit.key == world.built.key
    assert len(read_lines(world.count)) == 3  # nothing executed in lab B
    shutil.rmtree(b_repo.path)  # the pulled run checks out without its source repository
    b.ok("checkout", world.built.key, str(world.root / "b-out"))
    world.a.ok("checkout", world.built.key, str(world.root / "a-out"), cwd=world.repo.path)
    assert tree(world.root / "b-out") == tree(world.root / "a-out")
    assert remote_verify(b, world.url, world.env).returncode == 0


def test_step2_with_a_substituter_builds_nothing(world: World) -> None:
    """The same, with no pull: ``substituters = ["lab"]`` answers the build, and the
    checkout fetches the outputs."""
    b, b_repo = world.lab("b2", trust=True)
    config(b, 'substituters = ["lab"]')
    hit = b.build("report.drv", cwd=b_repo.path, env=world.env)
    assert hit.key == world.built.key
    assert len(read_lines(world.count)) == 3  # nothing executed in lab B
    b.ok("checkout", world.built.key, str(world.root / "b-out"), cwd=b_repo.path, env=world.env)
    world.a.ok("checkout", world.built.key, str(world.root / "a-out"), cwd=world.repo.path)
    assert tree(world.root / "b-out") == tree(world.root / "a-out")


def test_step3_untrusted_result_is_refused_and_built_locally(world: World) -> None:
    c, c_repo = world.lab("c", trust=False)
    config(c, f'trusted-keys = ["{signing_key(new_lab(world.root, "other"), "carol")}"]')
    cp = c("pull", "lab", "report.drv", cwd=c_repo.path, env=world.env)
    assert cp.returncode == 1 and "untrusted" in cp.stderr and "alice" in cp.stderr, cp.stderr
    assert not (c.store / "realisations").exists()
    built = c.build("report.drv", cwd=c_repo.path, env=world.env)
    assert not built.cached and built.key == world.built.key
    assert len(read_lines(world.count)) == 6


def test_step4_tampered_blob_is_refused_naming_it(world: World) -> None:
    import botocore.session

    d, d_repo = world.lab("d", trust=True)
    bucket, prefix = world.url.removeprefix("s3://").split("/", 1)
    s3 = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=world.s3.endpoint,
        region_name=world.s3.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    blobs = [o for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/blobs/")["Contents"]]
    victim = max(blobs, key=lambda o: o["Size"])["Key"]
    body = bytearray(s3.get_object(Bucket=bucket, Key=victim)["Body"].read())
    body[7] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=victim, Body=bytes(body))
    cp = d("pull", "lab", world.built.key, env=world.env)
    errors = [ln for ln in cp.stderr.splitlines() if ln.startswith("qwex: error: ")]
    assert cp.returncode == 1 and len(errors) == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert victim.removeprefix(prefix + "/") in errors[0]
    assert not (d.store / "realisations").exists() or not any((d.store / "realisations").rglob("*"))
    assert d.build("report.drv", cwd=d_repo.path, env=world.env).key == world.built.key


@pytest.mark.parametrize("nth", [3, 11])
def test_step6_kill_during_push_and_pull(world: World, nth: int) -> None:
    a = world.a
    url = world.s3.new_bucket()
    world.add_remote(a, "fresh", url)
    cp = a("push", "fresh", world.built.key, env={**world.env, "QWEX_TEST_CRASH_AT": f"transfer:{nth}"})
    assert cp.returncode == -signal.SIGKILL, cp.stderr
    v = remote_verify(a, url, world.env)
    assert v.returncode == 0, v.stdout
    a.ok("push", "fresh", world.built.key, env=world.env)
    assert remote_verify(a, url, world.env).returncode == 0

    e, e_repo = world.lab("e", trust=True)
    world.add_remote(e, "fresh", url)
    cp = e("pull", "fresh", world.built.key, env={**world.env, "QWEX_TEST_CRASH_AT": f"transfer:{nth}"})
    assert cp.returncode == -signal.SIGKILL, cp.stderr
    assert e.ok("verify").returncode == 0
    e.ok("pull", "fresh", world.built.key, env=world.env)
    assert e.ok("verify").returncode == 0
    assert e.build("report.drv", cwd=e_repo.path, env=world.env).cached


def test_step7_server_stopped_mid_push(world: World) -> None:
    """Freeze the push once its first object is in the bucket, stop SeaweedFS, let it go
    on: one clear error, the local store intact; after a restart the push resumes."""
    import botocore.session

    a, s3 = world.a, world.s3
    world.repo.commit(
        "big",
        {
            "big.drv": drv_text(
                [
                    "sh",
                    "-c",
                    "mkdir -p out && for i in $(seq 60); do head -c 400000 /dev/urandom > out/f$i; done",
                ],
                name="big",
                include=["job.py"],
            )
        },
    )
    big = a.build("big.drv", cwd=world.repo.path, env=world.env)
    url = s3.new_bucket()
    world.add_remote(a, "far", url)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def keys(sub: str) -> list[str]:
        out = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{sub}/")
        return [o["Key"] for o in out.get("Contents", [])]

    env = {**world.env, "QWEX_STORE_RETRY_S": "2"}
    proc = a.popen("push", "far", big.key, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: bool(keys("blobs")), 60, "the first blob in the bucket")
        os.kill(proc.pid, signal.SIGSTOP)
        assert keys("realisations") == []  # frozen in the middle
        with s3.stopped():
            os.kill(proc.pid, signal.SIGCONT)
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, err
            errors = [ln for ln in err.decode().splitlines() if ln.startswith("qwex: error: ")]
            assert len(errors) == 1 and "Traceback" not in err.decode(), err
        assert a.ok("verify").returncode == 0  # nothing local lost
        a.ok("checkout", big.key, str(world.root / "big-out"), cwd=world.repo.path)
        assert len(list((world.root / "big-out" / "out").iterdir())) == 60
        rep = a.json("push", "far", big.key, env=world.env)
        assert rep["skipped"] > 0 and big.key in rep["realisations"]
        assert remote_verify(a, url, world.env).returncode == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_step5_two_machines_one_execution(world: World) -> None:
    """Two machines (two QWEX_HOMEs, so two flock domains) build the same key into the
    bucket at once, `--store s3://…`: one runs the job while the other waits on the lease,
    says who holds it, and then takes the result. The job runs exactly once."""
    root = world.root
    count = root / "count5.txt"
    world.repo.commit(
        "slow",
        {"slow.drv": drv_text(job("--count", str(count), "--sleep", "6", "--out", "x=1"),
                              name="slow", include=["job.py"])},
    )
    url = world.s3.new_bucket()
    env = {**world.env, "QWEX_LEASE_TTL_S": "3"}  # renewed by heartbeat while the job runs
    m1, m2 = new_lab(root, "m1"), new_lab(root, "m2")
    procs = [
        m.popen("--store", url, "build", "slow.drv", cwd=world.repo.path, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for m in (m1, m2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err
    assert len(read_lines(count)) == 1  # exactly one execution across both machines
    keys = {ln.split()[1] for out, _ in outs for ln in out.splitlines() if ln.startswith("key ")}
    assert len(keys) == 1
    waited = [err for _, err in outs if "waiting for" in err]
    assert len(waited) == 1 and "pid " in waited[0], [e for _, e in outs]
