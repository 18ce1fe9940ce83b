"""Command-line flags that choose the model and where it runs, shared by ``ddpm-run``, ``ddpm-eval`` and
``ddpm-serve``: ``--model`` beside ``--onnx``, the help of ``--precision`` and ``--provider``, and their
check against the rules of :mod:`.choice` before anything is opened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..core.plan import STUDENT_SAMPLER
from .choice import DEFAULT_EMBEDDED, DESCRIPTIONS, EMBEDDED, EMBEDDED_STUDENT, ChoiceError, choose_model

PRECISION_HELP = (
    "The arithmetic on a CPU: 'fp32'; 'int8' the embedded model's int8 copy; 'bf16' the float layers in "
    "bfloat16 on OpenVINO (CPUs with AMX or AVX512-BF16); 'auto' the fastest eligible backend and precision, "
    "measured once per machine and cached (bf16 and int8 only where their ε stays within 5% of fp32's). "
    "With --onnx: fp32 (the file as it is), auto or bf16."
)
PROVIDER_HELP = (
    "Where the network runs: ONNX Runtime's 'cpu', 'cuda' or 'tensorrt' provider, or OpenVINO's CPU backend "
    "('openvino', the openvino extra); 'auto' uses CUDA when a GPU is usable, else the fastest CPU path."
)
EVAL_PRECISION_HELP = (
    "When sampling: 'fp32'; 'int8' the embedded model's int8 copy; 'bf16' on OpenVINO; 'auto' the fastest "
    "eligible CPU path, as ddpm-run picks it."
)


MODEL_HELP = (
    "A model shipped with the package, by name: "
    + "; ".join(f"'{name}': {DESCRIPTIONS[name]}" for name in EMBEDDED)
    + f". --onnx names any exported file instead. [default: {DEFAULT_EMBEDDED}; {EMBEDDED_STUDENT} with --sampler "
    f"{STUDENT_SAMPLER}]"
)


def model_option(function: Callable) -> Callable:
    """``--model NAME``: an embedded model (the commands that take --onnx also take this)."""
    return click.option("--model", "model_name", type=click.Choice(tuple(EMBEDDED)), default=None, help=MODEL_HELP)(
        function
    )


def chosen_model(onnx_path: Path | None, model_name: str | None, sampler: str | None = None) -> Path | str | None:
    """What --onnx and --model name together: a file, an embedded model's name, or None (the default);
    with neither, ``--sampler consistency`` names the embedded few-step student."""
    if onnx_path is not None and model_name is not None:
        raise click.UsageError("--onnx and --model both name the model; give one of them")
    if onnx_path is None and model_name is None and sampler == STUDENT_SAMPLER:
        return EMBEDDED_STUDENT
    return onnx_path if onnx_path is not None else model_name


def check_model_flags(model: Path | str | None, provider: str, precision: str, cuda_graph: bool = False) -> None:
    """--onnx or --model, --provider and --precision (and --engine cudagraph) against the rules of
    :mod:`.choice`, before anything is opened: a refusal is a usage error (exit 2), said in the flags."""
    try:
        choose_model(model, provider, precision, cuda_graph)
    except ChoiceError as exc:
        raise click.UsageError(exc.flags) from None
