"""The measurements behind three hand-written pieces of the runtime (docs/ARCHITECTURE.md):
the progress bar against click's, the ONNX outline reader against the onnx package, and the
judge's bilinear resize against Pillow's.

    python -m ddpm.benchmarks.library_choices --data-dir ../shared/data/mnist [--big-mb 677]

Needs the onnx package (the train extra) for the comparison; the runtime itself does not.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def progress_bars(updates: int = 20_000) -> None:
    import click

    from ..core.progress import Progress

    sink = io.StringIO()

    def ours():
        with Progress(updates, "x", stream=sink, interval=0.2) as bar:
            for _ in range(updates):
                bar.update(1)

    def clicks():
        with click.progressbar(length=updates, file=sink) as bar:
            for _ in range(updates):
                bar.update(1)

    print(
        f"progress bar, {updates} updates: ours {best_of(ours) / updates * 1e6:.2f} µs per update, "
        f"click {best_of(clicks) / updates * 1e6:.2f} µs per update"
    )


def big_model(megabytes: int) -> bytes:
    """A single-file ONNX model with one large initializer and the project's metadata keys."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros(megabytes * (1 << 20) // 4, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 32, 32])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, ["B"])
    eps = helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["B", 1, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["eps"])], "g", [x, t], [eps], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.helper.set_model_props(model, {"ddpm.format": '"x"'})
    return model.SerializeToString()


def outline_reader(megabytes: int) -> None:
    import onnx

    from ..runtime.onnx_check import read_outline

    data = big_model(megabytes)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.onnx"
        path.write_bytes(data)
        ours = best_of(lambda: read_outline(path.read_bytes(), str(path)))
        theirs = best_of(lambda: onnx.load(str(path), load_external_data=False))
    print(
        f"ONNX outline of a {len(data) / 1e6:.0f} MB model (file read included): "
        f"ours {ours:.2f} s, onnx.load {theirs:.2f} s"
    )
    from importlib import metadata

    files = metadata.distribution("onnx").files or []
    size = sum((f.size or 0) for f in files)
    print(f"onnx {metadata.version('onnx')} installed size: {size / 1e6:.1f} MB, plus protobuf")


def resize(data_dir: Path) -> None:
    from PIL import Image

    from ..core.mnist import load_mnist
    from ..runtime.quality import resize_bilinear

    images, _ = load_mnist(data_dir, "test")
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in images[:2000]])
    ours = resize_bilinear(big, 28)
    pillow = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in big])
    try:
        import torch
        import torch.nn.functional as F

        reference = (
            F.interpolate(
                torch.from_numpy(big).float()[:, None],
                size=(28, 28),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )[:, 0]
            .round()
            .clamp(0, 255)
            .numpy()
        )
        print(f"resize 32->28, max |ours - torch bilinear| = {np.abs(ours - reference).max():.0f} grey levels")
    except ImportError:
        pass
    difference = np.abs(ours.astype(int) - pillow.astype(int))
    print(
        f"resize 32->28, ours vs Pillow BILINEAR: mean {difference.mean():.2f}, max {difference.max()} grey levels; "
        f"time per 2000 images: ours {best_of(lambda: resize_bilinear(big, 28)) * 1e3:.0f} ms, Pillow "
        f"{best_of(lambda: [Image.fromarray(im).resize((28, 28), Image.BILINEAR) for im in big]) * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/mnist"))
    parser.add_argument(
        "--big-mb", type=int, default=677, help="Size of the synthetic ONNX model (the labml export's)."
    )
    opts = parser.parse_args()
    progress_bars()
    outline_reader(opts.big_mb)
    resize(opts.data_dir)


if __name__ == "__main__":
    main()
