"""Ship a checkpoint as the runtime's embedded default model, with its model card and sample grid.

    python -m ddpm.export.embed --ckpt runs/small/model.pt --command "ddpm-train ..." --hardware "..."

Writes runtime/models/default.onnx (EMA weights, verified like ddpm-export), samples.png (64
digits, seed 0, 1000 steps, drawn by the runtime from the new file) and README.md (the card).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm.runtime.files import StagedFiles
from ddpm.runtime.outputs import png_bytes
from ddpm.runtime.pipeline import DDPM

from ddpm.train.checkpoint import read_checkpoint_file

from .exporter import onnx_model, verify
from .load import load_for_export

MODELS_DIR = Path(__file__).resolve().parent.parent / "runtime" / "models"


def training_summary(log_path: Path, step: int) -> dict:
    """Steps, epochs, wall time and loss of the run up to ``step`` (the log may have run on)."""
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    records = [record for record in records if record["step"] <= step]
    if not records:
        return {}
    last = records[-1]
    return {"steps": last["step"], "epochs": last["epoch"], "wall_hours": last["elapsed_s"] / 3600, "final_loss": last["loss"]}


def card(info, parameters: int, summary: dict, planned_steps: int, command: str, hardware: str, atol_diff: float) -> str:
    source, train_note = info.source, ""
    if summary:
        partial = f" of the {planned_steps:,} the command plans" if planned_steps > summary["steps"] else ""
        train_note = (
            f"- Trained for {summary['steps']:,} steps{partial} ({summary['epochs']:.2f} epochs of the 60,000 MNIST "
            f"training images, batch 128), {summary['wall_hours']:.1f} h wall time; mean L_simple over the last "
            f"logged steps: {summary['final_loss']:.4f}.\n"
        )
    config = info.model_config
    return f"""# Embedded default model

`default.onnx` is what `ddpm-run` samples when no `--onnx` is given.

- Architecture: the `small` preset, {parameters:,} parameters: {config['base_channels']} base channels,
  multipliers {config['channel_mults']} ({config['width_rule']} widths), attention per level
  {config['attention']}, {config['blocks_per_resolution']} block per level, GroupNorm {config['norm_groups']} groups.
- Diffusion: {info.schedule['timesteps']} steps, linear beta {info.schedule['beta_start']:g} to {info.schedule['beta_end']:g};
  epsilon prediction; sampling variance {info.variance} (sigma^2 = beta), no noise on the last step.
- Data: MNIST training set (60,000 images), padded from 28x28 to {info.image_size}x{info.image_size}, scaled
  to {list(info.data_range)}.
{train_note}- Weights: {source['weights'].upper()} at step {source['step']:,}; checkpoint sha256 `{source['sha256']}`.
- Hardware: {hardware}.
- Export: opset 18, dynamic batch; ONNX Runtime CPU vs PyTorch max abs difference {atol_diff:.1e}.

Training command:

```bash
{command}
```

Exported into the package with:

```bash
python -m ddpm.export.embed --ckpt <run>/model.pt --command "..." --hardware "..."
```

`samples.png`: 64 samples, seed 0, the full 1000-step ancestral loop, drawn by the runtime from
this file (`ddpm-run -n 64 --seed 0 --png samples.png --scale 2` draws the same grid).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--log", type=Path, default=None, help="the run's log.jsonl [default: beside --ckpt]")
    parser.add_argument("--command", required=True, help="the exact ddpm-train command of the run")
    parser.add_argument("--hardware", required=True, help="where it was trained")
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    args = parser.parse_args()

    source = load_for_export(args.ckpt, "ema")
    checkpoint = read_checkpoint_file(args.ckpt)
    planned = checkpoint["train"]["epochs"] * checkpoint["progress"]["steps_per_epoch"]
    if checkpoint["train"].get("max_steps"):
        planned = min(planned, checkpoint["train"]["max_steps"])
    parameters = sum(p.numel() for p in source.model.parameters())
    log = args.log or args.ckpt.parent / "log.jsonl"
    summary = training_summary(log, source.info.source["step"]) if log.exists() else {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with StagedFiles() as staged:
        onnx_tmp = staged.stage(args.out_dir / "default.onnx")
        onnx_tmp.write_bytes(onnx_model(source).SerializeToString())
        diff = verify(source, onnx_tmp, None)["onnx"]
        if diff > 1e-4:
            raise SystemExit(f"verification failed: {diff:.2e}")
        images = DDPM.load(onnx_tmp, provider="cpu").sample(64, seed=0)
        staged.stage(args.out_dir / "samples.png").write_bytes(png_bytes(images, scale=2))
        staged.stage(args.out_dir / "README.md").write_text(
            card(source.info, parameters, summary, planned, args.command, args.hardware, diff)
        )
        staged.commit()
    print(f"wrote {args.out_dir}/default.onnx, samples.png, README.md (step {source.info.source['step']})")


if __name__ == "__main__":
    main()
