"""Checkout: bring a run back as it was: the selected source at the recorded commit plus
the outputs (spec/store.md, "Checkout").

The tree is assembled in a temporary sibling of the destination and renamed into place,
so an interrupted checkout never leaves a half-written destination. Output files are
verified copies of the store's blobs; hard links to them only with ``link`` (``checkout
--link``), and writing through such a link corrupts the store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import msgspec

from .digest import hex_of
from .errors import StoreError, UserError
from .globs import Selector
from .index import Index
from .manifest import Manifest
from .records import RunRecord
from .store import Store

__all__ = ["CheckoutResult", "checkout", "resolve_run"]


class CheckoutResult(msgspec.Struct):
    key: str
    run_id: str
    dest: str
    source_files: int
    output_files: int


async def resolve_run(store: Store, index: Index, prefix: str) -> RunRecord:
    """The successful run behind a key/derivation prefix, or the run named by a run id."""
    kind, full = index.resolve_prefix(prefix)
    if kind == "runs":
        return await store.get_run(full)
    real = await store.get_realisation(full)
    entry = index.realisation(full) if real is None else None
    if entry is not None and entry.remote is not None:
        raise UserError(f"{full} was substituted from {entry.remote} and is not in this store yet; "
                        f"`qwex checkout` or `qwex pull {entry.remote} {hex_of(full)[:12]}` fetches it")
    if real is None:
        runs = index.runs_of(full)
        if runs:
            return await store.get_run(runs[-1][0])
        raise UserError(f"{full} has no realisation in the store: it never built successfully, "
                        "or gc or verify --repair removed it")
    return await store.get_run_of(real)  # agrees with the realisation: key and manifest


def _shadowed_by(manifest: Manifest) -> Callable[[str], bool]:
    """Whether a source path gives way to the outputs: the manifest has it, has a path below
    it (an output directory where the source has a file), or has one of its parents (an
    output file or symlink where the source has a directory). Outputs win."""
    leaves = {e.path for e in manifest.entries}
    dirs: set[str] = set()
    for p in leaves:
        parts = p.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def shadowed(path: str) -> bool:
        if path in leaves or path in dirs:
            return True
        parts = path.split("/")
        return any("/".join(parts[:i]) in leaves for i in range(1, len(parts)))

    return shadowed


async def checkout(
    store: Store, index: Index, prefix: str, dest: str, *, link: bool = False, outputs_only: bool = False
) -> CheckoutResult:
    """Write the run's source and outputs to ``dest`` (absent or an empty directory; not a
    symlink). A source snapshot that is gone (``verify --repair`` removes a damaged one and
    keeps the results) is a StoreError naming it, before anything is written, unless
    ``outputs_only``: then only the outputs are written."""
    # Here, not at the top: `qwex show` resolves runs through this module and needs
    # neither shutil nor the snapshot reader (git objects, temp files).
    import shutil

    from .snapshot import restore
    from .tree import materialize

    dest = os.path.abspath(dest)
    if os.path.islink(dest):  # to a directory or dangling: never write through it
        raise UserError(f"{dest} is a symbolic link; check out into a new or empty directory")
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise UserError(f"{dest} exists and is not an empty directory")
    run = await resolve_run(store, index, prefix)
    if run.manifest is None:
        raise UserError(f"run {run.run_id} {run.status}: it has no outputs to check out")
    record = await store.get_derivation(run.drv)
    manifest = await store.get_manifest(run.manifest)
    source = None if outputs_only else record.source
    if source is not None and not (await store.storage.exists([store.snapshot_path(source.snapshot)]))[0]:
        raise StoreError(f"the source snapshot {source.snapshot} of {run.key} is missing (removed by "
                         "verify --repair?); `qwex checkout --outputs-only` restores the outputs alone")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.qwex-{uuid.uuid4().hex[:8]}")
    try:
        n_src = 0
        if source is not None:
            sel = Selector(source.include, source.exclude)
            shadowed = _shadowed_by(manifest)
            wanted = lambda p: sel(p) and not shadowed(p)  # noqa: E731
            n_src = len(await restore(store, source.snapshot, wanted, tmp))
        os.makedirs(tmp, exist_ok=True)
        await materialize(store, manifest, tmp, link=link)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckoutResult(run.key, run.run_id, dest, n_src, len(manifest.files()))
