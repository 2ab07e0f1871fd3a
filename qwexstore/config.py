"""Runner configuration: named placements for the layer stack (spec/config.md).

``.qwex/config.toml`` in the project (the repo root) and ``~/.qwex/config.toml`` for the
user (``$QWEX_HOME/config.toml``); a project runner overrides a user runner of the same
name. A runner lists layers, outermost first, that supply *placement*::

    [runners.cluster]
    layers = [{ kind = "ssh", host = "login1" }, { kind = "slurm", partition = "gpu" }]

Applying a runner to a derivation's layers (:func:`apply_runner`): a runner layer whose
kind the derivation already has fills that layer's placement fields (the runner wins); any
other runner layer is added outside the derivation's layers. A runner may not set an
identity field of a layer the derivation declares.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .errors import DrvFileError
from .home import qwex_home
from .layers import Layer, layer_fields
from .schema import FormatError, convert, join_key

__all__ = ["Config", "Remote", "Runner", "apply_runner", "config_paths", "load_config", "qwex_home"]


class Runner(msgspec.Struct, forbid_unknown_fields=True):
    layers: list[Layer] = msgspec.field(default_factory=list)


class Remote(msgspec.Struct, forbid_unknown_fields=True):
    """A named store another lab (or this lab's cluster) shares (spec/remotes.md).

    ``url``: a directory path, ``s3://bucket/prefix`` or ``ssh://[user@]host[:port]/path``.
    ``endpoint`` and ``profile`` (S3 only) choose the server and the AWS profile; the
    credentials themselves come from the standard AWS chain and are never stored here.
    ``region`` is passed to S3 as is."""

    url: str
    endpoint: str | None = None
    profile: str | None = None
    region: str | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    """One config.toml. Keys are kebab-case in the file (``signing-key``)."""

    runners: dict[str, Runner] = msgspec.field(default_factory=dict)
    store: str | None = None
    remotes: dict[str, Remote] = msgspec.field(default_factory=dict)
    #: Remote names asked, in order, before a missing key is built.
    substituters: list[str] | None = None
    #: The name of a key under ``$QWEX_HOME/keys/`` (or a path to a secret key file):
    #: every realisation built or pushed is signed with it.
    signing_key: str | None = None
    #: Public keys, ``NAME:<base64>``, whose signatures make a remote realisation acceptable.
    trusted_keys: list[str] = msgspec.field(default_factory=list)


def _load(path: str) -> Config:
    # tomllib and the .drv parser only when a config file exists: `qwex ls`, `show` and the
    # cache-hit path locate the store through this module (qwex_home) and read no file.
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return Config()
    import tomllib

    from .drvfile import find_nul

    try:
        with f:
            raw: dict[str, Any] = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise DrvFileError(path, f"malformed TOML: {e}") from None
    _check_layer_kinds(raw, path)
    try:
        cfg = convert(raw, Config)
    except FormatError as e:  # e.field names the runner: runners.<name>.layers[i]...
        raise DrvFileError(path, e.reason, e.field) from None
    nul = find_nul(raw)
    if nul is not None:  # layer fields reach ssh/sbatch argv
        raise DrvFileError(path, "contains a NUL character, which no program can receive", nul or None)
    return cfg


def _check_layer_kinds(raw: dict[str, Any], path: str) -> None:
    """An unknown or missing layer ``kind`` named with the known kinds."""
    from .layers import known_kinds

    runners = raw.get("runners")
    if not isinstance(runners, dict):
        return
    for name, runner in runners.items():
        layers = runner.get("layers") if isinstance(runner, dict) else None
        for i, layer in enumerate(layers if isinstance(layers, list) else []):
            if isinstance(layer, dict) and layer.get("kind") not in known_kinds():
                where = f"{join_key(join_key('runners', str(name)), 'layers')}[{i}]"
                if "kind" not in layer:
                    raise DrvFileError(path, "missing required field 'kind'", where)
                raise DrvFileError(
                    path, f"unknown layer kind {layer['kind']!r} (known: {', '.join(known_kinds())})",
                    f"{where}.kind",
                )


def load_config(project_root: str | None) -> Config:
    """User config overlaid with the project's."""
    user = _load(os.path.join(qwex_home(), "config.toml"))
    if project_root is None:
        return user
    proj = _load(os.path.join(project_root, ".qwex", "config.toml"))
    return Config(
        runners={**user.runners, **proj.runners},
        store=proj.store or user.store,
        remotes={**user.remotes, **proj.remotes},
        substituters=proj.substituters if proj.substituters is not None else user.substituters,
        signing_key=proj.signing_key or user.signing_key,
        # Both files' keys are trusted: a project's config is as trusted as its code (which
        # qwex runs), spec/threat-model.md.
        trusted_keys=list(dict.fromkeys([*user.trusted_keys, *proj.trusted_keys])),
    )


def config_paths(project_root: str | None) -> tuple[str | None, str]:
    """The project's config file (None outside a project) and the user's."""
    proj = None if project_root is None else os.path.join(project_root, ".qwex", "config.toml")
    return proj, os.path.join(qwex_home(), "config.toml")


def runner_file(project_root: str | None, name: str) -> str:
    """The config file that defines runner ``name`` (the project's wins, as in load_config)."""
    if project_root is not None:
        proj = os.path.join(project_root, ".qwex", "config.toml")
        if name in _load(proj).runners:
            return proj
    return os.path.join(qwex_home(), "config.toml")


def apply_runner(layers: list[Layer], runner: Runner, name: str, file: str = "config.toml") -> list[Layer]:
    """The effective layer stack: ``layers`` with the runner's placement applied.

    A runner may set placement only: changing an identity field is a DrvFileError naming
    ``file`` (where the runner is defined) and ``runners.NAME.layers[i].FIELD``."""
    by_kind = {type(layer): i for i, layer in enumerate(layers)}
    merged = list(layers)
    outer: list[Layer] = []
    for j, rl in enumerate(runner.layers):
        i = by_kind.get(type(rl))
        if i is None:
            outer.append(rl)
            continue
        fields = layer_fields(type(rl).__struct_config__.tag)  # type: ignore[arg-type]
        assert fields is not None
        ident, placement = fields
        base = merged[i]
        changes: dict[str, Any] = {}
        required = _required(rl)
        for f in type(rl).__struct_fields__:
            value, default = getattr(rl, f), getattr(type(rl)(**required), f)
            if value == default and f not in required:
                continue  # not set by the runner (a required field always is)
            if f in ident and value != getattr(base, f):
                raise DrvFileError(file, f"runner {name!r} may not change identity field {f!r} of the "
                                   "derivation's layer (identity is in the key; runners set placement)",
                                   f"runners.{name}.layers[{j}].{f}")
            if f in placement:
                changes[f] = value
        merged[i] = msgspec.structs.replace(base, **changes)
    return outer + merged


def _required(layer: Layer) -> dict[str, Any]:
    """The required fields of a layer, to build a default instance for comparison."""
    cls = type(layer)
    n_defaults = len(cls.__struct_defaults__)
    req = cls.__struct_fields__[: len(cls.__struct_fields__) - n_defaults]
    return {f: getattr(layer, f) for f in req}
