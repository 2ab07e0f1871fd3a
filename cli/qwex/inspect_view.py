"""What ``qwex ls`` and ``qwex show`` do and print, without the CLI framework: the typer
commands (:mod:`qwex.inspect_cmd`) and the fast paths (:mod:`qwex.main`) both call these.

``show`` reads the store through its async API. On a local store those calls never
suspend, so the fast path drives them without an event loop (:func:`qwexstore.syncrun.run_now`,
no asyncio import); if one ever does suspend, :func:`show` returns False before printing
anything and the caller answers through the typer application instead.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from qwexstore.digest import hex_of

from ._ctx import (
    emit_json,
    handles_errors,
    human_duration,
    human_size,
    location,
    open_index,
    open_store,
    run_async,
)
from .table import print_table, safe

if TYPE_CHECKING:
    from qwexstore.index import IndexedRealisation
    from qwexstore.manifest import Manifest
    from qwexstore.records import DerivationRecord, RunRecord

__all__ = ["ls", "show"]

_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}


def when(ns: int) -> str:
    """A local time, to the second."""
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@handles_errors
def ls(limit: int, as_json: bool) -> None:
    """The newest ``limit`` runs: a table, or JSON."""
    with open_index() as index:
        runs = index.recent_runs(limit)
    if as_json:
        emit_json([
            {"run_id": rid, "key": s.key, "name": s.name, "status": s.status, "exit_code": s.exit_code,
             "started_ns": s.started_ns, "finished_ns": s.finished_ns}
            for rid, s in runs
        ])
        return
    rows = [[s.key[7:19], s.name, s.status, human_duration(s.finished_ns - s.started_ns),
             when(s.started_ns), rid] for rid, s in runs]
    styles = [["", "", _STYLE.get(s.status, ""), "", "", ""] for _, s in runs]
    print_table(["key", "name", "status", "duration", "when", "run"], rows, styles)


class _Shown:
    """What ``show`` prints (a plain class: dataclasses would import inspect)."""

    def __init__(self, run: RunRecord, record: DerivationRecord, manifest: Manifest | None, pinned: bool,
                 source_missing: bool) -> None:
        self.run, self.record, self.manifest, self.pinned = run, record, manifest, pinned
        self.source_missing = source_missing  # verify --repair removes a damaged snapshot alone


async def _gather(key: str) -> _Shown:
    from qwexstore.checkout import resolve_run

    store = await open_store()
    with open_index() as index:
        run = await resolve_run(store, index, key)
    record = await store.get_derivation(run.drv)
    manifest = await store.get_manifest(run.manifest) if run.manifest else None
    snap = [store.snapshot_path(record.source.snapshot)] if record.source else []
    is_pinned, *snap_there = await store.storage.exists([store.pin_path(run.key), *snap])
    return _Shown(run, record, manifest, is_pinned, snap_there == [False])


def _without_loop(coro: Coroutine[Any, Any, _Shown]) -> _Shown | None:
    from qwexstore.syncrun import WouldSuspend, run_now

    try:
        return run_now(coro)
    except WouldSuspend:
        return None


@handles_errors
def show(key: str, as_json: bool, *, without_loop: bool = False) -> bool:
    """Print a run (or a substituted key's index entry). With ``without_loop`` (a local
    store only), False, having printed nothing, if the store's reads needed an event loop."""
    with open_index() as index:
        kind, full = index.resolve_prefix(key)
        entry = index.realisation(full) if kind == "real" else None
    if entry is not None and entry.remote is not None:
        _show_substituted(full, entry, as_json)
        return True
    if without_loop:
        if "://" in location().url:
            return False
        shown = _without_loop(_gather(key))
        if shown is None:
            return False
    else:
        shown = run_async(lambda: _gather(key))
    if as_json:
        import msgspec

        emit_json({
            "run": msgspec.to_builtins(shown.run),
            "derivation": msgspec.to_builtins(shown.record),
            "outputs": msgspec.to_builtins(shown.manifest.entries) if shown.manifest else None,
            "pinned": shown.pinned,
            "source_missing": shown.source_missing,
        })
    else:
        _print_shown(shown)
    return True


def _print_shown(s: _Shown) -> None:
    import json

    import msgspec

    run, record, d = s.run, s.record, s.record.derivation
    out = sys.stdout
    rest = f"  key {run.key}" + ("  (pinned)" if s.pinned else "")
    if sys.stdout.isatty():
        from rich.markup import escape

        from ._ctx import console

        console().print(f"[bold]{escape(safe(run.name))}[/]{rest}", highlight=False)
    else:
        out.write(f"{safe(run.name)}{rest}\n")
    lines = [f"run      {run.run_id}  {run.status}  exit {run.exit_code}  "
             f"{human_duration(run.duration_ns)}  {when(run.started_ns)}  {run.user}@{run.host}"]
    if run.message:
        lines.append(f"message  {run.message}")
    lines.append(f"command  {json.dumps(d.command, ensure_ascii=False)}")
    if record.source:
        lines.append(f"source   commit {record.source.commit}  tree {d.source}")
        if s.source_missing:
            lines.append(f"missing  source snapshot {record.source.snapshot} (removed by verify --repair?); "
                         "the outputs are intact: `qwex checkout --outputs-only`")
    if d.env.image:
        lines.append(f"image    {record.image_ref} ({d.env.image})")
    lines += [f"var      {k}={v}" for k, v in sorted(d.env.vars.items())]
    lines += [f"input    {dest} <- {msgspec.json.encode(inp).decode()}"
              for dest, inp in sorted(d.inputs.items())]
    lines += [f"impure   {k}={v}" for k, v in sorted(run.impure.items())]
    out.write("".join(f"{safe(line)}\n" for line in lines))
    if s.manifest:
        from qwexstore.manifest import FileEntry

        rows = [[e.path, human_size(e.size), e.digest[:19]] if isinstance(e, FileEntry)
                else [e.path, "symlink", f"-> {e.target}"] for e in s.manifest.entries]
        out.flush()
        print_table(["output", "size", "digest"], rows)


def _show_substituted(key: str, entry: IndexedRealisation, as_json: bool) -> None:
    """A key known only from a substituter: what the index holds, and where it lives."""
    if as_json:
        emit_json({"key": key, "remote": entry.remote, "run_id": entry.run_id, "manifest": entry.manifest,
                   "files": entry.files, "size": entry.size, "outputs": [p for p, _ in entry.listing]})
        return
    lines = [
        f"key      {key}",
        f"remote   {entry.remote} (substituted: the result is not in this store; `qwex checkout` or "
        f"`qwex pull {entry.remote} {hex_of(key)[:12]}` fetches it)",
        f"run      {entry.run_id}  {when(entry.created_ns)}",
        f"outputs  {entry.files} files, {human_size(entry.size)}, manifest {entry.manifest}",
        *(f"  {path}  ({human_size(size)})" for path, size in entry.listing),
    ]
    sys.stdout.write("".join(f"{safe(line)}\n" for line in lines))
