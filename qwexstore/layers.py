"""Layer kinds: the execution stack a derivation runs through, outermost first.

Each kind splits its fields in two (spec/derivation.md, "Layers"):
- **identity** fields change what the job computes (a container image, isolation flags);
  they enter the key through :meth:`identity`.
- **placement** fields only say where it runs (host, partition, queue, time limit); they
  never enter the key, so the same run on another cluster has the same key. Placement can
  also come from a named runner in config (:mod:`qwexstore.config`).

Layers without identity fields (local, ssh, slurm) vanish from the key entirely.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "KueueIdentity",
    "KueueLayer",
    "Layer",
    "LayerIdentity",
    "LocalLayer",
    "PodmanIdentity",
    "PodmanLayer",
    "SingularityIdentity",
    "SingularityLayer",
    "SlurmLayer",
    "SshLayer",
    "TemplateIdentity",
    "layer_fields",
]

_OPTS = {"tag_field": "kind", "forbid_unknown_fields": True, "kw_only": True}


class _LayerBase(msgspec.Struct, **_OPTS):
    """Common shape: ``identity_fields`` lists the fields that enter the key."""

    identity_fields: ClassVar[tuple[str, ...]] = ()


class LocalLayer(_LayerBase, tag="local"):
    """Run on this machine. No fields."""


class SshLayer(_LayerBase, tag="ssh"):
    """Run through ssh on another host. Placement only."""

    host: str
    user: str | None = None
    port: int | None = None
    workdir: str | None = None
    #: where job dirs (``ROOT/jobs/<run-id>``) and the execution store (``ROOT/store``) live
    #: on the remote, relative to its home unless absolute; default ``.qwex``.
    root: str | None = None
    #: the qwex command on the remote (``qwex`` on its PATH by default).
    qwex: str | None = None


class SlurmLayer(_LayerBase, tag="slurm"):
    """Submit to SLURM. Resource requests are placement: they pick where, not what."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    nodes: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gres: str | None = None
    gpus: str | None = None
    constraint: str | None = None
    #: ``--signal``, e.g. ``USR2@90``: warn the job before preemption or its time limit.
    signal: str | None = None
    #: ``--requeue``: a preempted job goes back to the queue; qwex follows it.
    requeue: bool = False
    #: further sbatch options, passed verbatim (each one argument).
    extra_args: list[str] = msgspec.field(default_factory=list)


class SingularityLayer(_LayerBase, tag="singularity"):
    """Run inside a Singularity/Apptainer container. The image and isolation are identity."""

    identity_fields: ClassVar[tuple[str, ...]] = ("image", "contain", "cleanenv", "args")

    image: str
    contain: bool = True
    cleanenv: bool = True
    args: list[str] = msgspec.field(default_factory=list)
    nv: bool = False
    binds: list[str] = msgspec.field(default_factory=list)
    executable: str = "apptainer"


class PodmanLayer(_LayerBase, tag="podman"):
    """Run inside a podman (or docker) container. The image and the extra ``args`` are
    identity; GPUs, the OCI runtime and the executable are placement."""

    identity_fields: ClassVar[tuple[str, ...]] = ("image", "args")

    image: str
    args: list[str] = msgspec.field(default_factory=list)
    gpus: str | None = None
    runtime: str | None = None
    executable: str = "podman"


class KueueLayer(_LayerBase, tag="kueue"):
    """Submit as a Kubernetes Job to a Kueue queue. The container image is identity."""

    identity_fields: ClassVar[tuple[str, ...]] = ("image",)

    image: str
    queue: str | None = None
    namespace: str | None = None
    cpu: str | None = None
    memory: str | None = None
    gpus: int | None = None
    priority_class: str | None = None


Layer = LocalLayer | SshLayer | SlurmLayer | SingularityLayer | PodmanLayer | KueueLayer

_KINDS: dict[str, type[_LayerBase]] = {
    "local": LocalLayer,
    "ssh": SshLayer,
    "slurm": SlurmLayer,
    "singularity": SingularityLayer,
    "podman": PodmanLayer,
    "kueue": KueueLayer,
}


class SingularityIdentity(msgspec.Struct, tag_field="kind", tag="singularity", forbid_unknown_fields=True):
    """What a singularity layer contributes to the key. ``image`` is a resolved image id."""

    image: str
    contain: bool
    cleanenv: bool
    args: list[str]


class PodmanIdentity(msgspec.Struct, tag_field="kind", tag="podman", forbid_unknown_fields=True):
    """What a podman layer contributes to the key. ``image`` is a resolved image id."""

    image: str
    args: list[str]


class TemplateIdentity(msgspec.Struct, tag_field="kind", tag="template", forbid_unknown_fields=True):
    """A lab's own (ejected) template for a layer that changes what the job sees (a
    container wrapper): its bytes are identity (spec/drivers.md, "Templates and the key").
    Absent while the built-in template is used, so existing keys do not change."""

    layer: str
    digest: str


class KueueIdentity(msgspec.Struct, tag_field="kind", tag="kueue", forbid_unknown_fields=True):
    """What a kueue layer contributes to the key. ``image`` is a resolved image id."""

    image: str


LayerIdentity = SingularityIdentity | PodmanIdentity | KueueIdentity | TemplateIdentity


def layer_fields(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(identity fields, placement fields) of a layer kind, or None if the kind is unknown."""
    cls = _KINDS.get(kind)
    if cls is None:
        return None
    fields = tuple(f for f in cls.__struct_fields__)
    ident = cls.identity_fields
    return ident, tuple(f for f in fields if f not in ident)


def known_kinds() -> tuple[str, ...]:
    """Every layer kind this version understands."""
    return tuple(_KINDS)
