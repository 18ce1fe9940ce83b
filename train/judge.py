"""The judge: a small MNIST classifier whose confidence, class histogram and penultimate features
score generated digits (``ddpm-eval``). Trained here, exported to ONNX, shipped with the runtime.

    python -m ddpm.train.judge --data-dir ../shared/data/mnist

ONNX contract: input ``images`` float32 [B,1,28,28] in [0,1]; outputs ``logits`` [B,10] and
``features`` [B,128] (the penultimate layer, after its ReLU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.console import FiniteFloatRange, OutputPath, run_command
from ..core.files import StagedFiles, check_writable_dir
from ..core.mnist import load_mnist
from ..core.progress import Progress

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FEATURES = 128


class Judge(nn.Module):
    """conv5x5(32) → pool → conv5x5(64) → pool → fc 128 (features) → fc 10, ReLU throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURES)
        self.fc2 = nn.Linear(FEATURES, 10)
        self.dropout = nn.Dropout(0.3)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - MNIST_MEAN) / MNIST_STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [B,32,12,12]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [B,64,4,4]
        features = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.dropout(features)), features


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


def accuracy(model: Judge, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            logits, _ = model(to_tensor(images[start : start + 1000]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + 1000]).sum())
    return correct / len(images)


def train_judge(data_dir: Path, epochs: int, seed: int, progress: bool = True) -> tuple[Judge, dict]:
    torch.manual_seed(seed)
    train_images, train_labels = load_mnist(data_dir, "train")
    test_images, test_labels = load_mnist(data_dir, "test")
    model = Judge()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * (len(train_images) // 128)
    )
    generator = np.random.default_rng(seed)
    x_all, y_all = to_tensor(train_images), torch.from_numpy(train_labels.astype(np.int64))
    steps = len(train_images) // 128
    start = time.perf_counter()
    with Progress(epochs * steps, "judge", unit="step", enabled=progress) as bar:
        for epoch in range(epochs):
            model.train()
            order = torch.from_numpy(generator.permutation(len(train_images)))
            for index in range(steps):
                batch = order[index * 128 : (index + 1) * 128]
                logits, _ = model(x_all[batch])
                loss = F.cross_entropy(logits, y_all[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1, status=f"epoch {epoch + 1} loss {loss.item():.4f}")
    record = {
        "epochs": epochs,
        "seed": seed,
        "train_seconds": time.perf_counter() - start,
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_accuracy": accuracy(model, train_images[:10000], train_labels[:10000]),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model.eval(), record


def export_judge(model: Judge, path: Path) -> bytes:
    import contextlib
    import io
    import warnings

    example = torch.rand(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            external_data=False,
            opset_version=18,
            input_names=["images"],
            output_names=["logits", "features"],
            dynamic_shapes={"images": {0: batch}},
        )
    proto = program.model_proto
    proto.producer_name = "ddpm-mnist judge"
    return proto.SerializeToString()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data/mnist"),
    envvar="DDPM_DATA_DIR",
    help="Folder with the four MNIST IDX files.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=4, help="Passes over the 60,000 training images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the initialisation and data order.")
@click.option(
    "--out",
    type=OutputPath(),
    required=True,
    help="Where the ONNX judge goes (a .md card beside it); the repository's is runtime/models/judge.onnx.",
)
@click.option(
    "--min-accuracy",
    type=FiniteFloatRange(0.0, 1.0),
    default=0.99,
    help="Refuse to write a judge below this test accuracy.",
)
def judge_command(data_dir: Path, epochs: int, seed: int, out: Path, min_accuracy: float) -> None:
    """Train the MNIST judge (about 180k parameters) and export it to ONNX for ddpm-eval."""
    from ..core.errors import DDPMError

    check_writable_dir(out.parent)
    model, record = train_judge(data_dir, epochs, seed)
    if record["test_accuracy"] < min_accuracy:
        raise DDPMError(
            f"test accuracy {record['test_accuracy']:.4f} is below --min-accuracy {min_accuracy}; nothing written"
        )
    blob = export_judge(model, out)
    ort_check(blob, model)
    card = f"""# The judge

`{out.name}` scores generated digits for `ddpm-eval`: a LeNet-like classifier with
{record["parameters"]:,} parameters (conv 5x5 32, max-pool, conv 5x5 64, max-pool, fc 128, fc 10).

- Input `images` float32 [B,1,28,28] in [0,1]; outputs `logits` [B,10] and `features` [B,128]
  (the penultimate layer, used for the Fréchet distance).
- Trained on the 60,000 MNIST training images: {epochs} epochs, batch 128, Adam with a one-cycle
  learning rate up to 3e-3, seed {seed}, {record["train_seconds"]:.0f} s on the CPU.
- Accuracy on the 10,000 MNIST test images: {record["test_accuracy"]:.2%}
  (first 10,000 training images: {record["train_accuracy"]:.2%}).

Reproduce with:

```bash
python -m ddpm.train.judge --data-dir ../shared/data/mnist --epochs {epochs} --seed {seed}
```
"""
    with StagedFiles() as staged:
        staged.stage(out).write_bytes(blob)
        staged.stage(out.with_suffix(".md")).write_text(card)
        staged.stage(out.with_suffix(".json")).write_text(json.dumps(record, indent=2) + "\n")
        staged.commit()
    click.echo(f"wrote {out} ({len(blob) / 1e3:.0f} kB): test accuracy {record['test_accuracy']:.2%}")


def ort_check(blob: bytes, model: Judge) -> None:
    """The ONNX judge must match the PyTorch one."""
    import onnxruntime as ort

    from ..core.errors import DDPMError

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 28, 28)
    logits, features = session.run(["logits", "features"], {"images": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_features = model(x)
    diff = max(float(np.abs(logits - ref_logits.numpy()).max()), float(np.abs(features - ref_features.numpy()).max()))
    if diff > 1e-4:
        raise DDPMError(f"the exported judge differs from PyTorch by {diff:.2e}")


def main() -> None:
    run_command(judge_command, "ddpm-judge")


if __name__ == "__main__":
    main()
