"""The command-line frame (core/console.py): a command that needs an extra the base install leaves out says
so in one line (and --help needs none), and out-of-memory errors are told apart from other runtime errors."""

import subprocess
import sys

import pytest

from conftest import DATA_DIR


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


@pytest.mark.parametrize("module, args", [
    ("ddpm.train.cli", ["--data-dir", str(DATA_DIR), "--dry-run"]),
    ("ddpm.export.cli", ["--ckpt", "model.pt"]),
])
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


@pytest.mark.parametrize("message", ["DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB",
                                     "CUDA out of memory. Tried to allocate 2.00 GiB"])
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
    command = [sys.executable, "-c", "from ddpm.runtime.cli import main; main()", "--onnx", str(tiny_export / "unet.onnx"),
               "-n", "2", "--sampler", "ddim", "--steps", "2", "--png", str(out)]
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
