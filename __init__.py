"""The repository root is the ``ddpm`` package.

pyproject.toml installs the folders here as its subpackages: core/ as ``ddpm.core``, train/ as
``ddpm.train``, export/ as ``ddpm.export``, runtime/ as ``ddpm.runtime`` and benchmarks/ as
``ddpm.benchmarks``. This file is not installed (``ddpm`` stays a namespace package); it lets
readers and tools resolve the layers' relative imports (``from ..core import schedule``) from
the files as they lie. The layers import downwards only:

    benchmarks ─► export ─► train ─► core
                     └────► runtime ─► core
"""
