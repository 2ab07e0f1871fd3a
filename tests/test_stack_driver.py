"""The stack driver's own logic with a recording transport (a test double for the host):
status queries of concurrent follow loops are batched into one, the cancel script
reaches the container even after the scheduler's script, and --dry-run's ssh line."""

from __future__ import annotations

import asyncio

from qwex_drivers.stack import StackDriver
from qwex_drivers.transport import Completed

from qwexstore.jobs import JobHandle
from qwexstore.layers import PodmanLayer


class RecordingTransport:
    """Stands in for the execution host: records every script, answers squeue-style."""

    kind = "local"

    def __init__(self, answer: bytes = b"") -> None:
        self.scripts: list[str] = []
        self.answer = answer

    async def run(self, script: str, *, input: bytes | None = None) -> Completed:
        self.scripts.append(script)
        return Completed(0, self.answer, b"")

    async def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes | None:
        return None

    async def home(self) -> str:
        return "/home/u"

    async def close(self) -> None:
        return None


def _handle(i: int, layers: list[object]) -> JobHandle:
    return JobHandle(run_id=f"r{i}", key=f"k{i}", name="n", drv="d", runner=None, driver="stack",
                     layers=layers, job_dir=f"/j/{i}", scheduler_id=str(100 + i), host="",  # type: ignore[arg-type]
                     submitted_ns=1)


def test_concurrent_status_calls_share_one_scheduler_query() -> None:
    d = StackDriver()
    t = RecordingTransport(b"100 running\n101 gone\n102 running\n")
    d._transports[""] = t  # type: ignore[assignment]
    handles = [_handle(i, [PodmanLayer(image="img@sha256:" + "a" * 64)]) for i in range(3)]

    async def go() -> list[dict[str, object]]:
        return await asyncio.gather(*(d.status([h]) for h in handles))

    results = asyncio.run(go())
    assert len(t.scripts) == 1, t.scripts
    assert "100 101 102" in t.scripts[0]
    assert [{k: v.state for k, v in r.items()} for r in results] == [  # type: ignore[attr-defined]
        {"r0": "running"}, {"r1": "unknown"}, {"r2": "running"}]


def test_cancel_removes_the_container_after_the_schedulers_script() -> None:
    d = StackDriver()
    t = RecordingTransport()
    d._transports[""] = t  # type: ignore[assignment]
    h = _handle(0, [PodmanLayer(image="img@sha256:" + "a" * 64)])
    asyncio.run(d.cancel(h))
    script = t.scripts[0]
    # the scheduler's script runs in a subshell, so its `exit` cannot skip the removal
    assert "(for p in" in script and script.rstrip().endswith("podman rm -f qwex-r0 >/dev/null 2>&1; exit 0")
