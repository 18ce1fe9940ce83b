"""SIGINT and SIGTERM at a command's finish line, in real processes: during the renames that put a
set of outputs in place, after them, and while the interpreter exits once the work is done.

Each signal is sent by the process to itself at the exact point (a wrapped os.replace, the summary,
an exit handler), so no test depends on timing."""

import signal
import subprocess
import sys

import pytest

from ddpm.core import signals

OUTPUTS = ("o.png", "o.npz", "o.gif")
OLD = b"an earlier run's output"


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, with Ctrl-C's default disposition even where the suite runs
    as a background job (started with SIGINT ignored)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def sample_code(model, out, hook: str) -> str:
    """ddpm-run drawing two digits in two steps into ``out``'s three outputs, after ``hook`` ran."""
    args = [
        "--onnx",
        str(model),
        "--provider",
        "cpu",
        "--batch-size",
        "2",
        "-n",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--seed",
        "1",
        "-q",
        *[item for name in OUTPUTS for item in (f"--{name[2:]}", str(out / name))],
    ]
    return (
        f"import os, signal, sys\n{hook}\n"
        f"from ddpm.runtime.cli import main\nsys.argv = ['ddpm-run', *{args!r}]\nmain()\n"
    )


def old_outputs(out):
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_bytes(OLD)


def replaced(out) -> list[str]:
    return [name for name in OUTPUTS if (out / name).read_bytes() != OLD]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_between_the_renames_replaces_the_whole_set_and_says_so(tiny_export, tmp_path, signum):
    out = tmp_path / "out"
    old_outputs(out)
    hook = (
        "import ddpm.core.files as files\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        "    real(src, dst)\n"
        f"    os.kill(os.getpid(), {int(signum)})  # after the first of the three renames\n"
        "    files.os.replace = real\n"
        "files.os.replace = replace\n"
    )
    result = run_python(sample_code(tiny_export / "unet.onnx", out, hook), tmp_path)
    assert result.returncode == 128 + signum, result.stderr
    assert replaced(out) == list(OUTPUTS)  # all three from this run, not a mix of two runs
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    how = "interrupted" if signum == signal.SIGINT else "terminated"
    assert lines[0].startswith(f"ddpm-run: {how} after writing ")
    assert all(str(out / name) in lines[0] for name in OUTPUTS)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary file left


def sigterm_around_the_writing(when: str) -> str:
    """A hook that sends SIGTERM just ``before`` or ``after`` ddpm-run writes its outputs."""
    kill = "os.kill(os.getpid(), signal.SIGTERM)"
    return (
        "import ddpm.runtime.cli as cli\n"
        "real = cli.write_outputs\n"
        "def write_outputs(*args, **kwargs):\n"
        f"    {kill if when == 'before' else 'pass'}\n"
        "    sizes = real(*args, **kwargs)\n"
        f"    {kill if when == 'after' else 'pass'}\n"
        "    return sizes\n"
        "cli.write_outputs = write_outputs\n"
    )


def test_a_signal_after_the_renames_names_what_was_written(tiny_export, tmp_path):
    out = tmp_path / "out"
    old_outputs(out)
    result = run_python(sample_code(tiny_export / "unet.onnx", out, sigterm_around_the_writing("after")), tmp_path)
    assert result.returncode == 143, result.stderr
    assert replaced(out) == list(OUTPUTS)
    assert "no output written" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ddpm-run: terminated after writing ") and all(str(out / name) in line for name in OUTPUTS)


def test_a_signal_before_the_renames_keeps_the_old_set(tiny_export, tmp_path):
    out = tmp_path / "out"
    old_outputs(out)
    result = run_python(sample_code(tiny_export / "unet.onnx", out, sigterm_around_the_writing("before")), tmp_path)
    assert result.returncode == 143, result.stderr
    assert replaced(out) == []
    assert result.stderr.strip() == "ddpm-run: terminated; no output written"


def command_code(prog: str, args: list[str], hook_before: str, hook_after: str) -> str:
    """The console script ``prog`` (its name as argv[0], as the installed script has), with exit
    handlers registered before the project is imported (they run last) and after the command's
    module is imported (they run first)."""
    module = {"ddpm-run": "ddpm.runtime.cli", "ddpm-export": "ddpm.export.cli"}[prog]
    return (
        f"import atexit, os, signal, sys, time\n{hook_before}\n"
        f"from {module} import main\n{hook_after}\n"
        f"sys.argv = [{prog!r}, *{args!r}]\nmain()\n"
    )


SELF_TERM = "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1)))"
COMMANDS = [("ddpm-run", ["--info"]), ("ddpm-export", ["--help"])]


@pytest.mark.parametrize("prog, args", COMMANDS)
def test_the_interpreters_last_teardown_ignores_both_signals(tiny_export, tmp_path, prog, args):
    # Past the last exit handler Python runs no handler of its own and resets them to the default,
    # which would kill the finished command; only an ignored signal survives that reset.
    args = [*args, "--onnx", str(tiny_export / "unet.onnx")] if prog == "ddpm-run" else args
    last = (
        "atexit.register(lambda: (os.write(2, f'last: {signal.getsignal(signal.SIGTERM)!r} "
        "{signal.getsignal(signal.SIGINT)!r}\\n'.encode()), os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.5)))"
    )
    result = run_python(command_code(prog, args, last, ""), tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr)  # not killed after its work was done
    assert "last: <Handlers.SIG_IGN: 1> <Handlers.SIG_IGN: 1>" in result.stderr
    assert "Traceback" not in result.stderr and "while exiting" not in result.stderr


@pytest.mark.parametrize("prog, args", COMMANDS)
def test_sigterm_in_the_exit_handlers_ends_at_once_with_the_commands_status(tiny_export, tmp_path, prog, args):
    args = [*args, "--onnx", str(tiny_export / "unet.onnx")] if prog == "ddpm-run" else args
    result = run_python(command_code(prog, args, "", SELF_TERM), tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == f"{prog}: SIGTERM while exiting; the command had finished its work"


def test_a_failed_command_keeps_its_status_when_signalled_while_exiting(tmp_path):
    result = run_python(
        command_code("ddpm-run", ["--onnx", str(tmp_path / "missing.onnx"), "--info"], "", SELF_TERM), tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == "ddpm-run: SIGTERM while exiting; the command had already failed (exit 1)"
    )


def test_in_process_callers_get_their_handlers_back(invoke, tiny_export):
    from ddpm.runtime.cli import main as run_main

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = invoke(run_main, "--onnx", tiny_export / "unet.onnx", "--info")
    assert result.code == 0, result.err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_held_signals_are_raised_when_the_block_ends(monkeypatch):
    monkeypatch.setattr(signals, "_held", 0)
    monkeypatch.setattr(signals, "_pending", None)
    done = []
    with pytest.raises(signals.Terminated):
        with signals.held():
            signals._handle(signal.SIGTERM, None)  # what the installed handler does when SIGTERM arrives
            signals._handle(signal.SIGINT, None)  # a second one changes nothing: the first is raised
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    with pytest.raises(KeyboardInterrupt):
        signals._handle(signal.SIGINT, None)  # outside a held block: at once
    with signals.held():
        pass
