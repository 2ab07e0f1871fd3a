"""Checkout: bring a run back as it was: the selected source at the recorded commit plus
the outputs (spec/store.md, "Checkout").

The tree is assembled in a temporary sibling of the destination and renamed into place,
so an interrupted checkout never leaves a half-written destination. Output files are hard
links to read-only store blobs unless ``copy`` is asked for (or the store is elsewhere).
"""

from __future__ import annotations

import os
import shutil
import uuid

import msgspec

from .errors import UserError
from .globs import Selector
from .index import Index
from .records import RunRecord
from .snapshot import restore
from .store import Store
from .tree import materialize

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
    if real is None:
        runs = index.runs_of(full)
        if runs:
            return await store.get_run(runs[-1][0])
        raise UserError(f"{full} has never been built successfully")
    return await store.get_run(real.run_id)


async def checkout(
    store: Store, index: Index, prefix: str, dest: str, *, copy: bool = False
) -> CheckoutResult:
    """Write the run's source and outputs to ``dest`` (absent or an empty directory)."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise UserError(f"{dest} exists and is not an empty directory")
    run = await resolve_run(store, index, prefix)
    if run.manifest is None:
        raise UserError(f"run {run.run_id} {run.status}: it has no outputs to check out")
    record = await store.get_derivation(run.drv)
    manifest = await store.get_manifest(run.manifest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.qwex-{uuid.uuid4().hex[:8]}")
    try:
        n_src = 0
        if record.source is not None:
            sel = Selector(record.source.include, record.source.exclude)
            n_src = len(await restore(store, record.source.snapshot, sel, tmp))
        os.makedirs(tmp, exist_ok=True)
        await materialize(store, manifest, tmp, link=not copy)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckoutResult(run.key, run.run_id, dest, n_src, len(manifest.files()))
