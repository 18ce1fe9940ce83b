"""The sampling plan (core/plan.py): one default per setting, checked once against the model, errors that
name the parameter (the flags the command line makes of them: test_sampling_cli.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ddpm.core.plan import DEFAULT_GUIDANCE, DIGIT_SAMPLER, SettingError
from ddpm.core.samplers import SPECS, AncestralSampler, DDIMSampler, DPMSolverSampler, find
from tests_support import CONDITIONAL, STUDENT, UNCONDITIONAL, build

FUSED = dataclasses.replace(UNCONDITIONAL, graph="fused-step")


def test_defaults_without_and_with_digits():
    plain = build()
    assert (plain.sampler, plain.steps, plain.options, plain.guidance) == ("ancestral", 1000, {}, 0.0)
    assert plain.digits is None and plain.labels(4) is None
    digits = build(digits=[7])
    assert (digits.sampler, digits.steps, digits.options, digits.guidance) == (
        DIGIT_SAMPLER,
        find(DIGIT_SAMPLER).steps,
        {"spacing": "logsnr"},
        DEFAULT_GUIDANCE,
    )
    assert build(sampler="ddim").steps == 50 and build(sampler="ddim").options == {"eta": 0.0, "spacing": "uniform"}


def test_digits_cycle_over_the_samples():
    np.testing.assert_array_equal(build(digits=[3, 5]).labels(5), [3, 5, 3, 5, 3])
    np.testing.assert_array_equal(build(digits=range(10)).labels(12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


def test_each_sampler_gets_its_settings():
    schedule = CONDITIONAL.make_schedule()
    assert isinstance(build(steps=10).make_sampler(CONDITIONAL, schedule), AncestralSampler)
    ddim = build(sampler="ddim", steps=10, eta=1.0).make_sampler(CONDITIONAL, schedule)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 1.0 and len(ddim) == 10
    solver = build(sampler="dpm++2m-sde", steps=8).make_sampler(CONDITIONAL, schedule)
    assert isinstance(solver, DPMSolverSampler) and solver.stochastic and len(solver) == 8


@pytest.mark.parametrize(
    "settings, setting, fragment",
    [
        ({"sampler": "euler"}, "sampler", "must be one of"),
        ({"steps": 0}, "steps", "between 1 and 1000"),
        ({"steps": 1001}, "steps", "between 1 and 1000"),
        ({"eta": 0.5}, "eta", "η is a setting of ddim, not of ancestral"),  # ignored silently once: ancestral has no η
        ({"sampler": "dpm++2m", "eta": 0.0}, "eta", "η is a setting of ddim, not of dpm"),
        ({"sampler": "ddim", "eta": 1.5}, "eta", "between 0"),
        ({"sampler": "ddim", "eta": float("nan")}, "eta", "between 0"),
        ({"sampler": "ddim", "eta": "much"}, "eta", "must be a number"),
        ({"sampler": "ddim", "steps": 0}, "steps", "between 1 and 1000"),
        ({"sampler": "dpm++2m", "steps": 1001}, "steps", r"between 1 and 1000 for dpm\+\+2m on this model, got 1001"),
        ({"sampler": "unipc", "steps": 0}, "steps", "between 1 and 1000 for unipc on this model, got 0"),
        ({"spacing": "quadratic"}, "spacing", "not of ancestral"),
        ({"sampler": "ddim", "order": 3}, "order", "not a setting of any sampler"),
        ({"sampler": "ddim", "spacing": "karras"}, "spacing", "must be one of"),
        ({"digits": [10]}, "digits", "10 is out of range"),
        ({"digits": []}, "digits", "at least one"),
        ({"guidance": 1.0}, "guidance", "steers towards a digit"),
        ({"digits": [1], "guidance": 51.0}, "guidance", "between 0 and 50"),
        ({"frames": -1}, "frames", ">= 0"),
        ({"show": "eps"}, "show", "must be one of"),
    ],
)
def test_bad_settings_name_the_parameter(settings, setting, fragment):
    with pytest.raises(SettingError, match=fragment) as error:
        build(**settings)
    assert error.value.setting == setting and str(error.value).startswith(f"{setting}: ")
    assert "--" not in str(error.value)  # the library speaks of parameters, not flags


def test_a_solver_on_a_cosine_schedule_says_how_many_steps_it_takes():
    """The cosine schedule's last steps are too noisy for a solver: the refusal gives the range that works."""
    cosine = dataclasses.replace(CONDITIONAL, schedule={"kind": "cosine", "timesteps": 1000})
    limit = find("unipc").step_limit(cosine.make_schedule(), cosine)[0]
    assert 900 < limit < 1000
    with pytest.raises(SettingError) as error:
        build(cosine, sampler="unipc", steps=1000)
    assert str(error.value) == (
        f"steps: must be between 1 and {limit} for unipc on this model (a solver leaves out its "
        f"schedule's {1000 - limit} noisiest steps), got 1000"
    )
    assert build(cosine, sampler="unipc", steps=limit).steps == limit


@pytest.mark.parametrize("settings, setting", [({"digits": [1]}, "digits"), ({"guidance": 1.0}, "guidance")])
def test_an_unconditional_model_refuses_digits(settings, setting):
    with pytest.raises(SettingError, match="unconditional") as error:
        build(UNCONDITIONAL, **settings)
    assert error.value.setting == setting


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"sampler": "ddim"}, "ancestral update built in"),
        ({"steps": 10}, "cannot respace"),
        ({"frames": 4, "show": "x0"}, "x̂_0 cannot be shown"),
    ],
)
def test_a_fused_step_model_runs_only_its_own_loop(settings, fragment):
    assert build(FUSED, frames=4).steps == 1000
    with pytest.raises(SettingError, match=fragment):
        build(FUSED, **settings)


def test_settings_record_only_what_the_sampler_uses():
    assert build().settings() == {"sampler": "ancestral", "steps": 1000}
    assert build(sampler="ddim", steps=5, eta=0.5).settings() == {
        "sampler": "ddim",
        "steps": 5,
        "eta": 0.5,
        "spacing": "uniform",
    }
    assert build(digits=[1]).settings() == {
        "sampler": DIGIT_SAMPLER,
        "steps": find(DIGIT_SAMPLER).steps,
        "spacing": "logsnr",
    }


def test_every_sampler_is_reachable_by_name_and_alias_and_builds_from_its_defaults():
    schedule = CONDITIONAL.make_schedule()
    for spec in SPECS:
        info = STUDENT if spec.student else CONDITIONAL
        for name in (spec.name, *spec.aliases):
            plan = build(info, sampler=name)
            assert plan.sampler == spec.name and set(plan.options) == {option.name for option in spec.options}
            sampler = plan.make_sampler(info, schedule)
            assert len(sampler) == plan.steps and sampler.model_timesteps[0] > sampler.model_timesteps[-1]


# -- few-step students ---------------------------------------------------------------------------


def test_a_student_samples_with_the_consistency_sampler_by_default_in_two_calls_of_its_timesteps():
    for digits in (None, [3]):
        plan = build(STUDENT, digits=digits)
        assert (plan.sampler, plan.steps, plan.guidance) == ("consistency", 2, 0.0)  # guidance is in its rows already
        assert plan.make_sampler(STUDENT, STUDENT.make_schedule()).model_timesteps.tolist() == [999, 474]
    assert build(STUDENT, steps=4).make_sampler(STUDENT, STUDENT.make_schedule()).model_timesteps.tolist() == [
        999,
        742,
        474,
        226,
    ]
    assert build(STUDENT, steps=1).make_sampler(STUDENT, STUDENT.make_schedule()).model_timesteps.tolist() == [999]


def test_a_student_refuses_more_calls_than_it_learned_and_guidance_other_than_its_own():
    with pytest.raises(SettingError, match="between 1 and 4 .*trained at"):
        build(STUDENT, steps=5)
    with pytest.raises(SettingError, match="0"):
        build(STUDENT, steps=0)
    with pytest.raises(SettingError, match="guidance 1 built in"):
        build(STUDENT, digits=[2], guidance=3.0)
    assert build(STUDENT, digits=[2], guidance=1.0).guidance == 0.0  # its own value is no extra row


def test_the_consistency_sampler_needs_a_student_and_other_samplers_on_a_student_warn():
    with pytest.raises(SettingError, match="few-step students .* not one"):
        build(CONDITIONAL, sampler="consistency")
    with pytest.warns(UserWarning, match="few-step student"):
        plan = build(STUDENT, sampler="ddim", steps=5)
    assert plan.sampler == "ddim"
