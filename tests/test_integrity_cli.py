"""Issue 7, CLI and store items: phantom hits (5), a missing ``--store`` (18), verify
--repair of a source snapshot (19), piped output (21), ``index rebuild`` on a corrupt
manifest and checkout into a symlink (17), and ``drv:`` sub-paths (15)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, read_lines


def _obj(qwex: Qwex, kind: str, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return qwex.store / kind / hexd[:2] / hexd


# -- 5. phantom hits -------------------------------------------------------------------------
def test_deleted_store_is_not_a_cache_hit(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    count = tmp_path / "count"
    git_repo.commit("drv", {"a.drv": drv_text(job("--count", str(count), "--out", "a.txt=alpha\n"))})
    first = qwex.build("a.drv", cwd=git_repo.path)
    assert qwex.build("a.drv", cwd=git_repo.path).cached
    shutil.rmtree(qwex.store)
    again = qwex.build("a.drv", cwd=git_repo.path)
    assert not again.cached and again.key == first.key
    assert len(read_lines(count)) == 2
    qwex.ok("checkout", first.key, str(tmp_path / "co"))
    assert (tmp_path / "co" / "out" / "a.txt").read_text() == "alpha\n"


def test_missing_realisation_of_an_upstream_rebuilds_it(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    up, down = tmp_path / "up.count", tmp_path / "down.count"
    git_repo.commit("drvs", {
        "up.drv": drv_text(job("--count", str(up), "--out", "u.txt=u\n"), name="up"),
        "down.drv": drv_text(job("--count", str(down), "--copy", "in/out/u.txt=d.txt"), name="down",
                             inputs={"in": "drv:up.drv"}),
    })
    key = qwex.build("down.drv", cwd=git_repo.path).key
    up_key = qwex.build("up.drv", cwd=git_repo.path).key
    _obj(qwex, "realisations", up_key).unlink()  # the index still names it
    again = qwex.build("down.drv", cwd=git_repo.path)
    assert again.key == key and again.cached  # the upstream rebuilt to the same bytes
    assert len(read_lines(up)) == 2 and len(read_lines(down)) == 1
    assert _obj(qwex, "realisations", up_key).exists()


# -- 18. a store that does not exist -------------------------------------------------------------
def test_read_only_commands_refuse_a_missing_store(qwex: Qwex, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    for args in (["ls"], ["show", "abc"], ["log", "abc"], ["checkout", "abc", str(tmp_path / "co")],
                 ["diff", "abc", "def"], ["verify"], ["gc"], ["pin"], ["unpin", "abc"], ["index", "rebuild"]):
        cp = qwex("--store", str(missing), *args)
        assert_user_error(cp, f"no qwex store at {missing}")
        assert not missing.exists(), args
        assert not (qwex.home / "index").exists(), args
    cp = qwex("ls", env={"QWEX_STORE": str(missing)})
    assert_user_error(cp, "no qwex store at")
    assert_user_error(qwex("ls"), f"no qwex store at {qwex.store}")  # the default, before any build
    assert not qwex.home.exists()


def test_build_creates_a_chosen_store_and_says_so(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a.txt=alpha\n"))})
    new = tmp_path / "new-store"
    cp = qwex.ok("--store", str(new), "build", "a.drv", cwd=git_repo.path)
    assert f"qwex: created a new store at {new}" in cp.stderr.splitlines()
    assert (new / "qwex-store.json").is_file()
    again = qwex.ok("--store", str(new), "build", "a.drv", cwd=git_repo.path)
    assert "created" not in again.stderr
    first = qwex.ok("build", "a.drv", cwd=git_repo.path)  # the default store: silently
    assert "created" not in first.stderr and (qwex.store / "qwex-store.json").is_file()
    assert len(qwex.json("--store", str(new), "ls")) == 1


def test_store_key_of_config_toml(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a.txt=alpha\n")),
                            ".qwex/config.toml": 'store = "../proj-store"\n'})
    qwex.ok("build", "a.drv", cwd=git_repo.path)
    assert (tmp_path / "proj-store" / "qwex-store.json").is_file()
    assert not qwex.store.exists()
    assert len(qwex.json("ls", cwd=git_repo.path)) == 1
    # --store and QWEX_STORE win over the config
    assert_user_error(qwex("--store", str(tmp_path / "x"), "ls", cwd=git_repo.path), "no qwex store")
    assert_user_error(qwex("ls", cwd=git_repo.path, env={"QWEX_STORE": str(tmp_path / "y")}), "no qwex store")


def test_hash_without_a_store_creates_nothing(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a.txt=alpha\n"))})
    qwex.hash("a.drv", cwd=git_repo.path)
    assert not qwex.home.exists()


# -- 17. index rebuild on a corrupt manifest; checkout into a symlink ---------------------------
def _overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # store objects are read-only
    path.write_bytes(data)


def test_index_rebuild_skips_a_corrupt_manifest_and_names_it(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drvs", {"a.drv": drv_text(job("--out", "a.txt=alpha\n"), name="a"),
                             "b.drv": drv_text(job("--out", "b.txt=beta\n"), name="b")})
    a = qwex.build("a.drv", cwd=git_repo.path)
    b = qwex.build("b.drv", cwd=git_repo.path)
    bad = _obj(qwex, "manifests", qwex.json("show", a.key)["run"]["manifest"])
    _overwrite(bad, b"garbage")
    cp = qwex("index", "rebuild")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    (line,) = cp.stderr.splitlines()
    rel = str(bad.relative_to(qwex.store))
    assert line.startswith("qwex: error: not indexed: ") and rel in line and "qwex verify --repair" in line
    assert "indexed 1 realisations" in cp.stdout
    assert qwex.build("b.drv", cwd=git_repo.path).cached  # everything else was indexed
    assert {r["key"] for r in qwex.json("ls")} == {a.key, b.key}  # both run records are sound


def test_checkout_refuses_a_symlinked_or_dangling_destination(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a.txt=alpha\n"))})
    key = qwex.build("a.drv", cwd=git_repo.path).key
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "to-dir").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("to-dir", "dangling"):
        assert_user_error(qwex("checkout", key, str(tmp_path / name)), "is a symbolic link")
        assert (tmp_path / name).is_symlink()
    assert list(target.iterdir()) == [] and not (tmp_path / "nowhere").exists()
    assert not [p for p in tmp_path.iterdir() if ".qwex-" in p.name]


# -- 21. piped output is never wrapped or cut ----------------------------------------------------
def test_piped_output_is_not_wrapped(qwex: Qwex, git_repo: GitRepo) -> None:
    long = "x" * 150
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a.txt=alpha\n", "--print", long),
                                              name="n" * 90)})
    b = qwex.build("a.drv", cwd=git_repo.path)
    narrow = {"COLUMNS": "80"}
    ls = qwex.ok("ls", env=narrow).stdout
    assert b.run_id in ls and "n" * 90 in ls and "…" not in ls
    show = qwex.ok("show", b.key, env=narrow).stdout
    (cmd,) = [line for line in show.splitlines() if line.startswith("command  ")]
    assert json.loads(cmd.removeprefix("command  ")) == job("--out", "a.txt=alpha\n", "--print", long)
    helptext = qwex.ok("verify", "--help", env=narrow).stdout
    assert any(len(line) > 100 and "--repair" in line for line in helptext.splitlines()), helptext
    assert "╭" not in helptext  # plain text for a pipe, not panels sized to a terminal


# -- 19. verify --repair of a damaged source snapshot ----------------------------------------------
def test_repair_of_a_corrupt_bundle_keeps_the_results_built_from_it(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    n = 10
    git_repo.commit("drvs", {f"d{i}.drv": drv_text(job("--out", f"r.txt=result {i}\n"), name=f"d{i}")
                             for i in range(n)})
    keys = [qwex.build(f"d{i}.drv", cwd=git_repo.path).key for i in range(n)]
    snaps = {qwex.json("show", k)["derivation"]["source"]["snapshot"] for k in keys}
    assert len(snaps) == 1  # one commit: one shared snapshot
    (snap,) = snaps
    doc = json.loads(_obj(qwex, "snapshots", snap).read_bytes())
    (bundle,) = doc["bundles"]
    _overwrite(_obj(qwex, "blobs", bundle), b"not a bundle")

    cp = qwex("verify", "--repair")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert sum(line.startswith("no source ") for line in cp.stdout.splitlines()) == n, cp.stdout
    assert not _obj(qwex, "snapshots", snap).exists() and not _obj(qwex, "blobs", bundle).exists()
    for k in keys:
        assert _obj(qwex, "realisations", k).exists()
    again = json.loads(qwex("verify", "--json").stdout)
    assert sorted(again["source_missing"]) == sorted(keys)  # still reported: exit 1 until then
    assert [p["state"] for p in again["problems"]] == ["missing"]

    show = qwex.ok("show", keys[3]).stdout
    assert f"source snapshot {snap}" in show and "never been built" not in show
    assert qwex.json("show", keys[3])["source_missing"] is True
    cp = qwex("checkout", keys[3], str(tmp_path / "co"))
    assert cp.returncode == 1 and snap in cp.stderr and "--outputs-only" in cp.stderr, cp.stderr
    assert not (tmp_path / "co").exists()
    qwex.ok("checkout", "--outputs-only", keys[3], str(tmp_path / "co"))
    assert (tmp_path / "co" / "out" / "r.txt").read_text() == "result 3\n"
    assert qwex.build("d3.drv", cwd=git_repo.path).cached  # downstream hits stay valid


def test_locate_store_precedence_and_relative_config_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwexstore.location import locate_store

    home, repo = tmp_path / "home", tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    home.mkdir()
    monkeypatch.setenv("QWEX_HOME", str(home))
    monkeypatch.delenv("QWEX_STORE", raising=False)
    default = locate_store(cwd=str(repo / "sub"))
    assert (default.url, default.explicit) == (str(home / "store"), False)
    (home / "config.toml").write_text('store = "user-store"\n')
    assert locate_store(cwd=str(repo / "sub")).url == str(home / "user-store")
    (repo / ".qwex").mkdir()
    (repo / ".qwex" / "config.toml").write_text('store = "s3://bucket/qwex"\n')
    assert locate_store(cwd=str(repo / "sub")) == locate_store(cwd=str(repo))
    assert locate_store(cwd=str(repo / "sub")).url == "s3://bucket/qwex"
    monkeypatch.setenv("QWEX_STORE", "rel/store")
    monkeypatch.chdir(tmp_path)
    assert locate_store(cwd=str(repo)).url == str(tmp_path / "rel" / "store")
    assert locate_store("/x/y", cwd=str(repo)).url == "/x/y"


def test_lookup_drops_a_phantom_entry(tmp_path: Path) -> None:
    from qwexstore.cache import lookup
    from qwexstore.index import Index, IndexedRealisation
    from qwexstore.location import VERSION_FILE, StoreLocation, realisation_path
    from qwexstore.store import Store

    key = "blake3:" + "ab" * 32
    assert realisation_path(key) == Store.realisation_path(key) and VERSION_FILE == "qwex-store.json"
    loc = StoreLocation(str(tmp_path / "store"), explicit=False)
    with Index(str(tmp_path / "index")) as index:
        with index.writer() as w:
            w.realisation(key, IndexedRealisation("blake3:" + "cd" * 32, "run", 1, 0, 0, []))
        real = tmp_path / "store" / "realisations" / "ab" / ("ab" * 32)
        real.parent.mkdir(parents=True)
        real.write_text("{}")
        assert lookup(index, key, loc.realised()) is not None  # present: a hit
        real.unlink()
        assert lookup(index, key, loc.realised()) is None  # gone: a miss ...
        assert index.realisation(key) is None  # ... and the entry is dropped
