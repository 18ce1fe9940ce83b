"""The sampling options of ddpm-run and ddpm-eval (runtime/sampling_cli.py): the library's setting errors
spelled in flags, the --digit syntax, and bad sampler, step, η, spacing, digit and guidance values refused
in one line."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error

from ddpm.core.plan import SettingError
from ddpm.runtime.cli import main as run_main
from ddpm.runtime.sampling_cli import flag_error, parse_digits
from tests_support import build


def test_the_command_line_spells_errors_in_flags():
    with pytest.raises(SettingError) as error:
        build(eta=0.5)
    assert str(error.value) == "eta: η is a setting of ddim, not of ancestral; set sampler='ddim'"
    message = flag_error(error.value).format_message()
    assert message == "Invalid value for '--eta': η is a setting of ddim, not of ancestral; add --sampler ddim"
    with pytest.raises(SettingError) as error:
        build(guidance=2.0)
    assert flag_error(error.value).format_message().endswith("'--guidance': steers towards a digit; add --digit")


def test_digit_syntax_is_the_command_lines():
    assert parse_digits(" ALL ", 10) == list(range(10))
    assert parse_digits("3,5", 10) == [3, 5]
    with pytest.raises(Exception, match="comma-separated"):
        parse_digits("three", 10)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--digit", "10"], "out of range"),
        (["--digit", "-1"], "out of range"),
        (["--digit", "three"], "--digit"),
        (["--digit", "3", "--guidance", "-1"], "--guidance"),
        (["--guidance", "2"], "add --digit"),
        (["--sampler", "ddim", "--steps", "1001"], "--steps"),
        (["--sampler", "ddim", "--steps", "0"], "--steps"),
        (["--sampler", "ddim", "--eta", "-0.5"], "--eta"),
        (["--sampler", "ddim", "--eta", "1e300"], "--eta"),
        (["--digit", "3", "--guidance", "1e300"], "--guidance"),
        (["--eta", "0.5"], "--sampler ddim"),
        (["--spacing", "quadratic"], "--sampler ddim"),
    ],
)
def test_sampling_bad_inputs(invoke, conditional, tmp_path, args, fragment):
    result = invoke(run_main, "--onnx", conditional / "unet.onnx", "--png", tmp_path / "o.png", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "args, fragment", [(["--digit", "3"], "unconditional"), (["--guidance", "1"], "unconditional")]
)
def test_digits_on_an_unconditional_model(invoke, tiny_export, tmp_path, args, fragment):
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", tmp_path / "o.png", *args)
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sampler", "dpm++2m", "--eta", "1"], "--eta"),
        (["--sampler", "dpm++2m", "--steps", "0"], "--steps"),
        (["--sampler", "dpm++2m-sde", "--steps", "1001"], "--steps"),
        (["--sampler", "dpm++3m"], "--sampler"),
        (["--sampler", "dpm++2m", "--spacing", "karras"], "--spacing"),
        (["--spacing", "logsnr"], "--spacing"),
    ],
)
def test_solver_bad_inputs(invoke, tiny_export, tmp_path, args, fragment):
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--png", tmp_path / "o.png", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("digit", ["12", "3,x", "seven", ""])
def test_every_bad_digit_is_a_usage_error(invoke, tmp_path, digit):
    """Usage errors exit 2 and run-time failures 1, whatever part of the option is wrong."""
    from ddpm.runtime.cli import main as run_main

    result = invoke(run_main, "--digit", digit, "--png", tmp_path / "o.png")
    assert result.code == 2 and "'--digit'" in result.err and not (tmp_path / "o.png").exists()
