"""What ``ddpm-run`` says on the console: the model's metadata (--info), which model runs where, and the
run's summary (the CPU batch measured, the speed, the seed, the files written)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import cpu_batch
from .cpu_batch import BatchChoice
from .pipeline import DDPM, SampleRun


def show_model_info(ddpm: DDPM) -> None:
    """--info: the model's file, provider and metadata as JSON."""
    info = {key: json.loads(value) for key, value in ddpm.info.to_metadata().items()}
    click.echo(json.dumps({"model": str(ddpm.session.path), "provider": ddpm.provider, **info}, indent=2))


def announce_model(ddpm: DDPM, threads: int | None, engine: str, loop_engine: str) -> None:
    """Which model runs where (and why, where the precision was chosen), and the provider notes not already
    warned about."""
    for note in ddpm.session.notes:
        if note not in ddpm.session.problems:  # those were warned about already
            click.echo(f"ddpm-run: {note}", err=True)
    threads_note = f", {threads} threads" if threads else ""
    click.echo(
        f"model {ddpm.session.path.name}{f' ({ddpm.note})' if ddpm.note else ''} on {ddpm.provider}{threads_note}, "
        f"engine {engine}{f' ({loop_engine})' if engine == 'auto' else ''}",
        err=True,
    )


def summarize(
    ddpm: DDPM, run: SampleRun, choice: BatchChoice | None, sizes: dict[str, int], targets: dict[str, Path | None]
) -> None:
    """The measured CPU batch (when measured now), the run's speed and seed, and the files written."""
    if choice is not None and not choice.cached and choice.per_image_ms:
        tried = ", ".join(f"{batch}: {ms:.2f}" for batch, ms in choice.per_image_ms.items())
        kept = "remembered in" if choice.stored else "could not be remembered in"
        note = f" ({choice.note})" if choice.note else ""
        click.echo(
            f"CPU batch {choice.batch} (ms per image by batch: {tried}); {kept} {cpu_batch.cache_file()}{note}",
            err=True,
        )
    n, seed = run.settings.num_samples, run.settings.seed
    outside = 1.0 - run.run_seconds / run.seconds if run.seconds else 0.0
    precision = (
        "" if ddpm.session.precision == "fp32" or ddpm.session.backend == "openvino" else f"{ddpm.session.precision}, "
    )
    click.echo(
        f"{n} samples x {run.settings.steps} steps in {run.seconds:.1f} s on {ddpm.provider} "
        f"({precision}batch {run.settings.batch_size}): {run.seconds / n:.2f} s per sample, "
        f"{outside:.1%} of the time outside session.run; seed {seed} (--seed {seed} repeats it)",
        err=True,
    )
    for name, size in sizes.items():
        click.echo(f"wrote {targets[name]} ({size / 1e3:.0f} kB)")
