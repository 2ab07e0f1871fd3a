"""A hostile or broken remote, from the adversarial pass of issue 8 (spec/threat-model.md).

Lab A builds the pipeline and pushes it to a directory remote; the tests then change the
remote the way a lab that can write to it could, and check that lab B (which trusts A's
key) refuses the result, stays responsive, and keeps its own store clean.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_cli_remote import Labs, assert_pull_refused, config, remote_verify


@pytest.fixture
def labs(tmp_path: Path) -> Labs:
    labs = Labs(tmp_path)
    labs.a.ok("push", "lab", "--all")
    config(labs.b, f'trusted-keys = ["{labs.alice}"]')
    return labs


def _edit_json(path: Path, **changes: str) -> None:
    record = json.loads(path.read_bytes())
    record.update(changes)
    os.chmod(path, 0o644)
    path.write_bytes(json.dumps(record, separators=(",", ":"), sort_keys=True).encode())


def _realisation(labs: Labs, key: str) -> Path:
    hexkey = key.split(":", 1)[1]
    return Path(labs.remote) / "realisations" / hexkey[:2] / hexkey


def _run_of(labs: Labs, key: str) -> Path:
    run_id = json.loads(_realisation(labs, key).read_bytes())["run_id"]
    return Path(labs.remote) / "runs" / run_id


def test_a_run_record_that_disagrees_with_the_signed_realisation_is_refused(labs: Labs) -> None:
    """The signature covers key and manifest, not the run record, which checkout and show
    read: a run record naming other outputs must not be believed."""
    key = labs.built.key
    other = json.loads(_realisation(labs, labs.a.hash("prep.drv", cwd=labs.repo.path)).read_bytes())
    _edit_json(_run_of(labs, key), manifest=other["manifest"])
    line = assert_pull_refused(labs.b, key)
    assert "runs/" in line and "does not match" in line
    assert remote_verify(labs.a, labs.remote).returncode == 1  # verify sees it too


def test_a_realisation_pointing_at_another_keys_run_is_refused(labs: Labs) -> None:
    """run_id is not signed: pointing it at another key's run (whose record is genuine)
    must not make checkout restore that other run."""
    prep = labs.a.hash("prep.drv", cwd=labs.repo.path)
    prep_run = json.loads(_realisation(labs, prep).read_bytes())["run_id"]
    _edit_json(_realisation(labs, labs.built.key), run_id=prep_run)
    line = assert_pull_refused(labs.b, labs.built.key)
    assert "does not match" in line
    # Through substitution the same result is refused, and built instead.
    config(labs.b, f'trusted-keys = ["{labs.alice}"]', 'substituters = ["lab"]')
    built = labs.b.build("report.drv", cwd=labs.b_repo.path)
    assert not built.cached and built.key == labs.built.key


def test_an_endless_or_oversized_blob_is_refused_without_reading_it_all(labs: Labs) -> None:
    blobs = sorted((p for p in (Path(labs.remote) / "blobs").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    small = blobs[0]
    os.chmod(small, 0o644)
    with open(small, "ab") as f:  # 64 MiB more than its manifest says
        f.truncate(small.stat().st_size + 64 * 2**20)
    cp = labs.b("pull", "lab", labs.built.key, timeout=60)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert str(small.relative_to(labs.remote)) in cp.stderr
    # A device (an endless read) under an object's name: refused at once, by name.
    small.unlink()
    small.symlink_to("/dev/zero")
    cp = labs.b("pull", "lab", labs.built.key, timeout=60)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert str(small.relative_to(labs.remote)) in cp.stderr


def test_a_fifo_under_an_object_name_does_not_hang_a_pull(labs: Labs) -> None:
    blob = max((p for p in (Path(labs.remote) / "blobs").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    blob.unlink()
    os.mkfifo(blob)
    cp = labs.b("pull", "lab", labs.built.key, timeout=60)  # TimeoutExpired fails the test
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert "not a regular file" in cp.stderr


def test_a_substituter_missing_outputs_is_not_a_hit(labs: Labs) -> None:
    """A result whose blobs are gone from the substituter could never be checked out: it
    is a miss (with a warning), and the job runs here."""
    config(labs.b, f'trusted-keys = ["{labs.alice}"]', 'substituters = ["lab"]')
    for p in (Path(labs.remote) / "blobs").rglob("*"):
        if p.is_file():
            p.unlink()
    cp = labs.b("build", "report.drv", cwd=labs.b_repo.path)
    assert cp.returncode == 0, cp.stderr
    assert "lacks blobs/" in cp.stderr and "substituted from" not in cp.stderr
    assert "(cached)" not in cp.stdout


def test_push_to_a_read_only_directory_is_one_line(labs: Labs, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (not root?)")
    try:
        labs.a.ok("remote", "add", "ro", str(ro / "store"), "--user")
        cp = labs.a("push", "ro", labs.built.key)
        assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
        lines = cp.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("qwex: error: ") and "internal" not in lines[0]
    finally:
        subprocess.run(["umount", str(ro)], check=False)
