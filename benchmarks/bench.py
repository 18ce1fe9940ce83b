"""``ddpm-bench``: per-sample latency of the sampling loop across implementations, providers and batch sizes.

One process measures every row side by side, with the machine's own limit beside them:

- implementations: PyTorch eager, TorchScript (traced), ONNX Runtime ``run``, ONNX Runtime with
  IOBinding, IOBinding + CUDA graph (fixed-batch model, CUDA only), the fused-step graph (U-Net
  and update in one graph, x kept on the device; with and without a CUDA graph), fp16 (CUDA
  only; alone and fused with a CUDA graph), TensorRT (when it starts), int8 (CPU only: the
  model's QDQ copy as ``ddpm-export --int8`` makes it, or the package's own for the embedded model),
  and OpenVINO's CPU backend at f32, at bf16 and on the int8 copy (the openvino extra); variants other
  than the model file itself are exported on the spot from the PyTorch module;
- a *step* is one network call plus the DDPM update, in the implementation's own arrays;
- per row: median, min and max step time after warm-up; per-sample latency = step time x T / B
  ("extrapolated"), or the wall time of a whole T-step ``ddpm-run`` loop ÷ B ("measured");
- the limit: FLOPs per image per step (PyTorch's counter) against the sgemm throughput measured in
  the same run (CPU; bf16 rows against a bf16 MatMul through OpenVINO), or against measured fp32
  matmul throughput and copy bandwidth (GPU). The report names the CPU's AMX, AVX512-BF16 and VNNI
  flags, and compares the fastest CPU path with ONNX Runtime fp32, each at its best batch.

This module is the command and the order of the run; the jobs are beside it: bench_options.py (the
flags), machine.py (the machine and its limits), models.py (the networks and their variants), steps.py (step timing),
loop.py (full-loop and per-sampler timing), report.py (rates, targets, result files).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..core.console import run_command
from ..core.files import check_writable_dir
from ..runtime.session import gpu_present
from .bench_options import BenchArgs, bench_options, settled
from .loop import sampler_batch, time_full_loop, time_samplers
from .machine import describe_machine, measure_limits, try_import_torch
from .models import BenchModel, prepare_models
from .report import fill_rates, latent64_lines, latent_lines, student_lines, target_lines, write_results
from .steps import SETTLE_SECONDS, Row, time_model


def output_line(out_dir: Path, source: ParameterSource | None) -> str:
    """The run's first line: where its files go, and how to send them elsewhere when nobody chose."""
    if source is ParameterSource.DEFAULT:
        return f"writing to ./{out_dir}/ (--out-dir to change)"
    return f"writing to {out_dir}/"


def echo(message: str) -> None:
    click.echo(message, err=True)


def run_benchmark(
    models: list[BenchModel],
    implementations: list[str],
    providers: list[str],
    batches: dict[str, list[int]],
    warmup: int,
    repeats: int,
    threads: int,
    full_loop: bool,
    torch,
    echo: Callable[[str], None],
    loop_repeats: int = 3,
) -> tuple[list[Row], list[str]]:
    """Per model: every step row, then the full loop on the first provider."""
    rows, notes = [], []
    for model in models:
        model_rows, model_notes = time_model(
            model, implementations, providers, batches, warmup, repeats, threads, torch, echo
        )
        rows += model_rows
        notes += model_notes
        if (
            full_loop
            and model.info.student is None
            and (note := time_full_loop(model, model_rows, providers[0], threads, loop_repeats, echo))
        ):
            notes.append(note)
    return rows, notes


def time_sampler_rows(bench_models: list[BenchModel], rows: list[Row], args: BenchArgs) -> list:
    """A whole batch per sampler, per model (not labml) and provider, at the batch its rows found best;
    on a CPU-only machine, the latent models' auto path too."""
    sampler_rows = []
    for model in (m for m in bench_models if m.name != "labml"):
        for provider in args.providers:
            batch = sampler_batch(rows, model, provider)
            sampler_rows += time_samplers(model, provider, args.threads, args.quick, echo, batch)
        if "cpu" in args.providers and model.name != "small" and not gpu_present():
            # each graph on its own fastest CPU path too, as ddpm-run's auto picks them (provider auto
            # offers OpenVINO beside ONNX Runtime; on a machine with a GPU it would open the GPU)
            batch = sampler_batch(rows, model, "cpu")
            sampler_rows += time_samplers(model, "auto", args.threads, True, echo, batch, precision="auto")
    return sampler_rows


def judged_targets(
    bench_models: list[BenchModel], rows: list[Row], sampler_rows: list, flags: list[str], args: BenchArgs, notes: list
) -> list[str]:
    """The target lines for the models whose targets were set (the embedded ones); a note where --onnx
    replaced the embedded pixel model."""
    small = next((model for model in bench_models if model.name == "small"), None)
    targets = target_lines(rows, flags) if small is None or small.embedded else []
    if not targets and small is not None:  # the targets were set for the embedded model; another --onnx has none
        notes.append(
            f"targets not judged: they are set for the embedded model, and --onnx {small.onnx_path.name} is another"
        )
    if args.small_onnx is None and args.latent_onnx is None:  # set for the embedded pair, as the others are
        targets += latent_lines(sampler_rows)
    if args.latent_onnx is None and args.latent64_onnx is None:
        targets += latent64_lines(sampler_rows)
    return targets + student_lines(sampler_rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@bench_options
def bench_command(**options: Any) -> None:
    """Time the sampling loop per implementation, provider, batch size and model; write JSON, Markdown and a chart.

    \b
    ddpm-bench --quick                       # small, latent and student models, CPU: a few minutes on 2 cores
    ddpm-bench                               # every model and implementation, CPU (+ CUDA)
    ddpm-bench --providers cuda --labml-onnx labml.onnx
    """
    torch = try_import_torch()
    args = settled(BenchArgs(**options))
    if torch is not None:
        torch.set_num_threads(args.threads)
    check_writable_dir(args.out_dir)
    click.echo(output_line(args.out_dir, click.get_current_context().get_parameter_source("out_dir")))
    machine = describe_machine(args.threads, torch)
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as workdir:
        bench_models, notes = prepare_models(
            args.models,
            args.small_onnx,
            args.labml_onnx,
            Path(workdir),
            torch,
            echo,
            args.latent_onnx,
            args.student_onnx,
            args.latent64_onnx,
        )
        limits = measure_limits(machine, args.providers, torch, echo)
        batches = {"cpu": args.cpu_batches, "cuda": args.gpu_batches}
        rows, row_notes = run_benchmark(
            bench_models,
            args.implementations,
            args.providers,
            batches,
            args.warmup,
            args.repeats,
            args.threads,
            args.full_loop,
            torch,
            echo,
            args.loop_repeats,
        )
        sampler_rows = time_sampler_rows(bench_models, rows, args) if args.samplers else []
    notes += row_notes
    for model in bench_models:
        for row in rows:
            if row.model == model.name:
                fill_rates(row, model, limits, model.info.make_schedule().timesteps)
    targets = judged_targets(bench_models, rows, sampler_rows, machine.flags, args, notes)
    for line in targets:
        echo(line)
    settings = {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "full_loop": args.full_loop,
        "loop_repeats": args.loop_repeats,
        "settle_seconds": SETTLE_SECONDS,
    }
    chart_note = write_results(
        args.out_dir, args.tag, machine, limits, settings, bench_models, rows, sampler_rows, targets, notes
    )
    if chart_note:
        echo(chart_note)
    click.echo(f"wrote {args.out_dir / f'bench-{args.tag}.json'}, .md{'' if chart_note else ', .png'}")


def main() -> None:
    run_command(bench_command, "ddpm-bench")


if __name__ == "__main__":
    main()
