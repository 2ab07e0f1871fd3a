"""``qwex show``, ``qwex log`` and ``qwex ls``."""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import sys
from typing import Annotated

import msgspec
import typer

from qwexstore.digest import hex_of
from qwexstore.errors import UserError
from qwexstore.index import IndexedRealisation

from ._ctx import (
    console,
    emit_json,
    handles_errors,
    human_duration,
    human_size,
    open_index,
    open_store,
    run_async,
)
from ._options import Json


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@handles_errors
def show(
    key: Annotated[str, typer.Argument(help="A key, derivation hash or run id (or a unique prefix).")],
    json: Json = False,
) -> None:
    """Show a run: its derivation, run record and outputs (for a result substituted from
    a remote and not fetched yet: where it lives, and its outputs' listing)."""

    from qwexstore.checkout import resolve_run

    with open_index() as index:
        kind, full = index.resolve_prefix(key)
        entry = index.realisation(full) if kind == "real" else None
    if entry is not None and entry.remote is not None:
        _show_substituted(full, entry, json)
        return

    async def go() -> None:
        store = await open_store()
        with open_index() as index:
            run = await resolve_run(store, index, key)
        record = await store.get_derivation(run.drv)
        manifest = await store.get_manifest(run.manifest) if run.manifest else None
        snap = [store.snapshot_path(record.source.snapshot)] if record.source else []
        is_pinned, *snap_there = await store.storage.exists([store.pin_path(run.key), *snap])
        source_missing = snap_there == [False]  # verify --repair removes a damaged snapshot alone
        if json:
            emit_json(
                {
                    "run": msgspec.to_builtins(run),
                    "derivation": msgspec.to_builtins(record),
                    "outputs": msgspec.to_builtins(manifest.entries) if manifest else None,
                    "pinned": is_pinned,
                    "source_missing": source_missing,
                }
            )
            return
        from rich.table import Table

        con = console()
        d = record.derivation
        con.print(f"[bold]{run.name}[/]  key {run.key}" + ("  (pinned)" if is_pinned else ""))
        con.print(
            f"run      {run.run_id}  {run.status}  exit {run.exit_code}  "
            f"{human_duration(run.duration_ns)}  {_when(run.started_ns)}  {run.user}@{run.host}"
        )
        if run.message:
            con.print(f"message  {run.message}")
        con.print(f"command  {jsonlib.dumps(d.command, ensure_ascii=False)}", markup=False)
        if record.source:
            con.print(f"source   commit {record.source.commit}  tree {d.source}")
            if source_missing:
                con.print(f"missing  source snapshot {record.source.snapshot} (removed by verify --repair?); "
                          "the outputs are intact: `qwex checkout --outputs-only`", markup=False)
        if d.env.image:
            con.print(f"image    {record.image_ref} ({d.env.image})", markup=False)
        for k, v in sorted(d.env.vars.items()):
            con.print(f"var      {k}={v}", markup=False)
        for dest, inp in sorted(d.inputs.items()):
            con.print(f"input    {dest} <- {msgspec.json.encode(inp).decode()}", markup=False)
        for k, v in sorted(run.impure.items()):
            con.print(f"impure   {k}={v}", markup=False)
        if manifest:
            t = Table("output", "size", "digest")
            for e in manifest.entries:
                if hasattr(e, "digest"):
                    t.add_row(e.path, human_size(e.size), e.digest[:19])  # type: ignore[union-attr]
                else:
                    t.add_row(e.path, "symlink", f"-> {e.target}")
            con.print(t)

    run_async(go)


def _show_substituted(key: str, entry: IndexedRealisation, as_json: bool) -> None:
    """A key known only from a substituter: what the index holds, and where it lives."""
    if as_json:
        emit_json({"key": key, "remote": entry.remote, "run_id": entry.run_id, "manifest": entry.manifest,
                   "files": entry.files, "size": entry.size, "outputs": [p for p, _ in entry.listing]})
        return
    print(f"key      {key}")
    print(f"remote   {entry.remote} (substituted: the result is not in this store; `qwex checkout` or "
          f"`qwex pull {entry.remote} {hex_of(key)[:12]}` fetches it)")
    print(f"run      {entry.run_id}  {_when(entry.created_ns)}")
    print(f"outputs  {entry.files} files, {human_size(entry.size)}, manifest {entry.manifest}")
    for path, size in entry.listing:
        print(f"  {path}  ({human_size(size)})")


@handles_errors
def log(
    key: Annotated[str, typer.Argument(help="A key, run id, or unique prefix.")],
    stream: Annotated[str, typer.Option("--stream", help="stdout, stderr or both.")] = "both",
) -> None:
    """Print the stored output of a run (the latest run of a key), failed runs included."""
    if stream not in ("stdout", "stderr", "both"):
        raise UserError(f"--stream must be stdout, stderr or both, not {stream!r}")

    from qwexstore.checkout import resolve_run

    async def go() -> None:
        store = await open_store()
        with open_index() as index:
            run = await resolve_run(store, index, key)
        for name, digest in (("stdout", run.stdout), ("stderr", run.stderr)):
            if digest and stream in (name, "both"):
                out = sys.stdout if name == "stdout" else sys.stderr
                out.flush()
                out.buffer.write(await store.get_blob(digest))
                out.flush()

    run_async(go)


@handles_errors
def ls(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 50,
    json: Json = False,
) -> None:
    """List recent runs, newest first."""
    with open_index() as index:
        runs = index.recent_runs(limit)
    if json:
        emit_json([
            {"run_id": rid, "key": s.key, "name": s.name, "status": s.status, "exit_code": s.exit_code,
             "started_ns": s.started_ns, "finished_ns": s.finished_ns}
            for rid, s in runs
        ])
        return
    from rich.table import Table

    t = Table("key", "name", "status", "duration", "when", "run")
    style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}
    for rid, s in runs:
        t.add_row(
            s.key[7:19],
            s.name,
            f"[{style.get(s.status, '')}]{s.status}[/]",
            human_duration(s.finished_ns - s.started_ns),
            _when(s.started_ns),
            rid,
        )
    console().print(t)
