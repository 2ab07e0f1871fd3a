"""``qwex build``, ``qwex run`` and ``qwex hash``."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from qwexstore.cache import BuildResult, lookup
from qwexstore.drvfile import DrvFile
from qwexstore.errors import UserError
from qwexstore.index import Index
from qwexstore.plan import Plan, plan_file, plan_parsed

from ._ctx import emit_json, handles_errors, human_duration, human_size, open_index, run_async, store_location

AllowDirty = Annotated[
    bool, typer.Option("--allow-dirty", help="Snapshot uncommitted changes to tracked files.")
]
AllowUnpinned = Annotated[
    bool, typer.Option("--allow-unpinned", help="Accept an image tag not pinned by digest.")
]
Runner = Annotated[str | None, typer.Option("--runner", help="Placement from a named runner in config.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _print_result(r: BuildResult, as_json: bool, elapsed_ns: int | None = None) -> None:
    if as_json:
        emit_json(
            {
                "key": r.key,
                "cached": r.cached,
                "run_id": r.run_id,
                "manifest": r.manifest,
                "files": r.files,
                "size": r.size,
                "outputs": [p for p, _ in r.listing],
            }
        )
        return
    how = "cached" if r.cached else "built" + (f" in {human_duration(elapsed_ns)}" if elapsed_ns else "")
    print(f"key      {r.key}")
    print(f"run      {r.run_id} ({how})")
    print(f"outputs  {r.files} files, {human_size(r.size)}")
    for path, size in r.listing:
        print(f"  {path}  ({human_size(size)})")
    if r.files > len(r.listing):
        print(f"  ... and {r.files - len(r.listing)} more (qwex show {r.key[7:19]})")


class _IngestProgress:
    """A rich progress bar for large ingests, shown only on a terminal."""

    THRESHOLD = 256 * 1024 * 1024

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total < self.THRESHOLD or not sys.stderr.isatty():
                return
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("hashing outputs", total=total)
        self.bar.update(self.task, completed=done)
        if done >= total:
            self.bar.stop()


def _build(plan: Plan, index: Index, as_json: bool) -> None:
    from qwexstore.graph import try_resolve

    resolved = try_resolve(plan, index)
    hit = lookup(index, resolved.key) if resolved is not None else None
    if hit is not None:
        _print_result(hit, as_json)
        return
    import time

    from qwexstore.build import realize
    from qwexstore.graph import realize_graph
    from qwexstore.store import open_store

    def on_log(stream: str, chunk: bytes) -> None:
        out = sys.stdout if stream == "stdout" and not as_json else sys.stderr
        out.buffer.write(chunk)
        out.flush()

    async def go() -> BuildResult:
        store = await open_store(store_location())

        async def build_one(node: Plan) -> BuildResult:
            def on_wait(owner: str) -> None:
                print(
                    f"qwex: {node.name}: waiting for {owner}, which is building {node.key}", file=sys.stderr
                )

            hit = lookup(index, node.key)
            if hit is None and not as_json:
                print(f"qwex: building {node.name} ({node.key})", file=sys.stderr)
            elif hit is not None and not as_json and node is not plan:
                print(f"qwex: {node.name} cached ({node.key})", file=sys.stderr)
            return await realize(
                store, index, node, on_log=on_log, on_wait=on_wait, progress=_IngestProgress()
            )

        return await realize_graph(plan, index, build_one)

    t0 = time.monotonic_ns()
    result = run_async(go)
    _print_result(result, as_json, None if result.cached else time.monotonic_ns() - t0)


@handles_errors
def build(
    drv: Annotated[str, typer.Argument(help="The derivation file.")],
    allow_dirty: AllowDirty = False,
    allow_unpinned: AllowUnpinned = False,
    runner: Runner = None,
    json: Json = False,
) -> None:
    """Build a derivation unless its key is already realized; print the key and outputs."""
    with open_index() as index:
        plan = plan_file(drv, index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned, runner=runner)
        _build(plan, index, json)


@handles_errors
def run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="Output path/glob (default out/).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for the run.")] = None,
    allow_dirty: AllowDirty = False,
    json: Json = False,
) -> None:
    """Run a command as an ad-hoc derivation of the current repo at HEAD."""
    df = DrvFile(command=command, name=name or os.path.basename(command[0]), outputs=output or ["out/"])
    cwd = os.getcwd()
    with open_index() as index:
        plan = plan_parsed(
            df,
            os.path.join(cwd, "(qwex run)"),
            cwd,
            index,
            allow_dirty=allow_dirty,
            allow_unpinned=False,
            runner=None,
        )
        _build(plan, index, json)


@handles_errors
def hash(
    drv: Annotated[str, typer.Argument(help="The derivation file.")],
    allow_dirty: AllowDirty = False,
    allow_unpinned: AllowUnpinned = False,
    runner: Runner = None,
    json: Json = False,
) -> None:
    """Print a derivation's key without building it."""
    from qwexstore.graph import try_resolve

    with open_index() as index:
        plan = plan_file(drv, index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned, runner=runner)
        resolved = try_resolve(plan, index)
    if resolved is None:
        raise UserError(
            f"{drv}: its key depends on the outputs of drv: inputs that are not built yet "
            f"(derivation hash {plan.derivation.hash()}); build them first"
        )
    plan = resolved
    if json:
        import msgspec

        emit_json(
            {
                "key": plan.key,
                "name": plan.name,
                "derivation": msgspec.json.decode(plan.derivation.canonical()),
            }
        )
    else:
        print(plan.key)
