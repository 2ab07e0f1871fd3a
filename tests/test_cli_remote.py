"""``qwex remote add|list|remove``, ``qwex push`` and ``qwex pull`` through the real CLI.

Two "labs" are two QWEX_HOMEs (and two HOMEs); lab B works in a clone of lab A's
repository. Remotes are plain directories here, and one SFTP round trip runs against the
real sshd; tests/test_two_labs.py does the same over SeaweedFS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, make_repo

# -- shared by test_transfer.py and test_two_labs.py ----------------------------------------


def new_lab(root: Path, name: str) -> Qwex:
    """A lab: its own QWEX_HOME and HOME under ``root/name``."""
    d = root / name
    d.mkdir()
    return Qwex(d)


def pipeline_repo(lab: Qwex, root: Path, big: int = 300_000) -> GitRepo:
    """A repository with the three-stage example: prep -> train -> report."""
    repo = make_repo(root / "repo", lab.env)
    repo.commit(
        "pipeline",
        {
            "prep.drv": drv_text(
                job("--out", "data.txt=rows", "--random", "blob.bin=" + str(big)),
                name="prep",
                include=["job.py"],
            ),
            "train.drv": drv_text(
                job("--copy", "prep/out/data.txt=model.txt", "--out", "sub/w=1", "--exec", "run.sh=echo"),
                name="train",
                include=["job.py"],
                inputs={"prep": "drv:prep.drv"},
            ),
            "report.drv": drv_text(
                job("--copy", "train/out/model.txt=report.txt", "--random", "r.bin=5000"),
                name="report",
                include=["job.py"],
                inputs={"train": "drv:train.drv"},
            ),
        },
    )
    return repo


def clone(repo: GitRepo, dest: Path, lab: Qwex) -> GitRepo:
    subprocess.run(["git", "clone", "-q", str(repo.path), str(dest)], env=lab.env, check=True)
    return GitRepo(dest, lab.env)


def signing_key(lab: Qwex, name: str) -> str:
    """Generate a key in ``lab``, make it the signing key; return the public key text."""
    pub = lab.ok("key", "generate", name).stdout.strip()
    config(lab, f'signing-key = "{name}"')
    return pub


def config(lab: Qwex, *lines: str) -> None:
    """Set top-level ``key = value`` lines in the lab's user config (replacing the same
    keys; tables stay after them)."""
    path = lab.home / "config.toml"
    keys = {ln.split("=", 1)[0].strip() for ln in lines}
    old = "".join(
        ln
        for ln in (path.read_text() if path.exists() else "").splitlines(keepends=True)
        if ln.split("=", 1)[0].strip() not in keys
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + old)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def remote_verify(lab: Qwex, url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``qwex verify`` of a remote store (its own index under the lab's home)."""
    return lab("--store", url, "verify", env=env, timeout=120)


# -- remote add / list / remove ----------------------------------------------------------


def test_remote_add_list_remove_keeps_comments(qwex: Qwex, git_repo: GitRepo) -> None:
    cfg = git_repo.path / ".qwex" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text('# project settings\nstore = "st"  # keep me\n')
    out = qwex.ok(
        "remote", "add", "lab", "s3://lab-bucket/qwex", "--endpoint", "http://127.0.0.1:1", cwd=git_repo.path
    ).stdout
    assert str(cfg) in out
    qwex.ok("remote", "add", "near", "../near", cwd=git_repo.path)
    text = cfg.read_text()
    assert "# project settings" in text and "# keep me" in text
    rows = qwex.json("remote", "list", cwd=git_repo.path)
    assert rows == [
        {
            "name": "lab",
            "url": "s3://lab-bucket/qwex",
            "endpoint": "http://127.0.0.1:1",
            "profile": None,
            "region": None,
        },
        {
            "name": "near",
            "url": str(git_repo.path.parent / "near"),
            "endpoint": None,
            "profile": None,
            "region": None,
        },
    ]
    human = qwex.ok("remote", "list", cwd=git_repo.path).stdout
    assert "s3://lab-bucket/qwex" in human and "near" in human
    qwex.ok("remote", "remove", "lab", cwd=git_repo.path)
    assert [r["name"] for r in qwex.json("remote", "list", cwd=git_repo.path)] == ["near"]
    assert "# keep me" in cfg.read_text() and "lab-bucket" not in cfg.read_text()


def test_remote_add_user_and_outside_a_repo(qwex: Qwex, tmp_path: Path) -> None:
    qwex.ok("remote", "add", "mine", "ssh://me@host:2222/srv/qwex", "--user")
    qwex.ok("remote", "add", "other", "file:///srv/x")  # outside a repo: the user's file
    text = (qwex.home / "config.toml").read_text()
    assert "ssh://me@host:2222/srv/qwex" in text and 'url = "/srv/x"' in text
    assert_user_error(qwex("remote", "add", "mine", "/elsewhere", "--user"), "already exists")
    assert_user_error(qwex("remote", "remove", "nope"), "no remote named")


@pytest.mark.parametrize(
    ("name", "url", "needle"),
    [
        ("bad name", "/x", "invalid remote name"),
        ("x/y", "/x", "invalid remote name"),
        ("ok", "ftp://host/x", "unsupported remote URL"),
        ("ok", "s3://A_B/x", "bucket"),
        ("ok", "s3://key:secret@bucket/x", "credentials"),
        ("ok", "ssh://me:pw@host/x", "credentials"),
        ("ok", "ssh://host", "ssh://[user@]host[:port]/path"),
        ("ok", "ssh://host:notaport/x", "invalid remote URL"),
        ("ok", "s3://bucket/x?versionId=1", "query"),
    ],
)
def test_remote_add_refuses_bad_input(qwex: Qwex, name: str, url: str, needle: str) -> None:
    assert_user_error(qwex("remote", "add", name, url), needle)
    assert not (qwex.home / "config.toml").exists()


def test_remote_add_refuses_s3_options_on_other_urls(qwex: Qwex) -> None:
    assert_user_error(qwex("remote", "add", "x", "/d", "--endpoint", "http://e"), "s3://")


# -- push and pull over directories ----------------------------------------------------------


class Labs:
    """Lab A (signs with alice, built the pipeline) and lab B (trusts alice), one remote."""

    def __init__(self, root: Path) -> None:
        self.a = new_lab(root, "a")
        self.b = new_lab(root, "b")
        self.repo = pipeline_repo(self.a, root / "a")
        self.alice = signing_key(self.a, "alice")
        self.remote = str(root / "remote")
        for lab in (self.a, self.b):
            lab.ok("remote", "add", "lab", self.remote, "--user")
        self.built = self.a.build("report.drv", cwd=self.repo.path)
        self.b_repo = clone(self.repo, root / "b" / "repo", self.b)


@pytest.fixture
def labs(tmp_path: Path) -> Labs:
    return Labs(tmp_path)


def test_push_then_pull_round_trip(labs: Labs, tmp_path: Path) -> None:
    a, b = labs.a, labs.b
    rep = a.json("push", "lab", "report.drv", cwd=labs.repo.path)
    assert rep["objects"] > 10 and rep["bytes"] > 300_000 and not rep["dry_run"]
    assert labs.built.key in rep["realisations"] and len(rep["realisations"]) == 3  # with upstreams
    assert remote_verify(a, labs.remote).returncode == 0
    again = a.json("push", "lab", labs.built.key[:14], cwd=labs.repo.path)
    assert again["objects"] == 0 and again["skipped"] == rep["objects"]

    config(b, f'trusted-keys = ["{labs.alice}"]')
    got = b.json("pull", "lab", "report.drv", cwd=labs.b_repo.path)
    assert sorted(got["realisations"]) == sorted(rep["realisations"])
    hit = b.build("report.drv", cwd=labs.b_repo.path)
    assert hit.cached and hit.key == labs.built.key
    shutil.rmtree(labs.b_repo.path)  # a pulled run checks out without its source repository
    b.ok("checkout", labs.built.key, str(tmp_path / "b-out"))
    a.ok("checkout", labs.built.key, str(tmp_path / "a-out"), cwd=labs.repo.path)
    assert tree(tmp_path / "b-out") == tree(tmp_path / "a-out")
    assert (tmp_path / "b-out" / "out" / "report.txt").read_text() == "rows"
    assert b.ok("verify").returncode == 0
    assert b.json("pull", "lab", labs.built.key)["objects"] == 0


def test_dry_run_moves_nothing(labs: Labs) -> None:
    a, b = labs.a, labs.b
    rep = a.json("push", "lab", "--all", "--dry-run", cwd=labs.repo.path)
    assert rep["dry_run"] and rep["objects"] > 10 and not os.path.exists(labs.remote)
    human = a.ok("push", "lab", labs.built.key, "-n").stdout
    assert human.startswith("would push ") and "  blobs/" in human
    assert not os.path.exists(labs.remote)
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    dry = b.json("pull", "lab", "--all", "--dry-run")
    assert dry["objects"] == rep["objects"] and not b.store.exists()


def test_pull_refuses_untrusted_and_unsigned(labs: Labs, tmp_path: Path) -> None:
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    line = assert_pull_refused(b, labs.built.key)  # no trusted keys at all
    assert "untrusted" in line and "alice" in line
    other = new_lab(tmp_path, "c")
    config(b, f'trusted-keys = ["{signing_key(other, "carol")}"]')
    assert "untrusted" in assert_pull_refused(b, labs.built.key)
    # An unsigned realisation (its signatures gone from the remote).
    shutil.rmtree(Path(labs.remote) / "signatures")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    assert "unsigned" in assert_pull_refused(b, labs.built.key)


def assert_pull_refused(lab: Qwex, key: str) -> str:
    """The pull fails with one line, and nothing is written to the lab's store."""
    cp = lab("pull", "lab", key)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwex: error: refused "), cp.stderr
    objects = (
        [
            p
            for p in lab.store.rglob("*")
            if p.is_file() and "tmp" not in p.parts and p.name != "qwex-store.json"
        ]
        if lab.store.exists()
        else []
    )
    assert objects == []
    return lines[0]


def test_pull_refuses_tampered_blob_naming_it(labs: Labs) -> None:
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    blobs = [p for p in (Path(labs.remote) / "blobs").rglob("*") if p.is_file()]
    blob = max(blobs, key=lambda p: p.stat().st_size)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    cp = b("pull", "lab", labs.built.key)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    rel = str(blob.relative_to(labs.remote))
    errors = [ln for ln in cp.stderr.splitlines() if ln.startswith("qwex: error: ")]
    assert len(errors) == 1 and rel in errors[0] and "refused" in errors[0], cp.stderr
    assert not (b.store / rel).exists()
    assert b.ok("verify").returncode == 0  # what did arrive is sound, and no realisation


def test_errors_are_one_line(labs: Labs) -> None:
    a = labs.a
    assert_user_error(a("push", "nowhere", labs.built.key), "no remote named 'nowhere'", "lab")
    assert_user_error(a("pull", "lab", labs.built.key), "no qwex store at")
    assert_user_error(a("push", "lab"), "--all")
    assert_user_error(a("push", "lab", "blake3:" + "0" * 64), "blake3:00")
    a.ok("push", "lab", "--all")
    assert_user_error(a("pull", "lab", "zz"), "not a key")
    assert_user_error(a("pull", "lab", "ab" + "0" * 20), "no key at")


def test_sftp_round_trip(labs: Labs, sshd: Any) -> None:
    a, b = labs.a, labs.b
    url = sshd.new_dir()
    env = dict(sshd.env)
    for lab in (a, b):
        lab.ok("remote", "add", "ssh", url, "--user")
    rep = a.json("push", "ssh", labs.built.key, env=env)
    assert len(rep["realisations"]) == 3
    assert remote_verify(a, url, env).returncode == 0
    config(b, f'trusted-keys = ["{labs.alice}"]')
    got = b.json("pull", "ssh", labs.built.key, env=env)
    assert got["objects"] == rep["objects"]
    hit = b.build("report.drv", cwd=labs.b_repo.path)
    assert hit.cached


def test_json_report_fields(labs: Labs) -> None:
    rep = labs.a.json("push", "lab", labs.built.key)
    assert set(rep) == {"keys", "objects", "bytes", "skipped", "realisations", "paths", "notes", "dry_run"}
    assert rep["keys"] == [labs.built.key]
    assert all(json.dumps(p) for p in rep["paths"])
