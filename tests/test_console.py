"""The command-line frame (core/console.py): a command that needs an extra the base install leaves out says
so in one line (and --help needs none), out-of-memory errors are told apart from other runtime errors, every
float option of every command refuses nan and infinities at parse, and help prints on an ASCII-only stream."""

import importlib
import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from conftest import DATA_DIR

from tests_support import assert_usage_error

# The console scripts as installed: name -> "module:function".
CONSOLE_SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
    "scripts"
]


HIDE = (
    "import sys\n"
    "class Missing:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'onnx', 'onnxscript'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Missing())\n"
)


def run_without_torch(module: str, *args: str) -> subprocess.CompletedProcess:
    script = HIDE + f"from {module} import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "module, args",
    [
        ("ddpm.train.cli", ["--data-dir", str(DATA_DIR), "--dry-run"]),
        ("ddpm.export.cli", ["--ckpt", "model.pt"]),
    ],
)
def test_commands_needing_torch_name_the_extra(module, args):
    result = run_without_torch(module, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "ddpm-mnist[train]"' in lines[0] and "this command needs" in lines[0]


def test_help_needs_no_extra():
    for module in ("ddpm.train.cli", "ddpm.export.cli"):
        result = run_without_torch(module, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, result.stderr


def test_other_missing_modules_are_not_blamed_on_an_extra():
    from ddpm.core.console import missing_extra

    assert missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None
    assert "[train]" in missing_extra(ModuleNotFoundError("x", name="torch.nn"))
    assert "[bench]" in missing_extra(ModuleNotFoundError("x", name="matplotlib"))


@pytest.mark.parametrize(
    "message",
    [
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB",
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    ],
)
def test_torch_allocation_failures_are_one_line(capsys, monkeypatch, message):
    import sys

    import click

    from ddpm.core.console import run_command

    @click.command()
    def command():
        raise RuntimeError(message + "\nmore lines of detail")

    monkeypatch.setattr(sys, "argv", ["ddpm-train"])
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, "ddpm-train")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("ddpm-train: error: out of memory (") and "more lines" not in err


def test_other_runtime_errors_are_not_disguised_as_memory(monkeypatch):
    import sys

    import click

    from ddpm.core.console import run_command

    @click.command()
    def command():
        raise RuntimeError("a bug")

    monkeypatch.setattr(sys, "argv", ["ddpm-train"])
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(command, "ddpm-train")


@pytest.mark.parametrize("trouble", ["closed stderr", "closed stdout", "full stderr", "stdout pipe closed early"])
def test_a_broken_standard_stream_leaves_the_exit_status_to_the_work(tiny_export, tmp_path, trouble):
    """Progress and summaries are best-effort: the run finishes, writes its file and exits 0."""
    import subprocess
    import sys

    out = tmp_path / "o.png"
    command = [
        sys.executable,
        "-c",
        "from ddpm.runtime.cli import main; main()",
        "--onnx",
        str(tiny_export / "unet.onnx"),
        "-n",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--png",
        str(out),
    ]
    if trouble == "stdout pipe closed early":
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        process.stdout.close()  # as `| head -c0` does: the "wrote" line meets a closed pipe
        code = process.wait(timeout=120)
    elif trouble == "full stderr":
        with open("/dev/full", "w") as full:
            code = subprocess.run(command, stderr=full, timeout=120).returncode
    else:  # the shell closes the descriptor before the command starts
        closing = "2>&-" if trouble == "closed stderr" else ">&-"
        code = subprocess.run(["bash", "-c", f'exec "$@" {closing}', "run", *command], timeout=120).returncode
    assert code == 0 and out.stat().st_size > 100


def script_main(prog: str):
    module, function = CONSOLE_SCRIPTS[prog].split(":")
    return getattr(importlib.import_module(module), function)


def script_command(prog: str) -> click.Command:
    """The click command that console script ``prog`` runs, caught where its ``main`` hands it to run_command."""
    module = importlib.import_module(CONSOLE_SCRIPTS[prog].split(":")[0])
    caught = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "run_command", lambda command, prog_name: caught.append(command))
        script_main(prog)()
    assert len(caught) == 1, f"{prog}'s main does not hand one command to run_command"
    return caught[0]


def leaf_commands(command: click.Command, path: tuple[str, ...] = ()):
    """(subcommand names, command) for every command that takes options, through any groups."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from leaf_commands(sub, (*path, name))
    else:
        yield path, command


def float_options(command: click.Command) -> list[click.Option]:
    """The options that read a float, alone or in a tuple (click infers FLOAT from a float default too)."""

    def reads_float(kind: click.ParamType) -> bool:
        kinds = kind.types if isinstance(kind, click.Tuple) else [kind]
        return any(isinstance(k, click.types.FloatParamType) for k in kinds)

    return [p for p in command.params if isinstance(p, click.Option) and reads_float(p.type)]


def test_the_float_options_are_all_found():
    found = {
        (prog, option.opts[0])
        for prog in CONSOLE_SCRIPTS
        for _, leaf in leaf_commands(script_command(prog))
        for option in float_options(leaf)
    }
    assert {
        ("ddpm-run", "--fps"),
        ("ddpm-run", "--hold"),
        ("ddpm-run", "--guidance"),
        ("ddpm-eval", "--eta"),
        ("ddpm-serve", "--grace"),
        ("ddpm-serve", "--replica-cpus"),
        ("ddpm-export", "--atol"),
        ("ddpm-train", "--lr"),
        ("ddpm-distill", "--guidance"),
    } <= found


@pytest.mark.parametrize("prog", sorted(CONSOLE_SCRIPTS))
def test_every_float_option_refuses_nan_and_infinity_at_parse(invoke, monkeypatch, prog):
    """Refused as a usage error before the command's work starts (before sampling, loading or serving)."""
    command = script_command(prog)
    for path, leaf in leaf_commands(command):

        def started(*args, _path=path, **kwargs):  # _path: bound now, and no command option can pass it
            raise AssertionError(f"{' '.join((prog, *_path))} started its work")

        monkeypatch.setattr(leaf, "callback", started)
        for option in float_options(leaf):
            for value in ("nan", "inf", "-inf"):
                result = invoke(script_main(prog), *path, option.opts[0], *[value] * option.nargs)
                assert_usage_error(result, option.opts[0])


def test_help_prints_on_an_ascii_only_stream():
    """Help texts hold ε, β, −, →: where stdout cannot encode them they show as "?", and the rest of the
    help still prints (an unencodable character once silenced all of it, with exit status 0)."""

    def help_of(prog: str, encoding: str) -> subprocess.Popen:
        module, function = CONSOLE_SCRIPTS[prog].split(":")
        return subprocess.Popen(
            [sys.executable, "-c", f"from {module} import {function}; {function}()", "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "100"},
        )

    runs = {prog: (help_of(prog, "ascii"), help_of(prog, "utf-8")) for prog in CONSOLE_SCRIPTS}
    replaced = 0
    for prog, (ascii_run, utf8_run) in runs.items():
        (out, err), (full, _) = ascii_run.communicate(timeout=120), utf8_run.communicate(timeout=120)
        assert ascii_run.returncode == 0 and err == b"", (prog, err.decode(errors="replace"))
        assert out.startswith(f"Usage: {prog}".encode()), (prog, out[:200])
        assert out == full.decode("utf-8").encode("ascii", "replace"), prog
        replaced += out != full
    assert replaced >= 1  # some help does hold characters ASCII lacks, so the case is met


def test_an_error_line_reaches_an_ascii_only_stderr(monkeypatch):
    from ddpm.core.console import run_command
    from ddpm.core.errors import DDPMError

    @click.command()
    def command():
        raise DDPMError("η must be between 0 and 1, got 2 (in caf\udce9.npz)")  # and a file name's undecodable byte

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="ascii"))
    monkeypatch.setattr(sys, "argv", ["ddpm-run"])
    with pytest.raises(SystemExit) as exit_info:
        run_command(command, "ddpm-run")
    sys.stderr.flush()
    assert exit_info.value.code == 1
    assert raw.getvalue() == b"ddpm-run: error: ? must be between 0 and 1, got 2 (in caf?.npz)\n"
