"""Ship a checkpoint as one of the runtime's embedded models, with its model card and sample grid.

    python -m ddpm.export.embed --ckpt runs/small/model.pt --command "ddpm-train ..." --hardware "..." \
        --metrics "1000-step ancestral=eval.json"

Writes runtime/models/default.onnx (EMA weights, verified like ddpm-export), samples.png (64
digits, seed 0, 1000 steps, drawn by the runtime from the new file) and README.md (the card).
``--name latent`` ships a latent model as latent.onnx with latent.decoder.onnx beside it, and
latent-samples.png, latent-digits.png and latent.md.
A class-conditional model serves both ``ddpm-run`` (every digit equally often) and ``ddpm-run
--digit``; its card also gets digits.png (every digit in turn, with the defaults of ``--digit``).
``--metrics`` adds ddpm-eval reports (``--json``) to the card as a table. ``--data-dir`` also writes
check-digits.npz, the MNIST test digits the runtime's ε check feeds (:mod:`ddpm.runtime.eps_check`).
``--int8 MNIST_DIR`` ships the int8 copies too (NAME.int8.onnx, and a latent model's
NAME.decoder.int8.onnx), made and checked as ``ddpm-export --int8`` makes them.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError
from ..core.files import StagedFiles
from ..core.mnist import load_mnist
from ..core.outputs import png_bytes
from ..core.plan import STUDENT_SAMPLER
from ..core.samplers import find
from ..runtime.eps_check import CHECK_DIGITS
from ..runtime.pipeline import DDPM, DEFAULT_MODEL
from ..train.checkpoint import read_checkpoint_file
from .load import load_for_export
from .pipeline import INT8, PLAIN, ExportOutputs, ExportReport, export_and_verify, read_calibration

STUDENT_DEFAULT_CALLS = find(STUDENT_SAMPLER).steps

MODELS_DIR = Path(__file__).resolve().parent.parent / "runtime" / "models"
CHECK_COUNT = 64  # the first MNIST test digits: never trained on, and not among the judge's reference digits


def check_digits_bytes(data_dir: Path, count: int = CHECK_COUNT) -> bytes:
    """check-digits.npz: the first ``count`` MNIST test digits (uint8 [N, 28, 28]) and their labels."""
    images, labels = load_mnist(data_dir, "test")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images[:count].astype(np.uint8), labels=labels[:count].astype(np.uint8))
    return buffer.getvalue()


def training_summary(log_path: Path, step: int) -> dict:
    """Steps, epochs, wall time and loss of the run up to ``step`` (the log may have run on)."""
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    records = [record for record in records if record["step"] <= step]
    if not records:
        return {}
    last = records[-1]
    return {
        "steps": last["step"],
        "epochs": last["epoch"],
        "wall_hours": last["elapsed_s"] / 3600,
        "final_loss": last["loss"],
    }


def wall_time(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def metrics_table(reports: list[tuple[str, dict]]) -> str:
    """ddpm-eval reports as Markdown rows beside the real-data floor."""
    if not reports:
        return ""
    lines = [
        "| sampling | N | confidence (floor) | largest class deviation (floor) | Fréchet distance (floor) "
        "| judged as requested digit (floor) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, report in reports:
        sample, floor = report["samples"], report["floor"]
        accuracy = "-" if sample.get("accuracy") is None else f"{sample['accuracy']:.3f} ({floor['accuracy']:.3f})"
        lines.append(
            f"| {label} | {sample['count']} | {sample['confidence']:.3f} "
            f"({floor['confidence']:.3f}) | {sample['max_class_deviation']:.3f} ({floor['max_class_deviation']:.3f}) | "
            f"{sample['frechet_distance']:.1f} ({floor['frechet_distance']:.1f}) | {accuracy} |"
        )
    return "\n".join(lines) + "\n"


def training_note(summary: dict, planned_steps: int, data: str = "the 60,000 MNIST training images") -> str:
    """The card's line on the training run ("" without its log); ``data`` is what an epoch passes over."""
    if not summary:
        return ""
    partial = f" of the {planned_steps:,} the command plans" if planned_steps > summary["steps"] else ""
    return (
        f"- Trained for {summary['steps']:,} steps{partial} ({summary['epochs']:.2f} epochs of {data}, batch 128), "
        f"{wall_time(summary['wall_hours'])} wall time; mean training loss over the last logged steps: "
        f"{summary['final_loss']:.4f}.\n"
    )


def schedule_text(schedule: dict) -> str:
    if schedule["kind"] == "linear":
        return f"linear beta {schedule['beta_start']:g} to {schedule['beta_end']:g}"
    return f"cosine alpha-bar (offset {schedule['offset']:g}, beta <= {schedule['max_beta']:g})"


def role_and_grids(
    num_classes: int, files: dict[str, str], timesteps: int, grid_steps: int | None = None, student: bool = False
) -> tuple[str, str]:
    """What the model is for, and what its sample grids show (a conditional model gets digits.png too);
    ``grid_steps``: the steps of samples.png (None: all ``timesteps`` of the ancestral loop, or a
    student's default calls)."""
    default = files["onnx"] == DEFAULT_MODEL
    role = (
        "what `ddpm-run` samples when no `--onnx` is given"
        if default
        else f"what `ddpm-run --model {files['name']}` samples"
    )
    run = "ddpm-run" if default else f"ddpm-run --model {files['name']}"
    if student:
        loop = f"{grid_steps or STUDENT_DEFAULT_CALLS} calls of consistency sampling"
    else:
        loop = (
            f"the full {timesteps}-step ancestral loop"
            if grid_steps is None
            else f"the ancestral loop respaced to {grid_steps} steps"
        )
    flag = "" if grid_steps is None else f" --steps {grid_steps}"
    grid = (
        f"64 samples, seed 0, {loop}, drawn by the runtime from this file "
        f"(`{run} -n 64 --seed 0{flag} --png {files['png']} --scale 2` draws the same grid)"
    )
    if num_classes:
        role += (
            f", with and without `--digit`. Class-conditional on the {num_classes} digits, with a 'no class' "
            "index for classifier-free guidance; without `--digit` every digit is drawn equally often"
        )
        grid += (
            f".\n\n`{files['digits']}`: every digit in turn (10 columns), seed 0, with the defaults of `--digit` "
            f"(`{run} --digit all -n 100 --seed 0 --png {files['digits']} --scale 2`)"
        )
    return role, grid


def student_note(info) -> str:
    """The card's line on a few-step student's teacher and timesteps ("" for another model)."""
    if info.student is None:
        return ""
    student = info.student
    return (
        f"- Student: distilled by `ddpm-distill` from the teacher checkpoint sha256 `{student['teacher_sha256']}` "
        f"(step {student['teacher_step']:,}): {student['trajectories']:,} solves of its ODE "
        f"({student['teacher_steps']} DPM-Solver++ (2M) steps, guidance {student['guidance']:g} built into the "
        f"digit rows); it learned at timesteps {student['timesteps']} and draws a digit in 1 to "
        f"{len(student['timesteps'])} calls of the consistency sampler ({STUDENT_DEFAULT_CALLS} by default).\n"
    )


def quality_section(reports: list[tuple[str, dict]]) -> str:
    """The card's table of ddpm-eval reports beside their floor ("" without reports)."""
    if not reports:
        return ""
    return (
        "\nQuality (`ddpm-eval`; the floor is as many real MNIST test digits, scored the same way):\n\n"
        + metrics_table(reports)
    )


def epoch_data(info) -> str:
    """What one training epoch of the model passed over, for its card."""
    if info.student is None:
        return "the 60,000 MNIST training images"
    return (
        f"the {info.student['trajectories'] * len(info.student['timesteps']):,} (teacher solve, student timestep) pairs"
    )


def latent_note(info) -> str:
    """The card's line on a latent model's latents and decoder ("" for a pixel model)."""
    if info.latent is None:
        return ""
    latent, side = info.latent, info.image_size
    return (
        f"- Latent: the U-Net samples {info.image_channels}x{side}x{side} latents of an autoencoder (checkpoint sha256 "
        f"`{latent['autoencoder_sha256']}`), scaled by {latent['scale_factor']:.4g} to unit variance; "
        f"`{latent['decoder_file']}` decodes each finished sample to {latent['image_size']}x{latent['image_size']}.\n"
    )


def int8_note(report: ExportReport, files: dict[str, str]) -> str:
    """The card's line on the int8 copies ("" where none ships)."""
    if "int8" not in files:
        return ""
    decoder = (
        f", and `{files['decoder_int8']}`, whose images are {report.decoder_int8_difference:.2f} grey levels from "
        "the fp32 decoder's on average"
        if "decoder_int8" in files
        else ""
    )
    return (
        f"- int8: `{files['int8']}`, whose ε differs from the fp32 export's by {report.int8_difference:.3f} "
        f"(relative RMS){decoder}, on held-out training digits; static QDQ, 7-bit per-channel weights. The "
        "runtime times them against fp32 under `--precision auto` and runs them with `--precision int8`.\n"
    )


def card(
    info,
    parameters: int,
    summary: dict,
    planned_steps: int,
    command: str,
    hardware: str,
    report: ExportReport,
    files: dict[str, str],
    reports: list[tuple[str, dict]],
    grid_steps: int | None = None,
) -> str:
    source, config, schedule = info.source, info.model_config, info.schedule
    role, grid = role_and_grids(info.num_classes, files, schedule["timesteps"], grid_steps, info.student is not None)
    name = "" if files["onnx"] == DEFAULT_MODEL else f" --name {files['name']}"
    quality = quality_section(reports)
    title = "Embedded default model" if files["onnx"] == DEFAULT_MODEL else f"Embedded model '{files['name']}'"
    preset, transform, side = source.get("preset") or "small", source.get("transform") or "pad", info.output_size
    notes = f"{latent_note(info)}{student_note(info)}{training_note(summary, planned_steps, epoch_data(info))}"
    atol_diff = report.differences[files["onnx"]]
    return f"""# {title}

`{files["onnx"]}` is {role}.

- Architecture: the `{preset}` preset, {parameters:,} parameters: {config["base_channels"]} base channels,
  multipliers {config["channel_mults"]} ({config["width_rule"]} widths), attention per level
  {config["attention"]}, {config["blocks_per_resolution"]} block per level, GroupNorm {config["norm_groups"]} groups.
- Diffusion: {schedule["timesteps"]} steps, {schedule_text(schedule)};
  epsilon prediction; sampling variance {info.variance} (sigma^2 = beta), no noise on the last step.
- Data: MNIST training set (60,000 images), {transform} from 28x28 to {side}x{side}, scaled
  to {list(info.data_range)}.
{notes}- Weights: {source["weights"].upper()} at step {source["step"]:,}; checkpoint sha256 `{source["sha256"]}`.
- Hardware: {hardware}.
- Export: opset 18, dynamic batch; ONNX Runtime CPU vs PyTorch max abs difference {atol_diff:.1e}.
{int8_note(report, files)}{quality}
Training command:

```bash
{command}
```

Exported into the package with:

```bash
python -m ddpm.export.embed --ckpt <run>/model.pt{name} --command "..." --hardware "..." --metrics "LABEL=eval.json"
```

`{files["png"]}`: {grid}.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--log", type=Path, default=None, help="the run's log.jsonl [default: beside --ckpt]")
    parser.add_argument("--command", required=True, help="the exact ddpm-train command of the run")
    parser.add_argument("--hardware", required=True, help="where it was trained")
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where the model, grid and card go "
        f"(the repository's embedded models: {MODELS_DIR.relative_to(MODELS_DIR.parents[1])})",
    )
    parser.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a ddpm-eval --json report to show in the card (repeatable)",
    )
    parser.add_argument(
        "--grid-steps", type=int, default=None, help="ancestral steps of samples.png [default: all of the model's T]"
    )
    parser.add_argument(
        "--name",
        default="default",
        help="the file stem: 'default' ships the default model (default.onnx, samples.png, README.md); "
        "another, e.g. 'latent', ships NAME.onnx (and NAME.decoder.onnx), NAME-samples.png, NAME.md",
    )
    parser.add_argument(
        "--int8",
        type=Path,
        default=None,
        metavar="MNIST_DIR",
        help="also ship int8 copies (NAME.int8.onnx, and a latent model's NAME.decoder.int8.onnx), "
        "calibrated on the MNIST training digits in MNIST_DIR",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"MNIST (IDX files) to write {CHECK_DIGITS} from, the ε check's digits [default: keep the shipped one]",
    )
    return parser.parse_args()


def read_reports(metrics: list[str]) -> list[tuple[str, dict]]:
    """The --metrics LABEL=PATH reports, labelled."""
    reports = []
    for item in metrics:
        label, _, path = item.rpartition("=")  # the label may hold "=" too
        reports.append((label, json.loads(Path(path).read_text())))
    return reports


def planned_steps(ckpt: Path) -> int:
    """The steps the run's command plans: its epochs, or its --max-steps where that comes first."""
    checkpoint = read_checkpoint_file(ckpt)
    planned = checkpoint["train"]["epochs"] * checkpoint["progress"]["steps_per_epoch"]
    if checkpoint["train"].get("max_steps"):
        planned = min(planned, checkpoint["train"]["max_steps"])
    return planned


def file_names(name: str, num_classes: int, latent: bool, int8: bool = False) -> dict[str, str]:
    """The files an embedded model ships as: the default model's own names, or NAME-prefixed ones; with
    ``int8`` its int8 copies too."""
    if name == "default":
        files = {"onnx": DEFAULT_MODEL, "png": "samples.png", "card": "README.md", "digits": "digits.png"}
    else:
        files = {
            "onnx": f"{name}.onnx",
            "png": f"{name}-samples.png",
            "card": f"{name}.md",
            "digits": f"{name}-digits.png",
        }
    if not num_classes:
        del files["digits"]
    if latent:
        files["decoder"] = f"{Path(files['onnx']).stem}.decoder.onnx"
    if int8:
        files["int8"] = INT8.file_name(files["onnx"])
    if int8 and latent:
        files["decoder_int8"] = INT8.file_name(files["decoder"])
    return {"name": name, **files}


def write_grids(
    model: Path,
    out_dir: Path,
    files: dict[str, str],
    num_classes: int,
    staged: StagedFiles,
    grid_steps: int | None = None,
) -> None:
    """samples.png (``grid_steps`` ancestral steps; None: all T), and for a conditional model digits.png,
    drawn by the runtime from ``model``."""
    ddpm = DDPM.load(model, provider="cpu")
    staged.stage(out_dir / files["png"]).write_bytes(png_bytes(ddpm.sample(64, seed=0, steps=grid_steps), scale=2))
    if num_classes:
        run = ddpm.generate(10 * num_classes, ddpm.plan(digits=range(num_classes)), seed=0)
        staged.stage(out_dir / files["digits"]).write_bytes(png_bytes(run.images, scale=2, columns=num_classes))


def embed(args: argparse.Namespace) -> None:
    """The model, its grids and its card, verified like ddpm-export and written together or not at all."""
    reports = read_reports(args.metrics)
    source = load_for_export(args.ckpt, "ema")
    parameters = sum(p.numel() for p in source.model.parameters())
    log = args.log or args.ckpt.parent / "log.jsonl"
    summary = training_summary(log, source.info.source["step"]) if log.exists() else {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    classes = source.info.num_classes
    files = file_names(args.name, classes, source.decoder is not None, args.int8 is not None)
    calibration = read_calibration(source, args.int8) if args.int8 is not None else None
    with tempfile.TemporaryDirectory(prefix="ddpm-embed-") as folder, StagedFiles() as staged:
        # exported under the final names first, so that a latent U-Net finds its decoder when the grids are drawn
        work = Path(folder)
        named = {key: work / files[key] if key in files else None for key in ("decoder", "decoder_int8")}
        copies = {PLAIN: work / files["onnx"], **({INT8: work / files["int8"]} if "int8" in files else {})}
        outputs = ExportOutputs(copies, decoder=named["decoder"], decoder_int8=named["decoder_int8"])
        report = export_and_verify(source, outputs, calibration=calibration)
        for key in ("onnx", "decoder", "int8", "decoder_int8"):
            if key in files:
                staged.stage(args.out_dir / files[key]).write_bytes((work / files[key]).read_bytes())
        write_grids(work / files["onnx"], args.out_dir, files, classes, staged, args.grid_steps)
        info = DDPM.load(work / files["onnx"], provider="cpu").info  # as exported: the decoder named
        staged.stage(args.out_dir / files["card"]).write_text(
            card(
                info,
                parameters,
                summary,
                planned_steps(args.ckpt),
                args.command,
                args.hardware,
                report,
                files,
                reports,
                args.grid_steps,
            )
        )
        if args.data_dir is not None:
            files["check"] = CHECK_DIGITS
            staged.stage(args.out_dir / CHECK_DIGITS).write_bytes(check_digits_bytes(args.data_dir))
        staged.commit()
    written = [name for key, name in files.items() if key != "name"]
    print(f"wrote {', '.join(str(args.out_dir / name) for name in written)} (step {source.info.source['step']})")


def main() -> None:
    try:
        embed(parse_args())
    except DDPMError as exc:
        raise SystemExit(f"embed: error: {exc}") from None


if __name__ == "__main__":
    main()
