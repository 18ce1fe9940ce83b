"""Full-loop timing: the whole T-step ``ddpm-run`` loop at batch 1 (the "measured" per-sample
latency), and one whole batch per sampler at its recommended step count (the time to a finished digit)."""

from __future__ import annotations

from collections.abc import Callable

from ..core.plan import STUDENT_SAMPLER
from ..runtime.pipeline import DDPM
from ..runtime.precision import BACKENDS
from .models import BenchModel
from .report import SEED_SECONDS_PER_SAMPLE
from .steps import Row, settle

LOOP_BUDGET_SECONDS = 60.0  # stop repeating a model's full loop once this much time went into it
# Each sampler at the step count the README recommends for it: time to a finished digit.
SAMPLER_SETTINGS = (("ancestral", 1000), ("ddim", 50), ("dpm++2m", 20), ("dpm++2m-sde", 20), ("unipc", 10))
SAMPLER_BATCH = 16  # on the CPU, where the model's rows name no faster batch
REPEAT_BELOW_S, SHORT_RUNS = 2.0, 5  # a sampler row shorter than this is the median of this many runs


def time_full_loop(
    model: BenchModel, rows: list[Row], provider: str, threads: int, loop_repeats: int, echo: Callable[[str], None]
) -> str | None:
    """The median of up to ``loop_repeats`` whole loops at batch 1, written into the model's timed
    'ort' batch-1 row; without that row, a note saying why the loop was not timed."""
    row = next(
        (
            r
            for r in rows
            if (r.model, r.implementation, r.provider, r.batch) == (model.name, "ort", provider, 1)
            and r.step_s_median is not None
        ),
        None,
    )
    if row is None:
        return f"{model.name}: full loop not timed (it runs in the 'ort' row at batch 1, which is not selected)"
    ddpm = DDPM.load(model.onnx_path, provider=provider, threads=threads if provider == "cpu" else None)
    runs = []
    while len(runs) < loop_repeats and sum(r.seconds for r in runs) < LOOP_BUDGET_SECONDS:
        settle()
        runs.append(ddpm.generate(1, seed=0, batch_size=1, engine="plain"))  # as the 'ort' row calls it
    runs.sort(key=lambda r: r.seconds)
    run = runs[len(runs) // 2]
    row.per_sample_s = run.seconds
    row.per_sample_method = f"measured ({run.settings.steps}-step loop, median of {len(runs)})"
    row.note = (
        f"loop/session.run = {run.seconds / run.run_seconds:.3f}"
        f" ({run.seconds:.2f} s / {run.run_seconds:.2f} s); loops {runs[0].seconds:.2f}-{runs[-1].seconds:.2f} s"
    )
    echo(
        f"{model.name:6s} full {model.info.make_schedule().timesteps}-step loop, batch 1, {provider}: "
        f"{run.seconds:.2f} s per sample (median of {len(runs)}, {runs[0].seconds:.2f}-{runs[-1].seconds:.2f} s)"
    )
    return None


def sampler_batch(rows: list[Row], model: BenchModel, provider: str) -> int:
    """The batch a model's sampler runs use: on the CPU its fastest 'ort' row's (each model at its best
    batch), else SAMPLER_BATCH; 256 on a GPU."""
    if provider != "cpu":
        return 256
    timed = [
        r
        for r in rows
        if (r.model, r.implementation, r.provider) == (model.name, "ort", provider) and r.step_s_median is not None
    ]
    return min(timed, key=lambda r: r.step_s_median / r.batch).batch if timed else SAMPLER_BATCH


def time_samplers(
    model: BenchModel,
    provider: str,
    threads: int,
    quick: bool,
    echo: Callable[[str], None],
    batch: int = SAMPLER_BATCH,
    precision: str = "fp32",
) -> list[dict]:
    """Whole sampling runs of one batch per sampler (the same seed), seconds per finished sample; a latent
    model's include its decoder, whose share of the time each row records.

    --quick leaves out the 1000-step ancestral run (its time is the full-loop row's, times the batch gain).
    ``precision`` "auto" runs the U-Net and a latent model's decoder each on the path this CPU measures
    fastest for it, as ddpm-run's auto does (an embedded model opened by its name, so that its int8 copies
    are among the paths); the rows' provider then names both paths."""
    on_cpu = provider in ("cpu", "auto")
    source = model.shipped if precision == "auto" and model.shipped else model.onnx_path
    ddpm = DDPM.load(source, provider=provider, threads=threads if on_cpu else None, precision=precision)
    if precision == "auto":
        provider = f"cpu auto ({path_names(ddpm)})"
    rows = []
    settings = SAMPLER_SETTINGS
    if ddpm.info.student is not None:  # a few-step student: its own sampler, at each number of calls it learned
        settings = tuple((STUDENT_SAMPLER, calls) for calls in range(1, len(ddpm.info.student["timesteps"]) + 1))
    for sampler, steps in settings:
        steps = min(steps, ddpm.timesteps)
        if quick and steps > 100:
            continue
        settle()
        runs = [timed_run(ddpm, ddpm.plan(sampler, steps), batch)]
        while runs[0][0] < REPEAT_BELOW_S and len(runs) < SHORT_RUNS:  # a short run is noisy: the median of a few
            runs.append(timed_run(ddpm, ddpm.plan(sampler, steps), batch))
        seconds, decoder_s = sorted(runs)[len(runs) // 2]
        rows.append(
            {
                "model": model.name,
                "provider": provider,
                "sampler": sampler,
                "steps": steps,
                "batch": batch,
                "runs": len(runs),
                "seconds": seconds,
                "per_sample_s": seconds / batch,
                "decoder_share": decoder_s / seconds,
                "speedup_vs_seed": SEED_SECONDS_PER_SAMPLE * batch / seconds,
            }
        )
        echo(
            f"{model.name:6s} {sampler:12s} {steps:4d} steps, {provider}, batch {batch}: "
            f"{seconds / batch:.4f} s per sample"
            + (f" (decoder {100 * decoder_s / seconds:.1f}%)" if ddpm.decoder is not None else "")
            + (f", median of {len(runs)} runs" if len(runs) > 1 else "")
        )
    return rows


def path_names(ddpm: DDPM) -> str:
    """The backend and arithmetic of the U-Net and, for a latent model, of its decoder."""
    unet = f"U-Net {BACKENDS[ddpm.session.backend]} {ddpm.session.precision}"
    if ddpm.decoder is None:
        return unet
    return f"{unet}, decoder {BACKENDS[ddpm.decoder.backend]} {ddpm.decoder.precision}"


def timed_run(ddpm: DDPM, plan, batch: int) -> tuple[float, float]:
    """One whole run of ``batch`` samples (the same seed each time): its seconds, and the decoder's."""
    decoding = ddpm.decoder.run_seconds if ddpm.decoder is not None else 0.0
    run = ddpm.generate(batch, plan, seed=0, batch_size=batch, engine="plain")
    return run.seconds, (ddpm.decoder.run_seconds - decoding if ddpm.decoder is not None else 0.0)
