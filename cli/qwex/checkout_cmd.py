"""``qwex checkout``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors, run_async, workspace


@handles_errors
def checkout(
    key: Annotated[str, typer.Argument(help="A key, run id, or unique prefix.")],
    dest: Annotated[
        str | None, typer.Argument(help="Directory to create (default: ./<name>-<key prefix>).")
    ] = None,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Hard-link output files to the store's blobs instead of copying them. Writing "
            "through such a link (root can, whatever the mode) corrupts the store.",
        ),
    ] = False,
    copy: Annotated[
        bool, typer.Option("--copy", hidden=True, help="Copy output files (the default; kept for scripts).")
    ] = False,
    outputs_only: Annotated[
        bool, typer.Option("--outputs-only", help="Only the outputs, not the source (also when the "
                                                  "source snapshot is missing).")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Recreate a run: its source at the recorded commit plus its outputs (fetched first
    from the substituter a substituted result came from)."""

    from qwexstore.checkout import CheckoutResult
    from qwexstore.workspace import BuildEvents

    class Events(BuildEvents):
        def fetching(self, key: str, remote: str) -> None:
            print(f"qwex: fetching the outputs of {key} from {remote}", file=sys.stderr)

    target = dest or f"qwex-{key.removeprefix('blake3:')[:12]}"
    with workspace() as ws:

        async def go() -> CheckoutResult:
            return await ws.checkout(key, target, link=link and not copy, outputs_only=outputs_only,
                                     events=Events())

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
