"""qwex's own words for a document that does not match its format (a msgspec type).

msgspec validates every format, but its error text is a third-party library's wording and
changes between releases (0.23 reworded several). qwex never shows it or pins it in a test
vector: when msgspec refuses a value, :func:`explain` walks the same value against the
same type (``msgspec.inspect``) and names the first problem in qwex's own words, with the
field path (``env.vars.SEED``, ``entries[0].digest``) and, for an unknown field, the
closest known name ("did you mean 'image'?").

:func:`convert` (builtins, e.g. parsed TOML) and :func:`decode_json` (bytes) raise
:class:`FormatError`. It subclasses ``msgspec.ValidationError`` so that code catching msgspec's
errors keeps working, and it is never a :class:`~qwexstore.errors.QwexError` by itself:
the caller wraps it into the error that names the file or object (DrvFileError,
StoreError).

Path syntax: ``a.b`` for a struct field or a dict key that is an identifier, ``a[3]`` for
an array item, ``a['odd key']`` for any other dict key.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

import msgspec

__all__ = ["FormatError", "convert", "decode_json", "explain", "join_key"]

T = TypeVar("T")

_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class FormatError(msgspec.ValidationError):
    """A document does not match its format. ``field`` is the path of the offending value
    (None: the document as a whole); ``reason`` is qwex's own one-line wording."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def join_key(path: str | None, key: str) -> str:
    """The path of a struct field or dict entry ``key`` below ``path``."""
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path or ''}[{key!r}]"


def explain(value: Any, typ: Any, err: msgspec.MsgspecError | None = None) -> FormatError:
    """The first problem of ``value`` (builtins) against ``typ``, in qwex's words.

    Used after msgspec refused ``value``; should the walker find nothing (a constraint it
    does not model), the result still names the field msgspec pointed at. The walker is
    imported only here: the valid path never pays for it.
    """
    from ._explain import first_problem

    found = first_problem(value, typ)
    if found is not None:
        return FormatError(*found)
    field = None
    if err is not None and (m := _AT.search(str(err))):  # a path, not wording
        field = m.group("path").lstrip(".") or None
    return FormatError(field, "invalid value")


_AT: Final = re.compile(r"`\$(?P<path>[^`]*)`")


def convert(value: Any, typ: type[T]) -> T:
    """``msgspec.convert(value, typ)``; FormatError in qwex's words if it does not fit."""
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as e:
        raise explain(value, typ, e) from None


def decode_json(data: bytes, typ: type[T]) -> T:
    """Decode JSON bytes as ``typ``; FormatError in qwex's words if they are not JSON or
    do not fit."""
    try:
        return msgspec.json.decode(data, type=typ)
    except (msgspec.DecodeError, ValueError) as e:
        err = e
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as u:
        raise FormatError(None, f"not valid UTF-8 (byte {u.start})") from None
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError):
        raise FormatError(None, "malformed JSON") from None
    raise explain(value, typ, err if isinstance(err, msgspec.MsgspecError) else None) from None
