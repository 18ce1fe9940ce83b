"""ddpm-train (train/cli.py): a run on the MNIST slice, its checkpoint, log and sample grids, resuming
(also --resume auto), --keep, the training recipe's options and preset defaults, and bad options, data,
resume files and output folders, each refused in one line with nothing written."""

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.mnist import load_mnist
from ddpm.train.checkpoint import FORMAT, load_checkpoint
from ddpm.train.cli import main as train_main
from ddpm.train.config import LEGACY_TRAIN_SETTINGS, PRESET_TRAINING
from tests_support import train_args

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_args(data_dir, out, *extra):
    return ("--preset", "tiny", "--data-dir", data_dir, "--out", out, "--no-progress", "--no-samples", *extra)


def test_tiny_loss_falls_on_real_mnist(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "100", "--log-every", "10", "--epochs", "4"))
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 100
    losses = [record["loss"] for record in records]
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < 0.2


def test_checkpoint_contents(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        train_main,
        *tiny_args(
            data_dir,
            out,
            "--max-steps",
            "3",
            "--data-range=0,1",
            "--transform",
            "resize",
            "--seed",
            "7",
            "--lr",
            "3e-4",
        ),
    )
    assert result.code == 0, result.err
    assert f"wrote {out / 'model.pt'} (step 3)" in result.out
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["format"] == FORMAT
    assert checkpoint["model_config"]["base_channels"] == 8
    assert checkpoint["schedule"] == {"kind": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert checkpoint["data"] == {"image_size": 32, "transform": "resize", "data_range": [0.0, 1.0], "dataset": "mnist"}
    assert checkpoint["train"]["seed"] == 7 and checkpoint["train"]["lr"] == 3e-4
    assert checkpoint["progress"]["step"] == 3
    assert set(checkpoint["ema"]) == set(checkpoint["model"])
    assert not torch.equal(checkpoint["ema"]["final.weight"], checkpoint["model"]["final.weight"])
    assert checkpoint["optimizer"]["state"]
    assert {"torch", "numpy", "python"} <= set(checkpoint["rng"])
    assert checkpoint["versions"]["torch"] == torch.__version__
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary or lock files left


def test_samples_grid_written_each_epoch(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    args = (
        "--preset",
        "tiny",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-progress",
        "--max-images",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--sample-steps",
        "5",
        "--sample-count",
        "4",
    )
    assert invoke(train_main, *args).code == 0
    assert sorted(p.name for p in out.glob("samples-*.png")) == ["samples-epoch001.png", "samples-epoch002.png"]


def test_resume_equals_uninterrupted_run(invoke, data_dir, tmp_path):
    # 4 steps per epoch, so the run crosses epoch boundaries before and after the interruption.
    common = ("--max-images", "64", "--batch-size", "16", "--epochs", "5", "--save-every", "0")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke(train_main, *tiny_args(data_dir, straight, *common, "--max-steps", "10")).code == 0
    assert invoke(train_main, *tiny_args(data_dir, split, *common, "--max-steps", "6")).code == 0
    first_part = load_checkpoint(split / "model.pt")["progress"]["elapsed_s"]
    resumed = invoke(
        train_main,
        "--resume",
        split / "model.pt",
        "--max-steps",
        "10",
        "--data-dir",
        data_dir,
        "--out",
        split,
        "--no-progress",
        "--no-samples",
    )
    assert resumed.code == 0, resumed.err
    assert "--data-dir" not in resumed.err  # the same digits: no warning
    a, b = load_checkpoint(straight / "model.pt"), load_checkpoint(split / "model.pt")
    assert a["data_fingerprint"] == b["data_fingerprint"] and a["data_fingerprint"]["images"] == 64
    assert a["progress"]["step"] == b["progress"]["step"] == 10
    assert a["progress"]["epoch"] == b["progress"]["epoch"] == 2
    assert b["progress"]["elapsed_s"] > first_part > 0  # wall time accumulates across resumes
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])


def write_training_idx(folder, images, labels):
    """MNIST training files (uncompressed IDX) holding ``images`` [N,28,28] uint8 and ``labels``."""
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes()
    )
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.tobytes())


@pytest.mark.parametrize(
    "change, fragment",
    [
        (
            "one pixel",
            "other training digits than the checkpoint was trained on (the same count, 64, but other content)",
        ),
        ("fewer digits", "48 training images, where the checkpoint was trained on 64"),
    ],
)
def test_resume_warns_when_the_data_changed(invoke, data_dir, tmp_path, change, fragment):
    out = tmp_path / "run"
    common = ("--max-images", "64", "--batch-size", "16", "--epochs", "5", "--save-every", "0")
    assert invoke(train_main, *tiny_args(data_dir, out, *common, "--max-steps", "2")).code == 0
    images, labels = (array[:64].copy() for array in load_mnist(data_dir, "train"))
    if change == "one pixel":
        images[5, 14, 14] ^= 0xFF
    else:
        images, labels = images[:48], labels[:48]
    other = tmp_path / "other"
    write_training_idx(other, images, labels)
    resumed = invoke(
        train_main,
        "--resume",
        out / "model.pt",
        "--max-steps",
        "4",
        "--data-dir",
        other,
        "--out",
        out,
        "--no-progress",
        "--no-samples",
    )
    assert resumed.code == 0, resumed.err
    warnings = [line for line in resumed.err.splitlines() if line.startswith("ddpm-train: --data-dir")]
    assert len(warnings) == 1 and fragment in warnings[0] and str(other) in warnings[0], resumed.err


def test_resume_refuses_changed_settings(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2")).code == 0
    result = invoke(train_main, "--resume", out / "model.pt", "--lr", "0.1", "--data-dir", data_dir, "--out", out)
    assert_one_line_error(result, "--lr 0.1 (checkpoint: 0.001)")
    # The checkpoint's own settings may be repeated, as with --resume auto.
    same = invoke(
        train_main,
        "--resume",
        out / "model.pt",
        "--preset",
        "tiny",
        "--lr",
        "1e-3",
        "--max-steps",
        "3",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-progress",
        "--no-samples",
    )
    assert same.code == 0, same.err
    done = invoke(
        train_main,
        "--resume",
        out / "model.pt",
        "--max-steps",
        "3",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-progress",
    )
    assert_one_line_error(done, "already at step 3")
    # The same with --resume auto is the finished run's own command repeated: complete, not an error.
    again = invoke(
        train_main, "--resume", "auto", "--max-steps", "3", "--data-dir", data_dir, "--out", out, "--no-progress"
    )
    assert again.code == 0 and "is complete (step 3 of 3); nothing to do" in again.out, again


def test_resume_auto_starts_fresh_and_refuses_other_settings(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    first = invoke(train_main, *train_args(data_dir, out, "--max-steps", 2, "--resume", "auto", "--threads", 2))
    assert first.code == 0 and "starting a new run" in first.err
    other = invoke(
        train_main, *train_args(data_dir, out, "--max-steps", 4, "--resume", "auto", "--lr", "0.1", "--threads", 2)
    )
    assert_one_line_error(other, "other settings", "--lr 0.1")
    assert load_checkpoint(out / "model.pt")["progress"]["step"] == 2


def test_keep_limits_step_checkpoints(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        invoke(
            train_main, *train_args(data_dir, out, "--max-steps", 10, "--save-every", 2, "--keep", 2, "--threads", 2)
        ).code
        == 0
    )
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-00000008.pt", "ckpt-00000010.pt"]
    assert (out / "model.pt").read_bytes() == (out / "ckpt-00000010.pt").read_bytes()
    # a new run over it (--overwrite) drops the old run's step files at its first save
    assert (
        invoke(
            train_main, *train_args(data_dir, out, "--max-steps", 3, "--save-every", 2, "--overwrite", "--threads", 2)
        ).code
        == 0
    )
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_existing_checkpoint_is_not_overwritten(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2")).code == 0
    before = (out / "model.pt").read_bytes()
    result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2"))
    assert_one_line_error(result, "holds another run", "--resume", "--overwrite")
    assert (out / "model.pt").read_bytes() == before
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "1", "--overwrite")).code == 0
    assert load_checkpoint(out / "model.pt")["progress"]["step"] == 1


@pytest.mark.parametrize("state", ["missing", "dangling", "loop"])
def test_new_run_never_deletes_another_runs_files(invoke, data_dir, tmp_path, state):
    """model.pt missing or a broken link (what a kill during the first save leaves) must not let a new
    run without --overwrite delete the folder's checkpoints and log."""
    out = tmp_path / "run"
    assert (
        invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2", "--save-every", "1", "--keep", "5")).code == 0
    )
    latest = out / "model.pt"
    latest.unlink()
    if state == "dangling":
        latest.symlink_to("ckpt-99999999.pt")
    elif state == "loop":
        latest.symlink_to("model.pt")
    before = sorted(p.name for p in out.iterdir())
    log = (out / "log.jsonl").read_bytes()
    result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "1"))
    assert_one_line_error(result, "holds another run", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == before and (out / "log.jsonl").read_bytes() == log


def test_dry_run_writes_nothing(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(train_main, *tiny_args(data_dir, out, "--dry-run"))
    assert result.code == 0
    assert "38,257 parameters" in result.err and "1,000 images" in result.err
    assert not out.exists()


def test_recipe_settings_reach_the_checkpoint_and_resume(invoke, data_dir, tmp_path):
    out = tmp_path / "run"
    recipe = (
        "--loss-weighting",
        "min-snr",
        "--min-snr-gamma",
        "3",
        "--lr-schedule",
        "cosine",
        "--lr-warmup-steps",
        "2",
    )
    result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "4", "--epochs", "1", *recipe))
    assert result.code == 0, result.err
    assert "Min-SNR-3" in result.err and "cosine" in result.err
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    train = checkpoint["train"]
    assert (train["loss_weighting"], train["min_snr_gamma"], train["lr_schedule"], train["lr_warmup_steps"]) == (
        "min-snr",
        3.0,
        "cosine",
        2,
    )
    # The same command resumes; a different weighting is refused naming both values.
    more = tiny_args(data_dir, out, "--max-steps", "6", "--epochs", "1", "--resume", "auto")
    assert invoke(train_main, *more, *recipe).code == 0
    refused = invoke(train_main, *more, "--loss-weighting", "none")
    assert refused.code != 0 and "--loss-weighting none (checkpoint: min-snr)" in refused.err


def test_old_checkpoint_resumes_without_the_new_settings(invoke, data_dir, tmp_path):
    """A checkpoint without the recipe keys resumes with a constant rate and plain L_simple."""
    out = tmp_path / "run"
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "2", "--epochs", "1")).code == 0
    path = out / "model.pt"
    checkpoint = torch.load(path, weights_only=True)
    for key in LEGACY_TRAIN_SETTINGS:
        checkpoint["train"].pop(key)
    target = out / "old.pt"
    torch.save(checkpoint, target)
    result = invoke(
        train_main,
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--no-progress",
        "--no-samples",
        "--max-steps",
        "3",
        "--resume",
        str(target),
    )
    assert result.code == 0, result.err
    assert "loss L_simple" in result.err and "constant" in result.err
    assert torch.load(out / "model.pt", weights_only=True)["train"]["lr_schedule"] == "constant"


def test_small_preset_defaults_are_the_measured_recipe(invoke, data_dir, tmp_path):
    result = invoke(train_main, "--preset", "small", "--data-dir", data_dir, "--dry-run")
    assert result.code == 0, result.err
    recipe = PRESET_TRAINING["small"]
    assert f"lr {recipe['lr']:g} (cosine, {recipe['lr_warmup_steps']} warm-up steps)" in result.err
    assert "Min-SNR-5" in result.err and "dropout 0," in result.err and f"EMA {recipe['ema_decay']:g}" in result.err


# -- bad input: one line, exit code != 0, nothing written --------------------------------------


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--batch-size", "0", "--batch-size"),
        ("--batch-size", "-3", "--batch-size"),
        ("--epochs", "0", "--epochs"),
        ("--lr", "0", "--lr"),
        ("--lr", "-1e-4", "--lr"),
        ("--lr", "abc", "--lr"),
        ("--max-steps", "0", "--max-steps"),
        ("--channel-mults", "1,x", "--channel-mults"),
        ("--attention", "0,maybe", "--attention"),
        ("--adam-betas", "0.9", "--adam-betas"),
        ("--norm-groups", "3", "not divisible by norm_groups"),
        ("--attention", "1", "attention has 1 entries"),
        ("--image-size", "31", "--image-size"),
        ("--data-range", "0,255", "--data-range"),
    ],
)
def test_bad_options(invoke, data_dir, tmp_path, option, value, fragment):
    out = tmp_path / "run"
    result = invoke(train_main, *tiny_args(data_dir, out, option, value))
    assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "option,value",
    [
        ("--lr-schedule", "step"),
        ("--loss-weighting", "p2"),
        ("--min-snr-gamma", "0"),
        ("--min-snr-gamma", "nan"),
        ("--lr", "nan"),
        ("--lr-warmup-steps", "-1"),
    ],
)
def test_bad_recipe_options(invoke, data_dir, tmp_path, option, value):
    result = invoke(train_main, *tiny_args(data_dir, tmp_path / "run", option, value))
    assert result.code == 2
    assert "Traceback" not in result.err and option in result.err
    assert not (tmp_path / "run").exists()


def test_cosine_rejects_linear_settings(invoke, tmp_path):
    result = invoke(
        train_main,
        "--preset",
        "tiny",
        "--data-dir",
        DATA_DIR,
        "--out",
        tmp_path / "o",
        "--schedule",
        "cosine",
        "--beta-end",
        "0.01",
        "--no-progress",
    )
    assert_one_line_error(result, "cosine")


def test_missing_data_dir(invoke, tmp_path):
    result = invoke(train_main, *tiny_args(tmp_path / "nope", tmp_path / "run"))
    assert_one_line_error(result, "does not exist", "train-images-idx3-ubyte", "--download")


def test_incomplete_data_dir(invoke, data_dir, tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((data_dir / "train-images-idx3-ubyte.gz").read_bytes())
    result = invoke(train_main, *tiny_args(tmp_path, tmp_path / "run"))
    assert_one_line_error(result, "lacks the MNIST training files", "train-labels-idx1-ubyte", "--download")


def test_data_file_that_is_not_idx(invoke, data_dir, tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(os.urandom(5000))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes((data_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    result = invoke(train_main, *tiny_args(tmp_path, tmp_path / "run"))
    assert_one_line_error(result, "train-images-idx3-ubyte", "not an IDX file")


def test_unwritable_output(invoke, data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(invoke(train_main, *tiny_args(data_dir, blocker)), "not a directory")
    assert_one_line_error(invoke(train_main, *tiny_args(data_dir, blocker / "sub")), "cannot write to output directory")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output(invoke, data_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(invoke(train_main, *tiny_args(data_dir, locked)), "cannot write to output directory")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "random", "foreign", "bare_state_dict", "directory"])
def test_bad_resume_files(invoke, data_dir, tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        out = tmp_path / "good"
        assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "1")).code == 0
        path.write_bytes((out / "model.pt").read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "foreign":
        torch.save({"epoch": 3, "notes": "something else"}, path)
    elif kind == "bare_state_dict":
        torch.save({"final.weight": torch.zeros(1, 8, 3, 3)}, path)
    elif kind == "directory":
        path.mkdir()
    fragments = {
        "missing": ["does not exist"],
        "empty": ["is empty"],
        "truncated": ["not a readable PyTorch checkpoint"],
        "random": ["not a readable PyTorch checkpoint"],
        "foreign": ["not a ddpm-mnist checkpoint"],
        "bare_state_dict": ["bare state dict"],
        "directory": ["is a directory"],
    }[kind]
    result = invoke(train_main, "--resume", path, "--data-dir", data_dir, "--out", tmp_path / "out", "--no-progress")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_pickled_code_is_not_executed(invoke, data_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": Exploit()}))
    result = invoke(train_main, "--resume", tmp_path / "evil.pt", "--data-dir", data_dir, "--out", tmp_path / "o")
    assert_one_line_error(result, "not a readable PyTorch checkpoint")
    assert not marker.exists()


def test_console_script_runs(data_dir, tmp_path):
    """The installed entry point works end to end in a fresh process and prints help."""
    script = [sys.executable, "-c", "from ddpm.train.cli import main; main()"]
    help_text = subprocess.run([*script, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--preset", "--resume", "--max-images", "--precision", "--ema-decay", "--data-range"):
        assert option in help_text
    bad = subprocess.run([*script, "--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_one_trainer_per_run_folder(invoke, data_dir, tmp_path):
    """A second ddpm-train on the same --out refuses while the first holds the folder; a lock left by
    a killed process does not block."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    holder = os.open(out, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running trainer holds it
    try:
        result = invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "1"))
        assert_one_line_error(result, "in use by another ddpm-train")
        assert list(out.iterdir()) == []
    finally:
        os.close(holder)  # the holder ends: the kernel drops its lock
    assert invoke(train_main, *tiny_args(data_dir, out, "--max-steps", "1")).code == 0


def test_failed_start_leaves_no_folder(invoke, tmp_path):
    out = tmp_path / "never"
    result = invoke(train_main, "--preset", "tiny", "--data-dir", tmp_path / "no-data", "--out", out, "--no-progress")
    assert result.code != 0 and "Traceback" not in result.err
    assert not out.exists()
