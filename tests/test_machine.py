"""The machine's facts (runtime/machine.py): the flags that decide kernels, their report line, the CPU's kind."""

from ddpm.runtime import machine


def test_cpu_kind_names_the_family_and_the_widest_unit():
    assert machine.cpu_kind("Intel(R) Xeon(R) Platinum 8480+", "avx2 avx512f amx_bf16") == "xeon-amx"
    assert machine.cpu_kind("AMD EPYC 7B13 64-Core Processor", "avx2 avx512f") == "epyc-avx512"
    assert machine.cpu_kind("Some Chip(TM) 9000 CPU", "none of avx2/avx512/amx") == "some-chip"


def test_the_kernel_flags_come_from_cpuinfo_narrowest_first(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC 9B14\nflags\t\t: fpu amx_tile avx512_bf16 sse4_2 avx2 avx512f\n")
    monkeypatch.setattr(machine, "CPUINFO", str(cpuinfo))
    assert machine.kernel_flags() == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
    assert machine.flag_line() == "avx2 avx512f avx512_bf16 amx_tile"
    assert machine.cpu_kind() == "epyc-amx"
    cpuinfo.write_text("model name\t: Old Chip\nflags\t\t: fpu sse4_2\n")
    assert machine.flag_line() == "none of avx2/avx512/amx"
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "missing"))
    assert machine.flag_line() == "unknown" and machine.kernel_flags() == []
