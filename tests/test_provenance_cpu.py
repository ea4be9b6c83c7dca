"""The CPU description that benchmarks and reports print (l2ood.provenance.cpu_name)."""

from __future__ import annotations

import os

from l2ood.provenance import amd_core, cpu_name


def test_amd_core_generations() -> None:
    assert amd_core(0x19, 0x11) == "Zen 4"  # EPYC 9004 (Genoa)
    assert amd_core(0x19, 0xA0) == "Zen 4" and amd_core(0x19, 0x61) == "Zen 4"
    assert amd_core(0x19, 0x01) == "Zen 3" and amd_core(0x19, 0x21) == "Zen 3"
    assert amd_core(0x17, 0x31) == "Zen 2" and amd_core(0x17, 0x01) == "Zen"
    assert amd_core(0x1A, 0x02) == "Zen 5"
    assert amd_core(6, 0x8F) is None  # an Intel family


def test_cpu_name_names_the_core_count() -> None:
    name = cpu_name()
    assert f"{os.cpu_count()} cores" in name and name.strip() == name
