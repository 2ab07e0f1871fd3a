"""Servers and peer tools for the remote benchmark (``remote.py``): SeaweedFS started on free
loopback ports, a TCP proxy that counts connections, and s5cmd. Stdlib only."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import CommandFailed, _pythons_of, run

HOST = "127.0.0.1"
#: SeaweedFS accepts any key; these are set in the commands' environment only.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}

# --------------------------------------------------------------------------
# servers: SeaweedFS, and a proxy that counts connections
# --------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nobody listens on (bound, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Seaweed:
    """``weed mini`` on free loopback ports, its data under ``root``; ``close()`` stops it."""

    def __init__(self, weed: str, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        p = free_ports(11)
        self.port = p[0]
        self.endpoint = f"http://{HOST}:{p[0]}"
        args = [
            weed, "mini", f"-dir={root / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
            f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}",
            f"-filer.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            f"-metricsPort={p[10]}", f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.localSocket={root / 's3.sock'}",
        ]  # fmt: skip
        self.log = root / "weed.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root)
        try:
            self._wait()
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float = 60.0) -> None:
        """The S3 port opens before the filer is ready: wait for a 200 to ListBuckets."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CommandFailed(
                    f"weed exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise CommandFailed(f"SeaweedFS not ready after {timeout:.0f} s; log: {self.log}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class CountingProxy:
    """A TCP forwarder ``HOST:port`` -> ``HOST:upstream`` that records every connection it accepts."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self._accepted: list[int] = []  # client ports, in accept order; only the server thread appends
        self._sentinels: set[int] = set()
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.endpoint = f"http://{HOST}:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted.append(int(addr[1]))
            conn.settimeout(None)
            try:
                up = socket.create_connection((HOST, self.upstream))
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def connections(self) -> int:
        """Connections made so far. Exact: a sentinel connection of ours, accepted after any
        still queued before it, is waited for (and not counted)."""
        with socket.create_connection((HOST, self.port)) as s:
            me = int(s.getsockname()[1])
            self._sentinels.add(me)
            deadline = time.monotonic() + 30
            while me not in self._accepted:
                if time.monotonic() > deadline:
                    raise CommandFailed("the counting proxy stopped accepting connections")
                time.sleep(0.01)
        return sum(1 for p in self._accepted if p not in self._sentinels)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        src.close()
        dst.close()


# --------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------


def find_exe(explicit: str | None, name: str, beside: list[str] | None) -> str | None:
    """``explicit``, else ``name`` on PATH, else ``name`` in the directory of ``beside[0]``;
    None if that does not exist."""
    if explicit:
        path = os.path.abspath(explicit) if "/" in explicit else shutil.which(explicit)
        return path if path and os.access(path, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    if beside:
        cand = Path(shutil.which(beside[0]) or beside[0]).parent / name
        if cand.exists():
            return str(cand)
    return None


def has_dvc_s3(dvc: list[str]) -> bool:
    return any(
        subprocess.run([py, "-c", "import dvc_s3"], capture_output=True).returncode == 0
        for py in _pythons_of(dvc)
    )


class S5:
    """s5cmd against one endpoint (bucket admin for the setup, and the raw-bound peer)."""

    def __init__(self, exe: str, endpoint: str, env: dict[str, str]):
        self.exe, self.endpoint = exe, endpoint
        self.base = [exe, "--log", "error", "--endpoint-url", endpoint]  # quiet: no line per file
        self.env = env
        self._n = 0

    def new_bucket(self, tag: str) -> str:
        self._n += 1
        bucket = f"bench-{tag}-{self._n:04d}"
        run([*self.base, "mb", f"s3://{bucket}"], env=self.env)
        return bucket

    def drop(self, bucket: str) -> None:
        run([*self.base, "rb", f"s3://{bucket}"], env=self.env)  # SeaweedFS drops a non-empty bucket

    def count(self, url: str) -> int:
        # not with --log error, which silences ls's listing too
        argv = [self.exe, "--endpoint-url", self.endpoint, "ls", url.rstrip("/") + "/*"]
        out = run(argv, env=self.env).stdout
        return len(out.splitlines())
