"""Environment images and their ids (spec/derivation.md, "Images").

An image enters the key by content, never by name:

- an OCI reference pinned by digest (``[docker://]registry/repo[:tag]@sha256:<64 hex>``)
  has the id ``oci:sha256:<hex>`` (the registry and tag are placement: the same image
  pulled from a mirror is the same image);
- a local image file (``.sif`` and friends; a path relative to the .drv file, or
  ``file:PATH``) has the id ``file:blake3:<hex>`` of its bytes;
- an unpinned tag is refused, unless allowed, when its id is ``unpinned:<reference>``
  and the run record marks it impure.
"""

from __future__ import annotations

import os
import re
from typing import Final

from .digest import hash_file
from .errors import DrvFileError, UserError

__all__ = ["image_id", "local_image_path"]

_PINNED: Final = re.compile(r"^(?:docker://)?[^@\s]+@sha256:(?P<hex>[0-9a-f]{64})$")
_FILE_SUFFIXES: Final = (".sif", ".simg", ".img", ".tar", ".oci")


def local_image_path(ref: str, base_dir: str) -> str | None:
    """The absolute path of a local image file reference (relative to ``base_dir``, the
    .drv file's directory), or None for a registry reference. A container layer runs the
    image from there, whatever the job's working directory."""
    path = ref.removeprefix("file:")
    if ref.startswith("file:") or path.startswith(("/", "./", "../")) or path.endswith(_FILE_SUFFIXES):
        return os.path.normpath(os.path.join(base_dir, path))
    return None


def image_id(ref: str, base_dir: str, *, allow_unpinned: bool, where: str, file: str | None = None) -> str:
    """The content id of an image reference. Errors are UserErrors naming the field
    ``where``, and DrvFileErrors naming the file too when ``file`` is given."""

    def fail(message: str) -> UserError:
        return DrvFileError(file, message, where) if file is not None else UserError(f"{where}: {message}")

    if "\0" in ref:
        raise fail("contains a NUL character, which no program can receive")
    m = _PINNED.match(ref)
    if m:
        return f"oci:sha256:{m.group('hex')}"
    path = ref.removeprefix("file:")
    if ref.startswith("file:") or path.startswith(("/", "./", "../")) or path.endswith(_FILE_SUFFIXES):
        full = os.path.join(base_dir, path)
        if not os.path.isfile(full):
            raise fail(f"image file not found: {full}")
        return "file:" + hash_file(full)
    if "@sha256:" in ref:
        raise fail(f"malformed image digest in {ref!r} (want @sha256:<64 hex>)")
    if allow_unpinned:
        return f"unpinned:{ref}"
    raise fail(f"image {ref!r} is not pinned by digest; use {ref}@sha256:<digest> or pass --allow-unpinned")
