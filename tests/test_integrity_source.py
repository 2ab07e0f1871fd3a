"""Issue 7, items 1, 11, 13, 14: the source a job sees is the keyed tree, byte for byte;
restoring refuses names git refuses; selections match what the user meant; checkout works
when outputs overlap source files."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import msgspec
from conftest import PY, GitRepo, Qwex, assert_user_error, drv_text, job
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_objects
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwexstore import canonical
from qwexstore.gittree import blob_oid, check_git_name
from qwexstore.globs import Selector
from qwexstore.index import Index
from qwexstore.records import Snapshot
from qwexstore.snapshot import restore, take_snapshot
from qwexstore.source import Repo, SourceEntry, SourceTree
from qwexstore.store import open_store

_GIT_ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "GIT_CONFIG_NOSYSTEM": "1",
    "LANG": "C.UTF-8",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def _entries_on_disk(root: str) -> SourceTree:
    """The files under ``root`` as git would list them (path, mode, blob id)."""
    out: list[SourceEntry] = []
    for d, dirs, names in os.walk(root):
        for n in [*names, *[x for x in dirs if os.path.islink(os.path.join(d, x))]]:
            full = os.path.join(d, n)
            st_ = os.lstat(full)
            if stat.S_ISLNK(st_.st_mode):
                mode, data = "120000", os.fsencode(os.readlink(full))
            else:
                mode = "100755" if st_.st_mode & 0o100 else "100644"
                data = Path(full).read_bytes()
            out.append(SourceEntry(os.path.relpath(full, root), mode, f"git-sha1:{blob_oid(data)}"))
    return SourceTree(sorted(out, key=lambda e: e.path))


# -- item 1: staging is raw, and equals the key and the checkout ---------------------------
_NAME = st.text(alphabet="ab cé中-_.\u00e9", min_size=1, max_size=6).filter(
    lambda n: not n.startswith(".") and n.strip() == n and check_git_name(n) is None
)
_CONTENT = st.one_of(
    st.sampled_from([b"a\r\nb\n", b"aaa\n", b"$Id$\n", b"\x00\xff\r\n", b"", b"a\rb", b"x\n\n"]),
    st.binary(max_size=40),
)
_FILE = st.tuples(st.sampled_from(["file", "exec", "link"]), _CONTENT)
_TREE = st.dictionaries(st.tuples(st.one_of(st.none(), _NAME), _NAME), _FILE, min_size=1, max_size=6)
_ATTRS = st.lists(
    st.sampled_from(["* text eol=crlf", "* text eol=lf", "* ident", "* filter=x", "* text",
                     "*.b text eol=crlf"]),
    max_size=3,
)


def _tree_files(tree: dict[tuple[str | None, str], tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    files: dict[str, tuple[str, bytes]] = {}
    for (d, n), v in tree.items():
        path = f"{d}/{n}" if d else n
        if path in files or any(p.startswith(path + "/") or path.startswith(p + "/") for p in files):
            continue
        files[path] = v
    return files


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREE, attrs=_ATTRS, autocrlf=st.sampled_from([None, "true", "input"]),
       info_attrs=st.booleans())
def test_staged_restored_and_keyed_trees_agree_under_any_attributes(
    tree: dict[tuple[str | None, str], tuple[str, bytes]], attrs: list[str], autocrlf: str | None,
    info_attrs: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "repo")
        os.mkdir(root)

        def git(*args: str) -> None:
            subprocess.run(["git", "-C", root, *args], check=True, capture_output=True,
                           env={**_GIT_ENV, "HOME": tmp})

        git("init", "-q")
        # A smudge filter that rewrites content, a clean filter that keeps it.
        git("config", "filter.x.smudge", "sed s/a/SMUDGED/g")
        git("config", "filter.x.clean", "cat")
        for path, (kind, data) in _tree_files(tree).items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            if kind == "link":
                os.symlink(data.replace(b"\0", b"0").replace(b"/", b"_") or b"t", full)
            else:
                Path(full).write_bytes(data)
                if kind == "exec":
                    os.chmod(full, 0o755)
        Path(root, ".gitattributes").write_text("\n".join(attrs) + "\n")
        git("add", "-A")
        git("commit", "-qm", "c")
        # Settings that would change checked-out bytes, in force when qwex stages.
        if autocrlf:
            git("config", "core.autocrlf", autocrlf)
        if info_attrs:
            Path(root, ".git/info/attributes").write_text("* text eol=crlf ident filter=x\n")

        repo = Repo(root)
        commit = repo.commit_of("HEAD")
        keyed = repo.tree(commit, Selector([], []), strict=True)
        staged = os.path.join(tmp, "work")
        repo.stage(keyed, staged)
        assert _entries_on_disk(staged) == keyed  # exactly the keyed files, byte for byte

        async def snapshot_and_restore() -> str:
            store = await open_store(os.path.join(tmp, "store"))
            with Index(os.path.join(tmp, "index")) as index:
                snap = await take_snapshot(store, index, repo, commit, os.path.join(tmp, "store", "tmp"))
            dest = os.path.join(tmp, "co")
            await restore(store, snap, None, dest)
            return dest

        restored = asyncio.run(snapshot_and_restore())
        assert _entries_on_disk(restored) == keyed


def test_write_tree_refuses_a_blob_that_does_not_hash_to_its_id(tmp_path: Path) -> None:
    from qwexstore.errors import SourceError
    from qwexstore.gittree import GitEntry, write_tree

    good, bad = b"kept\n", b"tampered\n"
    entries = [GitEntry("a", 0o100644, blob_oid(good)), GitEntry("b", 0o100644, blob_oid(good))]
    blobs = iter([good, bad])
    try:
        write_tree(entries, lambda oid: next(blobs), str(tmp_path / "d"), SourceError)
    except SourceError as e:
        assert "'b'" in str(e) and blob_oid(bad) in str(e)
    else:
        raise AssertionError("a blob that does not hash to its id was written")
    assert not (tmp_path / "d" / "b").exists()


def test_job_sees_raw_blobs_and_checkout_equals_them(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.git("config", "filter.x.smudge", "sed s/raw/SMUDGED/g")
    git_repo.git("config", "filter.x.clean", "sed s/SMUDGED/raw/g")  # a clean round trip: not dirty
    git_repo.git("config", "core.autocrlf", "true")
    git_repo.commit("data", {
        ".gitattributes": "data.txt filter=x\nid.txt ident\ncrlf.txt text eol=crlf\n",
        "data.txt": "raw bytes\n", "id.txt": "$Id$\n", "crlf.txt": "one\ntwo\n",
        ".qwex-index": "a tracked file with qwex's old scratch name\n",
        "t.drv": drv_text(job("--copy", "data.txt=data.txt", "--copy", "id.txt=id.txt",
                              "--copy", "crlf.txt=crlf.txt", "--copy", ".qwex-index=qi")),
    })
    # The user's checkout is smudged; the job must still see the committed bytes.
    git_repo.git("rm", "-q", "--cached", "-r", ".")
    git_repo.git("reset", "-q", "--hard")
    assert (git_repo.path / "data.txt").read_text() == "SMUDGED bytes\n"
    b = qwex.build("t.drv", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    for name, out in (("data.txt", "data.txt"), ("id.txt", "id.txt"), ("crlf.txt", "crlf.txt"),
                      (".qwex-index", "qi")):
        raw = git_repo.git("cat-file", "blob", f"HEAD:{name}").encode()
        assert (co / "out" / out).read_bytes() == raw, name  # what the job saw
        assert (co / name).read_bytes() == raw, name  # what checkout restores
    assert (co / "out/data.txt").read_bytes() == b"raw bytes\n"


def test_git_lfs_pointer_is_refused_naming_it(qwex: Qwex, git_repo: GitRepo) -> None:
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")
    git_repo.commit("lfs", {
        ".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "weights.bin": pointer, "small.bin": "not a pointer\n",
        "t.drv": drv_text(job("--out", "a=1")),
    })
    line = assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "weights.bin", "file:")
    assert "small.bin" not in line
    git_repo.commit("exclude it", {"t.drv": drv_text(job("--out", "a=1"), exclude=["*.bin"])})
    qwex.build("t.drv", cwd=git_repo.path)


# -- item 11: names git refuses ----------------------------------------------------------
def test_check_git_name_refuses_what_git_fsck_refuses() -> None:
    bad = [".git", ".GIT", ".Git", ".git ", ".git.", ".git. .", "git~1", "GIT~1", ".g\u200cit",
           ".git\u200c", "\ufeff.git", ".git::$INDEX_ALLOCATION", "x\\.git", "", ".", "..", "a/b", "a\0b"]
    for name in bad:
        assert check_git_name(name) is not None, repr(name)
    good = [".gitignore", ".github", "git", ".gitx", "a.git", "git~2", "x.git.", "..a", "é", "a b"]
    for name in good:
        assert check_git_name(name) is None, repr(name)
    assert check_git_name(".gitmodules", 0o120000) is not None
    assert check_git_name(".gitmodules", 0o100644) is None


@settings(max_examples=300, deadline=None)
@given(path=st.text(alphabet=".gGiItT~1 :\\/ab\u200c\u206f\ufeffmMlLpP", min_size=0, max_size=12),
       mode=st.sampled_from([0o100644, 0o120000]))
def test_planning_prefilter_never_skips_a_refused_path(path: str, mode: int) -> None:
    """Planning checks names only in ls-tree records that a cheap substring scan flags."""
    from qwexstore.gittree import check_git_path
    from qwexstore.source import _suspect_paths

    parts = path.split("/")
    refused = any(check_git_name(p, mode if i == len(parts) - 1 else None) for i, p in enumerate(parts))
    assert (check_git_path(path, mode) is not None) == refused  # its own fast path skips nothing
    raw = path.encode()
    record = b"100644 blob " + b"ab" * 20 + b"\t" + raw + b"\0"
    if check_git_path(path, mode) is not None:
        assert raw in _suspect_paths(b"100644 blob " + b"cd" * 20 + b"\tok\0" + record)


def _crafted_bundle() -> tuple[bytes, str]:
    """A v2 bundle whose commit has .git/config (core.fsmonitor), .GIT/hooks and .git\u200c/x."""
    cfg = Blob.from_string(b"[core]\n\tfsmonitor = touch PWNED\n")
    ok = Blob.from_string(b"fine\n")
    objs: list[Blob | Tree | Commit] = [cfg, ok]
    root = Tree()
    for name in (b".git", b".GIT", ".git\u200c".encode()):
        sub = Tree()
        sub.add(b"config", 0o100644, cfg.id)
        objs.append(sub)
        root.add(name, 0o040000, sub.id)
    root.add(b"fine.txt", 0o100644, ok.id)
    commit = Commit()
    commit.tree = root.id
    commit.author = commit.committer = b"t <t@example.invalid>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"evil"
    objs += [root, commit]
    pack = io.BytesIO()
    entries = [(o, None) for o in objs]
    try:  # dulwich >= 1.0 names the object format; older versions take none
        from dulwich.object_format import DEFAULT_OBJECT_FORMAT

        write_pack_objects(pack, entries, DEFAULT_OBJECT_FORMAT)
    except ImportError:
        write_pack_objects(pack, entries)  # type: ignore[call-arg]
    return b"# v2 git bundle\n" + commit.id + b" refs/heads/x\n\n" + pack.getvalue(), commit.id.decode()


def test_checkout_refuses_a_crafted_dotgit_snapshot(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    bundle, commit = _crafted_bundle()

    async def forge() -> None:
        store = await open_store(str(qwex.store), create=False)
        snap = await store.put_snapshot(Snapshot(commit=commit, bundles=[await store.put_blob(bundle)]))
        real = await store.get_realisation(key)
        assert real is not None
        run = await store.get_run(real.run_id)
        record = await store.get_derivation(run.drv)
        assert record.source is not None
        forged = msgspec.structs.replace(record, source=msgspec.structs.replace(record.source, snapshot=snap))
        path = qwex.store / store.derivation_path(run.drv)
        os.chmod(path, 0o644)
        path.write_bytes(canonical.encode(forged))

    asyncio.run(forge())
    dest = tmp_path / "co"
    cp = qwex("checkout", key, str(dest))
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and ".git" in lines[0], cp.stderr
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".co.qwex-")]


def test_plan_refuses_a_crafted_dotgit_tree_naming_the_path(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"))})

    def git_in(args: list[str], stdin: str) -> str:
        return subprocess.run(["git", "-C", str(git_repo.path), *args], input=stdin, env=git_repo.env,
                              capture_output=True, text=True, check=True).stdout.strip()

    cfg = git_in(["hash-object", "-w", "--stdin"], "[core]\n\tfsmonitor = touch PWNED\n")
    sub = git_in(["mktree"], f"100644 blob {cfg}\tconfig\n")
    head_tree = git_repo.git("rev-parse", "HEAD^{tree}").strip()
    listing = git_repo.git("ls-tree", head_tree)
    tree = git_in(["mktree"], listing + f"040000 tree {sub}\t.GIT\n")
    commit = git_in(["commit-tree", tree, "-p", "HEAD", "-m", "evil"], "")
    # (git itself refuses to reset its index to this commit: "invalid path '.GIT/config'")
    git_repo.write({"t.drv": drv_text(job("--out", "a=1")) + f'[source]\nrev = "{commit}"\n'})
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), ".GIT/config")
    assert not (git_repo.path / "PWNED").exists()


# -- item 13: selections --------------------------------------------------------------------
def test_include_matching_nothing_is_an_error_naming_it(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"), include=["job.py", "lib/"])})
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "'lib/'", "include")


def test_untracked_selected_files_are_refused_and_snapshotted_with_allow_dirty(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    git_repo.commit("code", {
        ".gitignore": "*.log\n", "lib/__init__.py": "",
        "t.drv": drv_text([PY, "-c", "import lib.util, shutil; shutil.copy('lib/util.py', 'out/u.py')"],
                          include=["t.drv", "lib/"]),
    })
    git_repo.write({"lib/util.py": "X = 1\n", "lib/debug.log": "ignored\n", "notes.txt": "unselected\n"})
    status = git_repo.git("status", "--porcelain")
    line = assert_user_error(qwex("build", "t.drv", cwd=git_repo.path),
                             "untracked files would be selected: lib/util.py", "--allow-dirty")
    assert "debug.log" not in line and "notes.txt" not in line
    b = qwex.build("t.drv", "--allow-dirty", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "lib/util.py").read_text() == "X = 1\n" == (co / "out/u.py").read_text()
    assert not (co / "lib/debug.log").exists()
    # refs, index and work tree untouched; the same state gives the same key
    assert git_repo.git("status", "--porcelain") == status
    assert qwex.build("t.drv", "--allow-dirty", cwd=git_repo.path).cached
    git_repo.commit("add util")
    assert qwex.build("t.drv", cwd=git_repo.path).key == b.key


# -- item 14: outputs overlapping source ------------------------------------------------------
def test_checkout_with_gitkeep_in_the_output_dir(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    git_repo.commit("code", {"out/.gitkeep": "", "t.drv": drv_text(job("--out", "a=1"))})
    b = qwex.build("t.drv", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/a").read_text() == "1"
    assert (co / "out/.gitkeep").read_text() == ""  # the job left it: it is an output too
    assert (co / "job.py").exists()


def test_checkout_when_the_job_edits_a_tracked_output(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    code = ("import os; open('out/params.txt', 'w').write('edited by the job'); os.remove('results'); "
            "os.makedirs('results'); open('results/x', 'w').write('dir')")
    git_repo.commit("code", {
        "out/params.txt": "committed\n", "results": "a file in the source\n",
        "t.drv": drv_text([PY, "-c", code], outputs=["out/", "results*"]),
    })
    b = qwex.build("t.drv", cwd=git_repo.path)
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "out/params.txt").read_text() == "edited by the job"  # outputs win
    assert (co / "results/x").read_text() == "dir"  # an output dir where the source had a file
    assert (co / "job.py").exists()
