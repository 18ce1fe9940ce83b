"""The Python API: open an exported model (or the embedded default) and sample digits.

    from ddpm.runtime import DDPM
    ddpm = DDPM.load()                       # embedded model; DDPM.load("unet.onnx") for another
    images = ddpm.sample(16, seed=0)         # uint8 [16, 32, 32]
    run = ddpm.generate(16, ddpm.plan(frames=40), seed=0)
    write_gif("out.gif", run.frames)
    sevens = ddpm.generate(8, ddpm.plan(digits=[7]), seed=0)   # 10 calls of UniPC, guidance 1
    engine = ddpm.serving_engine(); engine.start()             # many requests, one network call per tick

:func:`open_model` is the one way a model is opened, for ``DDPM.load`` and every command: it sits
here, beside the class it returns, above the rules it checks (:mod:`.choice`) and ``auto``'s timing
(:mod:`.precision`), which know sessions alone, so that nothing below imports this module back.

A :class:`~ddpm.core.plan.SamplingPlan` holds how to sample, checked against the model once.
``generate`` runs one request on the continuous-batching engine (:mod:`.engine`), the one sampling
loop of the runtime.

Same seed, same samples: x_T and every step's noise come from one ``numpy.random.Generator``
and are drawn for the whole request at once, so neither the batch size nor the provider changes
which noise a sample gets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DDPMError
from ..core.metadata import ModelInfo
from ..core.plan import SamplingPlan, SettingError
from ..core.progress import Progress
from ..core.record import RunSettings
from ..core.variant import Variant
from . import cpu_batch
from .choice import DEFAULT_EMBEDDED, EMBEDDED, choose_model, open_session
from .decoder import Decoder, decoder_backend, int8_decoder_path
from .decoder_choice import fastest_decoder
from .engine import Job, SampleRun, SamplingEngine, class_prior_labels, frame_positions
from .installed import models_dir
from .precision import fastest_path
from .session import UNetSession

__all__ = [
    "DDPM",
    "SampleRun",
    "open_model",
    "default_model_path",
    "class_prior_labels",
    "frame_positions",
    "Job",
    "SamplingEngine",
]

ENGINES = ("auto", "plain", "iobinding")
DEFAULT_MODEL = EMBEDDED[DEFAULT_EMBEDDED]  # class-conditional: ddpm-run with and without --digit
GPU_ROWS = 256  # rows per network call on a GPU unless told otherwise


def embedded_model_path(name: str, precision: str = "fp32") -> Path:
    """The file of the embedded model ``name`` (see :data:`~ddpm.runtime.choice.EMBEDDED`); ``precision``
    "int8" names its int8 copy for CPUs, when the package ships one."""
    path = models_dir() / Variant(precision).file_name(EMBEDDED[name])
    if not path.is_file():
        raise DDPMError(f"the embedded {precision} model is missing from this installation ({path})")
    return path


def default_model_path(precision: str = "fp32") -> Path:
    """The model shipped inside the package (the ``small`` preset, EMA weights, class-conditional),
    sampled when no model is named, with or without requested digits; ``precision`` "int8" names its
    int8 copy for CPUs, when the package ships one."""
    return embedded_model_path(DEFAULT_EMBEDDED, precision)


class DDPM:
    """An exported DDPM U-Net with its sampler; a latent model's with its decoder (:mod:`.decoder`),
    which turns the latents every sampler finishes with into images."""

    def __init__(self, session: UNetSession) -> None:
        self.session = session
        self.info: ModelInfo = session.info
        if self.info.latent is None:
            self.decoder = None
        else:
            backend, precision = decoder_backend(session)
            self.decoder = Decoder(session.path, self.info, session.threads, backend=backend, precision=precision)
        self.schedule = self.info.make_schedule()
        self._cpu_batch: cpu_batch.BatchChoice | None = None
        self.note: str | None = None  # why this backend and precision, when open_model chose them
        # the timed figure behind that choice, for the first real run to check (cpu_batch.recheck)
        self.path_timing: cpu_batch.Timing | None = None

    def decoder_files(self) -> dict[str, Path]:
        """The files this model reads besides the one it was opened from (a latent model's decoder and
        its int8 copy), named for :func:`~ddpm.core.files.check_distinct_paths`: an output must not be
        one of them either."""
        if self.decoder is None:
            return {}
        copy = int8_decoder_path(self.decoder.path)
        files = {f"the decoder {self.decoder.path.name}": self.decoder.path}
        return files | ({f"the decoder's int8 copy {copy.name}": copy} if copy.is_file() else {})

    @classmethod
    def load(
        cls,
        onnx_path: str | Path | None = None,
        provider: str = "auto",
        threads: int | None = None,
        cuda_graph: bool = False,
        device_id: int = 0,
        precision: str = "fp32",
    ) -> DDPM:
        """Open an exported model; without a path, the embedded one (through :func:`open_model`).

        ``provider``: "auto" (CUDA when a GPU is usable, else ONNX Runtime's CPU provider), "cpu",
        "cuda", "tensorrt", or "openvino" (OpenVINO's CPU backend). ``precision``: "fp32" runs the file
        as it is; "bf16" runs its float layers in bfloat16 on OpenVINO (CPUs with AMX or
        AVX512-BF16); "int8" opens the embedded int8 copy; "auto" picks the fastest eligible backend
        and precision on a CPU (:mod:`.precision`; the reason is in ``note``). ``device_id`` picks
        the GPU on a machine with several.
        """
        return open_model(onnx_path, provider, precision, threads, device_id, cuda_graph)

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def default_batch_size(self) -> int:
        """Sub-batch size when none is given: one batch (up to 256) on a GPU; on a CPU the size fastest
        per image on this machine, measured once and cached (:meth:`batch_choice`)."""
        if not self.session.on_cpu:
            return GPU_ROWS
        return self.batch_choice().batch

    def batch_choice(self, on_measure: Callable[[], None] | None = None) -> cpu_batch.BatchChoice:
        """This CPU's batch choice for the model (see :mod:`cpu_batch`); ``on_measure`` is called before
        a measurement, when the cache has none."""
        if self._cpu_batch is None:
            self._cpu_batch = cpu_batch.choose(self.session, on_measure)
        return self._cpu_batch

    def plan(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        digits: Sequence[int] | None = None,
        guidance: float | None = None,
        frames: int = 0,
        show: str = "xt",
        **options: Any,
    ) -> SamplingPlan:
        """A checked sampling plan for this model; None takes each setting's default. ``options`` are the
        sampler's own settings, e.g. ``eta=`` and ``spacing=`` for DDIM (see :mod:`ddpm.core.samplers`)."""
        return SamplingPlan.build(self.info, self.schedule, sampler, steps, digits, guidance, frames, show, **options)

    def engine(self, choice: str = "auto") -> str:
        """How each step reaches the network: "plain" ``session.run`` with NumPy arrays, or "iobinding"
        (device buffers refreshed in place; a CUDA-graph session replays through them). "auto" binds on
        a GPU and calls ``session.run`` on the CPU, where binding gains nothing."""
        if choice not in ENGINES:
            raise SettingError("engine", f"must be one of {', '.join(ENGINES)}, got {choice!r}")
        if self.session.cuda_graph and choice == "plain":
            raise SettingError("engine", "a CUDA-graph session runs through IOBinding", needs=("engine", "iobinding"))
        if self.session.backend != "onnxruntime" and choice == "iobinding":
            raise SettingError("engine", "IOBinding is ONNX Runtime's; the OpenVINO backend runs plain")
        if choice == "auto":
            return "plain" if self.session.on_cpu and not self.session.cuda_graph else "iobinding"
        return choice

    def generate(
        self,
        n: int,
        plan: SamplingPlan | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
        engine: str = "auto",
        progress: bool | None = None,
    ) -> SampleRun:
        """Run ``plan`` (None: :meth:`plan`'s defaults, the ancestral loop) for ``n`` samples, as one
        request on a :class:`SamplingEngine` of its own.

        A class-conditional model without requested digits draws every class equally often, in an
        order drawn from the seed (see ``class_prior_labels``). ``batch_size``: rows per network call
        (None: one batch on a GPU, the measured fastest on a CPU). ``on_step(done, total)`` after each step.
        ``progress``: a progress bar with its ETA on stderr (None: when stderr is a terminal and no
        ``on_step`` is given).
        """
        plan = plan or self.plan()
        if n < 1:
            raise SettingError("n", f"the number of samples must be >= 1, got {n}")
        if seed < 0:
            raise SettingError("seed", f"must be >= 0, got {seed}")
        if batch_size is not None and batch_size < 1:
            raise SettingError("batch_size", f"must be >= 1, got {batch_size}")
        batch = self.session.fixed_batch or min(batch_size or self.default_batch_size(), n)
        engine = self.engine(engine)
        runner = SamplingEngine(
            self.session, max_rows=batch, binding=engine == "iobinding", max_request_rows=None, decoder=self.decoder
        )
        if progress is None:
            progress = on_step is None and sys.stderr is not None and sys.stderr.isatty()
        bar = Progress(plan.steps, f"sample {n}", unit="step", enabled=progress)
        steps = 0

        def stepped(job: Job) -> None:
            nonlocal steps
            bar.update(job.position - steps)
            steps = job.position
            if on_step is not None:
                on_step(job.position, job.steps)

        self.session.run_seconds, self.session.run_calls, self.session.run_rows = 0.0, 0, 0
        job = runner.submit(n, plan, seed, on_step=stepped)
        with bar:
            runner.run_until_idle()
        run = job.wait(0)
        run.settings = self.record(job, batch, engine)
        return run

    def record(self, job: Job, batch: int, engine: str) -> RunSettings:
        """What is recorded beside a request's samples (npz, PNG text, summary): ``batch`` rows per
        network call, through ``engine`` ("plain" or "iobinding")."""
        plan, labels = job.plan, job.labels
        labelled = (
            {}
            if labels is None
            else {"labels": labels.tolist(), "labels_drawn": job.labels_drawn, "guidance": plan.guidance}
        )
        return RunSettings(
            seed=job.seed,
            num_samples=job.n,
            sampler=plan.sampler,
            steps=plan.steps,
            options=plan.options,
            timesteps=self.timesteps,
            batch_size=batch,
            engine=engine,
            variance=self.info.variance,
            noise_at_last_step=self.info.noise_at_last_step,
            provider=self.provider,
            model=self.session.path.name,
            model_sha256=self.session.file_sha256,
            checkpoint_sha256=str(self.info.source.get("sha256", "")),
            transform=self.info.source.get("transform", "pad"),
            **labelled,
        )

    def serving_engine(
        self, max_rows: int | None = None, engine: str = "auto", max_request_rows: int | None = None
    ) -> SamplingEngine:
        """A :class:`SamplingEngine` for many callers: ``max_rows`` rows per network call (None: the
        measured fastest batch on a CPU, :data:`GPU_ROWS` on a GPU, a fixed-batch model's own).
        ``max_request_rows``: the largest request taken, in rows (None: ``max_rows``); a larger one than
        a call is spread over several calls at each of its steps."""
        for name, value in (("max_rows", max_rows), ("max_request_rows", max_request_rows)):
            if value is not None and value < 1:
                raise SettingError(name, f"must be >= 1, got {value}")
        rows = self.session.fixed_batch or max_rows or (self.batch_choice().batch if self.session.on_cpu else GPU_ROWS)
        return SamplingEngine(
            self.session,
            max_rows=rows,
            binding=self.engine(engine) == "iobinding",
            max_request_rows=max_request_rows or rows,
            decoder=self.decoder,
        )

    def sample(
        self,
        n: int,
        seed: int = 0,
        batch_size: int | None = None,
        steps: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """``n`` finished samples of the ancestral loop (respaced to ``steps``) as uint8 images;
        ``on_step(done, total)`` after each step; ``progress`` as for :meth:`generate`."""
        return self.generate(
            n, self.plan(steps=steps), seed=seed, batch_size=batch_size, on_step=on_step, progress=progress
        ).images

    def animation(
        self, n: int, seed: int = 0, frames: int = 40, batch_size: int | None = None, steps: int | None = None
    ) -> list[np.ndarray]:
        """The denoising as a list of uint8 image batches, pure noise first and the samples last."""
        return self.generate(n, self.plan(steps=steps, frames=frames), seed=seed, batch_size=batch_size).frames


def open_model(
    model: str | Path | None = None,
    provider: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    device_id: int = 0,
    cuda_graph: bool = False,
    on_measure: Callable[[], None] | None = None,
    check: Callable[[DDPM], None] | None = None,
) -> DDPM:
    """A model opened for sampling, with ``note`` saying why this backend and precision run (None:
    nothing to say); the request is checked against the rules of :mod:`.choice` first.

    ``model``: None (the embedded default), an embedded model's name ("pixel"), or an exported file.
    ``provider`` and ``precision``: as :meth:`DDPM.load` takes them. ``check`` sees the model as asked
    for (for "auto", the fp32 reference) before any other path is opened or the CPU timed, so that a
    request it refuses costs no timing; ``on_measure`` is called before the CPU is timed.
    """
    choice = choose_model(model, provider, precision, cuda_graph)
    file = choice.path or embedded_model_path(choice.embedded, "int8" if precision == "int8" else "fp32")
    session = open_session(file, choice.session_provider, precision == "bf16", threads, device_id, cuda_graph)
    ddpm = DDPM(session)
    asked = f"{precision}, as asked" if precision in ("int8", "bf16") else None
    ddpm.note = _joined(asked, ddpm.decoder.note if ddpm.decoder is not None else None)
    if check is not None:
        check(ddpm)
    if precision != "auto" or not session.on_cpu or session.fixed_batch is not None:
        return ddpm
    int8_file = _int8_copy_file(choice.embedded) if choice.embedded else None
    chosen, note, timing = fastest_path(session, int8_file, provider, threads, on_measure)
    ddpm = ddpm if chosen is session else DDPM(chosen)
    ddpm.note, ddpm.path_timing = note, timing
    if ddpm.decoder is not None:
        ddpm.decoder, decoder_note = fastest_decoder(
            ddpm.session, ddpm.info, provider, threads, on_measure, opened=ddpm.decoder
        )
        ddpm.note = _joined(ddpm.note, decoder_note, ddpm.decoder.note)
    return ddpm


def _joined(*notes: str | None) -> str | None:
    return "; ".join(note for note in notes if note) or None


def _int8_copy_file(name: str) -> Path | None:
    """The embedded model's int8 copy, None where the package ships none."""
    try:
        return embedded_model_path(name, "int8")
    except DDPMError:
        return None
