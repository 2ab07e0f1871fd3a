"""A real, working rootful podman and a Debian test image, for the container tests.

The session fixture :func:`podman_image` returns a :class:`PodmanImage`:

- ``env``: ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF``, the two files this module
  writes. Every ``podman`` call (the test's, or a job's through ssh/SLURM) MUST carry them.
- ``image``: the reference to run, pinned by manifest digest
  (``localhost/qwex-test@sha256:<hex>``), as qwex pins images; ``name`` (the tag),
  ``digest`` (``sha256:<hex>``, the manifest digest) and ``id`` (the image id, 64 hex) too.
  ``podman run --rm IMAGE true`` was checked to work before the fixture returns.
- ``executable``: the absolute path of ``podman``.
- ``wrapper``: an executable named ``podman`` that sets ``env`` and runs the real one: give
  it as the layer's ``executable`` where the environment cannot be passed on (a job run
  through ssh or SLURM); its name keeps ``qwex cancel``'s ``podman rm -f`` working.

Configuration, and why (found on a cgroup-v1 host running as root in a container):

- ``runtime = "runc"``: podman prefers crun, which is not installed (``apt-get install runc``).
- ``default_ulimits = nofile=1024:1024, nproc=4096:4096``: podman's default ``nofile``
  (1048576) is above this sandbox's hard limit, and raising it needs CAP_SYS_RESOURCE,
  so runc fails with "error setting rlimit ... operation not permitted".
- ``cgroup_manager = "cgroupfs"``, ``events_logger = "file"``: there is no systemd/journald.
- ``lock_type = "file"``: locks in our tmp dir, not in the host-wide ``/dev/shm/libpod_lock``
  that another podman (or another test session) would share and reset.
- storage: its own ``graphroot`` in the cache (so the imported image survives sessions),
  with the ``overlay`` driver; if a smoke run fails with overlay (nested containers without
  overlay support), the fixture falls back to ``vfs`` (slower: each container copies the
  rootfs); ``QWEX_TEST_PODMAN_DRIVER=vfs`` picks one driver (both verified here).
- ``runroot`` and ``tmp_dir`` live in ``/run/qwex-tests/podman-<key of graphroot>`` (where
  rootful podman keeps its own), with both config files: a fixed path, because the libpod
  database in the graphroot records them and podman refuses a database whose recorded
  paths differ (pytest's temp dirs are pruned by concurrent sessions, too); on tmpfs, so a
  reboot is detected as podman expects. ``static_dir`` is left at its default:
  set elsewhere, podman 4.3's exit-cleanup process reads another database and every
  ``podman run`` then waits out the 20 s conmon timeout.
- No registry is reachable: the image is made once with ``debootstrap --variant=minbase
  bookworm`` (about 30 s, needs the Debian mirror, override with
  ``QWEX_TEST_DEBIAN_MIRROR``) and kept as ``rootfs.tar`` under
  ``${XDG_CACHE_HOME:-~/.cache}/qwex-tests/podman-<VERSION>/``; it is re-imported
  (``tar ... | podman import``) whenever the image is missing from the storage. An
  ``flock`` on that directory serializes concurrent sessions.

Rootful only: the fixture skips (naming the fix) without root, or without podman, runc or
debootstrap (``apt-get install podman runc debootstrap``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PodmanImage", "podman_image"]

#: Bump to rebuild the cached rootfs and storage (e.g. a new Debian suite).
VERSION = "bookworm-minbase-1"
NAME = f"localhost/qwex-test:{VERSION}"
APT = "apt-get install podman runc debootstrap"


@dataclass(frozen=True)
class PodmanImage:
    env: dict[str, str]
    image: str  # localhost/qwex-test@sha256:<manifest digest>: pinned, what qwex runs
    name: str  # the tag
    digest: str  # sha256:<hex> of the manifest
    id: str  # the image id (64 hex)
    executable: str
    wrapper: str  # an executable ``podman`` with ``env`` built in, for jobs started elsewhere

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` with this configuration; AssertionError naming stderr if it fails."""
        return _podman(self.executable, self.env, *args, check=check, timeout=timeout)


def _podman(exe: str, env: dict[str, str], *args: str, check: bool = True, timeout: float = 300,
            stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([exe, *args], env={**os.environ, **env}, capture_output=True, text=True,
                        timeout=timeout, stdin=stdin, check=False)
    if check and cp.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwex-tests" / f"podman-{VERSION}"


def _write_conf(cache: Path, driver: str) -> dict[str, str]:
    """Write the two config files into the volatile dir; return the env naming them.
    Caller holds the lock."""
    graphroot = cache / f"storage-{driver}"
    key = hashlib.sha256(str(graphroot).encode()).hexdigest()[:12]
    volatile = Path("/run/qwex-tests") / f"podman-{key}"
    for d in ("run", "tmp"):
        (volatile / d).mkdir(parents=True, exist_ok=True)
    containers = volatile / "containers.conf"
    text = (
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'lock_type = "file"\n'
        f"tmp_dir = {json.dumps(str(volatile / 'tmp'))}\n"
    )
    _write_atomic(containers, text)
    storage = volatile / "storage.conf"
    text = (
        "[storage]\n"
        f"driver = {json.dumps(driver)}\n"
        f"graphroot = {json.dumps(str(graphroot))}\n"
        f"runroot = {json.dumps(str(volatile / 'run'))}\n"
    )
    _write_atomic(storage, text)
    return {"CONTAINERS_CONF": str(containers), "CONTAINERS_STORAGE_CONF": str(storage)}


def _write_wrapper(exe: str, env: dict[str, str]) -> str:
    """``<volatile>/bin/podman``: runs ``exe`` with ``env`` set, whatever the caller's environment."""
    path = Path(env["CONTAINERS_CONF"]).parent / "bin" / "podman"
    path.parent.mkdir(exist_ok=True)
    sets = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    _write_atomic(path, f"#!/bin/sh\n# qwex tests: podman with its test configuration\n"
                        f"{sets} exec {shlex.quote(exe)} \"$@\"\n")
    return str(path)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by rename, so a podman started by a concurrent session never reads half a file."""
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755 if text.startswith("#!") else 0o644)
    tmp.replace(path)


def _rootfs_tar(cache: Path) -> Path:
    """The cached minbase rootfs tarball, made with debootstrap when missing (caller holds the lock)."""
    tar = cache / "rootfs.tar"
    if tar.is_file():
        return tar
    mirror = os.environ.get("QWEX_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    try:
        cp = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(work / "rootfs"), mirror],
                            capture_output=True, text=True, timeout=900, check=False)
        if cp.returncode != 0:  # not the storage driver's fault: fail now, try no other driver
            log = (cp.stdout + cp.stderr)[-2000:]
            pytest.fail(f"debootstrap failed (mirror {mirror}): {log}", pytrace=False)
        partial = cache / "rootfs.tar.partial"
        subprocess.run(["tar", "-C", str(work / "rootfs"), "-cf", str(partial), "."], check=True)
        partial.rename(tar)  # atomic: a crash leaves no half tarball under the final name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


def _ensure_image(exe: str, env: dict[str, str], cache: Path) -> None:
    """Import the cached rootfs as NAME unless the storage has it (caller holds the lock)."""
    if _podman(exe, env, "image", "exists", NAME, check=False).returncode == 0:
        return
    with _rootfs_tar(cache).open("rb") as f:
        cp = subprocess.run([exe, "import", "-", NAME], env={**os.environ, **env}, stdin=f,
                            capture_output=True, text=True, timeout=600, check=False)
    if cp.returncode != 0:
        raise AssertionError(f"podman import failed: {cp.stderr.strip()}")


def _setup() -> PodmanImage:
    exe = shutil.which("podman")
    if exe is None or shutil.which("runc") is None or shutil.which("debootstrap") is None:
        pytest.skip(f"podman, runc or debootstrap missing: {APT}")
    if os.geteuid() != 0:
        pytest.skip("the podman fixture runs rootful podman: run the tests as root (as CI does)")
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    errors = []
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        drivers = os.environ.get("QWEX_TEST_PODMAN_DRIVER", "overlay vfs").split()
        for driver in drivers:
            env = _write_conf(cache, driver)
            try:
                _ensure_image(exe, env, cache)
                fmt = "{{.Digest}} {{.Id}}"
                digest, image_id = _podman(exe, env, "image", "inspect", "--format", fmt, NAME).stdout.split()
                ref = f"{NAME.rsplit(':', 1)[0]}@{digest}"
                _podman(exe, env, "run", "--rm", "--network=none", ref, "true")  # the smoke test
            except AssertionError as e:  # e.g. no overlay in a nested container: try the next driver
                errors.append(f"{driver}: {e}")
                continue
            return PodmanImage(env, ref, NAME, digest, image_id, exe, _write_wrapper(exe, env))
    raise AssertionError("podman run fails with every storage driver: " + "; ".join(errors))


@pytest.fixture(scope="session")
def podman_image() -> PodmanImage:
    return _setup()
