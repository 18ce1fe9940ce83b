"""Quality against network calls for every sampler: FD, confidence and class deviation by the judge
(as ``ddpm-eval``) and seconds per sample at batch 16, for one model; a table and a plot.

    python -m ddpm.benchmarks.sampler_quality --data-dir ../shared/data/mnist --work /tmp/samplers -n 1000
    python -m ddpm.benchmarks.sampler_quality ... --onnx runs/cond/unet.onnx --digit all   # conditional, guided
    python -m ddpm.benchmarks.sampler_quality ... --report-only --out benchmarks/results --tag default

Each setting's scores are cached in WORK, so an interrupted job continues. Latency comes from the same
runs; on a machine busy with other work, time every cached setting again in a quiet moment with
--latency-only (one batch of 16 each). --from-eval adds a setting scored elsewhere (a ddpm-eval --json
report of the same model, N and seed, e.g. the 1000-step loop run on a GPU); the table names its source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..core.mnist import load_mnist
from ..core.plan import SamplingPlan
from ..core.samplers import SPECS
from ..runtime.pipeline import DDPM
from ..runtime.quality import Judge, score, to_judge_size

CALLS = (5, 10, 20, 50)
REFERENCE_STEPS = 1000  # the shipped models' T: the reference loop runs once, at all of them


def registry_settings() -> list[tuple[str, float | None, int]]:
    """(sampler, η, calls) for every registered sampler: one without a default number of calls (the
    reference loop) once at all T steps, every other at each of CALLS; one with an η at both its ends
    (DDIM: 0 deterministic, 1 as noisy as the ancestral sampler)."""
    settings = []
    for spec in (spec for spec in SPECS if not spec.student):  # a student's own sampler: ddpm-eval on the student
        eta = spec.option("eta")
        etas = (float(eta.low), float(eta.high)) if eta is not None else (None,)
        for value in etas:
            settings += [(spec.name, value, calls) for calls in ((REFERENCE_STEPS,) if spec.steps is None else CALLS)]
    return settings


SETTINGS = registry_settings()
BATCH = 16


def label(sampler: str, eta: float | None) -> str:
    return f"{sampler} (η {eta:g})" if eta is not None else sampler


def plan(
    ddpm: DDPM, sampler: str, eta: float | None, calls: int, labels: np.ndarray | None, guidance: float | None
) -> SamplingPlan:
    """The setting's plan; requested digits are guided (None: ddpm-run's default guidance)."""
    return ddpm.plan(sampler, calls, digits=labels, guidance=guidance if labels is not None else None, eta=eta)


def measure(ddpm: DDPM, sampler: str, eta: float | None, calls: int, opts, judge, reference, labels) -> dict:
    run = ddpm.generate(opts.n, plan(ddpm, sampler, eta, calls, labels, opts.guidance), seed=0, batch_size=BATCH)
    transform = ddpm.info.source.get("transform", "pad")
    scores = score(*judge(to_judge_size(run.images, transform)), reference, labels)
    return {
        "sampler": sampler,
        "eta": eta,
        "calls": calls,
        "n": opts.n,
        "seconds_per_sample": run.seconds / opts.n,
        "spacing": run.settings.options.get("spacing"),
        "samples": scores.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=None, help="Model to sample. [default: the embedded one]")
    parser.add_argument(
        "--digit", choices=["all"], default=None, help="Conditional models: every digit in turn, guided."
    )
    parser.add_argument("--guidance", type=float, default=None, help="Guidance with --digit. [default: ddpm-run's]")
    parser.add_argument("-n", type=int, default=1000, help="Samples per setting.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads.")
    parser.add_argument("--data-dir", type=Path, default=Path("data/mnist"))
    parser.add_argument("--work", type=Path, required=True, help="Cache of per-setting results (outside git).")
    parser.add_argument("--only", default=None, help="Comma-separated samplers to run (default: all).")
    parser.add_argument("--report-only", action="store_true", help="Write the table and plot from the cache.")
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="Time one batch of 16 for every cached setting (on a quiet machine) and keep that latency.",
    )
    parser.add_argument(
        "--from-eval",
        type=Path,
        action="append",
        default=[],
        metavar="REPORT",
        help="Add the scores of a ddpm-eval --json report of this model (repeatable).",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="default", help="Result files: sampler-quality-TAG.{md,json,png}.")
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    test_images, test_labels = load_mnist(opts.data_dir, "test")
    half = len(test_images) // 2
    judge = Judge(threads=opts.threads)
    reference = judge(test_images[half:])[1]
    labels = np.resize(np.arange(10, dtype=np.int64), opts.n) if opts.digit else None
    floor = score(
        *judge(test_images[: opts.n]), reference, test_labels[: opts.n] if labels is not None else None
    ).to_dict()
    for path in opts.from_eval:
        imported = from_eval(path, opts.n)
        (opts.work / f"{imported['sampler']}-{imported['eta']}-{imported['calls']}-n{opts.n}.json").write_text(
            json.dumps(imported, indent=2) + "\n"
        )
    if opts.latency_only:
        time_cached(DDPM.load(opts.onnx, provider="cpu", threads=opts.threads), opts, labels)
    elif not opts.report_only:
        ddpm = DDPM.load(opts.onnx, provider="cpu", threads=opts.threads)
        for sampler, eta, calls in SETTINGS:
            if opts.only and sampler not in opts.only.split(","):
                continue
            cache = opts.work / f"{sampler}-{eta}-{calls}-n{opts.n}.json"
            if cache.exists():
                continue
            result = measure(ddpm, sampler, eta, calls, opts, judge, reference, labels)
            cache.write_text(json.dumps(result, indent=2) + "\n")
            s = result["samples"]
            print(
                f"{label(sampler, eta):16s} {calls:5d} calls: FD {s['frechet_distance']:7.1f}  "
                f"confidence {s['confidence']:.3f}  {result['seconds_per_sample']:.3f} s/sample",
                flush=True,
            )
    results = [json.loads(p.read_text()) for p in sorted(opts.work.glob(f"*-n{opts.n}.json"))]
    report(results, floor, opts)


def from_eval(path: Path, n: int) -> dict:
    """A cache entry from a ddpm-eval report; its latency is left to --latency-only."""
    report = json.loads(path.read_text())
    source, samples = report["source"], report["samples"]
    if samples["count"] != n or source.get("seed") != 0:
        raise SystemExit(f"{path}: N = {samples['count']}, seed {source.get('seed')}; this table is N = {n}, seed 0")
    return {
        "sampler": source["sampler"],
        "eta": source.get("eta"),
        "calls": source["steps"],
        "n": n,
        "seconds_per_sample": None,
        "spacing": source.get("spacing"),
        "samples": samples,
        "note": f"scores from ddpm-eval on {source.get('provider', '?')} ({path.name})",
    }


def time_cached(ddpm: DDPM, opts, labels) -> None:
    """Per-sample seconds of one batch of 16 for every cached setting, written back to the cache."""
    for cache in sorted(opts.work.glob(f"*-n{opts.n}.json")):
        result = json.loads(cache.read_text())
        run = ddpm.generate(
            BATCH,
            plan(ddpm, result["sampler"], result["eta"], result["calls"], labels, opts.guidance),
            seed=0,
            batch_size=BATCH,
        )
        result["seconds_per_sample"] = run.seconds / BATCH
        result["latency"] = f"one batch of {BATCH}, timed apart from the scores"
        cache.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{label(result['sampler'], result['eta']):16s} {result['calls']:5d} calls: "
            f"{run.seconds / BATCH:.3f} s/sample",
            flush=True,
        )


def report(results: list[dict], floor: dict, opts) -> None:
    order = {(s, e, c): i for i, (s, e, c) in enumerate(SETTINGS)}
    results.sort(key=lambda r: order.get((r["sampler"], r["eta"], r["calls"]), 99))
    base = next((r for r in results if r["sampler"] == "ancestral"), None)
    accuracy = "accuracy" in floor and floor["accuracy"] is not None
    head = (
        "| sampler | network calls | FD | ÷ ancestral FD | confidence | largest class deviation |"
        + (" judged as requested |" if accuracy else "")
        + " s per sample (batch 16) |"
    )
    lines = [
        f"N = {opts.n} per row, seed 0; floor (as many real test digits): FD {floor['frechet_distance']:.1f}, "
        f"confidence {floor['confidence']:.3f}, largest class deviation {floor['max_class_deviation']:.3f}.",
        "",
        head,
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if accuracy else "") + "---:|",
    ]
    for r in results:
        s = r["samples"]
        ratio = f"{s['frechet_distance'] / base['samples']['frechet_distance']:.2f}" if base else "-"
        lines.append(
            f"| {label(r['sampler'], r['eta'])} | {r['calls']} | {s['frechet_distance']:.1f} | {ratio} "
            f"| {s['confidence']:.3f} | {s['max_class_deviation']:.3f} |"
            + (f" {s['accuracy']:.3f} |" if accuracy else "")
            + (f" {r['seconds_per_sample']:.3f} |" if r["seconds_per_sample"] is not None else " - |")
        )
    notes = [f"- {label(r['sampler'], r['eta'])}, {r['calls']} calls: {r['note']}" for r in results if r.get("note")]
    if any(r.get("latency") for r in results):
        notes.append(f"- Latency: one batch of {BATCH} per setting, timed apart from the scores (`--latency-only`).")
    if notes:
        lines += ["", *notes]
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"sampler-quality-{opts.tag}.md").write_text("\n".join(lines) + "\n")
    (opts.out / f"sampler-quality-{opts.tag}.json").write_text(
        json.dumps({"floor": floor, "results": results}, indent=2) + "\n"
    )
    plot(results, floor, opts.out / f"sampler-quality-{opts.tag}.png")
    print("\n".join(lines))


def plot(results: list[dict], floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    results = [r for r in results if r["seconds_per_sample"] is not None]
    for key in dict.fromkeys((r["sampler"], r["eta"]) for r in results):
        points = [r for r in results if (r["sampler"], r["eta"]) == key]
        ax.plot(
            [r["seconds_per_sample"] for r in points],
            [r["samples"]["frechet_distance"] for r in points],
            marker="o",
            label=label(*key),
        )
        for r in points:
            ax.annotate(
                str(r["calls"]),
                (r["seconds_per_sample"], r["samples"]["frechet_distance"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(floor["frechet_distance"], color="grey", ls="--", label="real digits (floor)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="seconds per sample (CPU, batch 16; labels: network calls)",
        ylabel="Fréchet distance (judge features)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
