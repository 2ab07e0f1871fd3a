"""Planning: turn a derivation file into a :class:`Plan` (the derivation, its key, and the
local facts needed to build it), touching git and input files but never the store.

This is the cache-hit path: it reads the .drv file, asks git for the selected tree,
hashes inputs through the stat cache, and hashes the derivation. Keep it light.
"""

from __future__ import annotations

import contextvars
import os
import stat
from typing import Literal

import msgspec

from .config import apply_runner, load_config, runner_file
from .derivation import BlobInput, Derivation, DrvInput, Env, Input, TreeInput
from .digest import is_digest
from .drvfile import DrvFile, parse_drv_file
from .errors import DrvFileError, SourceError, UserError
from .globs import Selector
from .image import image_id, local_image_path
from .index import Index
from .layers import (
    KueueIdentity,
    KueueLayer,
    Layer,
    LayerIdentity,
    PodmanIdentity,
    PodmanLayer,
    SingularityIdentity,
    SingularityLayer,
)
from .manifest import FileEntry, Manifest
from .records import DerivationRecord, SourceRef
from .script import template_identities
from .source import Repo, RepoCache, SourceTree, open_repo
from .tree import hash_entries, scan

__all__ = ["DRV_FILES", "NEVER_SOURCE", "FileInput", "Plan", "plan_file"]

#: Excluded from every source selection: ``.qwex/`` holds runner config and ejected
#: templates, qwex's own, which a job never reads.
NEVER_SOURCE = ".qwex"
#: Excluded from the default selection (no ``include``): a ``.drv`` file's content is in
#: the key already, through its derivation, and a sweep of 100 .drv files would otherwise
#: stage all 100 into every job, and editing one would change every key of the sweep. An
#: ``include`` that names .drv files keeps them (checkout then restores them).
DRV_FILES = "**/*.drv"

#: The repositories of the planning in progress (one Repo each: see Repo._read).
_REPOS: contextvars.ContextVar[RepoCache | None] = contextvars.ContextVar("qwex_repos", default=None)


class FileInput(msgspec.Struct):
    """A ``file:`` input: where it is, and what it hashed to (a blob or a tree)."""

    dest: str
    path: str
    kind: Literal["blob", "tree"]
    input: BlobInput | TreeInput
    manifest: Manifest | None


class Plan(msgspec.Struct):
    """Everything needed to look a derivation up, and to build it on a miss."""

    drv_path: str
    name: str
    drvfile: DrvFile
    repo: Repo | None
    commit: str | None
    tree: SourceTree | None
    selector: Selector | None
    derivation: Derivation
    image_ref: str | None
    layers: list[Layer]
    file_inputs: list[FileInput]
    dirty_snapshot: bool
    upstreams: dict[str, Plan] = msgspec.field(default_factory=dict)
    runner: str | None = None  # the named runner whose placement was applied

    @property
    def key(self) -> str:
        """The build key (the hash of the resolved derivation)."""
        if not self.derivation.is_resolved():
            raise UserError(f"{self.drv_path}: its drv: inputs are not built yet")
        return self.derivation.hash()

    def record(self, snapshot: str | None) -> DerivationRecord:
        """The derivation record to store, given the source snapshot digest.

        ``upstreams`` names the key behind each resolved ``drv:`` input when it is known
        here: a ``drv:blake3:`` reference is that key; a planned upstream is its key once
        its own derivation is resolved (always for one without ``drv:`` inputs; deeper ones
        only if the caller put resolved upstream plans in ``self.upstreams``).
        """
        src = None
        if self.commit is not None and snapshot is not None:
            spec = self.drvfile.source
            src = SourceRef(commit=self.commit, snapshot=snapshot, include=spec.include, exclude=spec.exclude)
        keys = {d: up.derivation.hash() for d, up in self.upstreams.items() if up.derivation.is_resolved()}
        for dest, ref in self.drvfile.inputs.items():
            kind, _, digest = ref.partition(":")
            if kind == "drv" and is_digest(digest):
                keys["." if dest == "." else dest.rstrip("/")] = digest
        return DerivationRecord(
            name=self.name,
            derivation=self.derivation,
            source=src,
            image_ref=self.image_ref,
            layers=self.layers,
            pass_env=self.drvfile.env.pass_,
            upstream_names={d: up.name for d, up in self.upstreams.items()},
            upstreams={d: k for d, k in keys.items() if isinstance(self.derivation.inputs.get(d), TreeInput)},
        )


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _layer_identity(
    layer: Layer, base: str, allow_unpinned: bool, i: int, drv_path: str
) -> LayerIdentity | None:
    where = f"layers[{i}].image"
    if isinstance(layer, SingularityLayer):
        return SingularityIdentity(
            image=image_id(layer.image, base, allow_unpinned=allow_unpinned, where=where, file=drv_path),
            contain=layer.contain,
            cleanenv=layer.cleanenv,
            args=layer.args,
        )
    if isinstance(layer, PodmanLayer):
        return PodmanIdentity(
            image=image_id(layer.image, base, allow_unpinned=allow_unpinned, where=where, file=drv_path),
            args=layer.args,
        )
    if isinstance(layer, KueueLayer):
        return KueueIdentity(
            image=image_id(layer.image, base, allow_unpinned=allow_unpinned, where=where, file=drv_path)
        )
    return None


def _absolute_image(layer: Layer, base: str) -> Layer:
    """A container layer whose image is a local file names it by absolute path (the key
    has its content id already), so it is found from any working directory."""
    if isinstance(layer, PodmanLayer | SingularityLayer):
        path = local_image_path(layer.image, base)
        if path is not None:
            return msgspec.structs.replace(layer, image=path)
    return layer


def _file_input(dest: str, path: str, index: Index | None, drv_path: str) -> FileInput:
    path = os.path.realpath(path)  # an input given through a symlink is its target's content
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DrvFileError(drv_path, f"input file not found: {path}", f"inputs.{dest!r}") from None
    if stat.S_ISDIR(st.st_mode):
        # Symlinks inside are followed: the key covers the bytes the job reads (spec/derivation-file.md).
        try:
            entries = hash_entries(list(scan(path, follow=True)), index)
        except UserError as err:  # a dangling link, a loop, a fifo: name the input
            raise DrvFileError(drv_path, str(err), f"inputs.{dest!r}") from None
        manifest = Manifest.of(entries)
        return FileInput(
            dest=dest, path=path, kind="tree", input=TreeInput(manifest=manifest.digest()), manifest=manifest
        )
    if not stat.S_ISREG(st.st_mode):
        raise DrvFileError(drv_path, f"input is not a file or directory: {path}", f"inputs.{dest!r}")
    (entry,) = hash_entries(list(scan(os.path.dirname(path), os.path.basename(path), follow=True)), index)
    if not isinstance(entry, FileEntry):  # os.stat above followed any symlink to a file
        raise DrvFileError(drv_path, f"input changed while it was being read: {path}", f"inputs.{dest!r}")
    return FileInput(
        dest=dest,
        path=path,
        kind="blob",
        input=BlobInput(digest=entry.digest, executable=entry.executable),
        manifest=None,
    )


def plan_file(
    drv_path: str,
    index: Index | None,
    *,
    allow_dirty: bool = False,
    allow_unpinned: bool = False,
    runner: str | None = None,
    _stack: tuple[str, ...] = (),
) -> Plan:
    """Parse, select, hash; plan ``drv:`` upstreams recursively. Raises UserError subclasses
    for every bad input; DrvFileError naming the cycle if the files form one."""
    if _REPOS.get() is None:  # the top of one planning: its repositories are read once
        repos = RepoCache()
        token = _REPOS.set(repos)
        try:
            return plan_file(drv_path, index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned,
                             runner=runner, _stack=_stack)
        finally:
            _REPOS.reset(token)
            repos.close()
    drv_path = os.path.abspath(drv_path)
    if drv_path in _stack:
        cycle = " -> ".join(os.path.basename(p) for p in (*_stack[_stack.index(drv_path) :], drv_path))
        raise DrvFileError(drv_path, f"dependency cycle: {cycle}", "inputs")
    df = parse_drv_file(drv_path)
    base = os.path.dirname(drv_path)
    return plan_parsed(
        df,
        drv_path,
        base,
        index,
        allow_dirty=allow_dirty,
        allow_unpinned=allow_unpinned,
        runner=runner,
        _stack=(*_stack, drv_path),
    )


def plan_parsed(
    df: DrvFile,
    drv_path: str,
    base: str,
    index: Index | None,
    *,
    allow_dirty: bool,
    allow_unpinned: bool,
    runner: str | None,
    _stack: tuple[str, ...] = (),
) -> Plan:
    """Plan an already-parsed derivation file whose relative paths start at ``base``.

    :data:`NEVER_SOURCE` (and, without an ``include``, :data:`DRV_FILES`) is added to
    ``[source] exclude``: editing a runner's placement or another .drv file must not
    change keys (an ejected container template enters the key by itself, as a
    TemplateIdentity)."""
    never = [NEVER_SOURCE] if df.source.include else [NEVER_SOURCE, DRV_FILES]
    extra = [p for p in never if p not in df.source.exclude]
    if extra:
        df = msgspec.structs.replace(df, source=msgspec.structs.replace(
            df.source, exclude=[*df.source.exclude, *extra]))
    # Source
    start = os.path.join(base, df.source.repo) if df.source.repo else base
    repos = _REPOS.get()
    repo = open_repo(start) if repos is None else repos.at(start)  # its HEAD read with its root
    root = repo.root
    selector = Selector(df.source.include, df.source.exclude)
    head = repo.head()
    if head is None:
        raise SourceError(f"{root} has no commits; commit your source first")
    commit = repo.commit_of(df.source.rev)
    dirty_snapshot = False
    if commit == head:
        dirty, untracked = repo.changes(selector)
        # Derivation files are read by qwex itself (their content is in the key), never by a
        # job: an uncommitted one is not a forgotten source file.
        untracked = [p for p in untracked if not p.endswith(".drv")]
        if (dirty or untracked) and not allow_dirty:
            if dirty:
                raise SourceError(
                    f"uncommitted changes to tracked files: {_shown(dirty)} "
                    "(commit them, or pass --allow-dirty to snapshot the working tree)",
                    tuple(dirty),
                )
            raise SourceError(
                f"untracked files would be selected: {_shown(untracked)} "
                "(git add them, exclude them, or pass --allow-dirty)",
                tuple(untracked),
            )
        if dirty or untracked:
            commit = repo.snapshot_worktree([*dirty, *untracked])
            dirty_snapshot = True
    tree = repo.tree(commit, selector, strict=True)

    # Environment and layers
    image = (
        image_id(df.env.image, base, allow_unpinned=allow_unpinned, where="env.image", file=drv_path)
        if df.env.image
        else None
    )
    layers: list[Layer] = list(df.layers)
    if runner is not None:
        cfg = load_config(root)
        if runner not in cfg.runners:
            known = ", ".join(sorted(cfg.runners)) or "none configured"
            raise UserError(f"unknown runner {runner!r} (known: {known})")
        layers = apply_runner(layers, cfg.runners[runner], runner, runner_file(root, runner))
    idents = [
        x
        for i, layer in enumerate(layers)
        if (x := _layer_identity(layer, base, allow_unpinned, i, drv_path)) is not None
    ]
    idents += template_identities(root, layers)
    layers = [_absolute_image(x, base) for x in layers]

    # Inputs
    inputs: dict[str, Input] = {}
    file_inputs: list[FileInput] = []
    upstreams: dict[str, Plan] = {}
    for dest, spec in sorted(df.inputs.items()):
        kind, _, ref = spec.partition(":")
        d = "." if dest == "." else dest.rstrip("/")
        if kind == "file":
            fi = _file_input(d, os.path.normpath(os.path.join(base, ref)), index, drv_path)
            file_inputs.append(fi)
            inputs[d] = fi.input
        elif is_digest(ref):
            inputs[d] = DrvInput(drv=ref)
        else:
            if not os.path.isfile(os.path.join(base, ref)):  # name the .drv that refers to it
                where = os.path.normpath(os.path.join(base, ref))
                raise DrvFileError(drv_path, f"no derivation file at {where}", f"inputs.{dest!r}")
            up = plan_file(
                os.path.join(base, ref),
                index,
                allow_dirty=allow_dirty,
                allow_unpinned=allow_unpinned,
                runner=runner,
                _stack=_stack,
            )
            upstreams[d] = up
            inputs[d] = DrvInput(drv=up.derivation.hash())
    derivation = Derivation(
        source=tree.digest(),
        command=df.argv,
        env=Env(image=image, vars=dict(df.env.vars)),
        inputs=inputs,
        layers=idents,
        outputs=sorted(set(df.outputs)),
    )
    name = df.name or os.path.splitext(os.path.basename(drv_path))[0]
    return Plan(
        drv_path=drv_path,
        name=name,
        drvfile=df,
        repo=repo,
        commit=commit,
        tree=tree,
        selector=selector,
        derivation=derivation,
        image_ref=df.env.image,
        layers=layers,
        file_inputs=file_inputs,
        dirty_snapshot=dirty_snapshot,
        upstreams=upstreams,
        runner=runner,
    )
