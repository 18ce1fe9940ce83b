"""The ``sweep`` mode: closed loops of 1, 4, 16, 64 callers, and the served-vs-engine and
served-vs-generate targets measured in the same run."""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import numpy as np

from .client import (KINDS, MIXES, TARGET_KIND, Ledger, LoadError, Target, closed_loop, counts, fmt, health, scrape,
                     summarize, warm_up)


def offline_figures(opts: argparse.Namespace, served: dict, kinds: list[str], echo) -> dict[str, Any]:
    """In process, on the server's model and max_rows: the engine with 16 single-digit 20-call requests
    submitted at once (digits/s, median of ``--repeats-engine`` runs), and ``DDPM.generate(1)`` per kind
    (median of ``--repeats``), the time ``ddpm-run`` spends sampling."""
    from ...runtime.pipeline import open_model
    from .. import serving

    provider = "cpu" if served.get("provider", "").startswith("CPU") else "auto"
    ddpm = open_model(opts.onnx, provider, opts.precision or "auto", opts.threads)
    try:
        model = ddpm.session.path.name
        if served.get("model") and model != served["model"]:
            echo(f"note: in process the model is {model}, the server samples {served['model']}")
        max_rows = int(served["rows_per_call"])
        kind = KINDS[TARGET_KIND]
        ddpm.generate(1, kind.plan(ddpm, 0), seed=0)  # warm the session
        requests = [serving.Request(1, kind.plan(ddpm, i), 1000 + i, 0.0, kind.name) for i in range(16)]
        engine_runs = []
        for _ in range(opts.repeats_engine):
            outcome = serving.run_engine(ddpm, "offline", requests, max_rows)
            engine_runs.append({"digits_per_s": outcome.throughput, "seconds": outcome.seconds, "rows_per_call": outcome.rows_per_call})
        generate = {}
        for name in kinds:
            times = []
            for repeat in range(opts.repeats):
                start = time.perf_counter()
                ddpm.generate(1, KINDS[name].plan(ddpm, repeat), seed=repeat)
                times.append(time.perf_counter() - start)
            generate[name] = {"median_s": float(np.median(times)), "times_s": times}
        return {"model": model, "precision_note": ddpm.note, "max_rows": max_rows, "requests": 16, "kind": kind.name,
                "engine_runs": engine_runs,
                "engine_digits_per_s": float(np.median([run["digits_per_s"] for run in engine_runs])),
                "generate": generate}
    finally:
        del ddpm
        gc.collect()


async def run_sweep(opts: argparse.Namespace, target: Target, echo) -> dict[str, Any]:
    hard = time.monotonic() + opts.deadline
    async with target.client(max(opts.levels) + 8) as client:
        status, _, served = await health(target, client)
        if status != 200:
            raise LoadError(f"/healthz answered {status}: {served}")
    kinds = sorted(set(MIXES[opts.mix][1]) | ({TARGET_KIND} if opts.targets else set()))
    offline = None
    if opts.targets:
        echo(f"in process, server idle: the engine with 16 {TARGET_KIND} requests at once, max_rows {served['rows_per_call']}; "
             f"DDPM.generate(1) for {', '.join(kinds)} ...")
        offline = offline_figures(opts, served, kinds, echo)
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
        async with target.client(concurrency + 4) as client:
            await warm_up(target, client, sorted(set(MIXES[mix][1])), hard, warmed)
            ledger, before = Ledger(), await scrape(target, client)
            await closed_loop(target, client, mix, concurrency, count, opts.seconds,
                              min(hard, time.monotonic() + opts.seconds + opts.drain), ledger)
            after = await scrape(target, client)
        results.append(summarize(name, concurrency, mix, ledger, before, after))
    return {"served": served, "offline": offline, "levels": results, "targets": sweep_targets(results, offline)}


def sweep_targets(levels: list[dict], offline: dict | None) -> list[dict[str, Any]]:
    """(a) served vs engine throughput at 16 callers, (b) p99 at 1 caller vs DDPM.generate, per kind."""
    if offline is None:
        return []
    found = []
    sixteen = next((lv for lv in levels if lv["concurrency"] == 16 and lv["mix"] == "single-digit-20"), None)
    if sixteen is not None and offline["engine_digits_per_s"] > 0:
        ratio = sixteen["digits_per_s"] / offline["engine_digits_per_s"]
        found.append({"target": "a", "what": f"16 callers of {TARGET_KIND}: served digits/s vs the engine in process",
                      "served": sixteen["digits_per_s"], "reference": offline["engine_digits_per_s"], "ratio": ratio,
                      "bound": ">= 0.8x", "met": ratio >= 0.8})
    for level in (lv for lv in levels if lv["concurrency"] == 1):
        for kind, figures in level["kinds"].items():
            reference = offline["generate"].get(kind, {}).get("median_s")
            if reference and figures["p99_s"] is not None:
                ratio = figures["p99_s"] / reference
                found.append({"target": "b" if kind == TARGET_KIND else "b (info)",
                              "what": f"1 caller ({level['mix']}), {kind}: p99 vs DDPM.generate(1) median",
                              "served": figures["p99_s"], "reference": reference, "ratio": ratio, "bound": "<= 1.2x",
                              "met": ratio <= 1.2})
    return found


def sweep_markdown(result: dict) -> list[str]:
    lines = ["| level | mix | callers | requests | digits/s | p50 (s) | p99 (s) | 200 | 429 | errors | rows/call | lost / dup / wrong |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for lv in result["levels"]:
        check = lv["check"]
        lines.append(f"| {lv['level']} | {lv['mix']} | {lv['concurrency']} | {lv['requests']} | {lv['digits_per_s']:.2f} | "
                     f"{fmt(lv['p50_s'])} | {fmt(lv['p99_s'])} | {lv['ok']} | {lv['refused_429']} | {counts(lv['errors'])} | "
                     f"{fmt(lv['rows_per_call'], 1)} | {check['lost']} / {check['duplicated']} / {check['mismatched']} |")
    lines += ["", "| level | request kind | requests | p50 (s) | p99 (s) |", "|---|---|---:|---:|---:|"]
    for lv in result["levels"]:
        for kind, figures in lv["kinds"].items():
            lines.append(f"| {lv['level']} | {kind} | {figures['requests']} | {fmt(figures['p50_s'])} | {fmt(figures['p99_s'])} |")
    offline = result["offline"]
    if offline:
        runs = ", ".join(f"{run['digits_per_s']:.2f}" for run in offline["engine_runs"])
        lines += ["", f"In process (server idle, {offline['model']}, max_rows {offline['max_rows']}): the engine with 16 "
                      f"{offline['kind']} requests at once, {offline['engine_digits_per_s']:.2f} digits/s (median of {runs}); "
                      "DDPM.generate(1) median: " + ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in offline["generate"].items()) + "."]
    if result["targets"]:
        lines += ["", "Targets (reported, not asserted):", ""]
        for t in result["targets"]:
            lines.append(f"- ({t['target']}) {t['what']}: {t['served']:.3f} vs {t['reference']:.3f} = {t['ratio']:.2f}x "
                         f"(target {t['bound']}): {'met' if t['met'] else 'MISSED'}")
    return lines
