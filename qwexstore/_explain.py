"""The walker behind :func:`qwexstore.schema.explain`: the first place where a decoded
value (builtins) does not fit a msgspec type, described in qwex's own words.

It mirrors what msgspec checks (kinds, struct fields, tags, string and integer
constraints, array lengths) through ``msgspec.inspect``; tests/test_integrity_validate.py
checks that it agrees with msgspec on random documents. Imported only when a document is
invalid.
"""

from __future__ import annotations

import datetime
import difflib
import re
from functools import cache
from typing import Any

import msgspec.inspect as mi

from .schema import join_key

__all__ = ["first_problem"]


def _item(path: str | None, i: int) -> str:
    return f"{path or ''}[{i}]"


def _got(value: Any) -> str:
    """What a decoded value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def _want(t: mi.Type) -> str:
    """What a type accepts, in words."""
    match t:
        case mi.StrType():
            return "a string"
        case mi.IntType():
            return "an integer"
        case mi.FloatType():
            return "a number"
        case mi.BoolType():
            return "a boolean"
        case mi.NoneType():
            return "null"
        case mi.ListType() | mi.TupleType() | mi.VarTupleType() | mi.SetType() | mi.FrozenSetType():
            return "an array"
        case mi.StructType(array_like=True):
            return "an array"
        case mi.DictType() | mi.StructType():
            return "an object"
        case mi.LiteralType():
            return "one of: " + ", ".join(repr(v) for v in t.values)
        case mi.UnionType():
            return " or ".join(dict.fromkeys(_want(x) for x in t.types))
    return type(t).__name__


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


Problem = tuple[str | None, str]


def _mismatch(value: Any, t: mi.Type, path: str | None) -> Problem:
    return path, f"expected {_want(t)}, got {_got(value)}"


def _check_len(n: int, lo: int | None, hi: int | None, what: str, path: str | None) -> Problem | None:
    """``what`` is "a string of ... characters": the bound goes in place of the dots."""
    too_short, too_long = lo is not None and n < lo, hi is not None and n > hi
    if not (too_short or too_long):
        return None
    bound = lo if too_short else hi
    text = what.replace("...", f"{'at least' if too_short else 'at most'} {bound}")
    if bound == 1:  # one character, not one characters
        text = text.replace("characters", "character").replace("items", "item").replace("entries", "entry")
    return path, f"expected {text}, got {n}"


def _walk(value: Any, t: mi.Type, path: str | None) -> Problem | None:
    match t:
        case mi.AnyType():
            return None
        case mi.NoneType():
            return None if value is None else _mismatch(value, t, path)
        case mi.BoolType():
            return None if isinstance(value, bool) else _mismatch(value, t, path)
        case mi.IntType():
            if not isinstance(value, int) or isinstance(value, bool):
                return _mismatch(value, t, path)
            return _int_bounds(value, t, path)
        case mi.FloatType():
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _mismatch(value, t, path)
            return None
        case mi.StrType():
            if not isinstance(value, str):
                return _mismatch(value, t, path)
            bad = _check_len(len(value), t.min_length, t.max_length, "a string of ... characters", path)
            if bad:
                return bad
            if t.pattern is not None and not re.search(t.pattern, value):
                return path, f"expected a string matching {t.pattern}, got {_short(value)}"
            return None
        case mi.LiteralType():
            if value in t.values and type(value) in {type(v) for v in t.values}:
                return None
            return path, f"invalid value {_short(value)} (expected {_want(t)})"
        case mi.ListType() | mi.VarTupleType() | mi.SetType() | mi.FrozenSetType():
            if not isinstance(value, list):
                return _mismatch(value, t, path)
            bad = _check_len(len(value), t.min_length, t.max_length, "an array of ... items", path)
            if bad:
                return bad
            for i, item in enumerate(value):
                bad = _walk(item, t.item_type, _item(path, i))
                if bad:
                    return bad
            return None
        case mi.TupleType():
            if not isinstance(value, list):
                return _mismatch(value, t, path)
            if len(value) != len(t.item_types):
                return path, f"expected an array of {len(t.item_types)} items, got {len(value)}"
            for i, (item, it) in enumerate(zip(value, t.item_types, strict=True)):
                bad = _walk(item, it, _item(path, i))
                if bad:
                    return bad
            return None
        case mi.DictType():
            if not isinstance(value, dict):
                return _mismatch(value, t, path)
            bad = _check_len(len(value), t.min_length, t.max_length, "an object of ... entries", path)
            if bad:
                return bad
            for k, v in value.items():
                bad = _walk(k, t.key_type, path)
                if bad:
                    return bad[0], f"key {_short(k)}: {bad[1]}"
                bad = _walk(v, t.value_type, join_key(path, str(k)))
                if bad:
                    return bad
            return None
        case mi.StructType():
            return _struct(value, t, path)
        case mi.UnionType():
            return _union(value, t, path)
    return None  # a type this walker does not know: let the caller fall back


def _int_bounds(value: int, t: mi.IntType, path: str | None) -> Problem | None:
    if t.ge is not None and value < t.ge:
        return path, f"expected an integer >= {t.ge}, got {value}"
    if t.gt is not None and value <= t.gt:
        return path, f"expected an integer > {t.gt}, got {value}"
    if t.le is not None and value > t.le:
        return path, f"expected an integer <= {t.le}, got {value}"
    if t.lt is not None and value >= t.lt:
        return path, f"expected an integer < {t.lt}, got {value}"
    return None


def _takes_kind(value: Any, t: mi.Type) -> bool:
    """Whether a union member takes this kind of value at all (its contents aside)."""
    match t:
        case mi.AnyType():
            return True
        case mi.NoneType():
            return value is None
        case mi.BoolType():
            return isinstance(value, bool)
        case mi.IntType():
            return isinstance(value, int) and not isinstance(value, bool)
        case mi.FloatType():
            return isinstance(value, int | float) and not isinstance(value, bool)
        case mi.StrType():
            return isinstance(value, str)
        case mi.LiteralType():
            return any(type(value) is type(v) for v in t.values)
        case mi.ListType() | mi.TupleType() | mi.VarTupleType() | mi.SetType() | mi.FrozenSetType():
            return isinstance(value, list)
        case mi.StructType(array_like=True):
            return isinstance(value, list)
        case mi.DictType() | mi.StructType():
            return isinstance(value, dict)
    return True


def _struct(value: Any, t: mi.StructType, path: str | None) -> Problem | None:
    fields = {f.encode_name: f for f in t.fields}
    if t.array_like:
        if not isinstance(value, list):
            return _mismatch(value, t, path)
        lead = 1 if t.tag_field is not None else 0
        n_req = lead + sum(1 for f in t.fields if f.required)
        n_all = lead + len(t.fields)
        if len(value) < n_req:
            return path, f"expected an array of at least {n_req} items, got {len(value)}"
        if t.forbid_unknown_fields and len(value) > n_all:
            return path, f"expected an array of at most {n_all} items, got {len(value)}"
        if lead and value[0] != t.tag:
            return _item(path, 0), f"invalid value {_short(value[0])} (expected {t.tag!r})"
        for i, (item, f) in enumerate(zip(value[lead:], t.fields, strict=False)):
            bad = _walk(item, f.type, _item(path, lead + i))
            if bad:
                return bad
        return None
    if not isinstance(value, dict):
        return _mismatch(value, t, path)
    for k, v in value.items():
        if t.tag_field is not None and k == t.tag_field:
            if v != t.tag:
                return join_key(path, k), f"invalid value {_short(v)} (expected {t.tag!r})"
            continue
        field = fields.get(k)
        if field is None:
            if t.forbid_unknown_fields:
                return join_key(path, str(k)), "unknown field" + _did_you_mean(str(k), list(fields))
            continue
        bad = _walk(v, field.type, join_key(path, k))
        if bad:
            return bad
    if t.tag_field is not None and t.tag_field not in value:
        return path, f"missing required field {t.tag_field!r}"
    for name, f in fields.items():
        if f.required and name not in value:
            return path, f"missing required field {name!r}"
    return None


def _union(value: Any, t: mi.UnionType, path: str | None) -> Problem | None:
    structs = [x for x in t.types if isinstance(x, mi.StructType) and not x.array_like]
    if isinstance(value, dict) and structs:
        tag_field = structs[0].tag_field
        if tag_field is None or len(structs) == 1:
            return _walk(value, structs[0], path)
        if tag_field not in value:
            return path, f"missing required field {tag_field!r}"
        by_tag = {s.tag: s for s in structs}
        tag = value[tag_field]
        if tag not in by_tag or isinstance(tag, bool):
            known = ", ".join(repr(k) for k in by_tag)
            return join_key(path, tag_field), f"invalid value {_short(tag)} (expected one of: {known})"
        return _walk(value, by_tag[tag], path)
    # Otherwise a member that takes this kind of value decides; none: a kind mismatch.
    takers = [m for m in t.types if _takes_kind(value, m)]
    if not takers:
        return _mismatch(value, t, path)
    problems = [_walk(value, m, path) for m in takers]
    if any(p is None for p in problems):
        return None
    return problems[0]


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@cache
def _info(typ: Any) -> mi.Type:
    return mi.type_info(typ)


def first_problem(value: Any, typ: Any) -> Problem | None:
    """(field path, reason) of the first problem of ``value`` against ``typ``, or None."""
    return _walk(value, _info(typ), None)
