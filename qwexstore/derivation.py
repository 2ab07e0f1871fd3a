"""Derivations: what to run. The hash of a derivation's canonical encoding is its identity.

A derivation names everything that can change a run's results and nothing else
(spec/derivation.md): the digest of the selected source tree (not the commit), the argv,
the environment image id, hashed variables, the identity fields of its layers, the
outputs spec and each input's content digest. Labels, placement and pass-through
variable names live outside it.

Two forms exist (Nix calls the second a resolved derivation):
- **unresolved**: may contain :class:`DrvInput` (another derivation, by hash);
- **resolved**: every ``DrvInput`` replaced by a :class:`TreeInput` holding that
  upstream's *output manifest digest*. The **key** of a build is the hash of the resolved
  form, so an upstream that re-runs but yields byte-identical outputs does not invalidate
  its dependants (early cutoff). A derivation without ``drv`` inputs is its own resolved
  form: its hash is its key.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from . import canonical
from .digest import Digest, hash_tagged
from .layers import LayerIdentity

__all__ = [
    "BlobInput",
    "Derivation",
    "DrvInput",
    "Env",
    "Input",
    "TreeInput",
    "derivation_hash",
    "resolve",
]


class BlobInput(msgspec.Struct, tag_field="type", tag="blob", forbid_unknown_fields=True):
    """A single file staged at the destination path."""

    digest: Digest
    executable: bool


class TreeInput(msgspec.Struct, tag_field="type", tag="tree", forbid_unknown_fields=True):
    """A directory tree (described by a manifest) staged under the destination path."""

    manifest: Digest


class DrvInput(msgspec.Struct, tag_field="type", tag="drv", forbid_unknown_fields=True):
    """The outputs of another derivation, named by its hash. Unresolved form only."""

    drv: Digest


Input = BlobInput | TreeInput | DrvInput


class Env(msgspec.Struct, forbid_unknown_fields=True):
    """The hashed part of the environment. ``image`` is an image id (see image.py) or None."""

    image: str | None
    vars: dict[str, str]


class Derivation(msgspec.Struct, forbid_unknown_fields=True):
    """The identity of a run. Field meanings and rules: spec/derivation.md."""

    source: Digest | None
    command: list[str]
    env: Env
    inputs: dict[str, Input]
    layers: list[LayerIdentity]
    outputs: list[str]

    def canonical(self) -> bytes:
        """The exact bytes that are hashed."""
        return canonical.encode(self)

    def hash(self) -> str:
        """``blake3(b"qwex:derivation:v1\\0" + canonical)`` as a digest string."""
        return derivation_hash(self)

    def is_resolved(self) -> bool:
        """True if no input refers to another derivation."""
        return not any(isinstance(i, DrvInput) for i in self.inputs.values())

    def upstreams(self) -> dict[str, str]:
        """Destination path -> upstream derivation hash, for every ``drv`` input."""
        return {d: i.drv for d, i in self.inputs.items() if isinstance(i, DrvInput)}


def derivation_hash(drv: Derivation) -> str:
    """The derivation's hash. For a resolved derivation this is the build key."""
    return hash_tagged("derivation", drv.canonical())


def resolve(drv: Derivation, upstream_manifests: Mapping[str, str]) -> Derivation:
    """Replace each ``DrvInput`` by a ``TreeInput`` of that upstream's output manifest.

    ``upstream_manifests`` maps upstream derivation hash -> output manifest digest.
    Raises KeyError naming the first upstream that has no entry (it is not realized).
    """
    inputs: dict[str, Input] = {}
    for dest, inp in drv.inputs.items():
        if isinstance(inp, DrvInput):
            inputs[dest] = TreeInput(manifest=upstream_manifests[inp.drv])
        else:
            inputs[dest] = inp
    return msgspec.structs.replace(drv, inputs=inputs)
