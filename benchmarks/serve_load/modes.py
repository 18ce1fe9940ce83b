"""The two modes and their markdown: ``sweep`` (closed loops of 1, 4, 16, 64 callers, and targets (a)
and (b) measured in the same run) and ``soak`` (open-loop overload at a multiple of the measured
capacity, every answer accounted for, the server's memory and CPU over the run)."""

from __future__ import annotations

import argparse
import gc
import resource
import time
import timeit
from typing import Any

import numpy as np

from .ledger import KINDS, MIXES, TARGET_KIND, LoadError, counts, fmt
from .swarm import Target, health, swarm, usage, warm_up

REFUSAL_BOUND = 1.0  # seconds: what a 429 may take in the soak


def served_by(target: Target) -> dict:
    status, _, served = health(target)
    if status != 200:
        raise LoadError(f"/healthz answered {status}: {served}")
    return served


def offline_figures(opts: argparse.Namespace, served: dict, kinds: list[str], echo) -> dict[str, Any]:
    """In process, on the server's model and max_rows, the server idle: the engine with 16 ``TARGET_KIND``
    requests submitted at once (digits/s, median of ``--repeats-engine`` runs), and ``DDPM.generate(1)``
    per kind (median of ``--repeats``), the time ``ddpm-run`` spends sampling."""
    from ...runtime.pipeline import open_model
    from .. import serving

    ddpm = open_model(
        opts.onnx or opts.model,
        "cpu" if served.get("provider", "").startswith("CPU") else "auto",
        opts.precision or "auto",
        opts.threads,
    )
    model, max_rows, kind = ddpm.session.path.name, int(served["rows_per_call"]), KINDS[TARGET_KIND]
    if served.get("model") and model != served["model"]:
        echo(f"note: in process the model is {model}, the server samples {served['model']}")
    ddpm.generate(1, kind.plan(ddpm, 0), seed=0)  # warm the session
    requests = [serving.Request(1, kind.plan(ddpm, i), 1000 + i, 0.0, kind.name) for i in range(16)]
    runs = [serving.run_engine(ddpm, "offline", requests, max_rows) for _ in range(opts.repeats_engine)]
    generate = {}
    for name in kinds:
        times = timeit.repeat(
            lambda name=name: ddpm.generate(1, KINDS[name].plan(ddpm, 0), seed=0), number=1, repeat=opts.repeats
        )
        generate[name] = {"median_s": float(np.median(times)), "times_s": times}
    return {
        "model": model,
        "precision_note": ddpm.note,
        "max_rows": max_rows,
        "requests": 16,
        "kind": kind.name,
        "engine_runs": [
            {"digits_per_s": r.throughput, "seconds": r.seconds, "rows_per_call": r.rows_per_call} for r in runs
        ],
        "engine_digits_per_s": float(np.median([r.throughput for r in runs])),
        "generate": generate,
    }


def run_sweep(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard, served = time.monotonic() + opts.deadline, served_by(target)
    kinds = sorted(set(MIXES[opts.mix][1]) | ({TARGET_KIND} if opts.targets else set()))
    offline = None
    if opts.targets:
        echo(
            f"in process, server idle: the engine with 16 {TARGET_KIND} requests at once, "
            f"max_rows {served['rows_per_call']}; DDPM.generate(1) for {', '.join(kinds)} ..."
        )
        offline = offline_figures(opts, served, kinds, echo)
        gc.collect()  # the in-process model's memory back before the server is loaded
    levels = [(c, opts.mix, f"{c}") for c in opts.levels]
    if opts.targets and 1 not in opts.levels:
        levels.append((1, "single-digit-20", "1 (target b)"))
    if opts.targets and not (16 in opts.levels and opts.mix == "single-digit-20"):
        levels.append((16, "single-digit-20", "16 (target a)"))
    results, warmed = [], set()
    for concurrency, mix, name in levels:
        if time.monotonic() >= hard:
            echo(f"level {name}: skipped, past the sweep's deadline")
            continue
        count = opts.requests or (max(2, concurrency) if opts.quick else max(32, 4 * concurrency))
        echo(f"level {name}: {concurrency} callers, mix {mix}, up to {count} requests or {opts.seconds:g} s ...")
        warm_up(target, sorted(set(MIXES[mix][1])), warmed)
        results.append(
            swarm(
                target,
                name,
                "Caller",
                concurrency,
                mix,
                count,
                opts.seconds,
                opts.drain,
                min(hard, time.monotonic() + opts.seconds + opts.drain + 60),
            )
        )
    return {"served": served, "offline": offline, "levels": results, "targets": sweep_targets(results, offline)}


def sweep_targets(levels: list[dict], offline: dict | None) -> list[dict[str, Any]]:
    """(a) served vs engine throughput at 16 callers, (b) p99 at 1 caller vs DDPM.generate, per kind."""
    found = []
    sixteen = next((lv for lv in levels if lv["concurrency"] == 16 and lv["mix"] == "single-digit-20"), None)
    if offline and sixteen and offline["engine_digits_per_s"] > 0:
        ratio = sixteen["digits_per_s"] / offline["engine_digits_per_s"]
        found.append(
            {
                "target": "a",
                "what": f"16 callers of {TARGET_KIND}: served digits/s vs the engine in process",
                "served": sixteen["digits_per_s"],
                "reference": offline["engine_digits_per_s"],
                "ratio": ratio,
                "bound": ">= 0.8x",
                "met": ratio >= 0.8,
            }
        )
    for level in (lv for lv in levels if offline and lv["concurrency"] == 1):
        for kind, figures in level["kinds"].items():
            reference = offline["generate"].get(kind, {}).get("median_s")
            if reference and figures["p99_s"] is not None:
                ratio = figures["p99_s"] / reference
                found.append(
                    {
                        "target": "b" if kind == TARGET_KIND else "b (info)",
                        "served": figures["p99_s"],
                        "what": f"1 caller ({level['mix']}), {kind}: p99 vs DDPM.generate(1) median",
                        "reference": reference,
                        "ratio": ratio,
                        "bound": "<= 1.2x",
                        "met": ratio <= 1.2,
                    }
                )
    return found


def run_soak(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard, served = time.monotonic() + opts.deadline, served_by(target)
    warm_up(target, sorted(set(MIXES[opts.mix][1])), set())
    capacity, rate, seconds = None, opts.rate, opts.minutes * 60
    if rate is None:
        callers = opts.capacity_callers or min(
            64, max(4, 2 * int(served["rows_per_call"]))
        )  # every call full, a queue behind
        echo(f"capacity: {callers} callers, mix {opts.mix}, for {opts.capacity_seconds:g} s ...")
        capacity = swarm(
            target,
            "capacity",
            "Caller",
            callers,
            opts.mix,
            1_000_000,
            opts.capacity_seconds,
            opts.drain,
            min(hard, time.monotonic() + opts.capacity_seconds + opts.drain + 60),
        )
        capacity["requests_per_s"] = capacity["ok"] / capacity["seconds"] if capacity["seconds"] > 0 else 0.0
        if capacity["requests_per_s"] <= 0:
            raise LoadError(f"capacity: no request finished in {opts.capacity_seconds:g} s ({capacity['errors']})")
        rate = opts.overload * capacity["requests_per_s"]
    echo(f"soak: {rate:.2f} arrivals/s for {seconds:g} s (mix {opts.mix}), RSS every {opts.rss_every:g} s ...")
    began, rss = time.monotonic(), []
    read_rss = lambda: rss.append((round(time.monotonic() - began, 1), usage(target.pid)[0]))  # noqa: E731
    cpu_before, locust_cpu = usage(target.pid)[1], sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    soak = swarm(
        target,
        "soak",
        "Arrivals",
        1,
        opts.mix,
        int(rate * seconds * 1.5) + 10,
        seconds + opts.drain + 5,
        opts.drain,
        min(hard, time.monotonic() + seconds + 2 * opts.drain + 60),
        {"rate": rate, "seconds": seconds, "max-outstanding": opts.max_outstanding},
        (opts.rss_every, read_rss),
    )
    read_rss()
    status, answered_in, _ = health(target)
    arrivals, cpu_after = soak.pop("arrivals"), usage(target.pid)[1]
    arrivals["offered_rate"] = arrivals["arrivals_sent"] / (arrivals["arrival_seconds"] or seconds)
    kb = [value for _, value in rss if value is not None]
    memory = (
        {
            "start_mb": kb[0] / 1024,
            "max_mb": max(kb) / 1024,
            "end_mb": kb[-1] / 1024,
            "growth_mb": (kb[-1] - kb[0]) / 1024,
            "samples": rss,
        }
        if kb
        else None
    )
    return {
        "served": served,
        "capacity": capacity,
        "arrival_rate": rate,
        "arrivals": arrivals,
        "soak": soak,
        "memory": memory,
        "healthz_after": {"status": status, "seconds": answered_in},
        "cpu_seconds": {
            "server": None if None in (cpu_before, cpu_after) else cpu_after - cpu_before,
            "client": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - locust_cpu,
        },
    }


def sweep_markdown(result: dict) -> list[str]:
    lines = [
        "| level | mix | callers | requests | digits/s | p50 (s) | p99 (s) | 200 | 429 | errors | rows/call "
        "| lost / dup / wrong |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    lines += [
        f"| {lv['level']} | {lv['mix']} | {lv['concurrency']} | {lv['requests']} | {lv['digits_per_s']:.2f} "
        f"| {fmt(lv['p50_s'])} | {fmt(lv['p99_s'])} | {lv['ok']} | {lv['refused_429']} | {counts(lv['errors'])} "
        f"| {fmt(lv['rows_per_call'], 1)} "
        f"| {lv['check']['lost']} / {lv['check']['duplicated']} / {lv['check']['mismatched']} |"
        for lv in result["levels"]
    ]
    lines += ["", "| level | request kind | requests | p50 (s) | p99 (s) |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {lv['level']} | {kind} | {f['requests']} | {fmt(f['p50_s'])} | {fmt(f['p99_s'])} |"
        for lv in result["levels"]
        for kind, f in lv["kinds"].items()
    ]
    if offline := result["offline"]:
        runs = ", ".join(f"{run['digits_per_s']:.2f}" for run in offline["engine_runs"])
        lines += [
            "",
            f"In process (server idle, {offline['model']}, max_rows {offline['max_rows']}): the engine with 16 "
            f"{offline['kind']} requests at once, {offline['engine_digits_per_s']:.2f} digits/s (median of {runs}); "
            "DDPM.generate(1) median: "
            + ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in offline["generate"].items())
            + ".",
        ]
    if result["targets"]:
        lines += ["", "Targets (reported, not asserted):", ""]
        lines += [
            f"- ({t['target']}) {t['what']}: {t['served']:.3f} vs {t['reference']:.3f} = {t['ratio']:.2f}x (target "
            f"{t['bound']}): {'met' if t['met'] else 'MISSED'}"
            for t in result["targets"]
        ]
    return lines


def soak_markdown(result: dict) -> list[str]:
    soak, check, arrivals, memory = result["soak"], result["soak"]["check"], result["arrivals"], result["memory"]
    after, cpu, cap, refusal_p99 = (
        result["healthz_after"],
        result["cpu_seconds"],
        result["capacity"],
        result["soak"]["p99_429_s"],
    )
    verdict = lambda good: "pass" if good else "FAIL"  # noqa: E731
    rows = [
        (
            "arrivals sent (offered rate)",
            f"{arrivals['arrivals_sent']} ({arrivals['offered_rate']:.2f}/s over "
            f"{arrivals['arrival_seconds'] or 0:.0f} s)",
            "",
        ),
        ("not sent: client cap on requests out", str(arrivals["skipped_at_client_cap"]), ""),
        (
            "200 (PNG, seed right)",
            f"{check['ok'] - check['mismatched']} of {check['ok']}",
            verdict(not check["mismatched"]),
        ),
        (
            "429 with Retry-After",
            f"{check['refused'] - check['429_without_retry_after']} of {check['refused']}",
            verdict(not check["429_without_retry_after"]),
        ),
        ("lost (no answer)", str(check["lost"]), verdict(not check["lost"])),
        ("duplicated", str(check["duplicated"]), verdict(not check["duplicated"])),
        ("other answers", counts(check["unexpected"]), verdict(not check["unexpected"])),
        ("served digits/s", f"{soak['digits_per_s']:.2f}", ""),
        ("200 latency p50 / p99 (s)", f"{fmt(soak['p50_s'])} / {fmt(soak['p99_s'])}", ""),
        (
            "429 latency p99 (s)",
            fmt(refusal_p99, 3),
            ""
            if refusal_p99 is None
            else f"{'pass' if refusal_p99 <= REFUSAL_BOUND else 'MISSED'} (<= {REFUSAL_BOUND:g} s)",
        ),
        ("rows per network call", fmt(soak["rows_per_call"], 1), ""),
        (
            "server RSS start / max / end (MB)",
            f"{memory['start_mb']:.0f} / {memory['max_mb']:.0f} / {memory['end_mb']:.0f}",
            f"growth {memory['growth_mb']:+.1f} MB",
        )
        if memory
        else ("server RSS", "not read (no pid: give --pid with --url)", ""),
        ("/healthz after", f"{after['status']} in {after['seconds']:.3f} s", verdict(after["status"] == 200)),
        ("CPU seconds: server / the load generator (locust)", f"{fmt(cpu['server'], 1)} / {fmt(cpu['client'], 1)}", ""),
    ]
    lines = (
        [
            f"Capacity measured first: {cap['concurrency']} callers, {cap['ok']} requests in {cap['seconds']:.1f} s = "
            f"{cap['requests_per_s']:.2f} requests/s ({cap['digits_per_s']:.2f} digits/s); arrivals at "
            f"{result['arrival_rate']:.2f}/s.",
            "",
        ]
        if cap
        else []
    )
    return lines + ["| check | figure | |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
