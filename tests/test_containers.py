"""The container wrapper templates (podman.sh.j2, singularity.sh.j2), run for real.

podman: the rendered command runs under a real rootful podman with a Debian image made by
debootstrap (tests/podman_image.py). Apptainer cannot be installed here: its tests run the
rendered command through tests/standins/apptainer, a test double that records its argv
and runs the inner command on the host (their names say ``standin``).

Hostile values (quotes, ``$()``, backticks, newlines, spaces, a leading dash, an empty
string, non-ASCII) go through each template and must arrive in the job as the exact argv,
with no side effect; the job's environment is exactly the ``env -i`` list; its cwd is the
work dir.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from podman_image import PodmanImage

from qwexstore.layers import PodmanLayer, SingularityLayer
from qwexstore.script import render

STANDINS = Path(__file__).parent / "standins"
#: The job prints its argv NUL-separated into ./out: exact, even for values with newlines.
PRINT_ARGV = ["sh", "-c", 'printf "%s\\0" "$@" > out', "sh"]


def hostile(canary: Path) -> list[str]:
    """Values that break naive quoting; running any of them as shell code touches ``canary*``."""
    return [
        "'", '"', "it's \"quoted\"", f"$(touch {canary}1)", f"`touch {canary}2`",
        f"; touch {canary}3 #", f"a\n$(touch {canary}4)\nb", "line1\nline2\n", "  two  spaces ",
        "\ttab", "-v", "--rm", "", "héllo ✓ 日本", "$HOME", "${PATH}", "\\", "\\n", "*", "~",
        "{a,b}", "%s%n", "!", "a|b&c>d<e",
    ]  # fmt: skip


def paths(tmp_path: Path) -> dict[str, str]:
    """Job paths with a space and a quote in them (never a ':', see the templates)."""
    run = tmp_path / "it's a run"
    out = {"job_dir": run / "job", "workdir": run / "work", "home": run / "home", "tmpdir": run / "tmp"}
    for p in out.values():
        p.mkdir(parents=True)
    return {k: str(v) for k, v in out.items()}


def ctx(tmp_path: Path, layer: Any, image: str, command: list[str],
        run_id: str | None = None) -> dict[str, Any]:
    return {
        "run_id": run_id or uuid.uuid4().hex[:12], "key": "blake3:" + "0" * 64, "name": "probe",
        **paths(tmp_path), "layer": layer, "image": image, "command": command,
    }  # fmt: skip


def sh(script: str, env: dict[str, str], cwd: Path,
       timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` as job.sh does: ``exec <wrapper command>``, from another directory."""
    return subprocess.run(["sh", "-c", "exec " + script], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def assert_exact_argv(workdir: str, values: list[str], canary: Path) -> None:
    got = (Path(workdir) / "out").read_bytes().split(b"\0")
    assert got[-1] == b""
    assert [v.decode() for v in got[:-1]] == values
    touched = sorted(p.name for p in canary.parent.rglob(canary.name + "*"))
    assert touched == [], f"a hostile value ran as shell code: {touched}"


# -- podman (real) ---------------------------------------------------------------------------
def podman_layer(img: PodmanImage, **kw: Any) -> PodmanLayer:
    return PodmanLayer(image=img.image, executable=img.executable, **kw)


def test_podman_hostile_argv_arrives_exactly(podman_image: PodmanImage, tmp_path: Path) -> None:
    c = ctx(tmp_path, podman_layer(podman_image), podman_image.image, [])
    canary = Path(c["workdir"]) / "pwned"  # mounted: a value run inside OR outside would show
    values = hostile(canary)
    c["command"] = ["env", "-i", "--", "A=1", *PRINT_ARGV, *values]
    cp = sh(render("podman", c), podman_image.env, tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    assert_exact_argv(c["workdir"], values, canary)


def test_podman_env_cwd_exit_and_image_by_digest(podman_image: PodmanImage, tmp_path: Path) -> None:
    c = ctx(tmp_path, podman_layer(podman_image), podman_image.image, ["env", "-i", "--", "A=1", "env"])
    script = render("podman", c)
    assert podman_image.image in shlex.split(script)
    assert podman_image.name not in script  # never the mutable tag
    cp = sh(script, podman_image.env, tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    assert cp.stdout == b"A=1\n"  # nothing of podman's, the image's or the host's environment
    cwd = {**c, "command": ["env", "-i", "--", "sh", "-c", "/bin/pwd > cwd.txt; exit 7"],
           "run_id": c["run_id"] + "-2"}
    cp = sh(render("podman", cwd), podman_image.env, tmp_path)
    assert cp.returncode == 7, cp.stderr.decode()  # the command's status is the wrapper's
    assert (Path(c["workdir"]) / "cwd.txt").read_text() == c["workdir"] + "\n"
    events = podman_image.run("events", "--stream=false", "--filter", f"container=qwex-{c['run_id']}",
                              "--format", "{{.Status}} {{.Image}}").stdout.split("\n")
    assert {e.split()[0] for e in events if e} >= {"create", "start", "remove"}  # ran, then --rm
    assert {e.split()[1] for e in events if e} == {podman_image.image}  # created by digest


def test_podman_identity_args_and_runtime(podman_image: PodmanImage, tmp_path: Path) -> None:
    layer = podman_layer(podman_image, args=["--network=none", "--hostname=qwex-probe"], runtime="runc")
    c = ctx(tmp_path, layer, podman_image.image,
            ["env", "-i", "--", "sh", "-c", "cat /proc/net/dev > net.txt; cat /etc/hostname > host.txt"])
    words = shlex.split(render("podman", c))
    assert "--network=host" not in words  # the args chose the network
    assert words[words.index("--runtime") + 1] == "runc"
    assert words.index("--hostname=qwex-probe") < words.index(podman_image.image)
    cp = sh(render("podman", c), podman_image.env, tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    work = Path(c["workdir"])
    ifaces = {ln.split(":")[0].strip() for ln in (work / "net.txt").read_text().splitlines()[2:]}
    assert ifaces == {"lo"}
    assert (work / "host.txt").read_text().strip() == "qwex-probe"


def test_podman_gpus_is_rendered_only_when_placed(tmp_path: Path) -> None:
    base = ctx(tmp_path, PodmanLayer(image="x"), "r@sha256:" + "a" * 64, ["true"])
    assert "--gpus" not in shlex.split(render("podman", base))
    words = shlex.split(render("podman", {**base, "layer": PodmanLayer(image="x", gpus="device=0,1")}))
    assert words[words.index("--gpus") + 1] == "device=0,1"
    assert words[0] == "podman" and words[words.index("run") + 1] == "--rm"
    docker = shlex.split(render("podman", {**base, "layer": PodmanLayer(image="x", executable="docker")}))
    assert docker[0] == "docker"


def test_podman_sigterm_stops_the_container(podman_image: PodmanImage, tmp_path: Path) -> None:
    """A scheduler's SIGTERM (scancel, a time limit) reaches the job through --init."""
    c = ctx(tmp_path, podman_layer(podman_image), podman_image.image, ["env", "-i", "--", "sleep", "300"])
    name = f"qwex-{c['run_id']}"
    proc = subprocess.Popen(["sh", "-c", "exec " + render("podman", c)],
                            env={**os.environ, **podman_image.env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: podman_image.run("ps", "-q", "--filter", f"name={name}").stdout.strip() != "", 60,
                 "the container to start")
        proc.terminate()
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert podman_image.run("container", "exists", name, check=False).returncode == 1  # --rm


# -- apptainer (test stand-in) -------------------------------------------------------------
def standin_env(log: Path) -> dict[str, str]:
    return {"PATH": f"{STANDINS}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "QWEX_APPTAINER_STANDIN_LOG": str(log), "LEAK_ME": "host"}


def recorded(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("nv", [False, True])
def test_singularity_standin_hostile_argv_and_exact_command(tmp_path: Path, nv: bool) -> None:
    image = "localhost/qwex-test@sha256:" + "b" * 64
    layer = SingularityLayer(image=image, nv=nv, binds=["/data/set a"])
    c = ctx(tmp_path, layer, image, [])
    canary = Path(c["workdir"]) / "pwned"
    values = hostile(canary)
    command = ["env", "-i", "--", "A=1", *PRINT_ARGV, *values]
    c["command"] = command
    log = tmp_path / "apptainer.jsonl"
    cp = sh(render("singularity", c), standin_env(log), tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    assert_exact_argv(c["workdir"], values, canary)
    w, h, t = c["workdir"], c["home"], c["tmpdir"]
    assert recorded(log) == [[
        "exec", "--containall", "--cleanenv", "--env", "PYTHONNOUSERSITE=1", "--pwd", w,
        "--bind", w, "--bind", h, "--bind", t, "--bind", "/data/set a", *(["--nv"] if nv else []),
        "docker://" + image, *command,
    ]]  # fmt: skip


def test_singularity_standin_env_cwd_exit_and_identity_flags(tmp_path: Path) -> None:
    layer = SingularityLayer(image="/images/x.sif", contain=False, cleanenv=False, args=["--writable-tmpfs"])
    c = ctx(tmp_path, layer, "/images/x.sif", ["env", "-i", "--", "A=1", "env"])
    log = tmp_path / "apptainer.jsonl"
    cp = sh(render("singularity", c), standin_env(log), tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    assert cp.stdout == b"A=1\n"  # not even LEAK_ME, though this layer keeps the host's env
    c["command"] = ["env", "-i", "--", "sh", "-c", "/bin/pwd > cwd.txt; exit 7"]
    cp = sh(render("singularity", c), standin_env(log), tmp_path)
    assert cp.returncode == 7, cp.stderr.decode()
    assert (Path(c["workdir"]) / "cwd.txt").read_text() == c["workdir"] + "\n"
    argv = recorded(log)[0]
    assert "--containall" not in argv and "--cleanenv" not in argv and "--nv" not in argv
    assert argv[argv.index("--writable-tmpfs") + 1] == "/images/x.sif"  # a SIF path stays as is


def test_singularity_executable_is_placement(tmp_path: Path) -> None:
    layer = SingularityLayer(image="x.sif", executable="/opt/sing/bin/singularity")
    c = ctx(tmp_path, layer, "x.sif", ["true"])
    assert shlex.split(render("singularity", c))[:2] == ["/opt/sing/bin/singularity", "exec"]


# -- through the compiled job script ---------------------------------------------------------
def test_compiled_job_runs_hostile_argv_in_podman(podman_image: PodmanImage, tmp_path: Path) -> None:
    """The wrapper inside job.sh (``exec <wrapper>``), as the stack driver compiles it: local
    transport, scheduler none; the marker records the command's exit. The executable is the
    fixture's configured ``podman`` script, as a job started through ssh or SLURM uses it."""
    from qwexstore.compose import JobPaths, Stack, compile_job

    p = paths(tmp_path)
    canary = Path(p["workdir"]) / "pwned"
    values = hostile(canary)
    argv = [*PRINT_ARGV[:2], 'printf "%s\\0" "$@" > out; exit 3', "sh", *values]
    compiled = compile_job(
        run_id=uuid.uuid4().hex[:12], key="blake3:" + "0" * 64, name="probe", argv=argv, env={"A": "1"},
        stack=Stack(None, None, PodmanLayer(image=podman_image.image, executable=podman_image.wrapper)),
        paths=JobPaths(**p), project_root=None,
        scheduler_ctx={}, image=podman_image.image,
    )  # fmt: skip
    assert "CONTAINERS_CONF" not in os.environ
    cp = sh(compiled.submit, {}, tmp_path)
    assert cp.returncode == 0, cp.stderr.decode()
    marker = Path(p["job_dir"]) / "marker.json"
    wait_for(marker.exists, 120, "the job's marker")
    assert json.loads(marker.read_text())["exit"] == 3, (Path(p["job_dir"]) / "stderr").read_text()
    assert_exact_argv(p["workdir"], values, canary)
