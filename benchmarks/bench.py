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

This module is the command and the order of the run; the jobs are beside it: machine.py (the
machine and its limits), models.py (the networks and their variants), steps.py (step timing),
loop.py (full-loop and per-sampler timing), report.py (rates, targets, result files).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..core.console import OutputPath, run_command
from ..core.errors import DDPMError
from ..core.files import check_writable_dir
from ..runtime.session import PROVIDERS as SESSION_PROVIDERS
from ..runtime.session import gpu_present
from .loop import sampler_batch, time_full_loop, time_samplers
from .machine import describe_machine, measure_limits, try_import_torch, usable_cpus
from .models import BenchModel, prepare_models
from .report import fill_rates, latent64_lines, latent_lines, student_lines, target_lines, write_results
from .steps import IMPLEMENTATIONS, SETTLE_SECONDS, Row, time_model

PROVIDERS = tuple(
    alias for alias in SESSION_PROVIDERS if alias != "tensorrt"
)  # TensorRT is an implementation on "cuda"
MODELS = ("small", "latent", "latent64", "student", "labml")
RESULTS_DIR = Path("bench-results")  # in the current directory: never inside the installed package
QUICK_WARMUP, QUICK_REPEATS = 2, 10


class CommaList(click.ParamType):
    def __init__(self, choices: tuple[str, ...] | None = None, integers: bool = False) -> None:
        self.choices, self.integers = choices, integers
        self.name = "LIST"

    def convert(self, value: Any, param: Any, ctx: Any) -> list:
        if isinstance(value, list):
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if not items:
            self.fail("give at least one entry", param, ctx)
        if self.integers:
            try:
                numbers = [int(item) for item in items]
            except ValueError:
                self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
            if any(n < 1 for n in numbers):
                self.fail(f"{value!r}: batch sizes must be >= 1", param, ctx)
            return numbers
        unknown = [item for item in items if item not in self.choices]
        if unknown:
            self.fail(f"unknown {', '.join(unknown)}; choose from {', '.join(self.choices)}", param, ctx)
        return items


def check_tag(tag: str | None) -> str | None:
    """A tag names files inside --out-dir: no path separators, no leading dot, a sane length."""
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", tag):
        raise click.BadParameter(f"{tag!r}: use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
    return tag


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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--models",
    type=CommaList(MODELS),
    default=None,
    help="Which networks to time: 'small' the pixel model, 'latent' the latent one (U-Net on 8x8 latents, its "
    "decoder in the sampler rows), 'latent64' the latent model of 64x64 digits (the same 8x8 latents, a larger "
    "decoder), 'student' the latent model's few-step student (its sampler rows: 1 to 4 consistency calls), "
    "'labml' the seed's. [default: small,latent,latent64,student,labml; small,latent,latent64,student with --quick]",
)
@click.option(
    "--implementations",
    type=CommaList(IMPLEMENTATIONS),
    default=",".join(IMPLEMENTATIONS),
    help="Which implementations; those a provider cannot run are left out, those missing a package get a note.",
)
@click.option(
    "--providers", type=CommaList(PROVIDERS), default=None, help="[default: cpu, plus cuda when a GPU is present]"
)
@click.option(
    "--cpu-batches",
    type=CommaList(integers=True),
    default="1,16",
    help="Batch sizes on the CPU (--cpu-batches 1,16,32,64 to find each CPU path's best batch).",
)
@click.option("--gpu-batches", type=CommaList(integers=True), default="1,16,64,256", help="Batch sizes on the GPU.")
@click.option("--warmup", type=click.IntRange(min=1), default=3, help="Untimed steps before each row.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, help="Timed steps per row.")
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="CPU threads for PyTorch and ONNX Runtime. [default: the CPUs this process may use]",
)
@click.option("--full-loop/--no-full-loop", default=True, help="Also time the whole T-step loop at batch 1 per model.")
@click.option(
    "--samplers/--no-samplers",
    default=True,
    help="Also time a whole batch per sampler at its recommended step count (small, latent and student models; "
    "ancestral not with --quick).",
)
@click.option(
    "--onnx",
    "small_onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="ONNX file for the 'small' rows. [default: the embedded model]",
)
@click.option(
    "--latent-onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="A latent model for the 'latent' rows (its decoder beside it). [default: the embedded latent model]",
)
@click.option(
    "--latent64-onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="A latent model of 64x64 digits for the 'latent64' rows (its decoder beside it). "
    "[default: the embedded latent64 model]",
)
@click.option(
    "--student-onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="A few-step student (ddpm-distill) for the 'student' rows. [default: the embedded latent-student]",
)
@click.option(
    "--labml-onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="An exported labml network; without it one with random weights is exported first (needs PyTorch).",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"A shorter run: the small, latent and student models, {QUICK_WARMUP} warm-up and {QUICK_REPEATS} timed "
    "steps per row, one whole 1000-step loop for each of small and latent, and the fast samplers. Its "
    "time depends on the CPU: a few minutes on 2 cores.",
)
@click.option(
    "--out-dir",
    type=OutputPath(folder=True),
    default=RESULTS_DIR,
    show_default=False,
    help="Where the JSON, Markdown and PNG go; the run's first line says where (this repository's committed "
    f"results: --out-dir benchmarks/results). The PNG chart needs the bench extra. [default: ./{RESULTS_DIR}/ "
    "in the current folder]",
)
@click.option(
    "--tag",
    default=None,
    callback=lambda ctx, param, value: check_tag(value),
    help="Name of the result files (bench-TAG.*): letters, digits, '.', '_', '-'. [default: cpu, or gpu]",
)
def bench_command(
    models,
    implementations,
    providers,
    cpu_batches,
    gpu_batches,
    warmup,
    repeats,
    threads,
    full_loop,
    samplers,
    small_onnx,
    latent_onnx,
    student_onnx,
    latent64_onnx,
    labml_onnx,
    quick,
    out_dir,
    tag,
) -> None:
    """Time the sampling loop per implementation, provider, batch size and model; write JSON, Markdown and a chart.

    \b
    ddpm-bench --quick                       # small, latent and student models, CPU: a few minutes on 2 cores
    ddpm-bench                               # every model and implementation, CPU (+ CUDA)
    ddpm-bench --providers cuda --labml-onnx labml.onnx
    """
    torch = try_import_torch()
    if threads is None:
        threads = usable_cpus()
    if torch is not None:
        torch.set_num_threads(threads)
    if providers is None:
        providers = ["cpu", "cuda"] if gpu_present() else ["cpu"]
    if "cuda" in providers and not gpu_present():
        raise DDPMError("--providers cuda: no NVIDIA GPU driver found on this machine")
    if models is None:
        models = [name for name in MODELS if name != "labml"] if quick else list(MODELS)
    if labml_onnx is not None and "labml" not in models:
        raise click.UsageError("--labml-onnx is given but labml is not among --models")
    if quick:
        warmup, repeats = QUICK_WARMUP, QUICK_REPEATS
    check_writable_dir(out_dir)
    click.echo(output_line(out_dir, click.get_current_context().get_parameter_source("out_dir")))
    tag = tag or ("gpu" if "cuda" in providers else "cpu") + ("-quick" if quick else "")
    loop_repeats = 1 if quick else 3

    machine = describe_machine(threads, torch)
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as workdir:
        bench_models, notes = prepare_models(
            models, small_onnx, labml_onnx, Path(workdir), torch, echo, latent_onnx, student_onnx, latent64_onnx
        )
        limits = measure_limits(machine, providers, torch, echo)
        batches = {"cpu": cpu_batches, "cuda": gpu_batches}
        rows, row_notes = run_benchmark(
            bench_models,
            implementations,
            providers,
            batches,
            warmup,
            repeats,
            threads,
            full_loop,
            torch,
            echo,
            loop_repeats,
        )
        sampler_rows = []
        for model in (m for m in bench_models if samplers and m.name != "labml"):
            for provider in providers:
                sampler_rows += time_samplers(
                    model, provider, threads, quick, echo, sampler_batch(rows, model, provider)
                )
            if "cpu" in providers and model.name != "small" and not gpu_present():
                # each graph on its own fastest CPU path too, as ddpm-run's auto picks them (provider auto
                # offers OpenVINO beside ONNX Runtime; on a machine with a GPU it would open the GPU)
                batch = sampler_batch(rows, model, "cpu")
                sampler_rows += time_samplers(model, "auto", threads, True, echo, batch, precision="auto")
    notes += row_notes
    for model in bench_models:
        for row in rows:
            if row.model == model.name:
                fill_rates(row, model, limits, model.info.make_schedule().timesteps)
    small = next((model for model in bench_models if model.name == "small"), None)
    targets = target_lines(rows, machine.flags) if small is None or small.embedded else []
    if not targets and small is not None:  # the targets were set for the embedded model; another --onnx has none
        notes.append(
            f"targets not judged: they are set for the embedded model, and --onnx {small.onnx_path.name} is another"
        )
    if small_onnx is None and latent_onnx is None:  # set for the embedded pair, as the others are
        targets += latent_lines(sampler_rows)
    if latent_onnx is None and latent64_onnx is None:
        targets += latent64_lines(sampler_rows)
    targets += student_lines(sampler_rows)
    for line in targets:
        echo(line)

    settings = {
        "warmup": warmup,
        "repeats": repeats,
        "quick": quick,
        "full_loop": full_loop,
        "loop_repeats": loop_repeats,
        "settle_seconds": SETTLE_SECONDS,
    }
    chart_note = write_results(
        out_dir, tag, machine, limits, settings, bench_models, rows, sampler_rows, targets, notes
    )
    if chart_note:
        echo(chart_note)
    click.echo(f"wrote {out_dir / f'bench-{tag}.json'}, .md{'' if chart_note else ', .png'}")


def main() -> None:
    run_command(bench_command, "ddpm-bench")


if __name__ == "__main__":
    main()
