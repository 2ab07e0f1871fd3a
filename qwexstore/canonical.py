"""Canonical encoding: the exact bytes that are hashed (spec/canonical.md).

Canonical JSON as produced here: UTF-8, no insignificant whitespace, object keys sorted by
code point (struct fields included), integers only (no floats anywhere in hashed data),
every struct field present (no omitted defaults), strings with minimal escapes. The
encoder is the only writer of hashed bytes; decoding accepts only the declared types.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .schema import decode_json

__all__ = ["decode", "encode"]

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder(order="sorted")


def encode(obj: Any) -> bytes:
    """Canonical bytes of a msgspec Struct (or plain JSON-able value)."""
    return _ENCODER.encode(obj)


def decode(data: bytes, type: type[T]) -> T:
    """Decode bytes into ``type``; raises :class:`~qwexstore.schema.FormatError` (a
    ``msgspec.ValidationError``) in qwex's own words if they are not JSON of that type."""
    return decode_json(data, type)
