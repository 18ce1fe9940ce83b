"""The ``soak`` mode: open-loop overload at a multiple of the measured capacity, every answer accounted
for, and the server's memory and CPU over the run."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from .client import (MIXES, Ledger, LoadError, Target, closed_loop, counts, fmt, health, open_loop, scrape, summarize,
                     warm_up)
from .server import cpu_seconds, own_cpu_seconds, read_rss_kb

REFUSAL_BOUND = 1.0  # seconds: what a 429 may take in the soak


async def run_soak(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard = time.monotonic() + opts.deadline
    connections = opts.max_outstanding + 8
    async with target.client(connections) as client:
        status, _, served = await health(target, client)
        if status != 200:
            raise LoadError(f"/healthz answered {status}: {served}")
        await warm_up(target, client, sorted(set(MIXES[opts.mix][1])), hard)
        capacity = None
        if opts.capacity_callers is None:  # enough to keep every call full with a queue behind it
            opts.capacity_callers = min(64, max(4, 2 * int(served["rows_per_call"])))
        if opts.rate is None:
            echo(f"capacity: {opts.capacity_callers} callers, mix {opts.mix}, for {opts.capacity_seconds:g} s ...")
            ledger = Ledger()
            await closed_loop(target, client, opts.mix, opts.capacity_callers, 1_000_000, opts.capacity_seconds,
                              min(hard, time.monotonic() + opts.capacity_seconds + opts.drain), ledger)
            capacity = summarize("capacity", opts.capacity_callers, opts.mix, ledger, {}, {})
            per_second = capacity["ok"] / capacity["seconds"] if capacity["seconds"] > 0 else 0.0
            capacity["requests_per_s"] = per_second
            if per_second <= 0:
                raise LoadError(f"capacity: no request finished in {opts.capacity_seconds:g} s ({capacity['errors']})")
            rate = opts.overload * per_second
        else:
            rate = opts.rate
        seconds = opts.minutes * 60
        echo(f"soak: {rate:.2f} arrivals/s for {seconds:g} s (mix {opts.mix}), RSS every {opts.rss_every:g} s ...")
        rss: list[tuple[float, int]] = []
        began = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(target.pid), own_cpu_seconds()

        async def watch_memory() -> None:
            while True:
                kb = read_rss_kb(target.pid)
                if kb is not None:
                    rss.append((time.monotonic() - began, kb))
                await asyncio.sleep(opts.rss_every)

        watcher = asyncio.create_task(watch_memory())
        ledger, before = Ledger(), await scrape(target, client)
        try:
            arrivals = await open_loop(target, client, opts.mix, rate, seconds, opts.drain, hard, ledger, opts.max_outstanding)
        finally:
            watcher.cancel()
        kb = read_rss_kb(target.pid)
        if kb is not None:
            rss.append((time.monotonic() - began, kb))
        after = await scrape(target, client)
        status, answered_in, _ = await health(target, client)
    figures = summarize("soak", None, opts.mix, ledger, before, after)
    memory = None
    if rss:
        values = [kb for _, kb in rss]
        memory = {"start_mb": values[0] / 1024, "max_mb": max(values) / 1024, "end_mb": values[-1] / 1024,
                  "growth_mb": (values[-1] - values[0]) / 1024, "samples": [[round(t, 1), kb] for t, kb in rss]}
    cpu_now = cpu_seconds(target.pid)
    return {"served": served, "capacity": capacity, "arrival_rate": rate, "arrivals": arrivals, "soak": figures,
            "memory": memory, "healthz_after": {"status": status, "seconds": answered_in},
            "cpu_seconds": {"server": None if server_cpu is None or cpu_now is None else cpu_now - server_cpu,
                            "client": own_cpu_seconds() - client_cpu}}


def soak_markdown(result: dict) -> list[str]:
    soak, check = result["soak"], result["soak"]["check"]
    arrivals, memory = result["arrivals"], result["memory"]
    lines = []
    if result["capacity"]:
        cap = result["capacity"]
        lines += [f"Capacity measured first: {cap['concurrency']} callers, {cap['ok']} requests in {cap['seconds']:.1f} s = "
                  f"{cap['requests_per_s']:.2f} requests/s ({cap['digits_per_s']:.2f} digits/s); arrivals at "
                  f"{result['arrival_rate']:.2f}/s.", ""]
    refusal_p99 = soak["p99_429_s"]
    rows = [("arrivals sent (offered rate)", f"{arrivals['arrivals_sent']} ({arrivals['offered_rate']:.2f}/s over {arrivals['arrival_seconds']:.0f} s)", ""),
            ("not sent: client cap on requests out", str(arrivals["skipped_at_client_cap"]), ""),
            ("200 (PNG, seed right)", f"{check['ok'] - check['mismatched']} of {check['ok']}", "pass" if check["mismatched"] == 0 else "FAIL"),
            ("429 with Retry-After", f"{check['refused'] - check['429_without_retry_after']} of {check['refused']}",
             "pass" if check["429_without_retry_after"] == 0 else "FAIL"),
            ("lost (no answer)", str(check["lost"]), "pass" if check["lost"] == 0 else "FAIL"),
            ("duplicated", str(check["duplicated"]), "pass" if check["duplicated"] == 0 else "FAIL"),
            ("other answers", counts(check["unexpected"]), "pass" if not check["unexpected"] else "FAIL"),
            ("served digits/s", f"{soak['digits_per_s']:.2f}", ""),
            ("200 latency p50 / p99 (s)", f"{fmt(soak['p50_s'])} / {fmt(soak['p99_s'])}", ""),
            ("429 latency p99 (s)", fmt(refusal_p99, 3), "" if refusal_p99 is None else
             ("pass" if refusal_p99 <= REFUSAL_BOUND else "MISSED") + f" (<= {REFUSAL_BOUND:g} s)"),
            ("rows per network call", fmt(soak["rows_per_call"], 1), "")]
    if memory:
        rows.append(("server RSS start / max / end (MB)", f"{memory['start_mb']:.0f} / {memory['max_mb']:.0f} / {memory['end_mb']:.0f}",
                     f"growth {memory['growth_mb']:+.1f} MB"))
    else:
        rows.append(("server RSS", "not read (no pid: give --pid with --url)", ""))
    health_after = result["healthz_after"]
    rows.append(("/healthz after", f"{health_after['status']} in {health_after['seconds']:.3f} s",
                 "pass" if health_after["status"] == 200 else "FAIL"))
    cpu = result["cpu_seconds"]
    rows.append(("CPU seconds: server / this load generator", f"{fmt(cpu['server'], 1)} / {fmt(cpu['client'], 1)}", ""))
    return lines + ["| check | figure | |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
