"""The qwex error tree.

Every error qwex raises on purpose is a :class:`QwexError`. The CLI prints
``qwex: error: <message>`` on one line and exits with :attr:`QwexError.exit_code`;
anything else escaping is a bug.

::

    QwexError                      exit 1
    ├── UserError                  exit 2   bad input: fix the command line, the .drv file, the repo
    │   ├── DrvFileError                    malformed or invalid derivation/config file (file, field)
    │   ├── SourceError                     not a git repo, dirty tree, unknown revision
    │   └── KeyLookupError                  unknown or ambiguous key / run id prefix
    ├── StoreError                 exit 1   the store is unreadable or damaged
    │   ├── ObjectNotFound                  a named object is missing (path)
    │   ├── CorruptObject                   content does not hash to its name (expected, actual)
    │   ├── TransientStoreError             the backend failed in a way retrying may fix (network,
    │   │                                   5xx, throttling); raised after the retries are spent
    │   ├── UntrustedObject                 a remote record is unsigned, badly signed or signed
    │   │                                   only by keys not in trusted-keys (path, reason)
    │   └── LeaseLost                       another machine took this key's lease over (fencing)
    ├── BuildFailed                exit 1   the command exited non-zero (exit_code, run_id)
    ├── BuildCancelled             exit 130 interrupted; the job's process group was stopped
    ├── Detached                   exit 0   not a failure: --detach returned after submission
    └── DriverError                exit 1   the execution backend failed (not the command)
        ├── TransientDriverError            retrying may help (scheduler down, connection lost)
        └── PermanentDriverError            retrying will not help (bad configuration)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jobs import JobHandle

__all__ = [
    "BuildCancelled",
    "BuildFailed",
    "CorruptObject",
    "Detached",
    "DriverError",
    "DrvFileError",
    "KeyLookupError",
    "LeaseLost",
    "ObjectNotFound",
    "PermanentDriverError",
    "QwexError",
    "SourceError",
    "StoreError",
    "TransientDriverError",
    "TransientStoreError",
    "UntrustedObject",
    "UserError",
]


class QwexError(Exception):
    """Base of every deliberate qwex error. ``str(err)`` is a one-line message."""

    exit_code = 1


class UserError(QwexError):
    """The input is wrong; nothing was changed. Exit status 2."""

    exit_code = 2


class DrvFileError(UserError):
    """A derivation or config file is malformed or has an invalid field."""

    def __init__(self, file: str, message: str, field: str | None = None) -> None:
        self.file = file
        self.field = field
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


class SourceError(UserError):
    """The source repository cannot be used as asked (not a repo, dirty, bad revision)."""

    def __init__(self, message: str, files: tuple[str, ...] = ()) -> None:
        self.files = files
        super().__init__(message)


class KeyLookupError(UserError):
    """A key, derivation hash or run id prefix matches nothing, or more than one thing."""

    def __init__(self, prefix: str, message: str, candidates: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.candidates = candidates
        super().__init__(message)


class StoreError(QwexError):
    """The store cannot be read or written as its format requires."""


class ObjectNotFound(StoreError):
    """A store object named by a digest or path does not exist."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"object not found in store: {path}")


class CorruptObject(StoreError):
    """A store object's content does not hash to the digest it is stored under."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"corrupt object {path}: expected {expected}, got {actual} (run `qwex verify --repair`)"
        )


class TransientStoreError(StoreError):
    """The backend failed in a way that retrying may fix (connection refused or reset,
    timeouts, HTTP 5xx, throttling). Backends retry with backoff before raising it; a
    caller may retry the whole operation later (push and pull resume)."""


class UntrustedObject(StoreError):
    """A record from another store is not accepted: unsigned, badly signed, signed only by
    untrusted keys, or malformed. Nothing is written locally."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"refused {path}: {reason}")


class LeaseLost(StoreError):
    """Another builder took over this key's lease (ours expired): the run must not write a
    realisation (fencing, spec/locks.md)."""

    def __init__(self, key: str, holder: str) -> None:
        self.key = key
        self.holder = holder
        super().__init__(f"lost the lease on {key} to {holder}; the result was not recorded")


class BuildFailed(QwexError):
    """The derivation's command ran and exited non-zero (or its outputs were invalid)."""

    def __init__(self, message: str, exit_code: int | None, run_id: str) -> None:
        self.command_exit_code = exit_code
        self.run_id = run_id
        super().__init__(message)


class BuildCancelled(QwexError):
    """The build was interrupted; the job's process group was stopped and the run recorded."""

    exit_code = 130

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"cancelled; run {run_id} recorded as cancelled")


class Detached(QwexError):
    """Not a failure: ``--detach`` returned once the job was submitted, and it runs on.
    Whoever attaches (``qwex attach``, or a build of the same key) records the run.
    ``handle`` is the job's :class:`~qwexstore.jobs.JobHandle`."""

    exit_code = 0

    def __init__(self, handle: JobHandle) -> None:
        self.handle = handle
        super().__init__(f"{handle.name}: submitted run {handle.run_id} "
                         f"(follow it with `qwex attach {handle.run_id}`)")


class DriverError(QwexError):
    """The execution backend failed before or around the command (not the command itself)."""


class TransientDriverError(DriverError):
    """A driver failure that may succeed on retry."""


class PermanentDriverError(DriverError):
    """A driver failure that will not succeed on retry without a change."""
