"""``qwex doctor RUNNER``: is a runner ready? (spec/drivers.md, "Doctor")."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors, run_async
from ._options import Json


@handles_errors
def doctor(
    runner: Annotated[str, typer.Argument(help="A runner named in config ([runners.NAME]).")],
    json: Json = False,
) -> None:
    """Check a runner on its execution host: the connection, python3, git, qwex (ssh), the
    scheduler's commands, the container runtime, the store it will use. Prints what is
    missing with the one command that fixes it; exits 1 if anything is."""
    from qwex_drivers.stack import doctor as run_doctor

    from qwexstore.compose import split_stack
    from qwexstore.config import load_config
    from qwexstore.errors import UserError
    from qwexstore.location import project_root

    cfg = load_config(project_root())
    if runner not in cfg.runners:
        known = ", ".join(sorted(cfg.runners)) or "none configured"
        raise UserError(f"unknown runner {runner!r} (known: {known})")
    layers = cfg.runners[runner].layers
    split_stack(layers)  # a stack the driver cannot compose is refused before connecting
    checks = run_async(lambda: run_doctor(layers))
    missing = [c for c in checks if c.state == "missing"]
    if json:
        rows = [{"name": c.name, "state": c.state, "detail": c.detail, "fix": c.fix} for c in checks]
        emit_json({"runner": runner, "ok": not missing, "checks": rows})
    else:
        for c in checks:
            mark = {"ok": "ok     ", "missing": "MISSING", "info": "info   "}[c.state]
            print(f"{mark} {c.name:10} {c.detail}" + (f"\n        fix: {c.fix}" if c.fix else ""))
        verdict = "is ready" if not missing else f"is missing {len(missing)} thing(s)"
        print(f"qwex: runner {runner!r} {verdict}", file=sys.stderr)
    if missing:
        raise SystemExit(1)
