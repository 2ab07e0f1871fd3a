"""``qwex verify``, ``qwex gc``, ``qwex pin`` and ``qwex unpin``: store maintenance."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import msgspec
import typer

from qwexstore.errors import UserError

from ._ctx import emit_json, handles_errors, human_size, open_index, open_store, run_async
from ._options import Json

_PLURAL = {"realisation": "realisations", "run": "runs", "derivation": "derivations",
           "snapshot": "snapshots", "manifest": "manifests", "blob": "blobs", "pin": "pins"}


def _n(count: int, kind: str) -> str:
    return f"{count} {kind if count == 1 else _PLURAL.get(kind, kind + 's')}"


def _waiting(what: str) -> Any:
    told: list[bool] = []

    def on_wait() -> None:
        if not told:
            print(f"qwex: waiting for {what}", file=sys.stderr)
            told.append(True)

    return on_wait


async def _open() -> Any:
    return await open_store()


#: ``--remote NAME``: check or collect a named remote store instead of the local one.
Remote = Annotated[
    str | None,
    typer.Option("--remote", "-r", metavar="NAME",
                 help="Work on the remote store NAME (qwex remote list) instead of the local store; "
                      "the local index is neither read nor changed."),
]


async def _open_remote(name: str) -> Any:
    """The store of remote ``name`` (UserError if unknown; StoreError if it holds no store)."""
    from qwexstore.config import load_config
    from qwexstore.remotes import open_remote, project_root, resolve_remote

    return await open_remote(resolve_remote(load_config(project_root()), name), create=False)


def _remote_scratch() -> str:
    from qwexstore.config import qwex_home

    return os.path.join(qwex_home(), "tmp")


async def _remote_keys(store: Any, args: list[str]) -> list[str]:
    """Full keys for ``args`` (keys or unique prefixes of the remote's realised keys)."""
    from qwexstore.reach import list_objects

    realised = [r.id for r in (await list_objects(store, ["realisation"]))[0]]
    out: list[str] = []
    for arg in args:
        hits = [k for k in realised if k.startswith(arg) or k.removeprefix("blake3:").startswith(arg)]
        if len(hits) != 1:
            n = "no" if not hits else len(hits)
            raise UserError(f"{arg!r} matches {n} realised keys in the remote store")
        out.append(hits[0])
    return out


@handles_errors
def verify(
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", "-k", metavar="KEY",
                     help="Check only this key's closure (key, derivation hash, run id or unique prefix; "
                          "repeat, or separate with commas, for several)."),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Remove corrupt objects and every realisation, record and index "
                                      "entry that depends on them or on missing objects; the next build "
                                      "redoes them. A damaged source snapshot goes alone: the results "
                                      "built from it keep their outputs (reported as 'no source')."),
    ] = False,
    remote: Remote = None,
    json: Json = False,
) -> None:
    """Re-hash blobs and re-read records; report each missing or corrupt object.

    Exit status: 0 if the store is sound; 1 if problems were found (also when
    --repair removed them: run verify again to confirm); 2 on bad arguments.
    """
    from qwexstore.build import scratch_dir
    from qwexstore.reach import resolve_key
    from qwexstore.verify import VerifyReport
    from qwexstore.verify import verify as run_verify

    async def go() -> VerifyReport:
        if remote is not None:
            store = await _open_remote(remote)
            args = None if keys is None else [k for a in keys for k in a.split(",") if k]
            wanted = None if args is None else await _remote_keys(store, args)
            return await run_verify(store, None, _remote_scratch(), keys=wanted, repair=repair,
                                    on_wait=_waiting("local builds to finish writing"))
        store = await _open()
        with open_index() as index:
            wanted = None
            if keys is not None:
                wanted = []
                for arg in (k for a in keys for k in a.split(",") if k):
                    key = resolve_key(index, arg)
                    if index.realisation(key) is None and await store.get_realisation(key) is None:
                        raise UserError(f"{key} is not realised; nothing to verify")
                    wanted.append(key)
            return await run_verify(store, index, scratch_dir(store), keys=wanted, repair=repair,
                                    on_wait=_waiting("gc or running builds to finish writing to the store"))

    r = run_async(go)
    if json:
        emit_json({"objects": r.objects, "bytes_hashed": r.bytes_hashed, "seconds": r.seconds,
                   "problems": msgspec.to_builtins(r.problems), "removed": r.removed,
                   "index_removed": r.index_removed, "in_use": r.in_use, "source_missing": r.source_missing})
    else:
        for p in r.problems:
            line = f"{p.state:<10} {p.kind:<11} {p.path}"
            if p.state in ("missing", "corrupt", "stale"):
                line += f"  expected {p.expected}  actual {p.actual or '(missing)'}"
            if p.detail:
                line += f"  {p.detail}"
            if p.needed_by:
                line += f"  (named by {p.needed_by})"
            print(line)
        for path in r.removed:
            print(f"removed    {path}")
        for path in r.in_use:
            print(f"kept       {path}  (a running build uses it: repair again after it ends)")
        lost = "removed" if repair else "damaged or missing"
        for key in r.source_missing:
            print(f"no source  {key}  (its source snapshot is {lost}; "
                  "its outputs are intact: `qwex checkout --outputs-only`)")
        rate = f"{human_size(int(r.bytes_hashed / r.seconds))}/s" if r.seconds > 0 else "-"
        summary = (f"checked {r.objects} objects, hashed {human_size(r.bytes_hashed)} in {r.seconds:.2f}s "
                   f"({rate}): ")
        n = len(r.problems)
        summary += f"{n} problem{'s' if n != 1 else ''}" if n else "no problems"
        if repair and r.problems:
            summary += f"; removed {len(r.removed)} objects and {r.index_removed} index entries"
        print(summary)
    if r.problems:
        raise SystemExit(1)


@handles_errors
def gc(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", metavar="AGE",
                     help="First drop unpinned realisations created more than AGE ago "
                          "(N followed by s, m, h, d or w: 30d, 12h, 90m)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", "-n", help="Report what would go and the space freed; delete nothing."),
    ] = False,
    grace: Annotated[
        str | None,
        typer.Option("--grace", metavar="AGE",
                     help="With --remote: keep unreachable objects younger than AGE (default 1d), so that "
                          "what in-flight pushes and builds of other machines wrote survives."),
    ] = None,
    remote: Remote = None,
    json: Json = False,
) -> None:
    """Remove every store object that no realisation, pin or running build reaches.

    Kept: each realisation and everything it names (outputs, run record, logs,
    derivation record, source snapshot, inputs), and whatever running builds
    have written. Removed: everything else, including the run records and logs
    of failed and cancelled runs, and the work dirs and temp files that killed
    builds left in the store's tmp/. Pinned keys (qwex pin) are never dropped
    by --older-than. With --remote NAME: a shared store; the keys under live leases
    (builds on other machines) and objects younger than --grace are kept too.
    """
    from qwexstore.build import scratch_dir
    from qwexstore.gc import GcReport, collect_garbage, parse_age

    age = None if older_than is None else parse_age(older_than)
    if grace is not None and remote is None:
        raise UserError("--grace applies to a shared store: use it with --remote NAME")
    grace_ns = parse_age(grace, "--grace") if grace is not None else None

    async def go() -> GcReport:
        if remote is not None:
            from qwexstore.gc_remote import DEFAULT_GRACE_NS, collect_remote_garbage

            return await collect_remote_garbage(
                await _open_remote(remote), _remote_scratch(), older_than_ns=age, dry_run=dry_run,
                grace_ns=DEFAULT_GRACE_NS if grace_ns is None else grace_ns,
                on_wait=_waiting("local builds to finish writing"))
        store = await _open()
        with open_index() as index:
            return await collect_garbage(store, index, scratch_dir(store), older_than_ns=age, dry_run=dry_run,
                                         on_wait=_waiting("running builds to finish writing to the store"))

    r = run_async(go)
    if json:
        emit_json(msgspec.to_builtins(r))
        return
    drop, rm = ("would drop", "would remove") if dry_run else ("dropped", "removed")
    if r.dropped:
        print(f"{drop} {_n(len(r.dropped), 'realisation')} older than {older_than} (not pinned)")
    if r.removed:
        counts = ", ".join(_n(n, k) for k, n in r.removed.items())
        size = "size unknown" if r.bytes is None else human_size(r.bytes)
        print(f"{rm} {counts} ({size}) and {r.index_entries} index entries")
    else:
        print("no unreachable store objects")
    if r.tmp:
        print(f"{rm} {len(r.tmp)} leftovers of dead builds from tmp/ ({human_size(r.tmp_bytes)}): "
              + ", ".join(r.tmp[:5]) + (" ..." if len(r.tmp) > 5 else ""))
    for lr in r.live:
        print(f"kept running build {lr.run_id} (pid {lr.pid} on {lr.host}) and everything it needs")
    for lease in r.leases:
        print(f"kept what the build of {lease} needs (live lease)")
    if r.young:
        print(f"kept {_n(r.young, 'unreachable object')} younger than {grace or '1d'} "
              "(grace for in-flight writes)")
    if dry_run:
        print("dry run: nothing was deleted")


@handles_errors
def pin(
    key: Annotated[
        str | None,
        typer.Argument(help="A realised key (or derivation hash, run id, unique prefix). Omit to list pins."),
    ] = None,
    json: Json = False,
) -> None:
    """Pin a realised key: gc --older-than never drops it. Without KEY, list the pins."""
    from qwexstore.build import scratch_dir
    from qwexstore.pins import pin as do_pin
    from qwexstore.pins import pinned
    from qwexstore.reach import resolve_key

    async def go() -> tuple[str | None, bool, list[str]]:
        store = await _open()
        if key is None:
            return None, False, await pinned(store)
        with open_index() as index:
            full = resolve_key(index, key)
        return full, await do_pin(store, scratch_dir(store), full), []

    full, new, keys = run_async(go)
    if full is None:
        if json:
            emit_json(keys)
        else:
            for k in keys:
                print(k)
    elif json:
        emit_json({"key": full, "pinned": True, "new": new})
    else:
        print(f"pinned {full}" if new else f"{full} was already pinned")


@handles_errors
def unpin(
    key: Annotated[str, typer.Argument(help="A pinned key or a unique prefix of one.")],
) -> None:
    """Remove a pin; the realisation stays until a gc --older-than drops it."""
    from qwexstore.pins import match_pinned, pinned
    from qwexstore.pins import unpin as do_unpin

    async def go() -> str:
        store = await _open()
        full = match_pinned(await pinned(store), key)
        await do_unpin(store, full)
        return full

    print(f"unpinned {run_async(go)}")
