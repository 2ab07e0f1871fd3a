"""qwexstore: the core of qwex — formats, hashing, store, index, source, build, checkout.

Nouns are modules of types (:mod:`.digest`, :mod:`.derivation`, :mod:`.manifest`,
:mod:`.records`, :mod:`.store`, :mod:`.index`, :mod:`.source`, :mod:`.layers`); verbs are
modules of functions that take a store (:mod:`.plan`, :mod:`.build`, :mod:`.checkout`,
:mod:`.snapshot`). Import submodules directly; this package re-exports only the error tree
so that importing it stays cheap (the cache-hit path depends on that).
"""

from .errors import (
    BuildCancelled,
    BuildFailed,
    CorruptObject,
    DriverError,
    DrvFileError,
    KeyLookupError,
    ObjectNotFound,
    PermanentDriverError,
    QwexError,
    SourceError,
    StoreError,
    TransientDriverError,
    UserError,
)

__version__ = "0.1.0"

__all__ = [
    "BuildCancelled",
    "BuildFailed",
    "CorruptObject",
    "DriverError",
    "DrvFileError",
    "KeyLookupError",
    "ObjectNotFound",
    "PermanentDriverError",
    "QwexError",
    "SourceError",
    "StoreError",
    "TransientDriverError",
    "UserError",
    "__version__",
]
