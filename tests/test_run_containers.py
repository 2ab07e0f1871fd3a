"""Container layers end to end, through the real ``qwex`` command: podman alone (this
machine), slurm → podman (a real SLURM), ssh → podman (a real sshd), singularity through
the Apptainer TEST STAND-IN (tests/standins/apptainer: records its argv, runs the command on
the host; the test's name says ``standin``), cancel of a detached podman job, and an
ejected podman template in the key.

The image has no Python (debootstrap minbase), so the job is ``sh``: it writes its argv
(NUL-separated), its environment (``/proc/$$/environ``: what exec gave ``sh``, before sh
adds PWD), its cwd and ``/run/.containerenv`` (which podman puts in every container, and this
host lacks) into ``out/``. Every podman layer's ``executable`` is the fixture's ``wrapper``:
a ``podman`` with the test configuration built in, so no environment has to cross sshd or
SLURM.

Two tests pin bugs found here and fixed: a cancelled container whose job ignores SIGTERM
is removed too, and a relative SIF path reaches apptainer as the file the key hashed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, GitRepo, Qwex, drv_text, parse_build, wait_for
from podman_image import PodmanImage
from servers import SshServer

from qwexstore.compose import CONTAINER_PATH

STANDIN = Path(__file__).parent / "standins" / "apptainer"
PROBE = ('mkdir -p out && printf "%s\\0" "$@" > out/argv && cat /proc/$$/environ > out/env && pwd > out/pwd'
         ' && { cat /run/.containerenv > out/containerenv 2>/dev/null || : > out/no-container; }')
VARS = {"GREETING": "it's \"$(touch out/pwned-var)\" `x`\nnext line", "EMPTY": "", "UNI": "héllo ✓"}


def hostile(tmp_path: Path) -> list[str]:
    """argv values that break naive quoting; run as shell code, they touch ``tmp_path/pwned*``
    (on the host) or change the argv the job sees (in a container)."""
    canary = tmp_path / "pwned"
    return [
        "'", '"', "it's \"quoted\"", f"$(touch {canary}1)", f"`touch {canary}2`", f"; touch {canary}3 #",
        f"a\n$(touch {canary}4)\nb", "  two  spaces ", "\ttab", "-v", "--rm", "", "héllo ✓ 日本",
        "$HOME", "${PATH}", "\\", "*", "~", "{a,b}", "%s%n", "!", "a|b&c>d<e",
    ]  # fmt: skip


def layer_toml(kind: str, **fields: Any) -> str:
    lines = ["[[layers]]", f"kind = {json.dumps(kind)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def probe_drv(values: list[str], layers: str = "") -> str:
    """The probe job. Its source is README.md only: the .drv and .qwex/ files are committed
    too, and would otherwise be source, so every edit of them would change the key."""
    return drv_text(["sh", "-c", PROBE, "sh", *values], name="probe", vars=VARS, include=["README.md"],
                    extra=layers)


def podman(img: PodmanImage, **placement: Any) -> str:
    return layer_toml("podman", image=img.image, executable=img.wrapper, **placement)


def commit(git_repo: GitRepo, drv: str, config: str = "") -> Path:
    files = {"probe.drv": drv}
    if config:
        files[".qwex/config.toml"] = config
    git_repo.commit(files=files)
    return git_repo.path / "probe.drv"


def check_outputs(qwex: Qwex, tmp_path: Path, built: Any, values: list[str], *,
                  container: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stored outputs (checked out) show the exact argv, the exact environment and the
    work dir as cwd; no hostile value ran anywhere. Returns the job's environment."""
    co = tmp_path / f"co-{built.run_id}"
    qwex.ok("checkout", built.key, str(co))
    out = co / "out"
    argv = (out / "argv").read_bytes().split(b"\0")
    assert argv[-1] == b"" and [a.decode() for a in argv[:-1]] == values
    pairs = [p.decode().partition("=") for p in (out / "env").read_bytes().split(b"\0") if p]
    env = {k: v for k, _, v in pairs}
    assert len(env) == len(pairs)
    extra = extra or {}
    want = {"PATH", "HOME", "TMPDIR", "LANG", *VARS, "QWEX_RUN_ID", "QWEX_RUN_DIR", "QWEX_KEY", *extra}
    assert set(env) == want
    assert {k: env[k] for k in (*VARS, *extra)} == {**VARS, **extra}
    assert env["QWEX_RUN_ID"] == built.run_id and env["QWEX_KEY"] == built.key and env["LANG"] == "C.UTF-8"
    work = env["QWEX_RUN_DIR"]
    assert (out / "pwd").read_text() == work + "\n"
    assert {env["HOME"], env["TMPDIR"]} == {os.path.join(os.path.dirname(work), d) for d in ("home", "tmp")}
    if container:
        assert env["PATH"] == CONTAINER_PATH
        assert (out / "containerenv").exists() and not (out / "no-container").exists()
    else:
        assert (out / "no-container").exists()
    assert not list(tmp_path.rglob("pwned*")), "a hostile value ran as shell code"
    return env


# -- podman alone -------------------------------------------------------------------------------
def test_podman_local_build_runs_in_the_container_and_keys_identity_only(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage, tmp_path: Path) -> None:
    values = hostile(tmp_path)
    drv = commit(git_repo, probe_drv(values, podman(podman_image)))
    cp = qwex.ok("build", str(drv), cwd=git_repo.path)
    built = parse_build(cp.stdout)
    assert not built.cached
    check_outputs(qwex, tmp_path, built, values)
    events = podman_image.run("events", "--stream=false", "--filter", f"container=qwex-{built.run_id}",
                              "--format", "{{.Status}} {{.Image}}").stdout.splitlines()
    assert {e.split()[0] for e in events} >= {"create", "start", "remove"}  # ran, then --rm
    assert {e.split()[1] for e in events} == {podman_image.image}  # by digest, never the tag
    assert qwex.build(drv, cwd=git_repo.path).cached
    # Placement (gpus, runtime, executable) is not in the key; the container layer is.
    commit(git_repo, probe_drv(values, podman(podman_image, gpus="all", runtime="runc")))
    assert qwex.hash(drv, cwd=git_repo.path) == built.key
    commit(git_repo, probe_drv(values))
    assert qwex.hash(drv, cwd=git_repo.path) != built.key
    commit(git_repo, probe_drv(values, podman(podman_image, args=["--network=none"])))
    assert qwex.hash(drv, cwd=git_repo.path) != built.key


# -- slurm → podman ----------------------------------------------------------------------------
def test_slurm_podman_build_goes_through_sbatch_into_the_container(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage, slurm: Any, tmp_path: Path) -> None:
    qwex.env.update(slurm.env)
    values = hostile(tmp_path)
    runner = '[runners.cluster]\nlayers = [{ kind = "slurm", partition = "debug" }]\n'
    drv = commit(git_repo, probe_drv(values, podman(podman_image)), runner)
    local_key = qwex.hash(drv, cwd=git_repo.path)
    dry = qwex.ok("build", str(drv), "--runner", "cluster", "--dry-run", cwd=git_repo.path).stdout
    assert "sbatch --parsable" in dry and podman_image.wrapper in dry
    built = qwex.build(drv, "--runner", "cluster", cwd=git_repo.path)
    assert built.key == local_key and not built.cached
    check_outputs(qwex, tmp_path, built, values)
    def accounted() -> list[str]:  # the jobcomp file, written once the job has left SLURM
        out = slurm.run("sacct", "-c", "-n", "-P", "-o", "JobName,State", check=False).stdout.split()
        return [r for r in out if r.startswith(f"qwex-{built.run_id}|")]

    wait_for(lambda: accounted() != [], 30, "the job's accounting record")
    assert accounted() == [f"qwex-{built.run_id}|COMPLETED"]


# -- ssh → podman ------------------------------------------------------------------------------
def test_ssh_podman_build_runs_remotely_in_the_container(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage, sshd: SshServer, tmp_path: Path) -> None:
    qwex.env["HOME"] = sshd.env["HOME"]  # ~/.ssh/config with the alias, known_hosts, key
    root = tmp_path / "remote-root"
    values = hostile(tmp_path)
    ssh = f'{{ kind = "ssh", host = "{sshd.alias}", root = "{root}", qwex = "{os.path.join(BIN, "qwex")}" }}'
    drv = commit(git_repo, probe_drv(values, podman(podman_image)), f"[runners.remote]\nlayers = [{ssh}]\n")
    local_key = qwex.hash(drv, cwd=git_repo.path)
    built = qwex.build(drv, "--runner", "remote", cwd=git_repo.path)
    assert built.key == local_key and not built.cached
    env = check_outputs(qwex, tmp_path, built, values)
    assert env["QWEX_RUN_DIR"] == str(root / "jobs" / built.run_id / "work")  # it ran on the "remote"
    assert not (root / "jobs" / built.run_id).exists()  # recorded: the remote job dir is cleaned up


# -- singularity (Apptainer TEST STAND-IN) ---------------------------------------------------------
@pytest.mark.parametrize(("nv", "sif"), [(False, False), (True, True)])
def test_singularity_standin_build_renders_exec_containall_and_lands_outputs(
        qwex: Qwex, git_repo: GitRepo, tmp_path: Path, nv: bool, sif: bool) -> None:
    log = tmp_path / "apptainer.jsonl"
    qwex.env["QWEX_APPTAINER_STANDIN_LOG"] = str(log)
    image = "docker://localhost/qwex-test@sha256:" + "c" * 64
    if sif:  # a local image file, pinned by its content hash
        image = str(tmp_path / "images" / "probe.sif")
        os.makedirs(os.path.dirname(image))
        Path(image).write_bytes(b"not really a SIF: the stand-in does not read it")
    values = hostile(tmp_path)
    layer = layer_toml("singularity", image=image, executable=str(STANDIN))
    placement = ", nv = true" if nv else ""
    runner = (f'[runners.hpc]\nlayers = [{{ kind = "singularity", image = "{image}", '
              f'executable = "{STANDIN}"{placement} }}]\n')
    drv = commit(git_repo, probe_drv(values, layer), runner)
    built = qwex.build(drv, "--runner", "hpc", cwd=git_repo.path)
    # The stand-in runs the command on the host: no container, so no podman file and the PATH
    # qwex sets for a container image.
    co_env = check_outputs(qwex, tmp_path, built, values, container=False,
                           extra={"PYTHONNOUSERSITE": "1"})  # the host's ~/.local kept out
    assert co_env["PATH"] == CONTAINER_PATH
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    w = co_env["QWEX_RUN_DIR"]
    head = ["exec", "--containall", "--cleanenv", "--env", "PYTHONNOUSERSITE=1", "--pwd", w, "--bind", w,
            "--bind", co_env["HOME"], "--bind", co_env["TMPDIR"], *(["--nv"] if nv else []), image]
    assert argv[: len(head)] == head
    inner = argv[len(head):]
    assert inner[:3] == ["env", "-i", "--"] and inner[-len(values) - 4:] == ["sh", "-c", PROBE, "sh", *values]
    assert dict(w.split("=", 1) for w in inner[3:-len(values) - 4]) == co_env  # env -i: all there is
    # nv is placement: the same key with or without it; a SIF's bytes are identity.
    assert qwex.hash(drv, cwd=git_repo.path) == qwex.hash(drv, "--runner", "hpc", cwd=git_repo.path)
    if sif:
        Path(image).write_bytes(b"another image")
        assert qwex.hash(drv, cwd=git_repo.path) != built.key


def test_singularity_standin_relative_sif_path_reaches_apptainer_as_the_hashed_file(
        qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    log = tmp_path / "apptainer.jsonl"
    qwex.env["QWEX_APPTAINER_STANDIN_LOG"] = str(log)
    (git_repo.path / "images").mkdir()
    sif = git_repo.path / "images" / "probe.sif"
    sif.write_bytes(b"not really a SIF")
    layer = layer_toml("singularity", image="images/probe.sif", executable=str(STANDIN))
    drv = commit(git_repo, probe_drv(["x"], layer))
    qwex.build(drv, cwd=git_repo.path)
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    given = argv[argv.index("env") - 1]
    assert os.path.isabs(given) and os.path.samefile(given, sif), given


# -- cancel ----------------------------------------------------------------------------------------
def _cancel_detached(qwex: Qwex, git_repo: GitRepo, img: PodmanImage, command: list[str]) -> str:
    """Detach a podman job, wait until its container runs, ``qwex cancel`` it; the container name."""
    drv = commit(git_repo, drv_text(command, name="sleeper", include=["README.md"], extra=podman(img)))
    run_id = qwex.ok("build", str(drv), "--detach", cwd=git_repo.path).stdout.strip()
    name = f"qwex-{run_id}"

    def running() -> bool:
        ps = img.run("ps", "--filter", f"name=^{name}$", "--format", "{{.Names}}")
        return ps.stdout.split() == [name]

    wait_for(running, 60, "the container to run")
    qwex.ok("cancel", run_id)
    assert qwex.json("show", run_id)["run"]["status"] == "cancelled"
    assert qwex.json("runs") == []
    return name


def _remove(img: PodmanImage, name: str) -> None:
    img.run("rm", "-f", "-t", "0", name, check=False)  # leave no container behind, pass or fail


def test_cancel_detached_podman_job_removes_the_container(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage) -> None:
    name = _cancel_detached(qwex, git_repo, podman_image, ["sleep", "300"])
    left = podman_image.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    _remove(podman_image, name)
    assert name not in left


def test_cancel_removes_a_container_whose_job_ignores_sigterm(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage) -> None:
    name = _cancel_detached(qwex, git_repo, podman_image,
                            ["sh", "-c", 'trap "" TERM; while :; do sleep 1; done'])
    left = podman_image.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    _remove(podman_image, name)
    assert name not in left


# -- an ejected template is identity ---------------------------------------------------------------
def test_ejected_podman_template_edit_changes_the_key_and_slurm_eject_does_not(
        qwex: Qwex, git_repo: GitRepo, podman_image: PodmanImage) -> None:
    """The source selection is README.md only, so committing .qwex/templates/ changes no
    source: what moves the key is the template's bytes."""

    def key(layers: str) -> str:
        text = drv_text(["sh", "-c", "true"], name="probe", include=["README.md"], extra=layers)
        git_repo.commit(files={"probe.drv": text})
        return qwex.hash(git_repo.path / "probe.drv", cwd=git_repo.path)

    builtin, plain = key(podman(podman_image)), key("")
    qwex.ok("template", "eject", "podman", cwd=git_repo.path)
    own = git_repo.path / ".qwex" / "templates" / "podman.sh.j2"
    original = own.read_text()
    ejected = key(podman(podman_image))
    assert "  --init " in original  # a comment line to edit
    own.write_text(original.replace("  --init ", "  --init (edited) ", 1))
    edited = key(podman(podman_image))
    assert edited not in (builtin, ejected)
    own.write_text(original)
    assert key(podman(podman_image)) == ejected  # the bytes, not the edit history
    qwex.ok("template", "eject", "slurm", cwd=git_repo.path)
    assert (git_repo.path / ".qwex" / "templates" / "slurm.sh.j2").is_file()
    assert key(podman(podman_image)) == ejected  # a scheduler template is placement
    own.write_text(original.replace("  --init ", "  --init (edited) ", 1))
    assert key("") == plain  # no container layer: the podman template is not used
