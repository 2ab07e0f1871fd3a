"""The ``none`` scheduler: the job runs at once in a session of its own on the execution
host (template ``none.sh.j2``); its id is its process group id."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from qwexstore.errors import PermanentDriverError
from qwexstore.jobs import JobStatus

__all__ = ["NoScheduler"]


class NoScheduler:
    kind = "none"
    template = "none"

    def parse_submit(self, out: bytes) -> str:
        text = out.decode(errors="replace").strip().splitlines()
        if not text or not text[-1].isdigit():
            raise PermanentDriverError(f"the job did not start (no process id in {out[-200:]!r})")
        return text[-1]

    def status_script(self, ids: Sequence[str]) -> str:
        """``ID running`` while any process of the group lives (a zombie not yet reaped
        does not count: some hosts' init reaps only every few seconds), else ``ID gone``.
        One ``ps`` for every id; ``kill -0`` where there is no ps."""
        q = " ".join(shlex.quote(i) for i in ids)
        awk = ('BEGIN{n=split(ids,a," ");for(i=1;i<=n;i++)w[a[i]]=1}'
               '{if(($1 in w)&&$2!~/^Z/)l[$1]=1}'
               'END{for(i=1;i<=n;i++)print a[i],(a[i] in l?"running":"gone")}')
        joined = shlex.quote(" ".join(ids))
        return (f"if command -v ps >/dev/null 2>&1; then ps -eo pgid=,stat= | awk -v ids={joined} "
                f"{shlex.quote(awk)}; else for p in {q}; do if kill -0 \"-$p\" 2>/dev/null; "
                'then echo "$p running"; else echo "$p gone"; fi; done; fi')

    def parse_status(self, rc: int, out: bytes, ids: Sequence[str]) -> dict[str, JobStatus]:
        seen = {}
        for line in out.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2:
                seen[parts[0]] = JobStatus("running") if parts[1] == "running" else JobStatus("unknown")
        return {i: seen.get(i, JobStatus("unknown")) for i in ids}

    def cancel_script(self, ids: Sequence[str]) -> str:
        """TERM to each group, up to 5 s for it to end, then KILL."""
        q = " ".join(shlex.quote(i) for i in ids)
        return (f'for p in {q}; do kill -TERM "-$p" 2>/dev/null; done; '
                f'for i in 1 2 3 4 5 6 7 8 9 10; do alive=; for p in {q}; do '
                'kill -0 "-$p" 2>/dev/null && alive=1; done; [ -z "$alive" ] && exit 0; sleep 0.5; done; '
                f'for p in {q}; do kill -KILL "-$p" 2>/dev/null; done; exit 0')
