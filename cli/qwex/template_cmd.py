"""``qwex template list|show|eject``: the layer templates a runner's script is made of
(spec/drivers.md, "Templates")."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._ctx import handles_errors

app = typer.Typer(help="Layer templates: see, and own, the shell each runner layer becomes.",
                  no_args_is_help=True)

Kind = Annotated[str, typer.Argument(help="The layer kind: ssh, none, slurm, podman, singularity.")]


def _root() -> str:
    from qwexstore.errors import UserError
    from qwexstore.location import project_root

    root = project_root()
    if root is None:
        raise UserError("not in a git repository: templates are ejected into a project's .qwex/templates/")
    return root


@app.command(name="list")
@handles_errors
def list_() -> None:
    """Each ejectable kind, and whether this project uses its own copy."""
    from qwexstore.location import project_root
    from qwexstore.script import EJECTABLE, IDENTITY_KINDS, template_source

    root = project_root()
    for kind in EJECTABLE:
        path, _ = template_source(kind, root)
        own = root is not None and not path.startswith(template_source(kind, None)[0].rsplit("/", 1)[0])
        role = "identity" if kind in IDENTITY_KINDS else "placement"
        print(f"{kind:12} {role:9} {'project: ' + path if own else 'built-in'}")


@app.command()
@handles_errors
def show(kind: Kind) -> None:
    """Print the template used for KIND (the project's copy if ejected)."""
    from qwexstore.location import project_root
    from qwexstore.script import template_source

    print(template_source(kind, project_root())[1], end="")


@app.command()
@handles_errors
def eject(kind: Kind) -> None:
    """Copy the built-in template for KIND into .qwex/templates/, where the lab can edit
    it; qwex then uses that copy. An ejected container template (podman, singularity) is
    identity: its bytes enter the key of every derivation that runs through it."""
    from qwexstore.script import IDENTITY_KINDS
    from qwexstore.script import eject as do_eject

    path = do_eject(kind, _root())
    note = ("; its content is now part of the key of every run through this layer"
            if kind in IDENTITY_KINDS else "; placement only: it does not change keys")
    print(path)
    print(f"qwex: ejected {kind} to {path}{note}", file=sys.stderr)
