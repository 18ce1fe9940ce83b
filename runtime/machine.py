"""The facts of the machine at hand, read from the system here and nowhere else: the CPU's name and
feature flags (Linux's /proc/cpuinfo), the ones of them that decide which kernels run, a short name
for the CPU's kind, and the memory still free (/proc/meminfo).

The CPU's name keys every timing the runtime caches, its flags say whether bf16 runs natively, and
the free memory bounds a run before it starts; the benchmarks report the same facts.
"""

from __future__ import annotations

import contextlib
import platform
import re

CPUINFO = "/proc/cpuinfo"
MEMINFO = "/proc/meminfo"
# The feature flags that decide which kernels run (AVX2, AVX-512 with VNNI and BF16, AMX), narrowest first.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


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


def kernel_flags(flags: frozenset[str] | None = None) -> list[str]:
    """Those of :data:`KERNEL_FLAGS` this CPU has (or ``flags``, as :func:`cpu_flags` read them)."""
    flags = (cpu_flags() if flags is None else flags) or frozenset()
    return [flag for flag in KERNEL_FLAGS if flag in flags]


def flag_line() -> str:
    """:func:`kernel_flags` as one line for a report ("unknown" where the system lists no flags)."""
    flags = cpu_flags()
    if flags is None:
        return "unknown"
    return " ".join(kernel_flags(flags)) or "none of avx2/avx512/amx"


def cpu_kind(name: str | None = None, flags: str | None = None) -> str:
    """A file tag for a CPU (this one unless ``name`` and ``flags`` are given): its family and widest
    vector unit, e.g. ``xeon-amx``, ``epyc-avx512``."""
    words = re.sub(r"\((r|tm)\)", "", (cpu_name() if name is None else name).lower()).replace("-", " ").split()
    family = next((w for w in ("xeon", "epyc", "ryzen", "core", "graviton", "neoverse", "apple") if w in words), None)
    found = (flag_line() if flags is None else flags).split()
    units = (
        ("amx", any(f.startswith("amx_") for f in found)),
        ("avx512", "avx512f" in found),
        ("avx2", "avx2" in found),
    )
    unit = next((unit for unit, has in units if has), None)
    return "-".join(filter(None, [family or "-".join(w for w in words[:2] if w.isalnum()) or "cpu", unit]))


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
