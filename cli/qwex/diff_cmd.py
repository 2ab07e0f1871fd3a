"""``qwex diff``: why two derivations have different keys (spec/diff.md)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from qwexstore.errors import QwexError

from ._ctx import emit_json, handles_errors, location, open_index, open_store, run_async
from ._options import AllowDirty, AllowUnpinned, Json, Runner

if TYPE_CHECKING:  # qwexstore.diff is imported when diff runs: other commands stay light
    from qwexstore.diff import DerivationDiff
    from qwexstore.index import Index
    from qwexstore.store import Store

Arg = Annotated[str, typer.Argument(help="A key, unique key prefix or run id; or a .drv file.")]

def _is_file(arg: str) -> bool:
    """A .drv path rather than a key: it ends in .drv, has a directory part, or exists."""
    return arg.endswith(".drv") or os.sep in arg or os.path.isfile(arg)


@handles_errors
def diff(
    a: Arg,
    b: Arg,
    allow_dirty: AllowDirty = False,
    allow_unpinned: AllowUnpinned = False,
    runner: Runner = None,
    json: Json = False,
) -> None:
    """Show which identity inputs differ between two derivations, through their upstreams.

    Exit status: 0 identical, 1 different, 2 trouble (bad argument, unreadable store).
    """
    from qwexstore.diff import Loader, explain
    from qwexstore.errors import SourceError
    from qwexstore.plan import plan_file
    from qwexstore.source import Repo, find_repo

    async def go() -> DerivationDiff:
        if all(_is_file(x) for x in (a, b)) and not location().exists():
            # Two .drv files need no store: compare them against an empty one, and create
            # nothing at the location (spec/store.md L1).
            import tempfile

            from qwexstore.index import Index
            from qwexstore.store import open_store as open_store_at

            with tempfile.TemporaryDirectory(prefix="qwex-diff-") as tmp, \
                    Index(os.path.join(tmp, "index")) as index:
                return await compare(await open_store_at(os.path.join(tmp, "store")), index)
        store = await open_store()
        with open_index() as index:
            return await compare(store, index)

    async def compare(store: Store, index: Index) -> DerivationDiff:
        plans = {
            arg: plan_file(arg, index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned,
                           runner=runner)
            for arg in (a, b) if _is_file(arg)
        }
        repos: list[Repo] = []
        with contextlib.suppress(SourceError):  # not in a repository: look up plans' repos only
            repos.append(Repo(find_repo(os.getcwd())))
        for p in plans.values():
            if p.repo is not None and all(r.root != p.repo.root for r in repos):
                repos.append(p.repo)
        loader = Loader(store, index, repos)
        sides = [loader.plan_side(x, plans[x]) if x in plans else await loader.key_side(x)
                 for x in (a, b)]
        return await explain(sides[0], sides[1], loader)

    try:
        result: DerivationDiff = run_async(go)
    except QwexError as e:  # like diff(1): 2 is trouble, whatever kind; 1 means "different"
        print(f"qwex: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if json:
        import msgspec

        emit_json(msgspec.to_builtins(result))
    else:
        from .diff_view import render

        print("\n".join(render(result)))
    raise SystemExit(0 if result.identical else 1)
