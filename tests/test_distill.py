"""Few-step students: ddpm-distill learns from a tiny teacher (the loss falls, a resumed run continues
exactly), the student exports with its teacher in its metadata, the consistency sampler's steps match
their closed form, the engine mixes student rows, and the mix-ups are refused in one line."""

import io
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import DATA_DIR, assert_one_line_error

from ddpm.core.files import file_sha256
from ddpm.core.samplers import ConsistencySampler, student_timesteps
from ddpm.core.schedule import make_schedule
from ddpm.export.cli import main as export_main
from ddpm.runtime import DDPM
from ddpm.runtime.cli import main as run_main
from ddpm.train.checkpoint import load_checkpoint
from ddpm.train.cli import main as train_main
from ddpm.train.distill import StudentUNet
from ddpm.train.distill_cli import main as distill_main
from tests_support import run_main as call_main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCHEDULE = make_schedule("linear", 1000)


def distill_args(teacher, out, *extra):
    return [
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--trajectories",
        "48",
        "--teacher-steps",
        "6",
        "--student-steps",
        "3",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--no-progress",
        "--no-samples",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny class-conditional U-Net, 60 steps trained (an untrained one's ODE lands anywhere)."""
    out = tmp_path_factory.mktemp("teacher")
    assert (
        call_main(
            train_main,
            "--preset",
            "tiny",
            "--conditional",
            "--data-dir",
            DATA_DIR,
            "--out",
            out,
            "--max-steps",
            60,
            "--epochs",
            20,
            "--max-images",
            256,
            "--ema-decay",
            0.9,
            "--threads",
            1,
            "--no-progress",
            "--no-samples",
        )
        == 0
    )
    return out / "model.pt"


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """A student of ``teacher``, 6 updates, exported: the folder holds model.pt and unet.onnx."""
    out = tmp_path_factory.mktemp("student")
    assert call_main(distill_main, *distill_args(teacher, out, "--max-steps", 6)) == 0
    assert call_main(export_main, "--ckpt", out / "model.pt", "--no-torchscript") == 0
    return out


# -- the sampler ---------------------------------------------------------------------------------


def test_student_timesteps_take_the_first_and_evenly_spaced_others():
    trained = [999, 800, 600, 400]
    assert student_timesteps(trained, 1).tolist() == [999]
    assert student_timesteps(trained, 2).tolist() == [999, 600]
    assert student_timesteps(trained, 3).tolist() == [999, 800, 600]
    assert student_timesteps(trained, 4).tolist() == trained


def test_consistency_steps_renoise_the_predicted_image_to_the_next_timestep():
    """With ε chosen so that x̂_0 = c at every step, step i gives √ᾱ_next·c + √(1−ᾱ_next)·z, the last c."""
    sampler = ConsistencySampler(SCHEDULE, [999, 500, 100])
    rng = np.random.default_rng(0)
    c = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    x = rng.standard_normal(c.shape).astype(np.float32)
    for i, t in enumerate(sampler.model_timesteps):
        alpha_bar = SCHEDULE.alpha_bars[t]
        eps = ((x - np.sqrt(alpha_bar) * c) / np.sqrt(1 - alpha_bar)).astype(np.float32)
        z = rng.standard_normal(c.shape).astype(np.float32) if sampler.needs_noise(i) else None
        x_next = sampler.step(x, i, eps, z)
        if i + 1 < len(sampler):
            following = SCHEDULE.alpha_bars[sampler.model_timesteps[i + 1]]
            np.testing.assert_allclose(x_next, np.sqrt(following) * c + np.sqrt(1 - following) * z, atol=2e-5)
        x = x_next
    assert not sampler.needs_noise(len(sampler) - 1)
    np.testing.assert_allclose(x, c, atol=2e-5)


def test_the_student_network_answers_eps_and_predicts_x0_in_v_form():
    from ddpm.train.config import PRESETS

    torch.manual_seed(0)
    network = StudentUNet(PRESETS["tiny"], SCHEDULE).eval()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([999, 500, 3])
    with torch.no_grad():
        eps, x0 = network(x, t), network(x, t, output="x0")
    alpha = torch.tensor(np.sqrt(SCHEDULE.alpha_bars[t.numpy()]), dtype=torch.float32)[:, None, None, None]
    sigma = torch.sqrt(1 - alpha**2)
    torch.testing.assert_close((x - sigma * eps) / alpha, x0, atol=2e-3, rtol=1e-3)  # the runtime's x̂_0 from ε


# -- ddpm-distill ----------------------------------------------------------------------------------


def pair_loss(checkpoint, weights, out) -> float:
    """The mean x̂_0 error of a student's weights over every (solve, timestep) pair of its run."""
    from ddpm.train.config import UNetConfig

    solves = torch.load(out / "trajectories.pt", weights_only=True)
    network = StudentUNet(UNetConfig.from_dict(checkpoint["model_config"]), SCHEDULE)
    network.load_state_dict(weights)
    timesteps = torch.tensor(checkpoint["student"]["timesteps"])
    with torch.no_grad():
        errors = [
            (
                network(solves["states"][:, k], timesteps[k].repeat(len(solves["states"])), output="x0")
                - solves["targets"]
            )
            .pow(2)
            .mean()
            for k in range(len(timesteps))
        ]
    return float(torch.stack(errors).mean())


def test_distillation_lowers_the_loss_on_the_teachers_solves(invoke, tiny_export, tmp_path):
    out = tmp_path / "s"
    result = invoke(
        distill_main,
        *distill_args(
            tiny_export / "model.pt",
            out,
            "--guidance",
            0,
            "--trajectories",
            16,
            "--max-steps",
            40,
            "--epochs",
            100,
            "--lr",
            1e-3,
            "--lr-warmup-steps",
            0,
        ),
    )
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(out / "model.pt")
    before = pair_loss(checkpoint, checkpoint["student"]["teacher_weights"], out)
    after = pair_loss(checkpoint, checkpoint["model"], out)
    assert after < 0.9 * before, (before, after)


def test_bf16_solves_stay_near_the_fp32_ones(teacher):
    """--precision bf16 runs the teacher's calls under autocast: other bits, the same solves to bf16's
    round-off (the solver's own arithmetic stays fp32)."""
    from ddpm.train.config import DistillConfig, UNetConfig
    from ddpm.train.distill import build_teacher, draw_trajectories, teacher_record

    checkpoint = load_checkpoint(teacher)
    config = DistillConfig(teacher_steps=6, student_steps=3, trajectories=8)
    record = teacher_record(checkpoint, teacher, config, SCHEDULE)
    network = build_teacher(record, UNetConfig.from_dict(checkpoint["model_config"]))
    shape = (1, 32, 32)
    exact = draw_trajectories(network, SCHEDULE, record, shape, seed=0, progress=False)
    rounded = draw_trajectories(network, SCHEDULE, record, shape, seed=0, progress=False, bf16=True)
    assert torch.equal(exact.labels, rounded.labels) and not torch.equal(exact.targets, rounded.targets)
    error = (rounded.targets - exact.targets).pow(2).mean().sqrt() / exact.targets.pow(2).mean().sqrt()
    assert error < 0.05, float(error)


def test_the_checkpoint_records_the_teacher(invoke, teacher, tmp_path):
    out = tmp_path / "s"
    result = invoke(distill_main, *distill_args(teacher, out, "--max-steps", 2))
    assert result.code == 0, result.err
    assert "student: learns at timesteps" in result.err
    checkpoint = load_checkpoint(out / "model.pt")
    record = checkpoint["student"]
    assert checkpoint["kind"] == "student"
    assert record["teacher_sha256"] == file_sha256(teacher) and record["guidance"] == 1.0
    assert len(record["timesteps"]) == 3 and record["timesteps"][0] == 999
    teacher_weights = load_checkpoint(teacher)["ema"]
    assert all(torch.equal(record["teacher_weights"][name], value) for name, value in teacher_weights.items())


def test_the_student_starts_from_the_teachers_weights(invoke, teacher, tmp_path):
    out = tmp_path / "s"
    assert invoke(distill_main, *distill_args(teacher, out, "--max-steps", 1, "--lr", 1e-12)).code == 0
    start = load_checkpoint(out / "model.pt")["model"]
    for name, value in load_checkpoint(teacher)["ema"].items():
        torch.testing.assert_close(start[name], value, atol=1e-9, rtol=0)


def test_a_resumed_student_continues_exactly(invoke, teacher, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert invoke(distill_main, *distill_args(teacher, straight, "--max-steps", 8)).code == 0
    assert invoke(distill_main, *distill_args(teacher, halves, "--max-steps", 4)).code == 0
    # resumed without --teacher: the checkpoint carries it, and the teacher's solves are read back, not redrawn
    solves = (halves / "trajectories.pt").stat().st_mtime_ns
    result = invoke(
        distill_main,
        "--resume",
        "auto",
        "--out",
        halves,
        "--max-steps",
        8,
        "--threads",
        1,
        "--no-progress",
        "--no-samples",
    )
    assert result.code == 0, result.err
    assert (halves / "trajectories.pt").stat().st_mtime_ns == solves
    a, b = load_checkpoint(straight / "model.pt"), load_checkpoint(halves / "model.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 8
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_the_student_exports_with_its_teacher_and_timesteps(student, teacher):
    props = {p.key: json.loads(p.value) for p in onnx.load(str(student / "unet.onnx")).metadata_props}
    record = props["ddpm.student"]
    assert record["teacher_sha256"] == file_sha256(teacher)
    assert record["timesteps"] == load_checkpoint(student / "model.pt")["student"]["timesteps"]
    assert record["guidance"] == 1.0 and record["teacher_steps"] == 6


def test_ddpm_run_samples_a_student_in_two_calls_by_default(invoke, student, tmp_path):
    # the backend, precision and batch are pinned: auto picks per CPU, and each choice rounds differently
    result = invoke(
        run_main,
        "--onnx",
        student / "unet.onnx",
        "-n",
        4,
        "--digit",
        "3",
        "--seed",
        1,
        "--npz",
        tmp_path / "s.npz",
        "--provider",
        "cpu",
        "--precision",
        "fp32",
        "--batch-size",
        4,
    )
    assert result.code == 0, result.err
    assert "x 2 steps" in result.err
    ddpm = DDPM.load(student / "unet.onnx", provider="cpu")
    expected = ddpm.generate(4, ddpm.plan(digits=[3]), seed=1, batch_size=4)
    with np.load(tmp_path / "s.npz") as saved:
        np.testing.assert_array_equal(saved["images"], expected.images)


def test_the_engine_mixes_student_rows_and_keeps_their_samples(student):
    ddpm = DDPM.load(student / "unet.onnx", provider="cpu")
    plans = [ddpm.plan(steps=1), ddpm.plan(steps=2, digits=[4]), ddpm.plan(steps=3, digits=[1, 7])]
    engine = ddpm.serving_engine(max_rows=32)
    jobs = [engine.submit(n, plan, seed) for n, plan, seed in zip((2, 3, 2), plans, (5, 6, 7))]
    engine.run_until_idle()
    assert engine.stats.calls == 3  # one call per tick: the three requests share them
    for job, plan, n, seed in zip(jobs, plans, (2, 3, 2), (5, 6, 7)):
        np.testing.assert_allclose(job.wait(0).samples, ddpm.generate(n, plan, seed=seed).samples, atol=1e-4)


def test_ddpm_bench_times_the_student_at_each_number_of_calls(invoke, student, tmp_path):
    from ddpm.benchmarks.bench import main as bench_main

    result = invoke(
        bench_main,
        "--quick",
        "--models",
        "student",
        "--student-onnx",
        student / "unet.onnx",
        "--implementations",
        "ort",
        "--out-dir",
        tmp_path,
        "--tag",
        "t",
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "bench-t.json").read_text())
    rows = [r for r in report["sampler_rows"] if r["model"] == "student"]
    each_calls = [("consistency", 1), ("consistency", 2), ("consistency", 3)]
    assert [(r["sampler"], r["steps"]) for r in rows if r["provider"] == "cpu"] == each_calls
    fastest = [r for r in rows if r["provider"].startswith("cpu auto (U-Net ")]  # each graph on its fastest path
    assert [(r["sampler"], r["steps"]) for r in fastest] == each_calls
    lines = [line for line in report["targets"] if line.startswith("Student per digit, consistency 2 calls")]
    assert len(lines) == 2 and ", cpu, batch " in lines[0] and f", {fastest[0]['provider']}, batch " in lines[1]


def test_ddpm_serve_draws_a_students_digits_in_its_calls(student):
    from fastapi.testclient import TestClient

    from ddpm.serve.app import create_app

    ddpm = DDPM.load(student / "unet.onnx", provider="cpu")
    with TestClient(create_app(ddpm)) as client:
        response = client.post("/v1/samples", json={"n": 2, "digits": [5], "seed": 3, "format": "npz"})
        assert response.status_code == 200, response.text
        with np.load(io.BytesIO(response.content)) as got:
            settings = json.loads(str(got["settings"]))
            expected = ddpm.generate(2, ddpm.plan(digits=[5]), seed=3)
            assert np.abs(got["images"].astype(int) - expected.images.astype(int)).max() <= 1
        assert (settings["sampler"], settings["steps"]) == ("consistency", 2)
        refused = client.post("/v1/samples", json={"n": 1, "digits": [5], "guidance": 4})
        assert refused.status_code == 422 and "built in" in refused.text


# -- bad input ---------------------------------------------------------------------------------------


def test_a_student_is_no_teacher(invoke, student, tmp_path):
    result = invoke(distill_main, *distill_args(student / "model.pt", tmp_path / "x"))
    assert_one_line_error(result, "few-step student itself")
    assert not (tmp_path / "x").exists()


def test_resuming_with_another_teacher_is_refused(invoke, teacher, student, tmp_path):
    other = tmp_path / "other"
    assert (
        call_main(
            train_main,
            "--preset",
            "tiny",
            "--conditional",
            "--data-dir",
            DATA_DIR,
            "--out",
            other,
            "--max-steps",
            1,
            "--max-images",
            64,
            "--threads",
            1,
            "--no-progress",
            "--no-samples",
        )
        == 0
    )
    result = invoke(distill_main, *distill_args(other / "model.pt", student, "--resume", "auto", "--max-steps", 7))
    assert_one_line_error(result, "--teacher of sha256")
    assert result.code == 2
    assert load_checkpoint(student / "model.pt")["progress"]["step"] == 6


def test_a_new_student_needs_a_teacher_and_sensible_steps(invoke, teacher, conditional, tmp_path):
    result = invoke(distill_main, "--out", tmp_path / "x", "--no-progress")
    assert_one_line_error(result, "--teacher")
    result = invoke(distill_main, *distill_args(teacher, tmp_path / "y", "--student-steps", 7))
    assert_one_line_error(result, "--student-steps 7 exceeds --teacher-steps 6")
    # the cosine schedule's last steps lie below the λ an ODE solver may use
    result = invoke(distill_main, *distill_args(conditional / "model.pt", tmp_path / "z", "--teacher-steps", 1000))
    assert_one_line_error(result, "--teacher-steps 1000 exceeds the 996 steps")
    assert not any((tmp_path / name).exists() for name in "xyz")


@pytest.mark.parametrize("steps", ["0", "4"])
def test_ddpm_run_refuses_steps_the_student_did_not_learn(invoke, student, tmp_path, steps):
    result = invoke(run_main, "--onnx", student / "unet.onnx", "--steps", steps, "--png", tmp_path / "s.png")
    assert_one_line_error(result, "--steps")
    assert result.code == 2 and not (tmp_path / "s.png").exists()


def test_a_student_whose_teacher_hash_is_malformed_is_refused(invoke, student, tmp_path):
    model = onnx.load(str(student / "unet.onnx"))
    for prop in model.metadata_props:
        if prop.key == "ddpm.student":
            record = json.loads(prop.value)
            prop.value = json.dumps({**record, "teacher_sha256": "not-a-hash"})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    result = invoke(run_main, "--onnx", tmp_path / "bad.onnx", "--png", tmp_path / "s.png")
    assert_one_line_error(result, "student.teacher_sha256")
    assert result.code == 1 and not (tmp_path / "s.png").exists()
