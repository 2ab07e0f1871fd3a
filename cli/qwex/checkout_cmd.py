"""``qwex checkout``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors, open_index, run_async, store_location


@handles_errors
def checkout(
    key: Annotated[str, typer.Argument(help="A key, run id, or unique prefix.")],
    dest: Annotated[
        str | None, typer.Argument(help="Directory to create (default: ./<name>-<key prefix>).")
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy output files instead of hard-linking them.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Recreate a run: its source at the recorded commit plus its outputs."""

    from qwexstore.checkout import CheckoutResult
    from qwexstore.checkout import checkout as do_checkout
    from qwexstore.store import open_store

    async def go() -> CheckoutResult:
        store = await open_store(store_location())
        with open_index() as index:
            target = dest or f"qwex-{key.removeprefix('blake3:')[:12]}"
            return await do_checkout(store, index, key, target, copy=copy)

    r = run_async(go)
    if json:
        emit_json(
            {
                "key": r.key,
                "run_id": r.run_id,
                "dest": r.dest,
                "source_files": r.source_files,
                "output_files": r.output_files,
            }
        )
    else:
        print(
            f"{r.dest}: {r.source_files} source files, {r.output_files} output files "
            f"(key {r.key}, run {r.run_id})"
        )
