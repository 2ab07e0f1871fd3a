"""Named remote stores: resolve, open, add and remove them (spec/remotes.md).

A remote is a store with the same layout as a local one, at a directory path,
``s3://bucket/prefix`` or ``ssh://[user@]host[:port]/path``. Its name and URL (plus, for
S3, the endpoint, profile and region) live in ``[remotes.NAME]`` of a config.toml: the
project's ``.qwex/config.toml`` or the user's ``$QWEX_HOME/config.toml``. Credentials are
never stored there: S3 uses the standard AWS chain, SSH the agent, keys and
``~/.ssh/config``.

:func:`add_remote` and :func:`remove_remote` edit the file with tomlkit, so comments and
the order of everything else survive, and replace it atomically (temp file + rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec

from .config import Config, Remote, config_paths
from .errors import UserError
from .location import project_root

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "add_remote",
    "check_name",
    "normalize_url",
    "open_remote",
    "project_root",
    "remote_file",
    "remove_remote",
    "resolve_remote",
]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_VERSION_FILE: Final = "qwex-store.json"
_FORMS: Final = "a directory, s3://bucket/prefix or ssh://[user@]host[:port]/path"


class _StoreInfo(msgspec.Struct):
    format: str
    version: int


def check_name(name: str) -> str:
    """``name`` if it is a valid remote name (letters, digits, ``_.-``; at most 64), else
    UserError: names become TOML keys and appear in messages and index entries."""
    if not _NAME_RE.fullmatch(name):
        raise UserError(f"invalid remote name {name!r}: use letters, digits, '_', '.' and '-' "
                        "(starting with a letter or digit, at most 64)")
    return name


def normalize_url(url: str, *, cwd: str | None = None) -> str:
    """The URL to store for a remote: a directory path made absolute, or a checked
    ``s3://`` / ``ssh://`` URL. UserError (one line) for any other form, and for a URL
    carrying a password or secret (credentials are never stored)."""
    if not url or "\0" in url or "\n" in url:
        raise UserError(f"invalid remote URL {url!r}: expected {_FORMS}")
    if "://" not in url:
        return os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(url)))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise UserError(f"invalid remote URL {url!r}: a file:// URL needs an absolute path")
        return path
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UserError(f"invalid remote URL {url!r}: {e}") from None
    if parts.password is not None or (scheme == "s3" and parts.username is not None):
        raise UserError(f"remote URL {url!r} carries credentials; they are never stored in config "
                        "(S3: the AWS credential chain; SSH: keys, the agent and ~/.ssh/config)")
    if parts.query or parts.fragment:
        raise UserError(f"invalid remote URL {url!r}: no query or fragment allowed")
    if scheme == "s3":
        if not _BUCKET_RE.fullmatch(parts.hostname or "") or port is not None:
            raise UserError(f"invalid remote URL {url!r}: expected s3://bucket/prefix, a valid bucket name")
        return url.rstrip("/")
    if scheme == "ssh":
        if not parts.hostname or not parts.path or parts.path == "/":
            raise UserError(f"invalid remote URL {url!r}: expected ssh://[user@]host[:port]/path")
        return url.rstrip("/")
    raise UserError(f"unsupported remote URL {url!r}: expected {_FORMS}")


def resolve_remote(config: Config, name: str) -> Remote:
    """The remote called ``name``; UserError naming the known ones otherwise."""
    remote = config.remotes.get(name)
    if remote is None:
        known = ", ".join(sorted(config.remotes)) or "none (add one with `qwex remote add NAME URL`)"
        raise UserError(f"no remote named {name!r}; known: {known}")
    return remote


def _open_storage(remote: Remote) -> Any:
    from .storage import open_storage

    url = remote.url if "://" in remote.url else os.path.expanduser(remote.url)
    extra = {k: v for k, v in (("endpoint", remote.endpoint), ("profile", remote.profile),
                               ("region", remote.region)) if v is not None}
    return open_storage(url, **extra)


async def open_remote(remote: Remote, *, create: bool) -> Store:
    """Open the store at a remote. With ``create`` (push), a location without a store gets
    an empty one; without it (pull, verify), that is the UserError "no qwex store at URL".
    A store of another format or version is a StoreError naming both versions."""
    from .store import open_store_on

    return await open_store_on(_open_storage(remote), remote.url, create=create)


def remote_file(*, user: bool, cwd: str | None = None) -> str:
    """The config file ``remote add`` writes: the project's inside a git repository unless
    ``user``, else ``$QWEX_HOME/config.toml``."""
    proj, home = config_paths(None if user else project_root(cwd))
    return proj if proj is not None else home


def _read_doc(path: str) -> Any:
    import tomlkit

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return tomlkit.document()
    try:
        return tomlkit.parse(text)
    except Exception as e:  # tomlkit's ParseError; named by file, one line
        raise UserError(f"{path}: malformed TOML: {e}") from None


def _write_doc(path: str, doc: Any) -> None:
    import tomlkit

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tomlkit.dumps(doc))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_remote(name: str, remote: Remote, *, user: bool = False, cwd: str | None = None) -> str:
    """Add ``[remotes.NAME]`` to the chosen config file (see :func:`remote_file`); return
    the file. The URL is normalized (:func:`normalize_url`). UserError if the name is
    taken in that file: remove it first (no silent redirection of a remote)."""
    import tomlkit

    check_name(name)
    remote = msgspec.structs.replace(remote, url=normalize_url(remote.url, cwd=cwd))
    path = remote_file(user=user, cwd=cwd)
    doc = _read_doc(path)
    remotes = doc.get("remotes")
    if remotes is None:
        remotes = tomlkit.table(is_super_table=True)
        doc["remotes"] = remotes
    elif not isinstance(remotes, dict):
        raise UserError(f"{path}: 'remotes' is not a table")
    if name in remotes:
        raise UserError(f"remote {name!r} already exists in {path}; remove it first")
    entry = tomlkit.table()
    for field in ("url", "endpoint", "profile", "region"):
        value = getattr(remote, field)
        if value is not None:
            entry[field] = value
    remotes[name] = entry
    _write_doc(path, doc)
    return path


def remove_remote(name: str, *, user: bool = False, cwd: str | None = None) -> str:
    """Remove ``[remotes.NAME]``: from the project's file if it is there (and not
    ``user``), else from the user's; return the file. UserError if neither has it."""
    proj, home = config_paths(None if user else project_root(cwd))
    for path in (p for p in (proj, home) if p is not None):
        doc = _read_doc(path)
        remotes = doc.get("remotes")
        if isinstance(remotes, dict) and name in remotes:
            del remotes[name]
            if not remotes:
                del doc["remotes"]
            _write_doc(path, doc)
            return path
    raise UserError(f"no remote named {name!r} in {' or '.join(p for p in (proj, home) if p)}")
