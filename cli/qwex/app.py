"""The ``qwex`` typer application: global options and command registration.

Imported by :func:`qwex.main.main` unless the cache-hit fast path answered first.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import (
    agent_cmd,
    build_cmd,
    checkout_cmd,
    diff_cmd,
    doctor_cmd,
    index_cmd,
    inspect_cmd,
    jobs_cmd,
    key_cmd,
    maint_cmd,
    remote_cmd,
    template_cmd,
)
from ._ctx import STATE, UNLIMITED, piped

# Piped help (`qwex ls --help | less`, a script): click's plain formatter at no width
# limit, instead of rich panels sized to an 80-column default.
_WIDTH = {"terminal_width": UNLIMITED, "max_content_width": UNLIMITED} if piped() else {}

app = typer.Typer(
    name="qwex",
    help="Content-addressed reproducibility store for ML runs.",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None if piped() else "rich",
    context_settings={"help_option_names": ["-h", "--help"], **_WIDTH},
)


@app.callback()
def _global(
    store: Annotated[
        str | None,
        typer.Option("--store", envvar="QWEX_STORE",
                     help="Store path or URL (default: `store` in .qwex/config.toml or "
                          "$QWEX_HOME/config.toml, else $QWEX_HOME/store)."),
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from qwexstore import __version__

        from .out import say

        say(sys.stdout, f"qwex {__version__}\n")
        raise typer.Exit()
    STATE.store_location = store
    STATE.located = None


app.command()(build_cmd.build)
app.command(context_settings={"allow_interspersed_args": False})(build_cmd.run)
app.command(name="hash")(build_cmd.hash)
app.command()(inspect_cmd.show)
app.command()(inspect_cmd.log)
app.command()(inspect_cmd.ls)
app.command()(checkout_cmd.checkout)
app.command()(diff_cmd.diff)
app.add_typer(index_cmd.app, name="index")
app.add_typer(remote_cmd.app, name="remote")
app.command()(remote_cmd.push)
app.command()(remote_cmd.pull)
app.add_typer(key_cmd.app, name="key")
app.command()(maint_cmd.verify)
app.command()(maint_cmd.gc)
app.command()(maint_cmd.pin)
app.command()(maint_cmd.unpin)
app.command()(jobs_cmd.runs)
app.command()(jobs_cmd.attach)
app.command()(jobs_cmd.cancel)
app.command()(doctor_cmd.doctor)
app.add_typer(template_cmd.app, name="template")
app.add_typer(agent_cmd.app, name="agent", hidden=True)

