"""How ``qwex build`` shows a build: live logs (prefixed when several derivations build),
the ingest progress bar, the per-node summary table of a pipeline, and the final result
(also printed by the cache-hit fast path, :mod:`qwex.main`, so it imports no CLI framework)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from ._ctx import emit_json, human_duration, human_size

if TYPE_CHECKING:
    from qwexstore.cache import BuildResult
    from qwexstore.graph import NodeReport


def _stream(name: str, as_json: bool) -> TextIO:
    """Job stdout goes to our stdout, except under --json, which keeps stdout for JSON."""
    return sys.stdout if name == "stdout" and not as_json else sys.stderr


def _echo(stream: str, as_json: bool, data: bytes) -> bool:
    """Write job output to our terminal; False once the reader is gone (``| head``): the
    build goes on, and the stored log stays complete."""
    out = _stream(stream, as_json)
    try:
        out.buffer.write(data)
        out.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the stream was closed after the pipe broke
        return False
    return True


class RawLogs:
    """One derivation builds: its output passes through untouched, as it arrives."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.open = True

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.open = self.open and _echo(stream, self.as_json, chunk)

    def close(self) -> None:
        """Nothing is held back."""


class PrefixedLogs:
    """Several derivations may build at once: each complete line is written with a
    ``name | `` prefix; a partial line is held until its newline (or :meth:`close`)."""

    def __init__(self, name: str, width: int, as_json: bool) -> None:
        self.prefix = f"{name:<{width}} | ".encode()
        self.as_json = as_json
        self.open = True
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def __call__(self, stream: str, chunk: bytes) -> None:
        lines = (self.partial[stream] + chunk).split(b"\n")
        self.partial[stream] = lines.pop()
        if lines:
            self._write(stream, lines)

    def _write(self, stream: str, lines: list[bytes]) -> None:
        data = b"".join(self.prefix + line + b"\n" for line in lines)
        self.open = self.open and _echo(stream, self.as_json, data)

    def close(self) -> None:
        """Write what is left of unterminated last lines."""
        for stream, rest in self.partial.items():
            if rest:
                self._write(stream, [rest])
            self.partial[stream] = b""


class IngestProgress:
    """A rich progress bar for large ingests, shown only on a terminal."""

    THRESHOLD = 256 * 1024 * 1024

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total < self.THRESHOLD or not sys.stderr.isatty():
                return
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("hashing outputs", total=total)
        self.bar.update(self.task, completed=done)
        if done >= total:
            self.bar.stop()


def summary_lines(reports: list[NodeReport]) -> list[str]:
    """The table printed after a pipeline build: node, status, duration, key, and why a
    node failed or was skipped."""
    width = max(len("DERIVATION"), *(len(r.name) for r in reports))
    lines = [f"  {'DERIVATION':<{width}}  {'STATUS':<9} {'TIME':>7}  KEY"]
    for r in reports:
        took = human_duration(r.duration_ns) if r.status in ("built", "failed", "cancelled") else ""
        key = r.key[:19] if r.key else "-"
        note = f"  {r.message}" if r.status not in ("built", "cached") and r.message else ""
        lines.append(f"  {r.name:<{width}}  {r.status:<9} {took:>7}  {key}{note}")
    statuses = ("built", "cached", "submitted", "failed", "cancelled", "skipped")
    counts = {s: sum(r.status == s for r in reports) for s in statuses}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return [f"qwex: {len(reports)} derivations: {head}", *lines]


def node_json(r: NodeReport) -> dict[str, Any]:
    """One pipeline node as ``--json`` reports it under ``nodes``."""
    return {"name": r.name, "drv": r.drv_path, "status": r.status, "key": r.key,
            "duration_s": round(r.duration_ns / 1e9, 3), "message": r.message}


def print_result(
    r: BuildResult, as_json: bool, elapsed_ns: int | None = None, nodes: list[dict[str, Any]] | None = None
) -> None:
    """What ``qwex build`` prints at the end, a hit or a build: key, run and outputs."""
    if as_json:
        doc = {
            "key": r.key,
            "cached": r.cached,
            "run_id": r.run_id,
            "manifest": r.manifest,
            "files": r.files,
            "size": r.size,
            "outputs": [p for p, _ in r.listing],
            **({"remote": r.remote} if r.remote is not None else {}),  # substituted from it
        }
        emit_json(doc if nodes is None else {**doc, "nodes": nodes})
        return
    how = "cached" if r.cached else "built" + (f" in {human_duration(elapsed_ns)}" if elapsed_ns else "")
    print(f"key      {r.key}")
    print(f"run      {r.run_id} ({how})")
    print(f"outputs  {r.files} files, {human_size(r.size)}")
    for path, size in r.listing:
        print(f"  {path}  ({human_size(size)})")
    if r.files > len(r.listing):
        print(f"  ... and {r.files - len(r.listing)} more (qwex show {r.key[7:19]})")
