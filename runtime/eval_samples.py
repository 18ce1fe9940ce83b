"""The images ``ddpm-eval`` scores: those of a ``ddpm-run --npz`` archive, or drawn from a model here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.files import check_distinct_paths
from ..core.progress import Progress
from .eval_options import EvalArgs
from .pipeline import DDPM, open_model
from .samples_file import SETTINGS_KEPT, read_samples
from .sampling_cli import SamplingRequest, sampling_request


def samples_to_score(args: EvalArgs, model: Path | str | None, limit: int) -> tuple[np.ndarray, dict, dict]:
    """The images (at most ``limit`` from an archive), their settings (the model's transform among them),
    and the report's note of their source."""
    if args.npz is not None:
        return read_samples(args.npz, limit)
    # --json against the decoder too, before auto's CPU timing
    ddpm = open_model(
        model,
        args.provider,
        args.precision,
        args.threads,
        args.device_id,
        check=lambda opened: check_distinct_paths({"--json": args.json_path}, opened.decoder_files()),
    )
    request = sampling_request(ddpm, args.num_samples, args.digit, **args.sampling)
    return draw_samples(ddpm, request, args.seed, args.batch_size, args.quiet)


def draw_samples(
    ddpm: DDPM, request: SamplingRequest, seed: int, batch_size: int | None, quiet: bool
) -> tuple[np.ndarray, dict, dict]:
    """Images drawn by the plan, with a progress bar; their settings (the model's transform among
    them); and the report's note of their source and speed."""
    progress = Progress(request.plan.steps, f"sample {request.n}", unit="step", enabled=not quiet)
    with progress:
        run = ddpm.generate(
            request.n, request.plan, seed=seed, batch_size=batch_size, on_step=lambda done, total: progress.update(1)
        )
    # The recorded form, as an --npz archive of this run would hold it: the rest of ddpm-eval reads
    # drawn and stored samples' settings alike.
    recorded = run.settings.to_dict()
    source = {
        "onnx": str(ddpm.session.path),
        **{k: recorded[k] for k in SETTINGS_KEPT if k in recorded},
        "sampling_seconds": run.seconds,
        "seconds_per_sample": run.seconds / request.n,
        "provider": ddpm.provider,
    }
    return run.images, recorded, source
