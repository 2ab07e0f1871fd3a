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

__all__ = ["DrvFile", "EnvSpec", "SourceSpec", "parse_drv_file", "parse_drv_text"]

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


_AT_RE: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_RE: Final = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`")


def _field_of(err: msgspec.ValidationError) -> tuple[str | None, str]:
    """Turn msgspec's ``... - at `$.env.vars[0]` `` into ("env.vars[0]", message)."""
    text = str(err)
    field = None
    m = _AT_RE.search(text)
    if m:
        field = m.group("path").lstrip(".") or None
        text = text[: m.start()]
    u = _UNKNOWN_RE.match(text)
    if u:
        name = u.group("name")
        field = f"{field}.{name}" if field else name
        return field, "unknown field"
    if text.startswith("Invalid value") and field and field.startswith("layers"):
        return field, f"{text} (known layer kinds: local, ssh, slurm, singularity, kueue)"
    return field, text[:1].lower() + text[1:]


def parse_drv_text(text: str, file: str) -> DrvFile:
    """Parse and validate derivation TOML; raise DrvFileError naming ``file`` and the field."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DrvFileError(file, f"malformed TOML: {e}") from None
    _check_layer_kinds(raw, file)
    try:
        drv = msgspec.convert(raw, DrvFile)
    except msgspec.ValidationError as e:
        field, msg = _field_of(e)
        raise DrvFileError(file, msg, field) from None
    _validate(drv, file)
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


def _check_layer_kinds(raw: dict[str, Any], file: str) -> None:
    from .layers import known_kinds

    layers = raw.get("layers", [])
    if not isinstance(layers, list):
        return
    for i, layer in enumerate(layers):
        if isinstance(layer, dict):
            kind = layer.get("kind")
            if kind is None:
                raise DrvFileError(file, "missing `kind`", f"layers[{i}]")
            if kind not in known_kinds():
                raise DrvFileError(
                    file,
                    f"unknown layer kind {kind!r} (known: {', '.join(known_kinds())})",
                    f"layers[{i}].kind",
                )


def _validate(drv: DrvFile, file: str) -> None:
    argv = drv.argv
    if not argv or not argv[0] or (isinstance(drv.command, str) and not drv.command.strip()):
        raise DrvFileError(file, "must not be empty", "command")
    for i, pat in enumerate(drv.outputs):
        try:
            check_relpath(pat.rstrip("/") or ".")
        except ValueError as e:
            raise DrvFileError(file, str(e), f"outputs[{i}]") from None
    for name in [*drv.env.vars, *drv.env.pass_]:
        if not _VAR_RE.match(name):
            raise DrvFileError(file, f"invalid variable name {name!r}", "env")
        if name.startswith("QWEX_"):
            raise DrvFileError(file, f"{name}: QWEX_* variables are set by qwex", "env")
    both = set(drv.env.vars) & set(drv.env.pass_)
    if both:
        raise DrvFileError(file, f"{sorted(both)[0]} is both hashed (vars) and passed (pass)", "env")
    try:
        Selector(drv.source.include, drv.source.exclude)
    except ValueError as e:
        raise DrvFileError(file, str(e), "source") from None
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
