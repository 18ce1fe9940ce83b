"""The two modes and their markdown: ``sweep`` (closed loops of 1, 4, 16, 64 callers, and targets (a)
and (b) measured in the same run) and ``soak`` (open-loop overload at a multiple of the measured
capacity, every answer accounted for, the server's memory and CPU over the run)."""

from __future__ import annotations

import gc
import resource
import time
import timeit
from typing import Any

import numpy as np

from .ledger import KINDS, MIXES, TARGET_KIND, LoadError, counts, fmt
from .swarm import Level, Target, swarm, usage

REFUSAL_BOUND = 1.0  # seconds: what a 429 may take in the soak


def served_by(target: Target) -> dict:
    status, _, served = target.health()
    if status != 200:
        raise LoadError(f"/healthz answered {status}: {served}")
    return served


def offline_figures(opts, served: dict, kinds: set[str], echo) -> dict[str, Any]:
    """In process, on the server's model and max_rows, the server idle: the engine with 16 ``TARGET_KIND``
    requests submitted at once (digits/s, median of ``--repeats-engine`` runs), and ``DDPM.generate(1)``
    per kind (median of ``--repeats``), the time ``ddpm-run`` spends sampling."""
    from ...runtime.pipeline import open_model
    from .. import serving

    provider = "cpu" if served.get("provider", "").startswith("CPU") else "auto"
    ddpm = open_model(opts.onnx or opts.model, provider, opts.precision or "auto", opts.threads)
    model, max_rows, kind = ddpm.session.path.name, int(served["rows_per_call"]), KINDS[TARGET_KIND]
    if served.get("model") and model != served["model"]:
        echo(f"note: in process the model is {model}, the server samples {served['model']}")
    ddpm.generate(1, kind.plan(ddpm, 0), seed=0)  # warm the session
    requests = [serving.Request(1, kind.plan(ddpm, i), 1000 + i, 0.0, kind.name) for i in range(16)]
    runs = [serving.run_engine(ddpm, "offline", requests, max_rows) for _ in range(opts.repeats_engine)]
    generate = {}
    for name in sorted(kinds):
        plan = KINDS[name].plan(ddpm, 0)
        times = timeit.repeat(lambda plan=plan: ddpm.generate(1, plan, seed=0), number=1, repeat=opts.repeats)
        generate[name] = {"median_s": float(np.median(times)), "times_s": times}
    engine = [{"digits_per_s": r.throughput, "seconds": r.seconds, "rows_per_call": r.rows_per_call} for r in runs]
    return {
        "model": model,
        "precision_note": ddpm.note,
        "max_rows": max_rows,
        "requests": 16,
        "kind": kind.name,
        "engine_runs": engine,
        "engine_digits_per_s": float(np.median([r.throughput for r in runs])),
        "generate": generate,
    }


def run_sweep(opts, target: Target, echo) -> dict[str, Any]:
    hard, served = time.monotonic() + opts.deadline, served_by(target)
    kinds, offline = set(MIXES[opts.mix][1]) | ({TARGET_KIND} if opts.targets else set()), None
    if opts.targets:
        echo(
            f"in process, server idle: the engine with 16 {TARGET_KIND} requests at once, max_rows "
            f"{served['rows_per_call']}; DDPM.generate(1) for {', '.join(sorted(kinds))} ..."
        )
        offline = offline_figures(opts, served, kinds, echo)
        gc.collect()  # the in-process model's memory back before the server is loaded
    levels = [(c, opts.mix, f"{c}") for c in opts.levels]
    if opts.targets and 1 not in opts.levels:
        levels.append((1, "single-digit-20", "1 (target b)"))
    if opts.targets and not (16 in opts.levels and opts.mix == "single-digit-20"):
        levels.append((16, "single-digit-20", "16 (target a)"))
    results, warmed = [], set()
    for users, mix, name in levels:
        if time.monotonic() >= hard:
            echo(f"level {name}: skipped, past the sweep's deadline")
            continue
        count = opts.requests or (max(2, users) if opts.quick else max(32, 4 * users))
        echo(f"level {name}: {users} callers, mix {mix}, up to {count} requests or {opts.seconds:g} s ...")
        target.warm_up(set(MIXES[mix][1]), warmed)
        level = Level(name, mix, count, opts.seconds, opts.drain, users)
        results.append(swarm(target, level, min(hard, time.monotonic() + opts.seconds + opts.drain + 60)))
    return {"served": served, "offline": offline, "levels": results, "targets": sweep_targets(results, offline)}


def target(name: str, what: str, served: float, reference: float, bound: str, met) -> dict[str, Any]:
    ratio = served / reference
    return {
        "target": name,
        "what": what,
        "served": served,
        "reference": reference,
        "ratio": ratio,
        "bound": bound,
        "met": met(ratio),
    }


def sweep_targets(levels: list[dict], offline: dict | None) -> list[dict[str, Any]]:
    """(a) served vs engine throughput at 16 callers, (b) p99 at 1 caller vs DDPM.generate, per kind."""
    if not offline:
        return []
    found, engine = [], offline["engine_digits_per_s"]
    sixteen = next((lv for lv in levels if lv["concurrency"] == 16 and lv["mix"] == "single-digit-20"), None)
    if sixteen and engine > 0:
        what = f"16 callers of {TARGET_KIND}: served digits/s vs the engine in process"
        found.append(target("a", what, sixteen["digits_per_s"], engine, ">= 0.8x", lambda r: r >= 0.8))
    for level in (lv for lv in levels if lv["concurrency"] == 1):
        for kind, figures in level["kinds"].items():
            reference = offline["generate"].get(kind, {}).get("median_s")
            if reference and figures["p99_s"] is not None:
                what = f"1 caller ({level['mix']}), {kind}: p99 vs DDPM.generate(1) median"
                name = "b" if kind == TARGET_KIND else "b (info)"
                found.append(target(name, what, figures["p99_s"], reference, "<= 1.2x", lambda r: r <= 1.2))
    return found


def capacity_rate(opts, target: Target, served: dict, hard: float, echo) -> tuple[dict, float]:
    """Closed-loop capacity (every call full, a queue behind) and the soak's arrival rate from it."""
    callers = opts.capacity_callers or min(64, max(4, 2 * int(served["rows_per_call"])))
    echo(f"capacity: {callers} callers, mix {opts.mix}, for {opts.capacity_seconds:g} s ...")
    level = Level("capacity", opts.mix, 1_000_000, opts.capacity_seconds, opts.drain, callers)
    capacity = swarm(target, level, min(hard, time.monotonic() + opts.capacity_seconds + opts.drain + 60))
    capacity["requests_per_s"] = capacity["ok"] / capacity["seconds"] if capacity["seconds"] > 0 else 0.0
    if capacity["requests_per_s"] <= 0:
        raise LoadError(f"capacity: no request finished in {opts.capacity_seconds:g} s ({capacity['errors']})")
    return capacity, opts.overload * capacity["requests_per_s"]


def run_soak(opts, target: Target, echo) -> dict[str, Any]:
    hard, served = time.monotonic() + opts.deadline, served_by(target)
    target.warm_up(set(MIXES[opts.mix][1]), set())
    capacity, rate = (None, opts.rate) if opts.rate else capacity_rate(opts, target, served, hard, echo)
    seconds, began, rss = opts.minutes * 60, time.monotonic(), []
    echo(f"soak: {rate:.2f} arrivals/s for {seconds:g} s (mix {opts.mix}), RSS every {opts.rss_every:g} s ...")
    read_rss = lambda: rss.append((round(time.monotonic() - began, 1), usage(target.pid)[0]))  # noqa: E731
    cpu_before, locust_cpu = usage(target.pid)[1], sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    extra = {"rate": rate, "seconds": seconds, "max-outstanding": opts.max_outstanding}
    level = Level(
        "soak", opts.mix, int(rate * seconds * 1.5) + 10, seconds + opts.drain + 5, opts.drain, 1, "Arrivals", extra
    )
    soak = swarm(target, level, min(hard, time.monotonic() + seconds + 2 * opts.drain + 60), (opts.rss_every, read_rss))
    read_rss()
    status, answered_in, _ = target.health()
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
    server_cpu = None if None in (cpu_before, cpu_after) else cpu_after - cpu_before
    client_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - locust_cpu
    return {
        "served": served,
        "capacity": capacity,
        "arrival_rate": rate,
        "arrivals": arrivals,
        "soak": soak,
        "memory": memory,
        "healthz_after": {"status": status, "seconds": answered_in},
        "cpu_seconds": {"server": server_cpu, "client": client_cpu},
    }


SWEEP_HEAD = [
    "| level | mix | callers | requests | digits/s | p50 (s) | p99 (s) | 200 | 429 | errors | rows/call "
    "| lost / dup / wrong |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
]
SWEEP_ROW = (
    "| {level} | {mix} | {concurrency} | {requests} | {digits_per_s:.2f} | {p50} | {p99} | {ok} | {refused_429} "
    "| {errors} | {rows} | {lost} / {duplicated} / {mismatched} |"
)


def sweep_markdown(result: dict) -> list[str]:
    lines = list(SWEEP_HEAD)
    for lv in result["levels"]:
        figures = {"p50": fmt(lv["p50_s"]), "p99": fmt(lv["p99_s"]), "rows": fmt(lv["rows_per_call"], 1)}
        lines.append(SWEEP_ROW.format(**lv["check"] | lv | figures | {"errors": counts(lv["errors"])}))
    lines += ["", "| level | request kind | requests | p50 (s) | p99 (s) |", "|---|---|---:|---:|---:|"]
    for lv in result["levels"]:
        lines += [
            f"| {lv['level']} | {kind} | {f['requests']} | {fmt(f['p50_s'])} | {fmt(f['p99_s'])} |"
            for kind, f in lv["kinds"].items()
        ]
    if offline := result["offline"]:
        runs = ", ".join(f"{run['digits_per_s']:.2f}" for run in offline["engine_runs"])
        generate = ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in offline["generate"].items())
        lines += ["", OFFLINE.format(**offline, runs=runs, generate=generate)]
    if result["targets"]:
        lines += ["", "Targets (reported, not asserted):", ""]
        lines += [TARGET.format(**t, verdict="met" if t["met"] else "MISSED") for t in result["targets"]]
    return lines


def soak_markdown(result: dict) -> list[str]:
    soak, arrivals, memory, cap, after = (
        result[k] for k in ("soak", "arrivals", "memory", "capacity", "healthz_after")
    )
    check, refusal, cpu = soak["check"], soak["p99_429_s"], result["cpu_seconds"]
    verdict = lambda good: "pass" if good else "FAIL"  # noqa: E731
    offered = f"{arrivals['offered_rate']:.2f}/s over {arrivals['arrival_seconds'] or 0:.0f} s"
    bound = "" if refusal is None else f"{'pass' if refusal <= REFUSAL_BOUND else 'MISSED'} (<= {REFUSAL_BOUND:g} s)"
    with_retry_after = check["refused"] - check["429_without_retry_after"]
    rss = ("server RSS", "not read (no pid: give --pid with --url)", "")
    if memory:
        rss = ("server RSS start / max / end (MB)", MEMORY.format(**memory), f"growth {memory['growth_mb']:+.1f} MB")
    rows = [
        ("arrivals sent (offered rate)", f"{arrivals['arrivals_sent']} ({offered})", ""),
        ("not sent: client cap on requests out", arrivals["skipped_at_client_cap"], ""),
        (
            "200 (PNG, seed right)",
            f"{check['ok'] - check['mismatched']} of {check['ok']}",
            verdict(not check["mismatched"]),
        ),
        (
            "429 with Retry-After",
            f"{with_retry_after} of {check['refused']}",
            verdict(with_retry_after == check["refused"]),
        ),
        ("lost (no answer)", check["lost"], verdict(not check["lost"])),
        ("duplicated", check["duplicated"], verdict(not check["duplicated"])),
        ("other answers", counts(check["unexpected"]), verdict(not check["unexpected"])),
        ("served digits/s", f"{soak['digits_per_s']:.2f}", ""),
        ("200 latency p50 / p99 (s)", f"{fmt(soak['p50_s'])} / {fmt(soak['p99_s'])}", ""),
        ("429 latency p99 (s)", fmt(refusal, 3), bound),
        ("rows per network call", fmt(soak["rows_per_call"], 1), ""),
        rss,
        ("/healthz after", f"{after['status']} in {after['seconds']:.3f} s", verdict(after["status"] == 200)),
        ("CPU seconds: server / the load generator (locust)", f"{fmt(cpu['server'], 1)} / {fmt(cpu['client'], 1)}", ""),
    ]
    head = [CAPACITY.format(**cap, rate=result["arrival_rate"]), ""] if cap else []
    return head + ["| check | figure | |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]


OFFLINE = "In process (server idle, {model}, max_rows {max_rows}): the engine with 16 {kind} requests at once, \
{engine_digits_per_s:.2f} digits/s (median of {runs}); DDPM.generate(1) median: {generate}."
TARGET = "- ({target}) {what}: {served:.3f} vs {reference:.3f} = {ratio:.2f}x (target {bound}): {verdict}"
MEMORY = "{start_mb:.0f} / {max_mb:.0f} / {end_mb:.0f}"
CAPACITY = "Capacity measured first: {concurrency} callers, {ok} requests in {seconds:.1f} s = {requests_per_s:.2f} \
requests/s ({digits_per_s:.2f} digits/s); arrivals at {rate:.2f}/s."
