"""The reports of a run: the machine, the markdown, and what a reader must not miss."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ...runtime.machine import cpu_name
from ..serving import flag_line
from .client import MIXES, counts, fmt
from .hostile import RESET, hostile_markdown
from .soak import soak_markdown
from .sweep import sweep_markdown

MARKDOWN = {"sweep": sweep_markdown, "soak": soak_markdown, "hostile": hostile_markdown}


def machine(opts: argparse.Namespace, served: dict) -> dict[str, Any]:
    return {"cpu": cpu_name(), "flags": flag_line(), "cores": os.cpu_count(), "threads": opts.threads,
            "model": served.get("model"), "provider": served.get("provider"), "max_rows": served.get("rows_per_call"),
            "queue_rows": opts.queue_rows or "server default"}


def render(mode: str, opts: argparse.Namespace, result: dict, command: str) -> str:
    info = result["machine"]
    lines = [f"# ddpm-serve under load: {mode} on {info['cpu']}", "", f"`{command}`", "",
             f"CPU: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; threads: {info['threads'] or 'default'}; "
             f"model {info['model']} on {info['provider']}; {info['max_rows']} rows per network call; queue rows: {info['queue_rows']}; "
             f"mix {opts.mix} ({MIXES[opts.mix][0]}).", ""]
    lines += MARKDOWN[mode](result)
    log = result.get("server_log")
    if log:
        lines += ["", f"Server log: {'no traceback' if not log['tracebacks'] else str(log['tracebacks']) + ' TRACEBACK(S)'}; "
                      f"exit status {log['returncode']}; last line: {log['last_line']}"]
    findings = result.get("findings", [])
    if findings:
        lines += ["", "Findings (answered without a 5xx, but worth a look):", ""] + [f"- {f}" for f in findings]
    problems = result.get("problems", [])
    lines += ["", "Problems found: " + ("none." if not problems else "")] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def problems_of(mode: str, result: dict) -> list[str]:
    """What a reader must not miss: 5xx answers, lost or duplicated answers, a failed check."""
    found = []
    if mode == "sweep":
        for level in result["levels"]:
            check = level["check"]
            if not check["clean"]:
                found.append(f"level {level['level']}: lost {check['lost']}, duplicated {check['duplicated']}, wrong {check['mismatched']}, "
                             f"other answers {counts(check['unexpected'])}; examples {check['examples']}")
    elif mode == "soak":
        check = result["soak"]["check"]
        if not check["clean"]:
            found.append(f"soak: lost {check['lost']}, duplicated {check['duplicated']}, wrong {check['mismatched']}, "
                         f"429 without Retry-After {check['429_without_retry_after']}, other {counts(check['unexpected'])}; "
                         f"examples {check['examples']}")
        if result["healthz_after"]["status"] != 200:
            found.append(f"/healthz after the soak: {result['healthz_after']['status']}")
    else:
        for row in result["cases"]:
            if not row["passed"]:
                found.append(f"case {row['case']!r}: {row['request']} -> {counts(row['statuses'])} "
                             f"(expected {', '.join(row['expected'])}, answer max {fmt(row['answer_max_s'], 3)} s, bound "
                             f"{fmt(row['bound_s'], 0)} s) {row['details'] or ''} {row['extra'] or ''}".strip())
        if not result["background"]["check"]["clean"]:
            found.append(f"background load: {result['background']['check']}")
        if result["healthz_after"]["status"] != 200:
            found.append(f"/healthz after the cases: {result['healthz_after']['status']}")
    log = result.get("server_log")
    if log and log["tracebacks"]:
        found.append(f"the server log holds {log['tracebacks']} traceback(s): {log['first_traceback']}")
    return found


def findings_of(mode: str, result: dict) -> list[str]:
    """Hostile cases the server survived in a way a reader should know about."""
    if mode != "hostile":
        return []
    found = []
    for row in result["cases"]:
        statuses = row["statuses"]
        if statuses.get("open at the end"):
            found.append(f"{row['case']}: the server closed {sum(statuses.values()) - statuses['open at the end']} of "
                         f"{sum(statuses.values())} connections in {row['seconds']:.0f} s (no deadline for request headers)")
        if row["case"].endswith("MB header") and "422" in statuses:
            found.append(f"{row['case']}: the header was accepted and the body checked (422): no bound on header size")
        if RESET in statuses:
            found.append(f"{row['case']}: the server reset the connection after {row['extra'].get('bytes_sent_before_answer', 0):,} "
                         "bytes; its 413, if sent, was lost to the reset (it drops a bounded share of a refused body, then closes), "
                         "so a client streaming a body may see 'connection reset' instead of the 413")
        if row["case"] == "malformed JSON without a token" and "422" in statuses:
            found.append(f"{row['case']}: 422 before 401: the body is checked before the token")
    return found
