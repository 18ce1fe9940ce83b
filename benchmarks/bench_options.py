"""``ddpm-bench``'s options: the flags, in the order ``--help`` lists them, their list and tag types,
and :class:`BenchArgs`, what they give the command once its defaults are settled."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from ..core.console import OutputPath, with_options
from ..core.errors import DDPMError
from ..runtime.session import PROVIDERS as SESSION_PROVIDERS
from ..runtime.session import gpu_present
from .machine import usable_cpus
from .steps import IMPLEMENTATIONS

PROVIDERS = tuple(name for name in SESSION_PROVIDERS if name != "tensorrt")  # TensorRT: an implementation on cuda
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


OPTIONS = [
    click.option(
        "--models",
        type=CommaList(MODELS),
        default=None,
        help="Which networks to time: 'small' the pixel model, 'latent' the latent one (U-Net on 8x8 latents, its "
        "decoder in the sampler rows), 'latent64' the latent model of 64x64 digits (the same 8x8 latents, a larger "
        "decoder), 'student' the latent model's few-step student (its sampler rows: 1 to 4 consistency calls), "
        "'labml' the seed's. [default: small,latent,latent64,student,labml; small,latent,latent64,student "
        "with --quick]",
    ),
    click.option(
        "--implementations",
        type=CommaList(IMPLEMENTATIONS),
        default=",".join(IMPLEMENTATIONS),
        help="Which implementations; those a provider cannot run are left out, those missing a package get a note.",
    ),
    click.option(
        "--providers", type=CommaList(PROVIDERS), default=None, help="[default: cpu, plus cuda when a GPU is present]"
    ),
    click.option(
        "--cpu-batches",
        type=CommaList(integers=True),
        default="1,16",
        help="Batch sizes on the CPU (--cpu-batches 1,16,32,64 to find each CPU path's best batch).",
    ),
    click.option("--gpu-batches", type=CommaList(integers=True), default="1,16,64,256", help="Batch sizes on the GPU."),
    click.option("--warmup", type=click.IntRange(min=1), default=3, help="Untimed steps before each row."),
    click.option("--repeats", type=click.IntRange(min=1), default=20, help="Timed steps per row."),
    click.option(
        "--threads",
        type=click.IntRange(1, 1024),
        default=None,
        help="CPU threads for PyTorch and ONNX Runtime. [default: the CPUs this process may use]",
    ),
    click.option(
        "--full-loop/--no-full-loop", default=True, help="Also time the whole T-step loop at batch 1 per model."
    ),
    click.option(
        "--samplers/--no-samplers",
        default=True,
        help="Also time a whole batch per sampler at its recommended step count (small, latent and student models; "
        "ancestral not with --quick).",
    ),
    click.option(
        "--onnx",
        "small_onnx",
        type=click.Path(path_type=Path),
        default=None,
        help="ONNX file for the 'small' rows. [default: the embedded model]",
    ),
    click.option(
        "--latent-onnx",
        type=click.Path(path_type=Path),
        default=None,
        help="A latent model for the 'latent' rows (its decoder beside it). [default: the embedded latent model]",
    ),
    click.option(
        "--latent64-onnx",
        type=click.Path(path_type=Path),
        default=None,
        help="A latent model of 64x64 digits for the 'latent64' rows (its decoder beside it). "
        "[default: the embedded latent64 model]",
    ),
    click.option(
        "--student-onnx",
        type=click.Path(path_type=Path),
        default=None,
        help="A few-step student (ddpm-distill) for the 'student' rows. [default: the embedded latent-student]",
    ),
    click.option(
        "--labml-onnx",
        type=click.Path(path_type=Path),
        default=None,
        help="An exported labml network; without it one with random weights is exported first (needs PyTorch).",
    ),
    click.option(
        "--quick",
        is_flag=True,
        help=f"A shorter run: the small, latent and student models, {QUICK_WARMUP} warm-up and {QUICK_REPEATS} timed "
        "steps per row, one whole 1000-step loop for each of small and latent, and the fast samplers. Its "
        "time depends on the CPU: a few minutes on 2 cores.",
    ),
    click.option(
        "--out-dir",
        type=OutputPath(folder=True),
        default=RESULTS_DIR,
        show_default=False,
        help="Where the JSON, Markdown and PNG go; the run's first line says where (this repository's committed "
        f"results: --out-dir benchmarks/results). The PNG chart needs the bench extra. [default: ./{RESULTS_DIR}/ "
        "in the current folder]",
    ),
    click.option(
        "--tag",
        default=None,
        callback=lambda ctx, param, value: check_tag(value),
        help="Name of the result files (bench-TAG.*): letters, digits, '.', '_', '-'. [default: cpu, or gpu]",
    ),
]
bench_options = with_options(OPTIONS)


@dataclass(frozen=True)
class BenchArgs:
    """What ``ddpm-bench``'s flags give the command; :func:`settled` fills the machine's and --quick's defaults."""

    models: list[str] | None
    implementations: list[str]
    providers: list[str] | None
    cpu_batches: list[int]
    gpu_batches: list[int]
    warmup: int
    repeats: int
    threads: int | None
    full_loop: bool
    samplers: bool
    small_onnx: Path | None
    latent_onnx: Path | None
    latent64_onnx: Path | None
    student_onnx: Path | None
    labml_onnx: Path | None
    quick: bool
    out_dir: Path
    tag: str | None

    @property
    def loop_repeats(self) -> int:
        """Whole 1000-step loops per model."""
        return 1 if self.quick else 3


def settled(args: BenchArgs) -> BenchArgs:
    """The flags with their machine- and --quick-dependent defaults filled in, checked against each other."""
    providers = args.providers or (["cpu", "cuda"] if gpu_present() else ["cpu"])
    if "cuda" in providers and not gpu_present():
        raise DDPMError("--providers cuda: no NVIDIA GPU driver found on this machine")
    models = args.models or ([name for name in MODELS if name != "labml"] if args.quick else list(MODELS))
    if args.labml_onnx is not None and "labml" not in models:
        raise click.UsageError("--labml-onnx is given but labml is not among --models")
    tag = args.tag or ("gpu" if "cuda" in providers else "cpu") + ("-quick" if args.quick else "")
    warmup, repeats = (QUICK_WARMUP, QUICK_REPEATS) if args.quick else (args.warmup, args.repeats)
    threads = args.threads or usable_cpus()
    return replace(args, providers=providers, models=models, tag=tag, warmup=warmup, repeats=repeats, threads=threads)
