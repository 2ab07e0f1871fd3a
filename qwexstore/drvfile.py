"""The derivation file (``.drv``, TOML) as written by users (spec/derivation-file.md).

:func:`parse_drv_file` reads and validates one file into a :class:`DrvFile`; every problem
is a :class:`DrvFileError` naming the file and the field. Nothing here touches git, the
store or input files: :mod:`qwexstore.plan` turns a DrvFile into a Derivation.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Final

import msgspec

from .errors import DrvFileError
from .globs import Selector
from .layers import Layer
from .manifest import check_relpath
from .schema import FormatError, convert, join_key

__all__ = ["DrvFile", "EnvSpec", "SourceSpec", "find_nul", "parse_drv_file", "parse_drv_text", "validate"]

_VAR_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SourceSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    repo: str | None = None
    rev: str = "HEAD"
    include: list[str] = msgspec.field(default_factory=list)
    exclude: list[str] = msgspec.field(default_factory=list)


class EnvSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image: str | None = None
    vars: dict[str, str] = msgspec.field(default_factory=dict)
    pass_: list[str] = msgspec.field(default_factory=list, name="pass")


class DrvFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A parsed, validated derivation file. ``command`` is already an argv list."""

    command: list[str] | str
    name: str | None = None
    outputs: list[str] = msgspec.field(default_factory=lambda: ["out/"])
    source: SourceSpec = msgspec.field(default_factory=SourceSpec)
    env: EnvSpec = msgspec.field(default_factory=EnvSpec)
    inputs: dict[str, str] = msgspec.field(default_factory=dict)
    layers: list[Layer] = msgspec.field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        """The command as an argv list (a string runs as ``sh -c STRING``)."""
        return ["sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)


def parse_drv_text(text: str, file: str) -> DrvFile:
    """Parse and validate derivation TOML; raise DrvFileError naming ``file`` and the field."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DrvFileError(file, f"malformed TOML: {e}") from None
    _check_layer_kinds(raw, file)
    try:
        drv = convert(raw, DrvFile)
    except FormatError as e:
        raise DrvFileError(file, e.reason, e.field) from None
    validate(drv, file)
    return drv


def parse_drv_file(path: str) -> DrvFile:
    """Read and parse a derivation file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DrvFileError(path, "no such file") from None
    except IsADirectoryError:
        raise DrvFileError(path, "is a directory, not a .drv file") from None
    except UnicodeDecodeError:
        raise DrvFileError(path, "not UTF-8 text") from None
    except OSError as e:
        raise DrvFileError(path, e.strerror or str(e)) from None
    return parse_drv_text(text, path)


def _check_var(name: str, file: str, field: str) -> None:
    if not _VAR_RE.match(name):
        raise DrvFileError(file, f"invalid variable name {name!r}", field)
    if name.startswith("QWEX_"):
        raise DrvFileError(file, f"{name}: QWEX_* variables are set by qwex", field)


def _check_layer_kinds(raw: dict[str, Any], file: str) -> None:
    from .layers import known_kinds

    layers = raw.get("layers", [])
    if not isinstance(layers, list):
        return
    for i, layer in enumerate(layers):
        if isinstance(layer, dict):
            kind = layer.get("kind")
            if kind is None:
                raise DrvFileError(file, "missing required field 'kind'", f"layers[{i}]")
            if kind not in known_kinds():
                raise DrvFileError(
                    file,
                    f"unknown layer kind {kind!r} (known: {', '.join(known_kinds())})",
                    f"layers[{i}].kind",
                )


def find_nul(value: Any, path: str | None = None) -> str | None:
    """The path of the first string (or key) in ``value`` (builtins) that contains NUL.

    No such string can reach ``execve`` (argv, environment) or a file name: the C
    interface ends strings at NUL, so the job would see other bytes than the key covers.
    """
    if isinstance(value, str):
        return (path or "") if "\0" in value else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = find_nul(item, f"{path or ''}[{i}]")
            if found is not None:
                return found
    if isinstance(value, dict):
        for k, v in value.items():
            where = join_key(path, str(k))
            if "\0" in str(k):
                return where
            found = find_nul(v, where)
            if found is not None:
                return found
    return None


def validate(drv: DrvFile, file: str) -> None:
    """The checks every derivation file passes after its types: raise DrvFileError naming
    ``file`` and the field. :func:`parse_drv_text` calls it; so must anyone who builds a
    :class:`DrvFile` in code (``qwex run``), so both forms refuse the same things."""
    nul = find_nul(msgspec.to_builtins(drv))
    if nul is not None:
        raise DrvFileError(file, "contains a NUL character, which no program can receive", nul or None)
    argv = drv.argv
    if not argv or not argv[0] or (isinstance(drv.command, str) and not drv.command.strip()):
        raise DrvFileError(file, "must not be empty", "command")
    for i, pat in enumerate(drv.outputs):
        try:
            check_relpath(pat.rstrip("/") or ".")
            Selector([pat], [])  # a bad glob fails now, never after the job has run
        except ValueError as e:
            raise DrvFileError(file, str(e), f"outputs[{i}]") from None
    for name in drv.env.vars:
        _check_var(name, file, join_key("env.vars", name))
    for i, name in enumerate(drv.env.pass_):
        _check_var(name, file, f"env.pass[{i}]")
    both = set(drv.env.vars) & set(drv.env.pass_)
    if both:
        name = sorted(both)[0]
        field = join_key("env.vars", name)
        raise DrvFileError(file, f"{name} is both hashed (vars) and passed (pass)", field)
    for kind, pats in (("include", drv.source.include), ("exclude", drv.source.exclude)):
        for i, pat in enumerate(pats):
            try:
                Selector([pat], [])
            except ValueError as e:
                raise DrvFileError(file, str(e), f"source.{kind}[{i}]") from None
    dests = sorted(drv.inputs)
    for dest in dests:
        spec = drv.inputs[dest]
        if dest != ".":
            try:
                check_relpath(dest.rstrip("/"))
            except ValueError as e:
                raise DrvFileError(file, str(e), f"inputs.{dest!r}") from None
        if not (spec.startswith("file:") or spec.startswith("drv:")) or len(spec.split(":", 1)[1]) == 0:
            raise DrvFileError(
                file, f"{spec!r}: want file:PATH, drv:FILE.drv or drv:blake3:<hex>", f"inputs.{dest!r}"
            )
    norm = [d.rstrip("/") for d in dests if d != "."]
    if len(set(norm)) != len(norm):
        dup = sorted(d for d in norm if norm.count(d) > 1)[0]
        raise DrvFileError(file, f"two inputs name the destination {dup!r}", "inputs")
    for a in norm:
        for b in norm:
            if a != b and b.startswith(a + "/"):
                raise DrvFileError(file, f"input {b!r} lies inside input {a!r}", "inputs")
