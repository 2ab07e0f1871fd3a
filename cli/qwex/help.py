"""``qwex --help`` (and ``-h``, and ``qwex`` alone) without the CLI framework, for a reader
that is not a terminal: the text the typer application prints there (click's plain
formatter, no width limit), from the table below, in a few milliseconds instead of
~130 ms of imports.

Contract: :func:`top_level` is byte for byte what ``QWEX_NO_FAST=1 qwex --help`` prints
when piped (tests/test_fast_cli.py compares them, so a command added to :mod:`qwex.app`
without its line here fails the suite). On a terminal the typer application answers, with
rich panels. A command's own ``--help`` is always typer's.
"""

from __future__ import annotations

__all__ = ["COMMANDS", "top_level"]

_USAGE = "Usage: qwex [OPTIONS] [COMMAND] [ARGS]..."
_ABOUT = "Content-addressed reproducibility store for ML runs."
_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--store TEXT", "Store path or URL (default: `store` in .qwex/config.toml or $QWEX_HOME/config.toml, "
                     "else $QWEX_HOME/store).  [env var: QWEX_STORE]"),
    ("--version", "Print the version and exit."),
    ("-h, --help", "Show this message and exit."),
)

#: Every visible command of :mod:`qwex.app`, in registration order, with the first
#: paragraph of its help (its docstring's first sentence).
COMMANDS: tuple[tuple[str, str], ...] = (
    ("build", "Build a derivation unless its key is already realized; print the key and outputs."),
    ("run", "Run a command as an ad-hoc derivation of the current repo at HEAD."),
    ("hash", "Print a derivation's key without building it."),
    ("show", "Show a run: its derivation, run record and outputs (for a result substituted from a "
             "remote and not fetched yet: where it lives, and its outputs' listing)."),
    ("log", "Print the stored output of a run (the latest run of a key), failed runs included."),
    ("ls", "List recent runs, newest first."),
    ("checkout", "Recreate a run: its source at the recorded commit plus its outputs (fetched first from "
                 "the substituter a substituted result came from)."),
    ("diff", "Show which identity inputs differ between two derivations, through their upstreams."),
    ("push", "Copy the closure of KEYs (runs, records, outputs, logs, sources, upstreams) to a remote."),
    ("pull", "Copy the closure of KEYs from a remote, accepting only realisations signed by trusted keys."),
    ("verify", "Re-hash blobs and re-read records; report each missing or corrupt object."),
    ("gc", "Remove every store object that no realisation, pin or running build reaches."),
    ("pin", "Pin a realised key: gc --older-than never drops it."),
    ("unpin", "Remove a pin; the realisation stays until a gc --older-than drops it."),
    ("runs", "List jobs in flight: submitted to a runner and not yet recorded."),
    ("attach", "Follow a job in flight: its logs from the start, then record its run like a build."),
    ("cancel", "Stop a job in flight (scancel, its process group, its container) and record the run as "
               "cancelled."),
    ("doctor", "Check a runner on its execution host: the connection, python3, git, qwex (ssh), the "
               "scheduler's commands, the container runtime, the store it will use."),
    ("index", "Maintain the local index (an accelerator rebuilt from the store)."),
    ("remote", "Named remote stores: directories, s3:// and ssh:// URLs."),
    ("key", "Signing keys: sign what you build and push; trust other labs' keys."),
    ("template", "Layer templates: see, and own, the shell each runner layer becomes."),
)


def _rows(rows: tuple[tuple[str, str], ...]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {text}" for name, text in rows]


def top_level() -> str:
    """The top-level help, newline-terminated, as click formats it for a pipe."""
    lines = [_USAGE, "", f"  {_ABOUT}", "", "Options:", *_rows(_OPTIONS), "", "Commands:", *_rows(COMMANDS)]
    return "\n".join(lines) + "\n"
