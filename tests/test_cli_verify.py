"""``qwex verify``: re-hash and re-read the store; report damage with expected and actual
digests; ``--repair`` removes it and what depends on it, so the next build redoes it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import blake3
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, read_lines, wait_for


def _obj(qwex: Qwex, kind: str, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return qwex.store / kind / hexd[:2] / hexd


def _overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # store objects are read-only
    path.write_bytes(data)


def _verify(qwex: Qwex, *args: str) -> tuple[int, str]:
    cp = qwex("verify", *args)
    assert "Traceback" not in cp.stderr, cp.stderr
    assert cp.returncode in (0, 1), f"exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp.returncode, cp.stdout


def _outputs(qwex: Qwex, key: str) -> dict[str, str]:
    """Output path -> blob digest, from ``qwex show --json``."""
    return {e["path"]: e["digest"] for e in qwex.json("show", key)["outputs"] if "digest" in e}


def _build_two(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> tuple[str, str]:
    git_repo.commit("drvs", {
        "a.drv": drv_text(job("--count", str(tmp_path / "a.count"), "--out", "a.txt=alpha\n"), name="a"),
        "b.drv": drv_text(job("--count", str(tmp_path / "b.count"), "--out", "b.txt=beta\n"), name="b"),
    })
    return qwex.build("a.drv", cwd=git_repo.path).key, qwex.build("b.drv", cwd=git_repo.path).key


def test_sound_store_passes_with_summary(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    _build_two(qwex, git_repo, tmp_path)
    rc, out = _verify(qwex)
    assert rc == 0
    assert re.search(r"^checked \d+ objects, hashed .* no problems$", out, re.M), out
    doc = qwex.json("verify")
    # 2 realisations, 2 runs, 2 derivations, 1 snapshot, 2 manifests, and blobs: a bundle,
    # 2 outputs and the logs (one empty stderr shared by both).
    assert doc["problems"] == [] and doc["objects"] >= 13 and doc["bytes_hashed"] > 0


def test_corrupt_output_blob_reported_then_repaired_and_rebuilt(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    key_a, key_b = _build_two(qwex, git_repo, tmp_path)
    blob = _obj(qwex, "blobs", _outputs(qwex, key_a)["out/a.txt"])
    expected = "blake3:" + blob.name
    _overwrite(blob, b"alphX\n")  # same size, other bytes: a damaged or half-written file
    actual = "blake3:" + blake3.blake3(b"alphX\n").hexdigest()

    rc, out = _verify(qwex)
    assert rc == 1
    [line] = [ln for ln in out.splitlines() if ln.startswith("corrupt")]
    assert f"blobs/{blob.name[:2]}/{blob.name}" in line
    assert f"expected {expected}" in line and f"actual {actual}" in line
    assert out.splitlines()[-1].endswith("1 problem")

    rc, out = _verify(qwex, "--repair")
    assert rc == 1  # problems were found, even though they are now removed
    removed = {ln.split()[1] for ln in out.splitlines() if ln.startswith("removed ")}
    real_a = f"realisations/{key_a[7:9]}/{key_a[7:]}"
    assert f"blobs/{blob.name[:2]}/{blob.name}" in removed and real_a in removed
    assert not any(key_b[7:] in p for p in removed)  # b does not depend on the blob
    assert not blob.exists() and not (qwex.store / real_a).exists()

    assert _verify(qwex)[0] == 0
    assert qwex.build("b.drv", cwd=git_repo.path).cached
    again = qwex.build("a.drv", cwd=git_repo.path)  # the index forgot it too: it runs again
    assert again.key == key_a and not again.cached
    assert len(read_lines(tmp_path / "a.count")) == 2
    assert blob.read_bytes() == b"alpha\n"
    assert _verify(qwex)[0] == 0


def test_missing_manifest_is_reported_with_who_needs_it(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    key_a, _ = _build_two(qwex, git_repo, tmp_path)
    manifest = qwex.json("show", key_a)["run"]["manifest"]
    path = _obj(qwex, "manifests", manifest)
    path.unlink()
    rc, out = _verify(qwex, "--keys", key_a[7:15])
    assert rc == 1
    [line] = [ln for ln in out.splitlines() if ln.startswith("missing")]
    assert f"manifests/{manifest[7:9]}/{manifest[7:]}" in line
    assert f"expected {manifest}" in line and "actual (missing)" in line
    assert f"named by realisations/{key_a[7:9]}/{key_a[7:]}" in line or "named by runs/" in line

    assert _verify(qwex, "--repair")[0] == 1
    assert _verify(qwex)[0] == 0
    assert not qwex.build("a.drv", cwd=git_repo.path).cached
    assert _verify(qwex)[0] == 0


def test_keys_limit_the_check_to_their_closures(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    key_a, key_b = _build_two(qwex, git_repo, tmp_path)
    _overwrite(_obj(qwex, "blobs", _outputs(qwex, key_b)["out/b.txt"]), b"broken")
    only_a = qwex.json("verify", "--keys", key_a[7:19])
    assert only_a["problems"] == []
    whole = json.loads(qwex("verify", "--json").stdout)
    assert len(whole["problems"]) == 1 and 0 < only_a["objects"] < whole["objects"]
    assert _verify(qwex, "--keys", key_b)[0] == 1
    assert _verify(qwex, "--keys", f"{key_a[7:19]},{key_b[7:19]}")[0] == 1
    assert_user_error(qwex("verify", "--keys", "ffffffffff"), "no key, derivation or run matches")

    rc, out = _verify(qwex, "--keys", key_b, "--repair")
    assert rc == 1 and f"realisations/{key_b[7:9]}/{key_b[7:]}" in out
    assert _verify(qwex)[0] == 0
    assert qwex.build("a.drv", cwd=git_repo.path).cached


def test_corrupt_input_blob_takes_its_derivation_and_realisation(
    qwex: Qwex, git_repo: GitRepo, dataset: Path
) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "x=1"),
                                              inputs={"raw.csv": f"file:{dataset}"})})
    built = qwex.build("t.drv", cwd=git_repo.path)
    digest = "blake3:" + blake3.blake3(dataset.read_bytes()).hexdigest()
    blob = _obj(qwex, "blobs", digest)
    assert blob.exists()
    blob.chmod(0o644)
    with open(blob, "ab") as f:  # grown in place: a file that no longer hashes to its name
        f.write(b"3,4\n")
    rc, out = _verify(qwex, "--repair")
    assert rc == 1
    # Only the input names the blob; the derivation names the input; the run names the
    # derivation; the realisation names the run. The output manifest stays (garbage now).
    removed = {ln.split()[1].split("/")[0] for ln in out.splitlines() if ln.startswith("removed ")}
    assert removed == {"blobs", "derivations", "runs", "realisations"}
    assert _verify(qwex)[0] == 0
    again = qwex.build("t.drv", cwd=git_repo.path)
    assert again.key == built.key and not again.cached
    assert blob.read_bytes() == dataset.read_bytes()


def test_strays_unreadable_records_and_stale_index_entries(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    key_a, key_b = _build_two(qwex, git_repo, tmp_path)
    run_b = qwex.json("show", key_b)["run"]["run_id"]
    # A partial file left under a final directory, a record that does not decode, and a
    # realisation deleted behind the index's back.
    stray = qwex.store / "blobs" / "ab" / "put-3f2a"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"half")
    _overwrite(qwex.store / "runs" / run_b, b'{"format":"qwex.run/1","run_id":')
    real_a = _obj(qwex, "realisations", key_a)
    real_a.unlink()

    rc, out = _verify(qwex)
    assert rc == 1
    states = {(ln.split()[0], ln.split()[2]) for ln in out.splitlines() if not ln.startswith("checked")}
    assert ("stray", "blobs/ab/put-3f2a") in states
    assert ("unreadable", f"runs/{run_b}") in states
    assert ("stale", f"realisations/{key_a[7:9]}/{key_a[7:]}") in states
    assert not qwex.build("a.drv", cwd=git_repo.path).cached  # a stale entry is no hit (index.md I1)

    assert _verify(qwex, "--repair")[0] == 1
    assert not stray.exists() and not (qwex.store / "runs" / run_b).exists()
    assert _verify(qwex)[0] == 0
    assert qwex.build("a.drv", cwd=git_repo.path).cached  # built again above
    assert not qwex.build("b.drv", cwd=git_repo.path).cached
    assert _verify(qwex)[0] == 0


def test_repair_keeps_what_a_running_build_uses(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    """Damage reaching a running build's inputs is reported but kept until it ends: removing
    it under the build would leave its records naming missing objects."""
    data = tmp_path / "data.txt"
    data.write_text("shared input\n")
    started = tmp_path / "started"
    git_repo.commit("drvs", {
        "a.drv": drv_text(job("--out", "a=1"), name="a", inputs={"d.txt": f"file:{data}"}),
        "slow.drv": drv_text(job("--count", str(started), "--sleep", "3", "--out", "s=1"), name="slow",
                             inputs={"d.txt": f"file:{data}"}),
    })
    a = qwex.build("a.drv", cwd=git_repo.path)
    blob = _obj(qwex, "blobs", "blake3:" + blake3.blake3(b"shared input\n").hexdigest())
    slow = qwex.popen("build", "slow.drv", cwd=git_repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_lines(started) != [], 20, "the slow build to start its job")
        rot = blob.with_name("rot")
        rot.write_bytes(b"bit rot\n")
        os.replace(rot, blob)  # a new inode: the job's staged link still has the good bytes
        doc = json.loads(qwex("verify", "--repair", "--json").stdout)
        rel = str(blob.relative_to(qwex.store))
        assert {p["path"] for p in doc["problems"] if p["state"] == "corrupt"} == {rel}
        assert rel in doc["in_use"]  # the running build's input
        assert f"realisations/{a.key[7:9]}/{a.key[7:]}" in doc["removed"]  # a's result goes
        _, err = slow.communicate(timeout=30)
    finally:
        if slow.poll() is None:
            slow.kill()
        slow.communicate()
    assert slow.returncode == 0, err
    assert _verify(qwex, "--repair")[0] == 1  # now nothing runs: the damage and slow's result go
    assert _verify(qwex)[0] == 0
