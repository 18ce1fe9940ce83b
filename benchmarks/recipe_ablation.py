"""Quality per unit of CPU training: train short runs of the `small` U-Net under competing recipes,
score each with ddpm-eval, and write a table and a plot.

Every arm gets the same training compute: the same number of images through a network of the
`small` preset's cost, converted for arms whose network costs more or less per image (forward FLOPs).
Equal compute is equal wall time on one machine up to its noise, and arms can then run side by side
(one thread each) without one arm's slow minute favouring another. Wall time is recorded too.

    python -m ddpm.benchmarks.recipe_ablation run --data-dir ../shared/data/mnist --work /tmp/ablation
    python -m ddpm.benchmarks.recipe_ablation run --only plain,minsnr --threads 1 ...   # a subset, e.g. one per core
    python -m ddpm.benchmarks.recipe_ablation curve --run runs/cond --work /tmp/ablation --name final
    python -m ddpm.benchmarks.recipe_ablation report --work /tmp/ablation --out benchmarks/results

Each step is skipped when its result exists, so an interrupted job continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The recipe the project used before this ablation, and the candidates measured against it.
PLAIN = [
    "--lr",
    "2e-4",
    "--lr-schedule",
    "constant",
    "--lr-warmup-steps",
    "0",
    "--loss-weighting",
    "none",
    "--dropout",
    "0.1",
    "--ema-decay",
    "0.999",
]
NEW = [
    "--lr",
    "1e-3",
    "--lr-schedule",
    "cosine",
    "--lr-warmup-steps",
    "200",
    "--loss-weighting",
    "min-snr",
    "--dropout",
    "0",
    "--ema-decay",
    "0.9995",
]


def replaced(base: list[str], **changes: str) -> list[str]:
    """``base`` with the values of some options changed (keys are option names without dashes)."""
    args = list(base)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


@dataclass(frozen=True)
class Arm:
    name: str
    what: str
    args: tuple[str, ...]
    batch_size: int = 128


ARMS = [
    Arm("plain", "old recipe: lr 2e-4 constant, L_simple, dropout 0.1, EMA 0.999", tuple(PLAIN)),
    Arm("new", "Min-SNR-5 + lr 1e-3 warm-up cosine + dropout 0 + EMA 0.9995", tuple(NEW)),
    Arm("minsnr", "plain + Min-SNR-5", tuple(replaced(PLAIN, loss_weighting="min-snr"))),
    Arm(
        "lr",
        "plain + lr 1e-3, 200 warm-up, cosine decay",
        tuple(replaced(PLAIN, lr="1e-3", lr_schedule="cosine", lr_warmup_steps="200")),
    ),
    Arm("new-dropout", "new with dropout 0.1", tuple(replaced(NEW, dropout="0.1"))),
    Arm("new-ema999", "new with EMA 0.999", tuple(replaced(NEW, ema_decay="0.999"))),
    Arm("new-lr5e-4", "new with lr 5e-4", tuple(replaced(NEW, lr="5e-4"))),
    Arm("new-batch64", "new with batch 64 (twice the steps)", tuple(NEW), batch_size=64),
    Arm("new-wide", "new with 48 base channels (widths 48/96/192)", tuple(replaced(NEW, base_channels="48"))),
]
SMALL_GFLOP = 0.51  # forward GFLOP of the `small` preset at 32x32: the unit of the budget


def command(tool: str) -> list[str]:
    """A project command from the same environment as this interpreter."""
    return [str(Path(sys.executable).parent / tool)]


def run(cmd: list[str], log: Path) -> None:
    with log.open("a") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"recipe_ablation: {cmd[0]} failed with exit {result.returncode}; see {log}")


def forward_gflop(arm: Arm, data_dir: Path) -> float:
    """The arm's network cost per image from ddpm-train --dry-run's summary line."""
    out = subprocess.run(
        command("ddpm-train") + ["--preset", "small", *arm.args, "--dry-run", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"recipe_ablation: the dry run of {arm.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    for line in out.stderr.splitlines():
        if line.startswith("model:") and "GFLOP" in line:
            return float(line.split(" GFLOP")[0].rsplit(" ", 1)[1])
    raise SystemExit(f"recipe_ablation: no GFLOP figure in the dry run of {arm.name}")


def evaluate(
    ckpt: Path, folder: Path, tag: str, opts: argparse.Namespace, log: Path, conditional: bool = False
) -> dict:
    """Export ``ckpt`` and score it with ddpm-eval; the report is cached in ``folder/eval-TAG.json``."""
    report = folder / f"eval-{tag}.json"
    if not report.exists():
        onnx = folder / f"{tag}.onnx"
        if not onnx.exists():
            run(command("ddpm-export") + ["--ckpt", str(ckpt), "--onnx", str(onnx), "--no-torchscript"], log)
        sampling = ["--sampler", "ddim", "--steps", str(opts.eval_steps), "--eta", "1"]
        if conditional:
            sampling += ["--digit", "all"]
        run(
            command("ddpm-eval")
            + [
                "--onnx",
                str(onnx),
                "-n",
                str(opts.eval_n),
                "--seed",
                "0",
                *sampling,
                "--threads",
                str(opts.threads),
                "--data-dir",
                str(opts.data_dir),
                "--json",
                str(report),
                "-q",
            ],
            log,
        )
    return json.loads(report.read_text())


def checkpoint_info(ckpt: Path) -> dict:
    import torch

    progress = torch.load(ckpt, map_location="cpu", weights_only=True)["progress"]
    return {"step": int(progress["step"]), "hours": float(progress.get("elapsed_s", 0.0)) / 3600}


def run_arms(opts: argparse.Namespace) -> None:
    chosen = [arm for arm in ARMS if not opts.only or arm.name in opts.only.split(",")]
    for arm in chosen:
        folder = opts.work / arm.name
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "commands.log"
        result_path = folder / "result.json"
        if result_path.exists():
            print(f"{arm.name}: done", flush=True)
            continue
        images = opts.budget_images * SMALL_GFLOP / forward_gflop(arm, opts.data_dir)
        steps = max(int(round(images / arm.batch_size)), 1)
        print(f"{arm.name}: {steps} steps of batch {arm.batch_size} ({arm.what})", flush=True)
        started = time.time()
        run(
            command("ddpm-train")
            + [
                "--preset",
                "small",
                *arm.args,
                "--batch-size",
                str(arm.batch_size),
                "--max-steps",
                str(steps),
                "--epochs",
                "1000",
                "--data-dir",
                str(opts.data_dir),
                "--precision",
                "bf16",
                "--threads",
                str(opts.threads),
                "--seed",
                "0",
                "--out",
                str(folder / "run"),
                "--resume",
                "auto",
                "--save-every",
                "0",
                "--no-samples",
                "--no-progress",
            ],
            log,
        )
        # --epochs 1000 keeps the cosine horizon at --max-steps: every arm decays over its own budget.
        ckpt = folder / "run" / "model.pt"
        scores = evaluate(ckpt, folder, f"step{steps}", opts, log)
        result = {
            "arm": arm.name,
            "what": arm.what,
            "args": list(arm.args),
            "batch_size": arm.batch_size,
            "steps": steps,
            "images": steps * arm.batch_size,
            **checkpoint_info(ckpt),
            "wall_s": time.time() - started,
            "threads": opts.threads,
            "samples": scores["samples"],
            "floor": scores["floor"],
            "eval": {"n": opts.eval_n, "sampler": f"ddim {opts.eval_steps} steps eta 1", "seed": 0},
        }
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{arm.name}: FD {scores['samples']['frechet_distance']:.1f}, "
            f"confidence {scores['samples']['confidence']:.3f}",
            flush=True,
        )


def run_curve(opts: argparse.Namespace) -> None:
    """Score every step checkpoint of a long run (the winning recipe over hours)."""
    folder = opts.work / f"curve-{opts.name}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "commands.log"
    points = []
    for ckpt in sorted(opts.run.glob("ckpt-*.pt")):
        info = checkpoint_info(ckpt)
        scores = evaluate(ckpt, folder, f"step{info['step']}", opts, log, conditional=opts.conditional)
        points.append({**info, "samples": scores["samples"], "floor": scores["floor"]})
        print(
            f"step {info['step']} ({info['hours']:.2f} h): FD {scores['samples']['frechet_distance']:.1f}", flush=True
        )
    old = json.loads((folder / "curve.json").read_text())["points"] if (folder / "curve.json").exists() else []
    merged = {p["step"]: p for p in old + points}
    (folder / "curve.json").write_text(
        json.dumps(
            {"name": opts.name, "conditional": opts.conditional, "points": [merged[s] for s in sorted(merged)]},
            indent=2,
        )
        + "\n"
    )


def report(opts: argparse.Namespace) -> None:
    results = [json.loads(p.read_text()) for p in sorted(opts.work.glob("*/result.json"))]
    order = {arm.name: i for i, arm in enumerate(ARMS)}
    results.sort(key=lambda r: order.get(r["arm"], len(order)))
    if not results:
        raise SystemExit(f"recipe_ablation: no results under {opts.work}")
    floor = results[0]["floor"]
    lines = [
        "# Training recipe ablation: the `small` U-Net, equal training compute per arm",
        "",
        f"Budget per arm: {opts.budget_label}. Scored by `ddpm-eval`: N = {results[0]['eval']['n']}, "
        f"{results[0]['eval']['sampler']}, seed 0, EMA weights; floor (as many real test digits): FD "
        f"{floor['frechet_distance']:.1f}, confidence {floor['confidence']:.3f}. "
        "Arms of one network cost get the same steps, so their compute is equal; "
        "their training hours differ only by what else ran on the machine meanwhile.",
        "",
        "| arm | what | steps x batch | training hours | FD | ÷ floor | confidence | largest class deviation |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["samples"]
        lines.append(
            f"| {r['arm']} | {r['what']} | {r['steps']} x {r['batch_size']} | {r['hours']:.2f} | "
            f"{s['frechet_distance']:.1f} | {s['frechet_distance'] / floor['frechet_distance']:.2f} | "
            f"{s['confidence']:.3f} | {s['max_class_deviation']:.3f} |"
        )
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "recipe-ablation.md").write_text("\n".join(lines) + "\n")
    (opts.out / "recipe-ablation.json").write_text(json.dumps({"arms": results}, indent=2) + "\n")
    plot(results, sorted(opts.work.glob("curve-*/curve.json")), opts.out / "recipe-ablation.png")
    print("\n".join(lines))


def plot(results: list[dict], curves: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fd, ax_conf) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        for ax, key in ((ax_fd, "frechet_distance"), (ax_conf, "confidence")):
            ax.scatter(r["hours"], r["samples"][key], zorder=3)
            ax.annotate(
                r["arm"], (r["hours"], r["samples"][key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    for curve_path in curves:
        curve = json.loads(curve_path.read_text())
        hours = [p["hours"] for p in curve["points"]]
        for ax, key in ((ax_fd, "frechet_distance"), (ax_conf, "confidence")):
            ax.plot(
                hours, [p["samples"][key] for p in curve["points"]], marker="o", label=f"{curve['name']} (long run)"
            )
    floor = results[0]["floor"]
    ax_fd.axhline(floor["frechet_distance"], color="grey", ls="--", label="real digits (floor)")
    ax_conf.axhline(floor["confidence"], color="grey", ls="--", label="real digits (floor)")
    ax_fd.set(xlabel="training hours (1 CPU thread)", ylabel="Fréchet distance (judge features)", yscale="log")
    ax_conf.set(xlabel="training hours (1 CPU thread)", ylabel="confidence (top class p > 0.9)")
    for ax in (ax_fd, ax_conf):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    for name in ("run", "curve", "report"):
        job = sub.add_parser(name)
        job.add_argument("--work", type=Path, required=True, help="Folder for runs, exports and scores (outside git).")
        job.add_argument("--data-dir", type=Path, default=Path("data/mnist"), help="MNIST IDX folder.")
        job.add_argument("--threads", type=int, default=1, help="CPU threads per training and evaluation process.")
        job.add_argument("--eval-n", type=int, default=500, help="Samples per evaluation.")
        job.add_argument("--eval-steps", type=int, default=50, help="DDIM steps (eta 1) per evaluation sample.")
    sub.choices["run"].add_argument(
        "--budget-images",
        type=int,
        default=64_000,
        help="Training images per arm at the small preset's cost per image.",
    )
    sub.choices["run"].add_argument("--only", default=None, help="Comma-separated arm names (default: all).")
    sub.choices["curve"].add_argument("--run", type=Path, required=True, help="A ddpm-train --out folder.")
    sub.choices["curve"].add_argument("--name", required=True, help="Label of the curve in the plot.")
    sub.choices["curve"].add_argument("--conditional", action="store_true", help="Score with --digit all.")
    sub.choices["report"].add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="Where the table and plot go."
    )
    sub.choices["report"].add_argument(
        "--budget-label",
        default="64,000 images at the small preset's cost (500 steps of 128)",
        help="How the budget is described in the table.",
    )
    opts = parser.parse_args()
    {"run": run_arms, "curve": run_curve, "report": report}[opts.job](opts)


if __name__ == "__main__":
    main()
