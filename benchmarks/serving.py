"""Serving many callers: the continuous-batching engine against naive loops, side by side in one run.

    python -m ddpm.benchmarks.serving --out benchmarks/results              # the full comparison
    python -m ddpm.benchmarks.serving --quick                               # fewer, shorter requests
    python -m ddpm.benchmarks.serving --provider cuda --concurrency 1,16,64,256 --out DIR   # levels only

Scenarios, each served three ways on one session: **sequential** (each request its own
``DDPM.generate`` loop, one after another), **threads** (each request its own loop on its own
thread, all sharing the session) and **engine** (one :class:`SamplingEngine`, one network call per
tick for every active request):

- ``same-plan``: R single-digit requests with one plan, all at once, beside one ``generate(R)``
  (what ``ddpm-run -n R`` does): the engine should reach >= 0.9x its throughput and >= 1.2x the threads.
- ``mix``: single digits at the 1000-step ancestral loop, 20-call DPM-Solver++ SDE without and with a
  requested digit (guided: two rows), all at once and arriving at random (Poisson) intervals.
- ``behind``: one 20-call request submitted behind R running 1000-step requests: its latency
  against its calls x the loaded tick time (target <= 2x).

``--concurrency 1,16,64,256`` runs only the same-plan comparison, once per level (R requests at
once), and writes the report after each level, so a run cut short keeps the levels it finished;
``--methods`` leaves out the naive ways a level should not wait for.

Throughput is digits per second from the first arrival to the last finish; latency is from a
request's arrival to its result. Only loopback-free, in-process work: no server is involved.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.outputs import write_bytes
from ..core.plan import SamplingPlan
from ..runtime.engine import SamplingEngine
from ..runtime.machine import cpu_name, flag_line
from ..runtime.pipeline import DDPM, default_model_path


@dataclass(frozen=True)
class Request:
    n: int
    plan: SamplingPlan
    seed: int
    arrival: float  # seconds after the scenario starts
    kind: str


@dataclass
class Outcome:
    scenario: str
    method: str
    digits: int
    seconds: float
    latencies: list[float]
    rows_per_call: float
    kinds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.digits / self.seconds

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        return float(np.percentile(values if values is not None else self.latencies, q))


def _record(
    scenario: str, method: str, requests: list[Request], finished: dict[int, float], start: float, rows_per_call: float
) -> Outcome:
    latencies, kinds = [], {}
    for index, request in enumerate(requests):
        latency = finished[index] - (start + request.arrival)
        latencies.append(latency)
        kinds.setdefault(request.kind, []).append(latency)
    return Outcome(
        scenario, method, sum(r.n for r in requests), max(finished.values()) - start, latencies, rows_per_call, kinds
    )


def _rows(request: Request) -> int:
    return request.n * (2 if request.plan.guidance > 0 else 1)


def run_sequential(ddpm: DDPM, scenario: str, requests: list[Request]) -> Outcome:
    """One loop after another, in arrival order; a request waits for those before it."""
    finished, start = {}, time.perf_counter()
    for index, request in sorted(enumerate(requests), key=lambda item: item[1].arrival):
        time.sleep(max(0.0, start + request.arrival - time.perf_counter()))
        ddpm.generate(request.n, request.plan, seed=request.seed, batch_size=_rows(request))
        finished[index] = time.perf_counter()
    return _record(scenario, "sequential", requests, finished, start, np.mean([_rows(r) for r in requests]))


def run_threads(ddpm: DDPM, scenario: str, requests: list[Request]) -> Outcome:
    """Each request its own loop on its own thread, started at its arrival, sharing the session."""
    finished, start = {}, time.perf_counter()

    def serve(index: int, request: Request) -> None:
        time.sleep(max(0.0, start + request.arrival - time.perf_counter()))
        ddpm.generate(request.n, request.plan, seed=request.seed, batch_size=_rows(request))
        finished[index] = time.perf_counter()

    threads = [threading.Thread(target=serve, args=item) for item in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _record(scenario, "threads", requests, finished, start, np.mean([_rows(r) for r in requests]))


def run_engine(ddpm: DDPM, scenario: str, requests: list[Request], max_rows: int) -> Outcome:
    """One engine on its own thread; requests are submitted at their arrival times."""
    engine = SamplingEngine(ddpm.session, max_rows=max_rows)
    engine.start()
    start = time.perf_counter()
    jobs = {}
    for index, request in sorted(enumerate(requests), key=lambda item: item[1].arrival):
        time.sleep(max(0.0, start + request.arrival - time.perf_counter()))
        jobs[index] = engine.submit(request.n, request.plan, request.seed)
    for job in jobs.values():
        job.wait()
    engine.stop()
    finished = {index: job.finished for index, job in jobs.items()}
    return _record(scenario, "engine", requests, finished, start, engine.stats.rows_per_call)


def run_batched(ddpm: DDPM, plan: SamplingPlan, count: int) -> Outcome:
    """``ddpm-run -n count``: one request of all the digits in one batch."""
    start = time.perf_counter()
    ddpm.generate(count, plan, seed=0, batch_size=count)
    seconds = time.perf_counter() - start
    return Outcome("same-plan", f"generate(n={count})", count, seconds, [seconds] * count, float(count))


def mix_requests(
    ddpm: DDPM, count: int, mean_gap: float, rng: np.random.Generator, ancestral_steps: int
) -> list[Request]:
    """A third each: a digit at the ancestral loop, 20-call DPM-Solver++ SDE, the same with a digit."""
    kinds = {
        "ancestral": ddpm.plan("ancestral", steps=ancestral_steps, digits=[7], guidance=0.0),
        "dpm++2m-sde": ddpm.plan("dpm++2m-sde", steps=20),
        "dpm++2m-sde --digit": ddpm.plan("dpm++2m-sde", steps=20, digits=[3]),
    }
    names = list(kinds)
    arrivals = np.concatenate([[0.0], np.cumsum(rng.exponential(mean_gap, count - 1))]) if mean_gap else np.zeros(count)
    return [Request(1, kinds[names[i % 3]], i, float(arrivals[i]), names[i % 3]) for i in range(count)]


def behind(ddpm: DDPM, count: int, max_rows: int, ancestral_steps: int, warm_ticks: int = 30) -> dict:
    """A 20-call request submitted behind ``count`` running ancestral requests: its latency against
    its calls x the loaded tick time (median tick while it ran)."""
    engine = SamplingEngine(ddpm.session, max_rows=max_rows)
    for seed in range(count):
        engine.submit(1, ddpm.plan("ancestral", steps=ancestral_steps, digits=[seed % 10], guidance=0.0), seed=seed)
    for _ in range(warm_ticks):
        engine.tick()
    short = engine.submit(1, ddpm.plan("dpm++2m-sde", steps=20, digits=[5]), seed=99)
    ticks, start = [], time.perf_counter()
    while not short.done:
        begin = time.perf_counter()
        engine.tick()
        ticks.append(time.perf_counter() - begin)
    latency = time.perf_counter() - start
    loaded = float(np.median(ticks))
    engine.stop(grace=0)
    return {
        "requests_ahead": count,
        "ahead_steps": ancestral_steps,
        "ticks_taken": len(ticks),
        "calls": short.steps,
        "latency_s": latency,
        "loaded_tick_s": loaded,
        "ratio": latency / (short.steps * loaded),
    }


def table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| scenario | method | digits | seconds | digits/s | latency p50 (s) | p99 (s) | rows/call |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.method} | {o.digits} | {o.seconds:.2f} | {o.throughput:.2f} | "
            f"{o.percentile(50):.2f} | {o.percentile(99):.2f} | {o.rows_per_call:.1f} |"
        )
    return lines


def kinds_table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| scenario | method | request kind | latency p50 (s) | p99 (s) |", "|---|---|---|---:|---:|"]
    for o in outcomes:
        for kind, values in o.kinds.items():
            if len(o.kinds) > 1:
                lines.append(
                    f"| {o.scenario} | {o.method} | {kind} "
                    f"| {o.percentile(50, values):.2f} | {o.percentile(99, values):.2f} |"
                )
    return lines


def targets(outcomes: list[Outcome], waiting: dict) -> list[str]:
    by = {(o.scenario, o.method): o for o in outcomes}
    engine, threads = by[("same-plan", "engine")], by[("same-plan", "threads")]
    batched = next(o for o in outcomes if o.method.startswith("generate"))
    ratio_batch, ratio_threads = engine.throughput / batched.throughput, engine.throughput / threads.throughput
    return [
        f"- same plan, engine vs one batched loop: {ratio_batch:.2f}x (target >= 0.9x): "
        f"{'met' if ratio_batch >= 0.9 else 'MISSED'}",
        f"- same plan, engine vs loops in threads: {ratio_threads:.2f}x (target >= 1.2x): "
        f"{'met' if ratio_threads >= 1.2 else 'MISSED'}",
        f"- 20-call request behind {waiting['requests_ahead']} running {waiting['ahead_steps']}-step ones: "
        f"{waiting['latency_s']:.2f} s in {waiting['ticks_taken']} ticks = {waiting['ratio']:.2f}x "
        f"its {waiting['calls']} calls x the loaded tick "
        f"({waiting['loaded_tick_s'] * 1e3:.1f} ms) (target <= 2x): {'met' if waiting['ratio'] <= 2 else 'MISSED'}",
    ]


def load(opts: argparse.Namespace, echo) -> tuple[DDPM, int, dict]:
    """The session every way shares, the engine's capacity, and the machine's description."""
    ddpm = DDPM.load(
        opts.onnx or default_model_path("int8" if opts.int8 else "fp32"), provider=opts.provider, threads=opts.threads
    )
    max_rows, per_image_ms = opts.max_rows, None
    if max_rows is None:  # measured on this machine's session (cached per machine)
        choice = ddpm.batch_choice()
        max_rows, per_image_ms = choice.batch, choice.per_image_ms
    machine = {
        "cpu": cpu_name(),
        "flags": flag_line(),
        "threads": opts.threads,
        "provider": ddpm.provider,
        "max_rows": max_rows,
        "per_image_ms": per_image_ms,
        "model": str(ddpm.session.path.name),
        "ancestral_steps": 100 if opts.quick else 1000,
    }
    echo(
        f"{cpu_name()} ({flag_line()}), {opts.threads or 'default'} threads, {ddpm.provider}; "
        f"engine capacity {max_rows} rows (measured per-image ms by batch: {per_image_ms})"
    )
    return ddpm, max_rows, machine


METHODS = ("batched", "engine", "threads", "sequential")  # batched: one generate(R), what ddpm-run -n R does


def run_levels(opts: argparse.Namespace, echo, write) -> list[Outcome]:
    """The same-plan comparison at each ``--concurrency`` level; ``write(outcomes, machine)`` after each."""
    ddpm, max_rows, machine = load(opts, echo)
    same = ddpm.plan("ancestral", steps=machine["ancestral_steps"], digits=[7], guidance=0.0)
    outcomes: list[Outcome] = []
    for level in opts.concurrency:
        requests = [Request(1, same, seed, 0.0, "ancestral") for seed in range(level)]
        for name in opts.methods:
            echo(f"{level} at once: {name} ...")
            if name == "batched":
                outcome = run_batched(ddpm, same, level)
            elif name == "engine":
                outcome = run_engine(ddpm, "same-plan", requests, max_rows)
            else:
                outcome = (run_threads if name == "threads" else run_sequential)(ddpm, "same-plan", requests)
            outcome.scenario = f"{level} at once"
            outcomes.append(outcome)
        write(outcomes, machine)
    return outcomes


def level_targets(outcomes: list[Outcome]) -> list[str]:
    """Engine throughput against each naive way at each level (target >= 20x one at a time at 64)."""
    lines = []
    for scenario in dict.fromkeys(o.scenario for o in outcomes):
        by = {o.method: o for o in outcomes if o.scenario == scenario}
        if "engine" not in by:
            continue
        for method in ("sequential", "threads"):
            if method in by:
                ratio = by["engine"].throughput / by[method].throughput
                goal = " (target >= 20x at 64)" if scenario.startswith("64 ") and method == "sequential" else ""
                lines.append(f"- {scenario}, engine vs {method}: {ratio:.1f}x{goal}")
    return lines


def run(opts: argparse.Namespace, echo) -> tuple[list[Outcome], dict, dict]:
    ddpm, max_rows, machine = load(opts, echo)
    steps = machine["ancestral_steps"]
    same = ddpm.plan("ancestral", steps=steps, digits=[7], guidance=0.0)
    same_requests = [Request(1, same, seed, 0.0, "ancestral") for seed in range(opts.requests)]
    outcomes = [run_batched(ddpm, same, opts.requests)]
    for method in (run_engine, run_threads, run_sequential):
        echo(f"same-plan: {method.__name__} ...")
        outcomes.append(
            method(ddpm, "same-plan", same_requests, max_rows)
            if method is run_engine
            else method(ddpm, "same-plan", same_requests)
        )
    rng = np.random.default_rng(0)
    for scenario, gap in (("mix, all at once", 0.0), (f"mix, Poisson arrivals (mean gap {opts.gap:g} s)", opts.gap)):
        requests = mix_requests(ddpm, opts.requests, gap, rng, steps)
        for method in (run_engine, run_threads, run_sequential):
            echo(f"{scenario}: {method.__name__} ...")
            outcomes.append(
                method(ddpm, scenario, requests, max_rows) if method is run_engine else method(ddpm, scenario, requests)
            )
    echo("behind: a 20-call request behind running ancestral loops ...")
    waiting = behind(ddpm, opts.requests, max_rows, steps)
    return outcomes, waiting, machine


def comma_list(convert):
    def parse(text: str) -> list:
        items = [convert(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one entry")
        return items

    return parse


def method_name(text: str) -> str:
    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose from {', '.join(METHODS)}")
    return text


def level(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: levels are whole numbers >= 1")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=None, help="Model to serve. [default: the embedded fp32 model]")
    parser.add_argument("--int8", action="store_true", help="Serve the embedded model's int8 copy.")
    parser.add_argument(
        "--provider",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="ONNX Runtime provider of the shared session.",
    )
    parser.add_argument("--requests", type=int, default=16, help="Requests per scenario (R).")
    parser.add_argument(
        "--concurrency",
        type=comma_list(level),
        default=None,
        metavar="R,R,...",
        help="Only the same-plan comparison, at each of these levels (e.g. 1,16,64,256); the report is "
        "written after each level.",
    )
    parser.add_argument(
        "--methods",
        type=comma_list(method_name),
        default=list(METHODS),
        metavar="M,M,...",
        help=f"With --concurrency: which ways to serve each level ({', '.join(METHODS)}).",
    )
    parser.add_argument("--gap", type=float, default=0.5, help="Mean seconds between Poisson arrivals.")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="Engine capacity. [default: the measured CPU batch; with --concurrency the largest level]",
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    parser.add_argument("--quick", action="store_true", help="100-step ancestral requests instead of 1000.")
    parser.add_argument("--out", type=Path, default=None, help="Write serving-PROVIDER.md and .json here.")
    opts = parser.parse_args(argv)
    if opts.concurrency and opts.max_rows is None:
        opts.max_rows = max(opts.concurrency)
    return opts


def write_report(out: Path | None, name: str, lines: list[str], report: dict) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(out / f"{name}.md", "\n".join(lines).encode())
        write_bytes(out / f"{name}.json", (json.dumps(report, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    if opts.concurrency:

        def write(outcomes: list[Outcome], machine: dict) -> list[str]:
            lines = [
                f"# Serving at {', '.join(map(str, opts.concurrency))} requests at once, {machine['provider']}",
                "",
                f"{machine['cpu']}; model {machine['model']}; engine capacity {machine['max_rows']} rows per call; "
                f"single-digit ancestral requests of {machine['ancestral_steps']} steps, all submitted at once.",
                "",
                *table(outcomes),
                "",
                "Engine against the naive loops:",
                "",
                *level_targets(outcomes),
                "",
            ]
            write_report(
                opts.out,
                f"serving-concurrency-{opts.provider}",
                lines,
                {"machine": machine, "outcomes": [asdict(o) for o in outcomes]},
            )
            return lines

        outcomes = run_levels(opts, echo, write)
        print("\n".join(table(outcomes) + [""] + level_targets(outcomes)))
        return
    outcomes, waiting, machine = run(opts, echo)
    lines = [
        f"# Serving on {machine['cpu']}",
        "",
        f"CPU flags: {machine['flags']}; {machine['threads']} threads; model "
        f"{machine['model']}; engine capacity {machine['max_rows']} rows per call; ancestral requests "
        f"{machine['ancestral_steps']} steps; {opts.requests} requests per scenario.",
        "",
        *table(outcomes),
        "",
        *kinds_table(outcomes),
        "",
        "Targets:",
        "",
        *targets(outcomes, waiting),
        "",
    ]
    print("\n".join(lines))
    write_report(
        opts.out,
        f"serving-{opts.provider}",
        lines,
        {"machine": machine, "behind": waiting, "outcomes": [asdict(o) for o in outcomes]},
    )


if __name__ == "__main__":
    main()
