"""The report: per-sample figures and fractions of the limit per row, the targets judged, and the
result files bench-TAG.json, .md and .png."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.files import StagedFiles
from ..runtime.machine import KERNEL_FLAGS
from .machine import Machine
from .models import BenchModel
from .steps import Row

SEED_SECONDS_PER_SAMPLE = 50.0  # the seed's figure: 1000 steps, batch 1, eager PyTorch on a V100


def fill_rates(row: Row, model: BenchModel, limits: dict[str, float], timesteps: int) -> None:
    if row.step_s_median is None:
        return
    if row.per_sample_s is None:
        row.per_sample_s = row.step_s_median * timesteps / row.batch
        row.per_sample_method = "extrapolated"
    row.speedup_vs_seed = SEED_SECONDS_PER_SAMPLE / row.per_sample_s
    if model.flops_per_image is None:
        return
    row.achieved_gflops = model.flops_per_image * row.batch / row.step_s_median / 1e9
    if row.provider == "cpu" and row.implementation == "ov-bf16" and limits.get("cpu_bf16_gflops"):
        row.fraction_of_limit = row.achieved_gflops / limits["cpu_bf16_gflops"]  # bf16 rows against bf16 arithmetic
    elif row.provider == "cpu" and limits.get("cpu_sgemm_gflops"):
        row.fraction_of_limit = row.achieved_gflops / limits["cpu_sgemm_gflops"]
    elif row.provider == "cuda" and limits.get("fp32_tflops"):
        compute = model.flops_per_image * row.batch / (limits["fp32_tflops"] * 1e12)
        memory = (model.weight_bytes or 0.0) / (limits["bandwidth_gbs"] * 1e9)
        row.fraction_of_limit = max(compute, memory) / row.step_s_median


def target_lines(rows: list[Row], flags: Iterable[str] = ()) -> list[str]:
    def find(model, implementation, provider, batch):
        return next(
            (
                r
                for r in rows
                if (r.model, r.implementation, r.provider, r.batch) == (model, implementation, provider, batch)
                and r.step_s_median is not None
            ),
            None,
        )

    lines = []
    ort1, eager1 = find("small", "ort", "cpu", 1), find("small", "eager", "cpu", 1)
    if ort1 and eager1:
        ratio = eager1.step_s_median / ort1.step_s_median
        lines.append(
            f"ONNX Runtime vs eager PyTorch per step, small, CPU, batch 1: {ratio:.2f}x (target >= 2.0x): "
            f"{'met' if ratio >= 2.0 else 'missed'}"
        )
    if ort1 and ort1.per_sample_method.startswith("measured"):
        overhead = float(ort1.note.split("=")[1].split()[0])
        lines.append(
            f"Loop wall time / sum of session.run, small, CPU, batch 1: {overhead:.3f} (target <= 1.05): "
            f"{'met' if overhead <= 1.05 else 'missed'}"
        )
        lines.append(
            f"Per-sample latency, small, CPU, batch 1, full loop: {ort1.per_sample_s:.2f} s (target <= 5 s): "
            f"{'met' if ort1.per_sample_s <= 5.0 else 'missed'}"
        )
    ort16 = find("small", "ort", "cpu", 16)
    if ort16 and ort16.fraction_of_limit is not None:
        lines.append(
            f"Batch 16, small, CPU: {ort16.fraction_of_limit:.0%} of the measured sgemm throughput (target >= 80%): "
            f"{'met' if ort16.fraction_of_limit >= 0.8 else 'missed'}"
        )
    lines += cpu_path_lines(rows, flags)
    best = {implementation: best_batch(rows, "small", implementation, "cpu") for implementation in ("ort", "ort-int8")}
    fp32, int8 = best["ort"], best["ort-int8"]
    if fp32 and int8:
        ratio = fp32.per_sample_s / int8.per_sample_s
        lines.append(
            f"int8 vs fp32 per sample, small, CPU, each at its best batch (fp32 {fp32.batch}, int8 {int8.batch}): "
            f"{ratio:.2f}x (target >= 1.5x): {'met' if ratio >= 1.5 else 'missed'}"
        )
    fastest = min((row for row in best.values() if row), key=lambda row: row.per_sample_s, default=None)
    if fastest:
        lines.append(
            "Whole sampling loop per sample, small, CPU, best batch "
            f"({fastest.implementation}, batch {fastest.batch}): "
            f"{fastest.per_sample_s:.2f} s (target <= 2 s on a 2-core machine): "
            f"{'met' if fastest.per_sample_s <= 2.0 else 'missed'}"
        )
    return lines


CPU_PATHS = ("ort", "ort-int8", "ov", "ov-bf16", "ov-int8")


def cpu_path_lines(rows: list[Row], flags: Iterable[str] = ()) -> list[str]:
    """The fastest CPU path against ONNX Runtime fp32, each at its best batch, and what it makes of a
    1000-step loop and of 20 DPM-Solver++ calls per digit, judged by the target for the CPU's kind
    (``flags``: the ones /proc/cpuinfo lists)."""
    best = {name: row for name in CPU_PATHS if (row := best_batch(rows, "small", name, "cpu"))}
    if "ort" not in best or len(best) < 2:
        return []
    fastest = min(best.values(), key=lambda row: row.per_sample_s)
    ratio = best["ort"].per_sample_s / fastest.per_sample_s
    per_call = fastest.step_s_median / fastest.batch
    flags = set(flags)
    amx = "amx_bf16" in flags
    goal, kind = (
        (2.0, "with AMX")
        if amx
        else (1.3, "with AVX512-BF16 alone")
        if "avx512_bf16" in flags
        else (1.0, "without AMX or AVX512-BF16: nothing slower")
    )
    compared = (
        f"Best CPU path vs ONNX Runtime fp32, small, each at its best batch ({fastest.implementation} batch "
        f"{fastest.batch}, ort batch {best['ort'].batch}): {ratio:.2f}x (target >= {goal:g}x {kind}): "
        f"{'met' if ratio >= goal else 'missed'}"
    )
    loop, calls = per_call * 1000, per_call * 20  # seconds per digit; their targets are set for AMX alone
    loop = (
        "1000-step loop per digit on the best path: "
        f"{loop:.2f} s{_at_most(loop, 1.2, ' with AMX, 2 cores') if amx else ''}; "
        f"20 DPM-Solver++ calls: {calls:.3f} s{_at_most(calls, 0.025) if amx else ''}"
    )
    return [
        "CPU paths at their best batch, per image per call: "
        + ", ".join(
            f"{name} {row.step_s_median / row.batch * 1e3:.2f} ms (batch {row.batch})" for name, row in best.items()
        ),
        compared,
        loop,
    ]


def _at_most(seconds: float, goal: float, where: str = "") -> str:
    return f" (target <= {goal:g} s{where}): {'met' if seconds <= goal else 'missed'}"


def best_batch(rows: list[Row], model: str, implementation: str, provider: str) -> Row | None:
    """The row of the batch size with the lowest time per sample (step time x T / B, not a full-loop row)."""
    timed = [
        row
        for row in rows
        if (row.model, row.implementation, row.provider) == (model, implementation, provider)
        and row.per_sample_s is not None
        and not row.per_sample_method.startswith("measured")
    ]
    return min(timed, key=lambda row: row.per_sample_s, default=None)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(
    rows: list[Row],
    machine: Machine,
    limits: dict[str, Any],
    targets: list[str],
    notes: list[str],
    sampler_rows: list[dict] = (),
) -> str:
    lines = [
        f"# ddpm-bench results ({machine.cpu}{', ' + machine.gpu if machine.gpu else ''})",
        "",
        f"CPU flags: {', '.join(machine.flags) or 'none of ' + ', '.join(KERNEL_FLAGS)}; {machine.threads} threads; "
        f"versions: {', '.join(f'{k} {v}' for k, v in machine.versions.items())}.",
        "Limits measured in the same run: "
        + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in limits.items())
        + ".",
        f"Speedup = the seed's {SEED_SECONDS_PER_SAMPLE:.0f} s per sample ÷ the row's per-sample latency.",
        "",
        "| model | implementation | provider | batch | step median (min-max) ms | per-sample s | how | x seed "
        "| GFLOP/s | of limit | note |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        step = (
            "-"
            if r.step_s_median is None
            else f"{r.step_s_median * 1e3:.2f} ({r.step_s_min * 1e3:.2f}-{r.step_s_max * 1e3:.2f})"
        )
        lines.append(
            f"| {r.model} | {r.implementation} | {r.provider} | {r.batch} | {step} | {fmt(r.per_sample_s, '.3f')} | "
            f"{r.per_sample_method} | {fmt(r.speedup_vs_seed, '.1f')} | {fmt(r.achieved_gflops, '.1f')} | "
            f"{fmt(r.fraction_of_limit and r.fraction_of_limit * 100, '.0f')}{'%' if r.fraction_of_limit else ''} "
            f"| {r.note} |"
        )
    lines += ["", "Weights: " + "; ".join(sorted({f"{r.model}: {r.weights}" for r in rows})) + "."]
    lines += sampler_markdown(list(sampler_rows))
    if targets:
        lines += ["", "## Targets", ""] + [f"- {t}" for t in targets]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def sampler_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Samplers: time to a finished digit",
        "",
        "A whole batch per sampler at its recommended step count (the median of 5 runs where one takes under "
        "2 s), each model at its fastest batch (quality per step count: docs/RESULTS.md); a latent model's time "
        "includes its decoder.",
        "",
        "| model | provider | sampler | network calls | batch | ms per sample | decoder share | x seed |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['provider']} | {r['sampler']} | {r['steps']} | {r['batch']} "
        f"| {r['per_sample_s'] * 1e3:.2f} | {100 * r.get('decoder_share', 0.0):.1f}% | {r['speedup_vs_seed']:.0f} |"
        for r in rows
    ]
    return lines


LATENT_SPEEDUP = 8.0  # per digit, latent vs pixel, same sampler, decoder included
LATENT_GOALS = {"ancestral": 1.0, "unipc": 0.010}  # s per digit on a 2-core AVX2-only CPU


def latent_lines(sampler_rows: list[dict]) -> list[str]:
    """Per digit, the latent model against the pixel one with the same sampler and step count on the CPU."""
    found = {(r["model"], r["sampler"], r["steps"]): r for r in sampler_rows if r["provider"] == "cpu"}
    lines = []
    for (model, sampler, steps), latent in found.items():
        pixel = found.get(("small", sampler, steps))
        if model != "latent" or pixel is None:
            continue
        ratio = pixel["per_sample_s"] / latent["per_sample_s"]
        goal = LATENT_GOALS.get(sampler)
        absolute = (
            ""
            if goal is None
            else f"; {latent['per_sample_s'] * 1e3:.2f} ms per digit "
            f"(goal <= {goal * 1e3:g} ms on a 2-core AVX2-only CPU)"
        )
        lines.append(
            f"Latent vs pixel per digit, {sampler} {steps} calls, CPU, decoder included "
            f"({100 * latent['decoder_share']:.1f}% of the latent time): "
            f"{ratio:.1f}x less time (target >= {LATENT_SPEEDUP:g}x): "
            f"{'met' if ratio >= LATENT_SPEEDUP else 'missed'}{absolute}"
        )
    return lines


LATENT64_LIMIT = 1.5  # per digit, the 64x64 latent model against the 32x32 one: only the decoder grows


def latent64_lines(sampler_rows: list[dict]) -> list[str]:
    """Per digit, the 64x64 latent model against the 32x32 one, same sampler and calls, CPU fp32."""
    found = {(r["model"], r["sampler"], r["steps"]): r for r in sampler_rows if r["provider"] == "cpu"}
    lines = []
    for (model, sampler, steps), large in found.items():
        small = found.get(("latent", sampler, steps))
        if model != "latent64" or small is None:
            continue
        ratio = large["per_sample_s"] / small["per_sample_s"]
        lines.append(
            f"64x64 vs 32x32 latent model per digit, {sampler} {steps} calls, CPU, decoder included "
            f"({100 * large['decoder_share']:.1f}% vs {100 * small['decoder_share']:.1f}%): {ratio:.2f}x the time "
            f"(target <= {LATENT64_LIMIT:g}x): {'met' if ratio <= LATENT64_LIMIT else 'missed'}"
        )
    return lines


STUDENT_CALLS, STUDENT_GOAL = (
    2,
    0.002,
)  # a finished digit from the latent student: s per digit on a 2-core AVX2-only CPU


def student_lines(sampler_rows: list[dict]) -> list[str]:
    """Per digit, the few-step student at its 2 calls on the CPU, decoder included, against its goal."""
    return [
        f"Student per digit, {r['sampler']} {r['steps']} calls, {r['provider']}, batch {r['batch']}, decoder included "
        f"({100 * r['decoder_share']:.1f}%): {r['per_sample_s'] * 1e3:.2f} ms (goal <= {STUDENT_GOAL * 1e3:g} ms on a "
        f"2-core AVX2-only CPU)"
        for r in sampler_rows
        if r["model"] == "student" and r["provider"].startswith("cpu") and r["steps"] == STUDENT_CALLS
    ]


def write_chart(rows: list[Row], staged: StagedFiles, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'chart skipped: matplotlib is not installed (pip install "ddpm-mnist[bench]")'
    shown = [r for r in rows if r.per_sample_s is not None]
    if not shown:
        return "chart skipped: no timed rows"
    labels = [f"{r.model} {r.implementation} {r.provider} b{r.batch}" for r in shown]
    values = [r.per_sample_s for r in shown]
    figure, axis = plt.subplots(figsize=(9, 0.32 * len(shown) + 1.5))
    colours = ["tab:blue" if "measured" in r.per_sample_method else "tab:gray" for r in shown]
    axis.barh(range(len(shown)), values, color=colours)
    axis.axvline(SEED_SECONDS_PER_SAMPLE, color="tab:red", linestyle="--", label="seed: 50 s per sample (V100, eager)")
    axis.set_yticks(range(len(shown)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("seconds per sample, 1000 steps (log scale; blue: measured loop, grey: extrapolated)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(staged.stage(path), dpi=110, format="png")
    plt.close(figure)
    return None


def write_results(
    out_dir: Path,
    tag: str,
    machine: Machine,
    limits: dict[str, Any],
    settings: dict[str, Any],
    models: list[BenchModel],
    rows: list[Row],
    sampler_rows: list[dict],
    targets: list[str],
    notes: list[str],
) -> str | None:
    """bench-TAG.json, .md and .png, staged so that a failure leaves none of them; returns why the
    chart was skipped, when it was."""
    report = {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": asdict(machine),
        "limits": limits,
        "seed_seconds_per_sample": SEED_SECONDS_PER_SAMPLE,
        "settings": settings,
        "models": {
            m.name: {"onnx": str(m.onnx_path), "weights": m.weights, "flops_per_image_step": m.flops_per_image}
            for m in models
        },
        "rows": [asdict(r) for r in rows],
        "sampler_rows": sampler_rows,
        "targets": targets,
        "notes": notes,
    }
    with StagedFiles() as staged:
        staged.stage(out_dir / f"bench-{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
        staged.stage(out_dir / f"bench-{tag}.md").write_text(
            markdown(rows, machine, limits, targets, notes, sampler_rows)
        )
        chart_note = write_chart(rows, staged, out_dir / f"bench-{tag}.png")
        staged.commit()
    return chart_note
