"""``qwex key generate|list`` (spec/signatures.md)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors

app = typer.Typer(help="Signing keys: sign what you build and push; trust other labs' keys.",
                  no_args_is_help=True)


@app.command()
@handles_errors
def generate(
    name: Annotated[str, typer.Argument(help="The key's name: letters, digits, '.', '_', '-'.")],
) -> None:
    """Make a new ed25519 key pair under $QWEX_HOME/keys and print its public key.

    The secret key is written to NAME.secret (mode 0600) and never overwritten. The one
    line printed, NAME:<base64>, is what another lab puts in its `trusted-keys`. Set
    `signing-key = "NAME"` in config.toml to sign every result you build or push.
    """
    from qwexstore.keys import generate_key, keys_dir

    pub = generate_key(name)
    print(pub.text())
    print(f"qwex: wrote {keys_dir()}/{name}.secret (keep it private) and {name}.public; "
          f'set signing-key = "{name}" in config.toml to sign with it', file=sys.stderr)


@app.command(name="list")
@handles_errors
def list_(json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show your keys ($QWEX_HOME/keys), the signing key and the trusted keys in config."""
    from qwexstore.config import load_config
    from qwexstore.keys import keys_dir, list_keys, trust_from_config
    from qwexstore.remotes import project_root

    config = load_config(project_root())
    mine = list_keys()
    trusted = trust_from_config(config).keys
    if json:
        emit_json({
            "keys": [{"name": k.name, "public": k.text(), "id": k.id} for k in mine],
            "signing_key": config.signing_key,
            "trusted": [{"name": k.name, "public": k.text(), "id": k.id} for k in trusted],
        })
        return
    print(f"your keys ({keys_dir()}):")
    for k in mine:
        mark = "  (signing-key)" if config.signing_key == k.name else ""
        print(f"  {k.text()}{mark}")
    if not mine:
        print("  none (`qwex key generate NAME` makes one)")
    if config.signing_key is not None and config.signing_key not in {k.name for k in mine}:
        print(f"signing-key: {config.signing_key}")
    print("trusted keys (trusted-keys in config.toml):")
    for k in trusted:
        print(f"  {k.text()}")
    if not trusted:
        print("  none: nothing from another store is accepted")
