"""``qwex remote add|list|remove``, ``qwex push`` and ``qwex pull`` (spec/remotes.md)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qwexstore.errors import UserError

from ._ctx import emit_json, handles_errors, human_size, location, open_index, open_store, run_async
from ._options import Json

if TYPE_CHECKING:
    from qwexstore.index import Index
    from qwexstore.store import Store
    from qwexstore.transfer import TransferReport

app = typer.Typer(help="Named remote stores: directories, s3:// and ssh:// URLs.", no_args_is_help=True)

User = Annotated[bool, typer.Option("--user", help="Edit $QWEX_HOME/config.toml, not the project's.")]
Name = Annotated[str, typer.Argument(help="The remote's name (see `qwex remote list`).")]
Keys = Annotated[
    list[str] | None,
    typer.Argument(metavar="[KEY|DRV]...",
                   help="Keys (or unique prefixes) or .drv files whose closures move."),
]
All = Annotated[bool, typer.Option("--all", help="Every realisation in the source store.")]
DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="List what would move; move nothing.")]


def _config() -> Any:
    from qwexstore.config import load_config
    from qwexstore.remotes import project_root

    return load_config(project_root())


@app.command()
@handles_errors
def add(
    name: Name,
    url: Annotated[str, typer.Argument(help="A directory, s3://bucket/prefix or ssh://[user@]host[:port]/path.")],
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="S3 endpoint URL (S3-compatible server).")
                        ] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="AWS profile (credentials stay in ~/.aws).")
                       ] = None,
    region: Annotated[str | None, typer.Option("--region", help="S3 region.")] = None,
    user: User = False,
) -> None:
    """Add a named remote store. Credentials are never stored: S3 uses the AWS chain."""
    from qwexstore.config import Remote
    from qwexstore.remotes import add_remote

    if (endpoint or profile or region) and not url.startswith("s3://"):
        raise UserError("--endpoint, --profile and --region apply to s3:// remotes only")
    path = add_remote(name, Remote(url, endpoint=endpoint, profile=profile, region=region), user=user)
    print(f"added remote {name} to {path}")


@app.command(name="list")
@handles_errors
def list_(json: Json = False) -> None:
    """List the remotes in the project's and the user's config."""
    remotes = _config().remotes
    rows = [{"name": n, "url": r.url, "endpoint": r.endpoint, "profile": r.profile, "region": r.region}
            for n, r in sorted(remotes.items())]
    if json:
        emit_json(rows)
        return
    if not rows:
        print("no remotes (add one with `qwex remote add NAME URL`)", file=sys.stderr)
        return
    from .table import print_table

    cols = ("name", "url", "endpoint", "profile", "region")
    print_table(cols, [[r[c] or "" for c in cols] for r in rows])


@app.command()
@handles_errors
def remove(name: Name, user: User = False) -> None:
    """Remove a named remote (the store it names is left alone)."""
    from qwexstore.remotes import remove_remote

    print(f"removed remote {name} from {remove_remote(name, user=user)}")


# -- push and pull ------------------------------------------------------------------------
class _Bar:
    """Progress on stderr: a rich bar (objects, bytes, rate) on a terminal, else one line."""

    def __init__(self, verb: str, where: str) -> None:
        self.verb, self.where = verb, where
        self.bar: Any = None
        self.task: Any = None
        self.objects = self.total = 0

    def begin(self, objects: int, nbytes: int) -> None:
        self.total = objects
        if not sys.stderr.isatty():
            print(f"qwex: {self.verb} {objects} objects ({human_size(nbytes)}) {self.where}", file=sys.stderr)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn(f"{self.verb} {self.where}"), BarColumn(),
            TextColumn("{task.fields[objects]}/{task.fields[count]} objects"), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=max(nbytes, 1), objects=0, count=objects)

    def advance(self, nbytes: int) -> None:
        self.objects += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=nbytes, objects=self.objects)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def _keys(args: list[str], every: bool, index: Index | None, src: Store, local: bool) -> list[str]:
    """The keys named by KEY|DRV arguments (or every key at ``src``)."""
    from qwexstore.plan import plan_file
    from qwexstore.reach import resolve_key
    from qwexstore.transfer_plan import all_keys, keys_at, plan_key

    if every:
        if args:
            raise UserError("give KEYs or --all, not both")
        return await all_keys(src)
    if not args:
        raise UserError("name the KEYs or .drv files to move, or use --all")
    out: list[str] = []
    for arg in args:
        if arg.endswith(".drv") or os.path.isfile(arg):
            out.append(await plan_key(plan_file(arg, index), index, src))
        elif local and index is not None:
            out.append(resolve_key(index, arg))
        else:
            found = await keys_at(src, arg)
            if len(found) != 1:
                what = "no key" if not found else f"{len(found)} keys"
                raise UserError(f"{what} at {src.location} start with {arg}")
            out += found
    return list(dict.fromkeys(out))


def _report(verb: str, where: str, r: TransferReport, *, dry_run: bool, json: bool) -> None:
    import msgspec

    if json:
        emit_json({**msgspec.to_builtins(r), "dry_run": dry_run})
        return
    if dry_run:
        print(f"would {verb} {r.objects} objects ({human_size(r.bytes)}) {where}; {r.skipped} already there")
        for p in r.paths:
            print(f"  {p}")
    else:
        reals = len(r.realisations)
        print(f"{verb}ed {r.objects} objects ({human_size(r.bytes)}) {where}; {r.skipped} already there; "
              f"{reals} realisation{'' if reals == 1 else 's'} written")
    for note in r.notes:
        print(f"qwex: note: {note}", file=sys.stderr)


@handles_errors
def push(
    name: Name, keys: Keys = None, all_: All = False, dry_run: DryRun = False, json: Json = False
) -> None:
    """Copy the closure of KEYs (runs, records, outputs, logs, sources, upstreams) to a remote."""
    from qwexstore.keys import load_signing_key
    from qwexstore.remotes import open_remote, resolve_remote
    from qwexstore.transfer import push as do_push

    config = _config()
    remote = resolve_remote(config, name)
    signer = load_signing_key(config)
    bar = _Bar("pushing", f"to {name}")

    async def go() -> TransferReport:
        src = await open_store(create=False)
        with open_index() as index:
            wanted = await _keys(keys or [], all_, index, src, local=True)
        try:
            dst = await open_remote(remote, create=not dry_run)
        except UserError:  # a dry run to a remote with no store yet: everything would move
            dst = await _empty_store()
        try:
            return await do_push(src, dst, wanted, signer=signer, progress=None if json else bar,
                                 dry_run=dry_run)
        finally:
            bar.close()
            await _close(dst)

    _report("push", f"to {name}", run_async(go), dry_run=dry_run, json=json)


@handles_errors
def pull(
    name: Name, keys: Keys = None, all_: All = False, dry_run: DryRun = False, json: Json = False
) -> None:
    """Copy the closure of KEYs from a remote, accepting only realisations signed by trusted keys."""
    from qwexstore.keys import trust_from_config
    from qwexstore.remotes import open_remote, resolve_remote
    from qwexstore.transfer import pull as do_pull

    config = _config()
    remote = resolve_remote(config, name)
    trust = trust_from_config(config)
    bar = _Bar("pulling", f"from {name}")

    async def go() -> TransferReport:
        src = await open_remote(remote, create=False)
        try:
            if dry_run and not location().exists():  # nothing here yet: compare with an empty store
                wanted = await _keys(keys or [], all_, None, src, local=False)
                return await do_pull(src, await _empty_store(), wanted, trust=trust, dry_run=True,
                                     strict=not all_)
            dst = await open_store(create=not dry_run)
            with open_index(create_store=True) as index:
                wanted = await _keys(keys or [], all_, index, src, local=False)
                return await do_pull(src, dst, wanted, trust=trust, index=index,
                                     progress=None if json else bar, dry_run=dry_run, strict=not all_)
        finally:
            bar.close()
            await _close(src)

    _report("pull", f"from {name}", run_async(go), dry_run=dry_run, json=json)


async def _empty_store() -> Store:
    """A store with nothing in it (in memory), to compare a dry run against."""
    import uuid

    from qwexstore.store import open_store as open_at

    return await open_at(f"memory://qwex-dry-run-{uuid.uuid4().hex}", create=True)


async def _close(store: Store) -> None:
    close = getattr(store.storage, "close", None)
    if close is not None:
        await close()
