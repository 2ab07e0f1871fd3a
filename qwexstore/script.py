"""Layer templates: each layer kind renders a piece of the job's shell script
(spec/drivers.md, "Templates").

A template is a Jinja2 file ``<kind>.sh.j2``. The built-in ones ship in
``qwexstore/templates/``; ``qwex template eject KIND`` copies one into the project's
``.qwex/templates/``, and from then on the project's copy is used (the lab owns it).

Rendering contract:

- Jinja2 with ``StrictUndefined`` (a misspelt variable is an error, not an empty string),
  no autoescaping, ``trim_blocks``/``lstrip_blocks``, trailing newline kept.
- Every value that reaches the shell goes through the ``sh`` filter (``shlex.quote``) or
  ``shjoin`` (``sh`` over a list, space-joined). Quoting is the engine's, never by hand,
  so a hostile value (quotes, ``$()``, newlines) arrives as one exact word.
- A template error (syntax, undefined variable) is a :class:`PermanentDriverError` naming
  the template file, line and cause, in one line.

Templates and the key: a wrapper template (``podman``, ``singularity``) decides what the
job sees (its mounts, its isolation), so a project's ejected copy is identity: its digest
enters the key as a :class:`~qwexstore.layers.TemplateIdentity` (see
:func:`template_identities`). Transport and scheduler templates (``ssh``, ``none``,
``slurm``) are placement, like the fields they render. ``job`` (the batch script: staging,
environment, the marker) is qwex's own contract and cannot be ejected.

This module imports Jinja2 only when rendering: planning a cache hit never pays for it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .errors import PermanentDriverError, UserError

if TYPE_CHECKING:
    from .layers import Layer, TemplateIdentity

__all__ = [
    "EJECTABLE",
    "IDENTITY_KINDS",
    "eject",
    "ejected_path",
    "render",
    "template_identities",
    "template_source",
]

#: Kinds a project may eject and edit.
EJECTABLE: Final = ("ssh", "none", "slurm", "podman", "singularity")
#: Kinds whose ejected copy is identity (it changes what the job sees).
IDENTITY_KINDS: Final = ("podman", "singularity")
_BUILTIN: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def ejected_path(project_root: str, kind: str) -> str:
    """Where a project's own copy of template ``kind`` lives."""
    return os.path.join(project_root, ".qwex", "templates", f"{kind}.sh.j2")


def _path(kind: str, project_root: str | None) -> str:
    if project_root is not None and kind in EJECTABLE:
        own = ejected_path(project_root, kind)
        if os.path.isfile(own):
            return own
        if os.path.lexists(own):  # a directory, a dangling link: not silently the built-in
            raise PermanentDriverError(f"template {own} is not a readable file")
    return os.path.join(_BUILTIN, f"{kind}.sh.j2")


def template_source(kind: str, project_root: str | None = None) -> tuple[str, str]:
    """(path, text) of the template used for ``kind``: the project's copy if ejected."""
    path = _path(kind, project_root)
    try:
        with open(path, encoding="utf-8") as f:
            return path, f.read()
    except FileNotFoundError:
        raise PermanentDriverError(f"no template for layer kind {kind!r} ({path})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PermanentDriverError(f"cannot read template {path}: {e}") from None


def _sh(value: object) -> str:
    if value is None:
        raise ValueError("a template passed None to the sh filter")
    return shlex.quote(str(value))


def _shjoin(values: Iterable[object]) -> str:
    return " ".join(_sh(v) for v in values)


_COMPILED: dict[tuple[str, str], Any] = {}  # (path, text) -> compiled template


def _environment() -> Any:
    import jinja2  # only a miss that runs through a layer stack pays for it

    env = jinja2.Environment(
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = _sh
    env.filters["shjoin"] = _shjoin
    return env


def render(kind: str, ctx: Mapping[str, Any], project_root: str | None = None) -> str:
    """Render template ``kind`` (the project's copy if ejected) with ``ctx``. A template is
    compiled once per process and content (a sweep of 100 jobs compiles each once)."""
    import jinja2

    path, text = template_source(kind, project_root)
    try:
        tpl = _COMPILED.get((path, text))
        if tpl is None:
            tpl = _COMPILED[(path, text)] = _environment().from_string(text)
        out: str = tpl.render(**ctx)
        return out
    except jinja2.TemplateSyntaxError as e:
        raise PermanentDriverError(f"template {path}, line {e.lineno}: {e.message}") from None
    except (jinja2.UndefinedError, ValueError, TypeError) as e:
        raise PermanentDriverError(f"template {path}: {e}") from None


def eject(kind: str, project_root: str) -> str:
    """Copy the built-in template ``kind`` into the project; return the new file's path.
    Refuses (UserError) a kind that cannot be ejected or a copy that already exists."""
    if kind not in EJECTABLE:
        raise UserError(f"cannot eject template {kind!r} (ejectable: {', '.join(EJECTABLE)})")
    dest = ejected_path(project_root, kind)
    with open(os.path.join(_BUILTIN, f"{kind}.sh.j2"), "rb") as f:
        data = f.read()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UserError(f"{dest} already exists (delete it to eject the built-in template again)") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return dest


def template_identities(project_root: str | None, layers: list[Layer]) -> list[TemplateIdentity]:
    """The key's entries for the project's ejected identity templates that ``layers`` use:
    ``TemplateIdentity(kind, blake3 of the file)``, in layer order. Empty when every
    template is built-in, so keys made before templates could be ejected stay the same."""
    if project_root is None:
        return []
    from .digest import hash_bytes
    from .layers import TemplateIdentity

    out: list[TemplateIdentity] = []
    for layer in layers:
        kind = type(layer).__struct_config__.tag
        if kind not in IDENTITY_KINDS:
            continue
        own = ejected_path(project_root, str(kind))
        try:
            with open(own, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UserError(f"cannot read template {own}: {e.strerror}") from None
        out.append(TemplateIdentity(layer=str(kind), digest=hash_bytes(data)))
    return out
