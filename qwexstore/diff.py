"""Diff: which identity inputs make two derivations' keys differ (spec/diff.md).

Two layers:

- :func:`compare` is pure: two derivations in, the differing identity fields out
  (:class:`Changes`). A derivation holds identity only (spec/derivation.md), so everything
  it reports changes the key, and labels, commits, placement and pass-through names never
  show up.
- :func:`explain` adds what needs reading, through a :class:`Loader`: the files behind two
  source-tree digests (the user's git repository first, else the store's snapshot), the
  files behind two tree-input manifests, and, for a ``drv`` input whose upstream differs,
  the diff of the two upstreams, recursively through the DAG. It only reads: no store
  object, index entry or git ref is written (restoring a snapshot uses a temporary
  directory, removed before it returns).

Nothing here prints; ``qwex diff`` renders a :class:`DerivationDiff`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from .derivation import Derivation, DrvInput, Input, TreeInput
from .digest import is_digest
from .errors import KeyLookupError, ObjectNotFound, SourceError, StoreError
from .globs import Selector
from .index import Index
from .layers import LayerIdentity
from .manifest import FileEntry, Manifest
from .plan import Plan
from .records import DerivationRecord, SourceRef
from .source import Repo, SourceEntry, SourceTree
from .store import Store

__all__ = [
    "Changes",
    "CommandChange",
    "DerivationDiff",
    "FileChange",
    "ImageChange",
    "InputChange",
    "LayerChange",
    "LayersChange",
    "Loader",
    "OutputsChange",
    "Side",
    "SideInfo",
    "SourceChange",
    "VarsChange",
    "compare",
    "diff_listings",
    "explain",
]

_SYMLINK = "120000"
#: Upstream recursion deeper than this is cut off with a note (a DAG is never this deep).
_MAX_DEPTH = 64

# -- results ---------------------------------------------------------------------------------
FileStatus = Literal["A", "D", "M", "T"]
#: path -> (git mode, content id): what a source tree or a manifest says about one path.
Listing = dict[str, tuple[str, str]]


class FileChange(msgspec.Struct):
    """A path that differs: Added, Deleted, Modified (content or executable bit) or Type
    changed (file <-> symlink)."""

    status: FileStatus
    path: str


class SourceChange(msgspec.Struct):
    """Two source-tree digests. ``files`` is None when either tree could not be listed
    (``note`` says why); commits are where the trees were selected from, when known."""

    a: str | None
    b: str | None
    a_commit: str | None = None
    b_commit: str | None = None
    files: list[FileChange] | None = None
    note: str = ""


class CommandChange(msgspec.Struct):
    a: list[str]
    b: list[str]


class ImageChange(msgspec.Struct):
    a: str | None
    b: str | None


class VarsChange(msgspec.Struct):
    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]


class LayerChange(msgspec.Struct):
    """One identity field of the layer identity at ``index`` (same kind on both sides)."""

    index: int
    kind: str
    field: str
    a: Any
    b: Any


class LayersChange(msgspec.Struct):
    """Both layer identity lists; ``fields`` when they have the same kinds in the same order."""

    a: list[LayerIdentity]
    b: list[LayerIdentity]
    fields: list[LayerChange]


class OutputsChange(msgspec.Struct):
    a: list[str]
    b: list[str]
    added: list[str]
    removed: list[str]


class InputChange(msgspec.Struct):
    """One input destination whose input differs (``a``/``b`` None: absent on that side).

    ``name`` is the upstream's label for a ``drv`` input; ``files`` compares two tree
    manifests when both could be read; ``upstream`` is the diff of the two upstreams, or
    ``note`` says why it is missing.
    """

    dest: str
    a: Input | None
    b: Input | None
    name: str | None = None
    files: list[FileChange] | None = None
    upstream: DerivationDiff | None = None
    note: str = ""


class Changes(msgspec.Struct):
    """The identity fields that differ; None (or no inputs) where they are equal."""

    source: SourceChange | None = None
    command: CommandChange | None = None
    image: ImageChange | None = None
    vars: VarsChange | None = None
    layers: LayersChange | None = None
    inputs: list[InputChange] = msgspec.field(default_factory=list)
    outputs: OutputsChange | None = None

    def sections(self) -> list[str]:
        """Names of the differing sections, in display order."""
        names = ("source", "command", "image", "vars", "layers", "inputs", "outputs")
        return [n for n in names if getattr(self, n)]


class SideInfo(msgspec.Struct):
    """What a side is: how it was named, its label, its key (None while a ``drv:``
    upstream is not built) and the hash of the derivation that was compared."""

    arg: str
    name: str
    key: str | None
    derivation: str


class DerivationDiff(msgspec.Struct):
    a: SideInfo
    b: SideInfo
    identical: bool
    changed: list[str]
    changes: Changes


# -- the pure part -----------------------------------------------------------------------------
def diff_listings(a: Listing, b: Listing) -> list[FileChange]:
    """The paths whose (mode, content id) differ, sorted by path."""
    out: list[FileChange] = []
    for path in sorted(a.keys() | b.keys()):
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        status: FileStatus
        if x is None:
            status = "A"
        elif y is None:
            status = "D"
        elif (x[0] == _SYMLINK) != (y[0] == _SYMLINK):
            status = "T"
        else:
            status = "M"
        out.append(FileChange(status, path))
    return out


def tree_listing(tree: SourceTree) -> Listing:
    return {e.path: (e.mode, e.oid) for e in tree.entries}


def manifest_listing(m: Manifest) -> Listing:
    return {
        e.path: ("100755" if e.executable else "100644", e.digest)
        if isinstance(e, FileEntry)
        else (_SYMLINK, e.target)
        for e in m.entries
    }


def _layers(a: list[LayerIdentity], b: list[LayerIdentity]) -> LayersChange:
    fields: list[LayerChange] = []
    if len(a) == len(b) and all(type(x) is type(y) for x, y in zip(a, b, strict=True)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            dx, dy = msgspec.to_builtins(x), msgspec.to_builtins(y)
            kind = dx.pop("kind")
            dy.pop("kind")
            fields += [LayerChange(i, kind, f, dx[f], dy[f]) for f in sorted(dx) if dx[f] != dy[f]]
    return LayersChange(a, b, fields)


def compare(a: Derivation, b: Derivation) -> Changes:
    """Every identity field in which ``a`` and ``b`` differ. Pure."""
    ch = Changes()
    if a.source != b.source:
        ch.source = SourceChange(a.source, b.source)
    if a.command != b.command:
        ch.command = CommandChange(a.command, b.command)
    if a.env.image != b.env.image:
        ch.image = ImageChange(a.env.image, b.env.image)
    va, vb = a.env.vars, b.env.vars
    if va != vb:
        ch.vars = VarsChange(
            added={k: vb[k] for k in sorted(vb.keys() - va.keys())},
            removed={k: va[k] for k in sorted(va.keys() - vb.keys())},
            changed={k: (va[k], vb[k]) for k in sorted(va.keys() & vb.keys()) if va[k] != vb[k]},
        )
    if a.layers != b.layers:
        ch.layers = _layers(a.layers, b.layers)
    for dest in sorted(a.inputs.keys() | b.inputs.keys()):
        x, y = a.inputs.get(dest), b.inputs.get(dest)
        if x != y:
            ch.inputs.append(InputChange(dest, x, y))
    if a.outputs != b.outputs:
        added = sorted(set(b.outputs) - set(a.outputs))
        ch.outputs = OutputsChange(a.outputs, b.outputs, added, sorted(set(a.outputs) - set(b.outputs)))
    return ch


# -- sides and what explains them ----------------------------------------------------------------
class Side(msgspec.Struct):
    """One side of a diff: a derivation (resolved when it can be) and where it came from.

    ``upstreams`` maps a ``drv`` input's destination to its planned upstream or its key;
    ``planned`` sides know all their upstreams, recorded sides only those their record names.
    ``manifests`` are tree-input manifests known without the store (planned ``file:`` dirs).
    """

    arg: str
    name: str
    derivation: Derivation
    resolved: bool
    planned: bool
    commit: str | None = None
    tree: SourceTree | None = None
    source: SourceRef | None = None
    upstreams: dict[str, Plan | str] = msgspec.field(default_factory=dict)
    upstream_names: dict[str, str] = msgspec.field(default_factory=dict)
    manifests: dict[str, Manifest] = msgspec.field(default_factory=dict)

    def info(self) -> SideInfo:
        drv = self.derivation.hash()
        return SideInfo(self.arg, self.name, drv if self.resolved else None, drv)


def _git_entry(root: str, rel: str) -> SourceEntry:
    """A restored file as git would list it: mode and blob id."""
    full = os.path.join(root, rel)
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        mode, data = _SYMLINK, os.fsencode(os.readlink(full))
    else:
        mode = "100755" if st.st_mode & 0o100 else "100644"
        with open(full, "rb") as f:
            data = f.read()
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    return SourceEntry(rel, mode, f"git-sha1:{oid}")


class Loader:
    """Reads the sides of a diff from plans, the store, the index and git repositories.

    ``repos`` are searched, in order, for a recorded source commit before the store's
    snapshot is restored. Read-only; the caller keeps ``store`` and ``index`` open.
    """

    def __init__(self, store: Store, index: Index, repos: Sequence[Repo]) -> None:
        self.store = store
        self.index = index
        self.repos = list(repos)
        self._producers: dict[str, list[str]] | None = None

    def plan_side(self, arg: str, plan: Plan) -> Side:
        """A planned .drv: resolved if its upstreams are built, else as written."""
        from .graph import try_resolve
        from .location import realised_in

        resolved = try_resolve(plan, self.index, realised_in(self.store))
        ups: dict[str, Plan | str] = dict(plan.upstreams)
        for dest, inp in plan.derivation.inputs.items():
            if isinstance(inp, DrvInput) and dest not in ups:
                ups[dest] = inp.drv  # drv:blake3: names a realized key
        return Side(
            arg=arg,
            name=plan.name,
            derivation=(resolved or plan).derivation,
            resolved=resolved is not None,
            planned=True,
            commit=plan.commit,
            tree=plan.tree,
            upstreams=ups,
            upstream_names={d: up.name for d, up in plan.upstreams.items()},
            manifests={fi.input.manifest: fi.manifest for fi in plan.file_inputs
                       if fi.manifest is not None and isinstance(fi.input, TreeInput)},
        )

    async def key_side(self, arg: str) -> Side:
        """A stored derivation, named by a key, a derivation hash or a run id (or a unique
        prefix, looked up in the index). KeyLookupError if nothing matches."""
        kind, full = ("real", arg) if is_digest(arg) else self.index.resolve_prefix(arg)
        drv = (await self.store.get_run(full)).drv if kind == "runs" else full
        record = await self._record(drv)
        if record is None and kind != "runs":
            real = await self.store.get_realisation(full)
            if real is not None:
                record = await self._record((await self.store.get_run(real.run_id)).drv)
        if record is None:
            raise KeyLookupError(arg, f"no derivation {drv} in the store {self.store.location}")
        return Side(
            arg=arg,
            name=record.name,
            derivation=record.derivation,
            resolved=record.derivation.is_resolved(),
            planned=False,
            commit=record.source.commit if record.source else None,
            source=record.source,
            upstreams=dict(record.upstreams),
            upstream_names=dict(record.upstream_names),
        )

    async def _record(self, drv: str) -> DerivationRecord | None:
        try:
            return await self.store.get_derivation(drv)
        except ObjectNotFound:
            return None

    async def upstream_side(self, ref: Plan | str) -> Side:
        if isinstance(ref, Plan):
            return self.plan_side(os.path.basename(ref.drv_path), ref)
        return await self.key_side(ref)

    async def source_tree(self, side: Side) -> tuple[SourceTree | None, str]:
        """The side's selected tree, or None and why it cannot be listed. A tree is used only
        if it hashes to the derivation's ``source``."""
        want = side.derivation.source
        if want is None:
            return SourceTree([]), ""
        if side.tree is not None:
            return side.tree, ""
        ref = side.source
        if ref is None:
            return None, "no source commit is recorded"
        sel = Selector(ref.include, ref.exclude)
        for repo in self.repos:
            try:
                tree = repo.tree(repo.commit_of(ref.commit), sel)
            except SourceError:
                continue
            if tree.digest() == want:
                return tree, ""
        where = ", ".join(r.root for r in self.repos) or "a git repository here"
        try:
            with tempfile.TemporaryDirectory(prefix="qwex-diff-") as tmp:
                from .snapshot import restore

                tree = SourceTree(sorted((_git_entry(tmp, p) for p in await restore(
                    self.store, ref.snapshot, sel, tmp)), key=lambda e: e.path))
        except (StoreError, KeyError, ValueError, OSError) as e:
            return None, f"commit {ref.commit[:12]} is not in {where} and its snapshot cannot be read ({e})"
        if tree.digest() != want:
            return None, f"snapshot {ref.snapshot} does not recreate tree {want}"
        return tree, ""

    async def manifest(self, side: Side, digest: str) -> Manifest | None:
        if digest in side.manifests:
            return side.manifests[digest]
        try:
            return await self.store.get_manifest(digest)
        except StoreError:
            return None

    def producer(self, manifest: str) -> str | None:
        """The one indexed key whose realisation produced ``manifest`` (None: none, or several)."""
        if self._producers is None:
            self._producers = {}
            for key, real in self.index.iter_realisations():
                self._producers.setdefault(real.manifest, []).append(key)
        keys = self._producers.get(manifest, [])
        return keys[0] if len(keys) == 1 else None


def _upstream_ref(side: Side, dest: str, inp: Input | None, loader: Loader) -> Plan | str | None:
    """What produced a ``drv`` input: the side's own knowledge first; for a record that does
    not name it, the one realised key whose output manifest the tree input is."""
    if dest in side.upstreams:
        return side.upstreams[dest]
    if not isinstance(inp, TreeInput) or side.planned:
        return None
    if dest not in side.upstream_names and (side.upstream_names or side.upstreams):
        return None  # a writer that names its upstreams did not name this one: a file: input
    return loader.producer(inp.manifest)


async def _source_files(sc: SourceChange, a: Side, b: Side, loader: Loader) -> None:
    sc.a_commit, sc.b_commit = a.commit, b.commit
    ta, na = await loader.source_tree(a)
    tb, nb = await loader.source_tree(b)
    if ta is not None and tb is not None:
        sc.files = diff_listings(tree_listing(ta), tree_listing(tb))
    else:
        sc.note = "; ".join(f"{s}: {n}" for s, n in (("a", na), ("b", nb)) if n)


async def _input_detail(ic: InputChange, a: Side, b: Side, loader: Loader, depth: int) -> None:
    x, y = ic.a, ic.b
    ic.name = a.upstream_names.get(ic.dest) or b.upstream_names.get(ic.dest)
    if x is None or y is None:
        return
    if isinstance(x, TreeInput) and isinstance(y, TreeInput):
        ma, mb = await loader.manifest(a, x.manifest), await loader.manifest(b, y.manifest)
        if ma is not None and mb is not None:
            ic.files = diff_listings(manifest_listing(ma), manifest_listing(mb))
    ra, rb = _upstream_ref(a, ic.dest, x, loader), _upstream_ref(b, ic.dest, y, loader)
    if ra is None and rb is None and ic.name is None and not isinstance(x, DrvInput) \
            and not isinstance(y, DrvInput):
        return  # a file: input on both sides
    if ra is None or rb is None:
        missing = " and ".join(s for s, r in (("a", ra), ("b", rb)) if r is None)
        ic.note = f"which derivation produced this input is not recorded for {missing}"
        return
    if depth >= _MAX_DEPTH:
        ic.note = "upstreams nested too deep to compare"
        return
    try:
        sa, sb = await loader.upstream_side(ra), await loader.upstream_side(rb)
    except (KeyLookupError, StoreError) as e:
        ic.note = f"the upstream cannot be read: {e}"
        return
    ic.upstream = await explain(sa, sb, loader, depth + 1)
    ic.name = ic.name or sa.name


async def explain(a: Side, b: Side, loader: Loader, depth: int = 0) -> DerivationDiff:
    """Compare two sides and explain each difference as far as the store and git allow.

    Identical derivations (so equal keys) are reported as identical without further reads.
    Raises only what :class:`Loader` raises for a named upstream that cannot be read.
    """
    if a.derivation == b.derivation:
        return DerivationDiff(a.info(), b.info(), True, [], Changes())
    ch = compare(a.derivation, b.derivation)
    if ch.source is not None:
        await _source_files(ch.source, a, b, loader)
    for ic in ch.inputs:
        await _input_detail(ic, a, b, loader, depth)
    return DerivationDiff(a.info(), b.info(), False, ch.sections(), ch)
