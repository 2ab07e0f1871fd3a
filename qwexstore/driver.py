"""The driver interface: how a run is executed (spec/drivers.md).

A driver realizes one :class:`RunPlan`. The core never imports a concrete driver: drivers
register under the ``qwex.drivers`` entry-point group (``local`` ships with qwex), so a lab
can plug in its own. The driver is chosen by the outermost layer's kind (``local`` when
there are no layers).

Contract of :meth:`Driver.run`:
- run ``plan.argv`` in ``plan.workdir`` with exactly ``plan.env`` (nothing inherited);
- call ``logs(stream, chunk)`` with output as it arrives (``stream`` is ``"stdout"`` or
  ``"stderr"``), from the event loop's thread;
- return a :class:`RunOutcome` once the job has ended (a non-zero exit is an outcome, not
  an exception); after it returns, ``plan.workdir`` holds the outputs on this machine;
- on cancellation (``asyncio.CancelledError``) stop the job's whole process group or
  scheduler job, then re-raise;
- raise :class:`~qwexstore.errors.DriverError` only for failures of the backend itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from .errors import DrvFileError, PermanentDriverError
from .layers import Layer, LocalLayer

if TYPE_CHECKING:
    from .cache import Realised
    from .index import Index
    from .plan import Plan

__all__ = ["Driver", "LogSink", "RunOutcome", "RunPlan", "driver_for", "load_driver", "preflight"]

LogSink = Callable[[str, bytes], None]


class RunPlan(msgspec.Struct, frozen=True):
    """One execution: what to run, where its files are, and the layers it goes through."""

    run_id: str
    key: str
    name: str
    workdir: str
    argv: list[str]
    env: dict[str, str]
    layers: list[Layer]
    image: str | None = None
    drv: str = ""  # the derivation record's hash (a remote execution side stages from it)
    project_root: str | None = None  # where a project's own templates are (.qwex/templates)
    runner: str | None = None  # the runner's name, for messages and `qwex runs`
    passed: list[str] = msgspec.field(default_factory=list)  # env names passed through (masked when shown)


class RunOutcome(msgspec.Struct, frozen=True):
    """How a run ended. ``exit_code`` is None when the job never started."""

    status: Literal["succeeded", "failed"]
    exit_code: int | None
    started_ns: int
    finished_ns: int
    message: str = ""


class Driver(Protocol):
    """An execution backend. See the module docstring for the contract."""

    name: str

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome: ...


def driver_for(layers: list[Layer]) -> str:
    """The driver name that executes a layer stack: the outermost layer's kind."""
    if not layers:
        return "local"
    tag = type(layers[0]).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def load_driver(name: str) -> Driver:
    """Instantiate the driver registered under ``name``; PermanentDriverError if none."""
    from importlib.metadata import entry_points  # ~10 ms: only a build on a miss needs it

    found = {ep.name: ep for ep in entry_points(group="qwex.drivers")}
    if name not in found:
        have = ", ".join(sorted(found)) or "none"
        raise PermanentDriverError(f"no driver installed for layer kind {name!r} (installed drivers: {have})")
    driver: Driver = found[name].load()()
    return driver


def _installed() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="qwex.drivers")}


def preflight(plan: Plan, index: Index | None = None, realised: Realised | None = None) -> None:
    """Refuse, before anything starts, a graph that some driver would refuse mid-build.

    Every node of ``plan``'s graph (with ``index`` and ``realised``, as for
    :func:`~qwexstore.cache.lookup`: every node not already realized) needs a driver
    installed for its layer stack (entry-point names only: nothing is imported), and a
    stack the ``local`` driver runs must have only local layers and no ``[env] image`` (it
    runs on the host). Raises DrvFileError (exit 2) naming the node's .drv file and the
    field; a driver's own later refusal stays a DriverError.
    """
    from .graph import graph_nodes

    installed: set[str] | None = None
    for node in graph_nodes(plan):
        if index is not None and realised is not None and _realized(node, index, realised):
            continue
        name = driver_for(node.layers)
        installed = _installed() if installed is None else installed
        if name not in installed:
            have = ", ".join(sorted(installed)) or "none"
            raise DrvFileError(
                node.drv_path,
                f"no driver installed for layer kind {name!r} (installed drivers: {have})",
                "layers[0].kind",
            )
        if name != "local":
            _check_stack(node)
            continue
        for i, layer in enumerate(node.layers):
            if not isinstance(layer, LocalLayer):
                kind = type(layer).__struct_config__.tag
                raise DrvFileError(
                    node.drv_path,
                    f"the local driver cannot run layer {kind!r}; put a driver for it outermost",
                    f"layers[{i}].kind",
                )
        if node.image_ref is not None:
            raise DrvFileError(
                node.drv_path,
                "the local driver runs on the host and cannot honour [env] image; "
                "add a container layer (singularity) to run in the image",
                "env.image",
            )


def _check_stack(node: Plan) -> None:
    """A stack the stack driver cannot compose (roles out of order, twice) is refused
    before anything starts, naming the .drv file (exit 2), not after submission."""
    from .compose import split_stack

    try:
        split_stack(node.layers)
    except PermanentDriverError as e:
        raise DrvFileError(node.drv_path, str(e), "layers") from None


def _realized(node: Plan, index: Index, realised: Realised) -> bool:
    """Whether ``node``'s key is known and realized (the cache-hit path's checks)."""
    from .cache import lookup
    from .graph import try_resolve

    resolved = try_resolve(node, index, realised)
    return resolved is not None and lookup(index, resolved.key, realised) is not None
