"""``ddpm-eval``: how good are a model's digits? Judge confidence, class balance and Fréchet distance,
beside the same figures for real held-out MNIST digits (the floor). No PyTorch needed."""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import click
import numpy as np

from ..core.console import OutputPath, run_command
from ..core.errors import DDPMError, summary
from ..core.files import StagedFiles, check_distinct_paths, output_target
from ..core.mnist import load_mnist
from ..core.progress import Progress
from .pipeline import DDPM
from .quality import Judge, Scores, score, to_judge_size
from .sampling_cli import SamplingRequest, sampling_options, sampling_request
from .session import PROVIDERS

# The quality targets (README, Quality): FD within this factor of the floor's, unconditional or
# with requested digits; with requested digits also the share judged as requested, overall and
# for the worst digit.
FD_FACTOR = {"drawn": 1.3, "requested": 1.5}
REQUESTED_ACCURACY = 0.98
WORST_DIGIT_ACCURACY = 0.95

# The test set's second half is the reference; its first half supplies the real-data floor.


# The most bytes an --npz member may declare: ddpm-eval scores at most 5000 images (half the test
# set), 5 MB of 32x32 uint8; the cap only stops an archive from claiming gigabytes.
MAX_NPZ_MEMBER_BYTES = 64 << 20

SETTINGS_KEPT = ("seed", "sampler", "steps", "eta", "spacing", "guidance", "model", "model_sha256")


def load_npz(path: Path) -> tuple[np.ndarray, dict]:
    """uint8 ``images`` [N, H, W] and the settings of a ddpm-run archive, checked.

    What the archive claims is checked before anything is inflated or allocated: every member's
    declared size against ``MAX_NPZ_MEMBER_BYTES``, and the shape in each array's header against
    the bytes its member holds (NumPy allocates what a header declares before reading the data).
    """
    if not path.exists():
        raise DDPMError(f"--npz {path} does not exist")
    if path.is_dir():
        raise DDPMError(f"--npz {path} is a directory")
    if path.stat().st_size == 0:
        raise DDPMError(f"--npz {path} is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                # zipfile inflates a member no further than its declared size, so this bounds the inflating.
                if info.file_size > MAX_NPZ_MEMBER_BYTES:
                    raise DDPMError(f"{path}: member {info.filename} declares {info.file_size} bytes, "
                                    f"which exceeds the {MAX_NPZ_MEMBER_BYTES}-byte limit for an archive member")
            names = {info.filename: info for info in members}
            if "images.npy" not in names:
                found = ", ".join(name.removesuffix(".npy") for name in names)
                raise DDPMError(f"{path} has no 'images' array (found: {found or 'nothing'})")
            images = _read_npy_member(path, archive, names["images.npy"])
            settings = json.loads(str(_read_npy_member(path, archive, names["settings.npy"]))) if "settings.npy" in names else {}
    except DDPMError:
        raise
    # zlib.error: corrupt deflate data; RuntimeError: an encrypted member or an unsupported compression method.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, RuntimeError) as exc:
        raise DDPMError(f"{path} is not a readable .npz archive ({summary(exc, 120)})") from None
    if images.dtype != np.uint8:
        raise DDPMError(f"{path}: images are {images.dtype}, expected uint8 (as ddpm-run writes them)")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DDPMError(f"{path}: images have shape {list(images.shape)}, expected [N, H, W] with H = W")
    if len(images) < 2:
        raise DDPMError(f"{path} holds {len(images)} images; at least 2 are needed")
    return images, settings if isinstance(settings, dict) else {}


def _read_npy_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in one .npy member of an open archive, once its header's shape is found to match
    the bytes the member holds."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:  # 3.0 only serves structured dtypes with non-Latin-1 field names, which ddpm-run never writes
            raise DDPMError(f"{path}: {info.filename} uses .npy format {version[0]}.{version[1]}; expected 1.0 or 2.0")
        if dtype.hasobject:
            raise DDPMError(f"{path}: {info.filename} holds Python objects; only plain arrays are read")
        declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any shape
        held = info.file_size - member.tell()  # what follows the header
        if declared > MAX_NPZ_MEMBER_BYTES:
            raise DDPMError(f"{path}: {info.filename} declares shape {list(shape)} of {dtype} ({declared} bytes), "
                            f"which exceeds the {MAX_NPZ_MEMBER_BYTES}-byte limit")
        if declared != held:
            raise DDPMError(f"{path}: {info.filename} declares shape {list(shape)} of {dtype} ({declared} bytes) "
                            f"but holds {held} bytes")
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def targets(samples: Scores, floor: Scores, requested: bool) -> list[str]:
    """The targets each figure is held to; ``requested``: the digits were asked for (``--digit``)."""
    factor = FD_FACTOR["requested" if requested else "drawn"]
    checks = [
        (f"Fréchet distance <= {factor:g} x floor", samples.frechet_distance <= factor * floor.frechet_distance,
         f"{samples.frechet_distance:.3f} vs {factor * floor.frechet_distance:.3f}"),
        ("confidence >= floor - 0.03", samples.confidence >= floor.confidence - 0.03,
         f"{samples.confidence:.3f} vs {floor.confidence - 0.03:.3f}"),
    ]
    if not requested:
        checks.append(("largest class deviation <= 0.03", samples.max_class_deviation <= 0.03,
                       f"{samples.max_class_deviation:.3f}"))
    if requested and samples.accuracy is not None:
        worst = min(a for a in samples.class_accuracy if a is not None)
        checks += [(f"judged as requested >= {REQUESTED_ACCURACY:g}", samples.accuracy >= REQUESTED_ACCURACY,
                    f"{samples.accuracy:.3f}"),
                   (f"worst digit judged as requested >= {WORST_DIGIT_ACCURACY:g}", worst >= WORST_DIGIT_ACCURACY,
                    f"{worst:.3f}")]
    return [f"{name}: {figures}: {'met' if ok else 'missed'}" for name, ok, figures in checks]


def table(samples: Scores, floor: Scores) -> str:
    rows = [
        ("images", f"{samples.count}", f"{floor.count}"),
        ("confidence (top class p > 0.9)", f"{samples.confidence:.3f}", f"{floor.confidence:.3f}"),
        ("largest class deviation from 0.1", f"{samples.max_class_deviation:.3f}", f"{floor.max_class_deviation:.3f}"),
        ("Fréchet distance (judge features)", f"{samples.frechet_distance:.3f}", f"{floor.frechet_distance:.3f}"),
    ]
    if samples.accuracy is not None:
        rows.insert(1, ("judged as the requested digit", f"{samples.accuracy:.3f}", f"{floor.accuracy:.3f}"))
    rows += [(f"  class {digit} share", f"{samples.histogram[digit]:.3f}", f"{floor.histogram[digit]:.3f}") for digit in range(10)]
    if samples.class_accuracy is not None:
        rows += [(f"  digit {digit} judged as requested", f"{a:.3f}", "-" if b is None else f"{b:.3f}")
                 for digit, (a, b) in enumerate(zip(samples.class_accuracy, floor.class_accuracy)) if a is not None]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'samples':>10}  {'real (floor)':>12}"]
    lines += [f"{name:{width}}  {a:>10}  {b:>12}" for name, a, b in rows]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--npz", type=click.Path(path_type=Path), default=None, help="Score the images of a ddpm-run --npz archive.")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), default=None,
              help="Sample this exported model (without --npz). [default: the embedded class-conditional model]")
@click.option("-n", "--num-samples", type=click.IntRange(min=2), default=1000,
              help="Samples to draw when sampling (the floor uses as many real images; at most half the test set).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, help="Seed when sampling (fixed, so scores compare).")
@sampling_options
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per network call when sampling.")
@click.option("--provider", type=click.Choice(["auto", *PROVIDERS]), default="auto", help="Provider when sampling.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads.")
@click.option("--device-id", type=click.IntRange(min=0), default=0, help="Which CUDA device, on a machine with several.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data/mnist"), envvar="DDPM_DATA_DIR",
              help="Folder with the MNIST test files (t10k-*). Env: DDPM_DATA_DIR.")
@click.option("--transform", type=click.Choice(["auto", "pad", "resize"]), default="auto",
              help="How samples return to 28x28 for the judge: crop the padding or resize. 'auto': what the model was trained with.")
@click.option("--json", "json_path", type=OutputPath(), default=None, help="Also write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(npz: Path | None, onnx_path: Path | None, num_samples: int, seed: int, sampler: str | None,
                 steps: int | None, eta: float | None, spacing: str | None, digit: str | None, guidance: float | None, batch_size: int | None, provider: str, threads: int | None, device_id: int, data_dir: Path, transform: str,
                 json_path: Path | None, quiet: bool) -> None:
    """Score generated digits with the judge: confidence, class histogram, Fréchet distance to the MNIST
    test set, and the same figures for as many real held-out test digits (the floor).

    \b
    ddpm-eval -n 1000 --data-dir ../shared/data/mnist              # the embedded model
    ddpm-eval --npz samples.npz --data-dir ../shared/data/mnist    # what ddpm-run --npz wrote
    ddpm-eval -n 1000 --sampler ddim --steps 50 --data-dir ../shared/data/mnist
    ddpm-eval --onnx cond.onnx --digit all --guidance 1 --data-dir ../shared/data/mnist

    With --digit (class-conditional models) it also reports the share of samples the judge assigns
    to the requested digit, beside the judge's accuracy on the real digits.
    """
    if npz is not None and onnx_path is not None:
        raise click.UsageError("give --npz or --onnx, not both")
    check_distinct_paths({"--json": json_path}, {"--npz": npz, "--onnx": onnx_path})
    output_target(json_path, "--json")
    sampling_given = any(v is not None for v in (sampler, steps, eta, digit, guidance, spacing))
    if npz is not None and sampling_given:
        raise click.UsageError("--npz scores finished images; sampling options (--sampler, --steps, --digit, ...) need --onnx")
    test_images, test_labels = load_mnist(data_dir, "test")
    half = len(test_images) // 2
    if npz is None and num_samples > half:
        raise click.BadParameter(f"{num_samples} is more than half the test set ({half}), which the floor draws from",
                                 param_hint="'-n'")
    judge = Judge(threads=threads)

    if npz is not None:
        images, settings, source = read_samples(npz, half)
    else:
        ddpm = DDPM.load(onnx_path, provider=provider, threads=threads, device_id=device_id)
        request = sampling_request(ddpm, num_samples, sampler, steps, eta, spacing, digit, guidance)
        images, settings, source = draw_samples(ddpm, request, seed, batch_size, quiet)
    chosen = settings.get("transform", "pad") if transform == "auto" else transform
    labels = settings.get("labels")

    count = len(images)
    reference = judge(test_images[half:])[1]
    sample_scores = score(*judge(to_judge_size(images, chosen)), reference, labels)
    floor_scores = score(*judge(test_images[:count]), reference, test_labels[:count] if labels is not None else None)
    checks = targets(sample_scores, floor_scores, requested=labels is not None and not settings.get("labels_drawn", False))

    click.echo(table(sample_scores, floor_scores))
    click.echo("\n".join(checks))
    if json_path is not None:
        report = {
            "samples": sample_scores.to_dict(), "floor": floor_scores.to_dict(), "targets": checks,
            "source": source, "transform": chosen,
            "reference": f"MNIST test images {half}..{len(test_images) - 1}",
            "floor_images": f"MNIST test images 0..{count - 1}",
        }
        with StagedFiles() as staged:
            staged.stage(json_path).write_text(json.dumps(report, indent=2) + "\n")
            staged.commit()
        click.echo(f"wrote {json_path}")


def read_samples(npz: Path, limit: int) -> tuple[np.ndarray, dict, dict]:
    """Images and settings that ``ddpm-run --npz`` wrote, and the report's note of their source."""
    images, settings = load_npz(npz)
    if len(images) > limit:
        raise DDPMError(f"{npz} holds {len(images)} images; at most {limit} (half the test set) can be compared with the floor")
    labels = settings.get("labels")
    if labels is not None and len(labels) != len(images):
        raise DDPMError(f"{npz}: its settings list {len(labels)} labels for {len(images)} images")
    return images, settings, {"npz": str(npz), **{k: settings[k] for k in SETTINGS_KEPT if k in settings}}


def draw_samples(ddpm: DDPM, request: SamplingRequest, seed: int, batch_size: int | None, quiet: bool) -> tuple[np.ndarray, dict, dict]:
    """Images drawn by the plan, with a progress bar; their settings (the model's transform among
    them); and the report's note of their source and speed."""
    progress = Progress(request.plan.steps, f"sample {request.n}", unit="step", enabled=not quiet)
    with progress:
        run = ddpm.generate(request.n, request.plan, seed=seed, batch_size=batch_size,
                            on_step=lambda done, total: progress.update(1))
    source = {"onnx": str(ddpm.session.path), **{k: run.settings[k] for k in SETTINGS_KEPT if k in run.settings},
              "sampling_seconds": run.seconds, "seconds_per_sample": run.seconds / request.n, "provider": ddpm.provider}
    return run.images, run.settings, source


def main() -> None:
    run_command(eval_command, "ddpm-eval")
