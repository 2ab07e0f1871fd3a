"""Compiling a layer stack into one POSIX sh script (spec/drivers.md, "The compiled script").

A stack is at most one layer of each role, outermost first::

    [transport: ssh] [scheduler: slurm] [wrapper: podman | singularity]

(no transport layer means this machine; no scheduler means a detached session). The
compiled script is three templates nested: ``submit`` makes the job dir, writes ``job.sh``
(the ``job`` template, with the wrapper's command inside) and runs the scheduler's
template; for ssh, the ``ssh`` template shows how the whole is sent. Everything a job
receives (argv, environment) is quoted by the template engine, so it arrives exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from .digest import hash_bytes
from .errors import PermanentDriverError
from .layers import Layer, LocalLayer, PodmanLayer, SingularityLayer, SlurmLayer, SshLayer
from .script import render

__all__ = ["CONTAINER_PATH", "Compiled", "JobPaths", "Stack", "compile_job", "mask_env", "split_stack"]

#: The PATH a job gets inside a container when its derivation does not set one.
CONTAINER_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECRET_WORDS: Final = ("TOKEN", "TOK", "SECRET", "PASS", "PWD", "KEY", "CRED", "AUTH", "PRIVATE", "SESSION")


class Stack(NamedTuple):
    transport: SshLayer | None
    scheduler: SlurmLayer | None
    wrapper: PodmanLayer | SingularityLayer | None

    def describe(self) -> str:
        parts = [
            f"ssh({self.transport.host})" if self.transport else "local",
            "slurm" if self.scheduler else "none",
        ]
        if self.wrapper is not None:
            parts.append(f"{_kind(self.wrapper)}({self.wrapper.image})")
        return " > ".join(parts)


class JobPaths(NamedTuple):
    """Execution-side absolute paths of one job."""

    job_dir: str
    workdir: str
    home: str
    tmpdir: str


class Compiled(NamedTuple):
    submit: str  # what runs on the execution host (prints the scheduler id)
    shown: str  # the whole, as ``--dry-run`` prints it (transport included)


def _kind(layer: Layer) -> str:
    return str(type(layer).__struct_config__.tag)


def split_stack(layers: Sequence[Layer]) -> Stack:
    """Sort ``layers`` into roles; PermanentDriverError for an order or a kind the stack
    driver cannot run (roles out of order, a role twice, kueue)."""
    order = {"ssh": 0, "slurm": 1, "podman": 2, "singularity": 2}
    found: dict[int, Layer] = {}
    last = -1
    for layer in layers:
        kind = _kind(layer)
        if isinstance(layer, LocalLayer):
            continue
        if kind not in order:
            raise PermanentDriverError(
                f"layer {kind!r} cannot be composed with ssh, slurm and container layers"
            )
        role = order[kind]
        if role in found:
            role_name = ("transport", "scheduler", "container")[role]
            raise PermanentDriverError(f"two {role_name} layers in one stack")
        if role < last:
            raise PermanentDriverError("layers must be ordered transport (ssh), scheduler (slurm), "
                                       f"container (podman, singularity); {kind!r} is out of place")
        found[role], last = layer, role
    t, s, w = found.get(0), found.get(1), found.get(2)
    assert t is None or isinstance(t, SshLayer)
    assert s is None or isinstance(s, SlurmLayer)
    assert w is None or isinstance(w, PodmanLayer | SingularityLayer)
    return Stack(t, s, w)


def is_secret(name: str) -> bool:
    """Whether an environment variable's value is masked in shown scripts."""
    upper = name.upper()
    return not upper.startswith("QWEX_") and any(w in upper for w in _SECRET_WORDS)


def mask_env(env: Mapping[str, str], passed: Sequence[str]) -> dict[str, str]:
    """``env`` with the values of passed-through and secret-looking variables masked."""
    return {k: ("***" if k in passed or is_secret(k) else v) for k, v in env.items()}


def _eof(text: str) -> str:
    """A heredoc delimiter that cannot occur in ``text`` (it names the text's digest)."""
    return "QWEX_EOF_" + hash_bytes(text.encode()).split(":")[1][:24]


def compile_job(
    *,
    run_id: str,
    key: str,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    stack: Stack,
    paths: JobPaths,
    project_root: str | None,
    scheduler_ctx: Mapping[str, Any],
    stage: str | None = None,
    ingest: str | None = None,
    image: str | None = None,
    ssh_args: Sequence[str] = (),
) -> Compiled:
    """Render the stack's templates into the submission script.

    ``env`` is the job's complete environment, except that when it has no ``PATH`` the job
    gets the execution host's ``$PATH`` (no container) or :data:`CONTAINER_PATH`.
    ``stage``/``ingest`` are shell commands (already quoted) run before and after the
    command on the execution side (ssh); ``scheduler_ctx`` is extra context for the
    scheduler template (``placement`` for slurm)."""
    base = {"run_id": run_id, "key": key, "name": name, **paths._asdict()}
    words = [f"{k}={v}" for k, v in env.items()]
    path_word = "" if "PATH" in env else ('"PATH=$PATH" ' if stack.wrapper is None else "")
    if "PATH" not in env and stack.wrapper is not None:
        words.insert(0, f"PATH={CONTAINER_PATH}")
    if isinstance(stack.wrapper, SingularityLayer) and "PYTHONNOUSERSITE" not in env:
        words.append("PYTHONNOUSERSITE=1")  # the host's ~/.local must not leak into the image's Python
    if stack.wrapper is not None:
        for p in paths:
            if ":" in p or "," in p:  # -v and --bind split on them
                raise PermanentDriverError(f"a container cannot mount {p!r}: the path has ':' or ','; "
                                           "choose a runner root (or store) without them")
    if argv and "=" in argv[0]:  # env would take it for an assignment: exec it through sh
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]
    inner = ["env", "-i", "--", *words, *argv]
    if stack.wrapper is not None:
        # The layer's own reference (digest-pinned; its id is in the key), not env.image's id.
        ctx = {**base, "layer": stack.wrapper, "image": stack.wrapper.image, "command": inner}
        run = render(_kind(stack.wrapper), ctx, project_root).strip()
        env_note = "set inside the container"
    else:
        from .script import _shjoin

        run = "env -i -- " + path_word + _shjoin(inner[3:])
        env_note = "PATH is the execution host's" if path_word else "PATH set by the derivation"
    job_ctx = {**base, "stage": stage, "ingest": ingest, "run": run, "env_note": env_note}
    job = render("job", job_ctx, project_root)
    sched_kind = "slurm" if stack.scheduler is not None else "none"
    scheduler = render(sched_kind, {**base, "layer": stack.scheduler, **scheduler_ctx}, project_root)
    submit = render("submit", {**base, "stack": stack.describe(), "job": job, "eof": _eof(job),
                               "scheduler": scheduler}, project_root)
    if stack.transport is None:
        return Compiled(submit, submit)
    t = stack.transport
    target = f"{t.user + '@' if t.user else ''}{t.host}{':' + str(t.port) if t.port else ''}"
    default_args = [*(["-l", t.user] if t.user else []), *(["-p", str(t.port)] if t.port else []), t.host]
    shown = render("ssh", {**base, "layer": t, "target": target, "ssh_args": list(ssh_args) or default_args,
                           "inner": submit, "eof": _eof(submit)}, project_root)
    return Compiled(submit, shown)


def local_paths(workdir: str) -> JobPaths:
    """Paths of a job on this machine whose work dir the client made (a RunDir)."""
    rd = os.path.dirname(workdir)
    return JobPaths(os.path.join(rd, "job"), workdir, os.path.join(rd, "home"), os.path.join(rd, "tmp"))
