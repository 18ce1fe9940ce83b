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


@pytest.mark.parametrize("layer, forbidden", [
    ("runtime", {"torch", "torchvision", "onnx", "ddpm.train", "ddpm.export", "ddpm.benchmarks"}),
    ("core", {"torch", "torchvision", "onnx", "onnxruntime", "ddpm.runtime", "ddpm.train", "ddpm.export", "ddpm.benchmarks"}),
])
def test_layer_sources_import_nothing_above_them(layer, forbidden):
    import pathlib

    files = list(pathlib.Path(layer).glob("*.py"))
    assert files
    for path in files:
        for name in _imported_modules(path):
            parts = name.split(".")
            assert parts[0] not in forbidden and ".".join(parts[:2]) not in forbidden, (path, name)
