"""The package's layers: the runtime and core sources import nothing from the layers above them."""

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def _imported_modules(path):
    """Absolute names of what a source file imports, relative imports resolved against its layer."""
    import ast

    package = ["ddpm", path.parent.name]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield from ([module] if node.module else [f"{module}.{alias.name}" for alias in node.names])


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("runtime", {"torch", "torchvision", "onnx", "ddpm.train", "ddpm.export", "ddpm.benchmarks"}),
        (
            "core",
            {
                "torch",
                "torchvision",
                "onnx",
                "onnxruntime",
                "openvino",
                "ddpm.runtime",
                "ddpm.train",
                "ddpm.export",
                "ddpm.benchmarks",
            },
        ),
    ],
)
def test_layer_sources_import_nothing_above_them(layer, forbidden):
    import pathlib

    files = list(pathlib.Path(layer).glob("*.py"))
    assert files
    for path in files:
        for name in _imported_modules(path):
            parts = name.split(".")
            assert parts[0] not in forbidden and ".".join(parts[:2]) not in forbidden, (path, name)


def test_every_package_folder_is_installed():
    """A non-editable install ships only the packages pyproject.toml lists: each folder of the
    layers with an __init__.py must be there, or `pip install .` leaves it out."""
    import pathlib
    import tomllib

    config = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: pathlib.Path(folder) for name, folder in config["package-dir"].items()}
    found = {
        f"{name}.{'.'.join(init.parent.relative_to(folder).parts)}".rstrip(".")
        for name, folder in folders.items()
        for init in folder.rglob("__init__.py")
    }
    assert found == set(config["packages"])


def test_openvino_is_imported_only_when_it_runs():
    """The openvino extra is optional and slow to import: opening the runtime's modules and running
    ONNX Runtime never imports it."""
    import subprocess
    import sys

    code = (
        "import sys; from ddpm.runtime import cli, precision, eval_cli; from ddpm.runtime.pipeline import DDPM; "
        "DDPM.load(provider='cpu'); print('openvino' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
