"""Reporting: the markdown tables, the README block, run metadata, merging saved results."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import Tools, fmt_s, log, run


def _target(r: dict[str, Any]) -> str:
    parts = []
    if r.get("target_ratio") is not None:
        parts.append(f"≤ {r['target_ratio']:g}× peer")
    if r.get("target_abs_s") is not None:
        parts.append(f"< {fmt_s(r['target_abs_s'])}")
    return ", ".join(parts) or "—"


def _fig(med: float | None, mn: float | None, p99: float | None = None) -> str:
    if med is None:
        return "—"
    if p99 is not None:
        return f"{fmt_s(med)} (p99 {fmt_s(p99)})"
    if mn is None:
        return fmt_s(med)
    return f"{fmt_s(med)} (min {fmt_s(mn)})"


def _load(meta: dict[str, Any]) -> str:
    if not meta.get("loadavg_start"):
        return ""
    return f"load average {meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end"


def _context_row(name: str, c: dict[str, Any]) -> str:
    if "ratio" in c:
        return f"| {name} | {c['label']} | {c['ratio']:.2f}× | | |"
    if "text" in c:
        return f"| {name} | {c['label']} | {c['text']} | | |"
    med = fmt_s(c["median_s"])
    if c.get("p99_s") is not None:
        med += f" (p99 {fmt_s(c['p99_s'])})"
    return f"| {name} | {c['label']} | {med} | {fmt_s(c['min_s'])} | {c.get('n', '')} |"


def render_markdown(result: dict[str, Any]) -> str:
    out = []
    meta = result.get("meta", {})
    load = f" ({_load(meta)})" if meta.get("loadavg_start") else ""
    # rows carried over from earlier runs (run.py --only merges): one marker per earlier run
    earlier: list[dict[str, Any]] = []
    for r in result["records"]:
        if r.get("earlier_run") and r["earlier_run"] not in earlier:
            earlier.append(r["earlier_run"])

    def mark(r: dict[str, Any]) -> str:
        return f" †{earlier.index(r['earlier_run']) + 1}" if r.get("earlier_run") else ""

    out.append(
        f"Run {meta.get('date', '?')} on {meta.get('machine', '?')}{load}; "
        f"figures are the median (min) wall time of the whole command over n runs (below)."
    )
    out.append("")
    out.append("| benchmark | qwex | peer | peer figure | ratio | target | result |")
    out.append("|---|---|---|---|---|---|---|")
    for r in result["records"]:
        title, peer = r["title"] + mark(r), f"`{r['peer_name']}`" if r["peer_name"] else "—"
        if r["status"] in ("skipped", "error"):
            out.append(
                f"| {title} | — | {peer} | — | — | {_target(r)} | "
                f"{r['status'].upper()}: {r['message'].splitlines()[0] if r['message'] else ''} |"
            )
            continue
        if r["status"] == "no-qwex":
            q, res = "TODO (qwex not run)", "TODO"
        else:
            q = _fig(r["qwex_s"], r["qwex_min_s"], r.get("qwex_p99_s"))
            res = {True: "PASS", False: "FAIL", None: "—"}[r["passed"]]
        ratio = f"{r['ratio']:.2f}×" if r.get("ratio") is not None else "—"
        peer_fig = r.get("peer_note") or _fig(r["peer_s"], r["peer_min_s"])
        if r.get("peer_note") and res == "—":
            res = r["peer_note"]
        out.append(f"| {title} | {q} | {peer} | {peer_fig} | {ratio} | {_target(r)} | {res} |")
    for n, e in enumerate(earlier, 1):
        out.append("")
        out.append(
            f"†{n} carried over from an earlier run ({e.get('date', '?')}; {_load(e) or 'load average ?'}; "
            f"benchmarks/ at commit `{e.get('bench_commit')}`; command: `{shlex.join(e.get('argv') or [])}`)."
        )
    out.append("")
    out.append("Context (every figure measured in the same run as its row):")
    out.append("")
    out.append("| benchmark | measurement | median | min | n |")
    out.append("|---|---|---|---|---|")
    for r in result["records"]:
        name = r["name"] + mark(r)
        if r.get("message") and r["status"] in ("ok", "no-qwex"):
            out.append(f"| {name} | note: {r['message'].strip()} | | | |")
        out += [_context_row(name, c) for c in r.get("context", [])]
    out.append("")
    out.append("Tools: " + ", ".join(f"{k} = `{v}`" for k, v in meta.get("versions", {}).items() if v))
    out.append("")
    out.append(
        f"qwex: `{meta.get('qwex_cmd')}`; benchmarks/ at commit `{meta.get('bench_commit')}`; "
        f"command: `{shlex.join(meta.get('argv', []))}`"
    )
    return "\n".join(out) + "\n"


#: What a row carried over from an earlier run keeps of that run's metadata.
_EARLIER_KEYS = ("date", "loadavg_start", "loadavg_end", "bench_commit", "argv", "versions")


def merge_results(old: dict[str, Any], new: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``new``, plus the rows of ``old`` whose benchmark ``new`` did not run (``--only``).

    A row is replaced as a whole benchmark (its ``group``; rows saved before groups existed
    are their own group), so a benchmark that now yields other rows leaves no stale ones.
    Carried-over rows keep their own run's metadata in ``earlier_run``, which the tables
    footnote; rows of benchmarks that no longer exist are dropped. Ordered as ``order``."""
    ran = {r.get("group") or r["name"] for r in new["records"]}
    kept = []
    for r in old.get("records", []):
        g = r.get("group") or r["name"]
        if g in ran or g not in order:
            continue
        r = dict(r)
        r.setdefault("earlier_run", {k: old.get("meta", {}).get(k) for k in _EARLIER_KEYS})
        kept.append(r)
    records = sorted(
        [*new["records"], *kept], key=lambda r: order.index(r.get("group") or r["name"])
    )  # stable: a benchmark's own rows keep their order
    return {"meta": new["meta"], "records": records}


def _git_describe(path: Path) -> str | None:
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=path, capture_output=True)
    if p.returncode != 0:
        return None
    return p.stdout.decode().strip() or None


README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- results:begin (generated by run.py --update-readme) -->", "<!-- results:end -->"


def update_readme(md: str) -> None:
    text = README.read_text()
    a, b = text.index(BEGIN), text.index(END)
    README.write_text(text[: a + len(BEGIN)] + "\n" + md + text[b:])
    log(f"updated {README}")


def meta_info(tools: Tools, workdir: Path) -> dict[str, Any]:
    def fs_type(p: Path) -> str:
        try:
            return run(["df", "--output=fstype", str(p)]).stdout.decode().split()[-1]
        except Exception:
            return "?"

    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} cpus, fs {fs_type(workdir)}",
        "bench_commit": _git_describe(Path(__file__).resolve().parent),
        "qwex_cmd": shlex.join(_portable(a) for a in tools.qwex) if tools.qwex else None,
        "argv": sys.argv,
        "versions": {
            "python": platform.python_version(),
            "qwex": tools.version(tools.qwex, "--version") if tools.qwex else None,
            "dvc": tools.version(tools.dvc, "--version"),
            "git": tools.version(["git"], "--version") if tools.git else None,
            "b3sum": tools.version([tools.b3sum], "--version") if tools.b3sum else None,
        },
    }


def _portable(arg: str) -> str:
    """A path inside the repository as a relative path, so results carry no machine paths."""
    repo = str(Path(__file__).resolve().parent.parent) + "/"
    return arg.replace(repo, "")
