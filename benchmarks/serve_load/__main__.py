"""``python -m ddpm.benchmarks.serve_load``."""

from .cli import main

main()
