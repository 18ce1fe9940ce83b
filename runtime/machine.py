"""The facts of the machine at hand, read from the system here and nowhere else: the CPU's name and
feature flags (Linux's /proc/cpuinfo) and the memory still free (/proc/meminfo).

The CPU's name keys every timing the runtime caches, its flags say whether bf16 runs natively, and
the free memory bounds a run before it starts; the benchmarks report the same facts.
"""

from __future__ import annotations

import contextlib
import platform

CPUINFO = "/proc/cpuinfo"
MEMINFO = "/proc/meminfo"


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo, None where there is none."""
    with contextlib.suppress(OSError):
        with open(CPUINFO, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1]
    return None


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    name = _cpuinfo_field("model name")
    return name.strip() if name is not None else platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (Linux's /proc/cpuinfo), None where the system does not list them."""
    flags = _cpuinfo_field("flags")
    return None if flags is None else frozenset(flags.split())


def available_memory() -> int | None:
    """Bytes of memory this process can still use without swapping (Linux's MemAvailable), or None."""
    try:
        with open(MEMINFO, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
