"""Target descriptions: shipped TOMLs load, format support classes, loading errors."""

from __future__ import annotations

import pytest

from backends.targets import NATIVE, STORED, UNSUPPORTED, format_class, list_targets, load_target
from mpsearch.errors import MpsearchError
from mpsearch.plan import Candidate

SHIPPED = {"h100", "t4", "x86-avx2", "x86-avx512-vnni", "fpga-generic"}


def test_shipped_targets_load():
    assert SHIPPED <= set(list_targets())
    for name in SHIPPED:
        t = load_target(name)
        assert t.name == name and t.compute and t.memory


def test_h100_rates_and_support():
    t = load_target("h100")
    assert t.compute["fp16"].ops_per_s == pytest.approx(989.4e12)
    assert t.compute["fp8"].ops_per_s == pytest.approx(1978.9e12)
    assert t.compute["int8"].ops_per_s == pytest.approx(1978.9e12)
    assert t.compute["tf32"].ops_per_s == pytest.approx(494.7e12)
    assert t.memory[-1].bandwidth_Bps == pytest.approx(3.35e12)
    assert t.support("int8") == NATIVE and t.support("bf16") == NATIVE
    assert t.support("int4") == STORED  # Hopper has no INT4 tensor cores
    ex = t.execution(Candidate.parse("int4/fp16"))
    assert ex.compute.name == "fp16" and ex.convert_weight and not ex.convert_act


def test_t4_int4_native_bf16_stored():
    t = load_target("t4")
    assert t.support("int4") == NATIVE and t.support("bf16") == STORED
    assert t.execution(Candidate.parse("int4/int4")).compute.ops_per_s == pytest.approx(260e12)
    assert t.execution(Candidate.parse("int4g128/int4")).compute.name == "int4"  # groups change bytes, not MACs


def test_cpu_rates_from_cycles():
    t = load_target("x86-avx512-vnni")
    assert t.compute["int8"].ops_per_s == pytest.approx(256 * 2.3e9)
    assert t.compute["int8"].ops_per_s / t.compute["fp32"].ops_per_s == pytest.approx(4.0)
    a = load_target("x86-avx2")
    assert a.compute["int8"].ops_per_s / a.compute["fp32"].ops_per_s == pytest.approx(2.0)
    assert a.support("fp16") == STORED and a.execution(Candidate("fp16", "fp16")).compute.name == "fp32"


def test_fpga_rates_from_resources():
    t = load_target("fpga-generic")
    # int4: 230400 LUTs x 0.5 / 36 per MAC at 300 MHz, 2 ops per MAC
    assert t.compute["int4"].ops_per_s == pytest.approx(2 * 300e6 * 230400 * 0.5 / 36)
    # int8: DSP packing (2 per DSP48E2) plus LUT multipliers
    assert t.compute["int8"].ops_per_s == pytest.approx(2 * 300e6 * (1728 * 2 + 230400 * 0.5 / 92))
    assert t.compute["int4"].ops_per_s > t.compute["e2m1"].ops_per_s  # INT cheaper than minifloat at 4 bits
    assert t.support("int3") == NATIVE
    assert t.support("mxfp4") == UNSUPPORTED and t.execution(Candidate.parse("mxfp4/fp32")) is None
    assert t.execution(Candidate.parse("e4m3/e4m3")).compute.name == "e4m3"


def test_h100_fp8_native_fnuz_stored():
    t = load_target("h100")
    assert t.execution(Candidate.parse("e4m3/e4m3")).compute.name == "fp8"
    ex = t.execution(Candidate.parse("e4m3-fnuz/e4m3-fnuz"))
    assert ex.compute.name == "fp16" and ex.convert_weight and ex.convert_act


def test_format_class_ignores_granularity():
    assert format_class("int4g128") == "int4" == format_class("uint4t")
    assert format_class("bf16") == "bf16"


def test_unknown_target_lists_known():
    with pytest.raises(MpsearchError, match="unknown target 'tpu'.*h100"):
        load_target("tpu")


def _write(tmp_path, text, name="t.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """
name = "toy"
kind = "gpu"
[[memory]]
name = "dram"
capacity_bytes = 1e9
bandwidth_Bps = 1e9
[compute.fp32]
ops_per_s = 2e9
[formats]
native = ["fp32"]
"""


def test_custom_toml_by_path(tmp_path):
    t = load_target(_write(tmp_path, GOOD))
    assert t.name == "toy" and t.support("int8") == UNSUPPORTED
    assert t.execution(Candidate.parse("int8")) is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("name = [", "not valid TOML"),
        (GOOD.replace('kind = "gpu"', 'kind = "asic"'), "kind must be"),
        (GOOD.replace("ops_per_s = 2e9", "ops_per_s = 0"), "must be > 0"),
        (GOOD.replace("ops_per_s = 2e9", ""), "missing required key 'ops_per_s'"),
        (GOOD.replace('name = "toy"', ""), "missing required key 'name'"),
        (GOOD + 'stored = { "int4" = "int8" }\n', "maps to compute type 'int8'"),
        (GOOD.replace("bandwidth_Bps = 1e9", 'bandwidth_Bps = "fast"'), "wrong type"),
    ],
)
def test_bad_toml_errors(tmp_path, text, match):
    with pytest.raises(MpsearchError, match=match):
        load_target(_write(tmp_path, text))


def test_missing_toml_path(tmp_path):
    with pytest.raises(MpsearchError, match="not found"):
        load_target(tmp_path / "nope.toml")


CPU_TOML = """
name = "cpu-toy"
kind = "cpu"
act_input = "fp32"
convert_elems_per_s = 1e9
[cpu]
cores = 1
freq_hz = 1e9
vector_lanes = 8
row_tile = 4
col_tile = 16
[[memory]]
name = "dram"
capacity_bytes = 1e12
bandwidth_Bps = 1e9
[compute.fp32]
ops_per_cycle = 2
[compute.int8]
ops_per_cycle = 8
[convert_rates]
"int4->fp32" = 2e8
"int*->fp32" = 5e8
[formats]
native = ["fp32", "int8"]
stored = { "int[2-7]" = "int8" }
decode_at_load = { "int[2-7]" = "int8" }
"""


def test_cpu_backend_keys(tmp_path):
    t = load_target(_write(tmp_path, CPU_TOML))
    assert (t.act_input, t.vector_lanes, t.row_tile, t.col_tile) == ("fp32", 8, 4, 16)
    assert t.convert_rate("int4->fp32") == 2e8  # exact key first
    assert t.convert_rate("int8->fp32") == 5e8  # then the first matching pattern
    assert t.convert_rate("fp32->int8") == 1e9  # else convert_elems_per_s
    assert t.decoded_at_load("int4", "int8") and not t.decoded_at_load("int4", "fp32")
    assert not t.decoded_at_load("int8", "int8")  # native, nothing to decode
    with pytest.raises(MpsearchError, match="decode_at_load pattern"):
        load_target(_write(tmp_path, CPU_TOML.replace('decode_at_load = { "int[2-7]" = "int8" }', 'decode_at_load = { "int4" = "fp16" }'), "bad.toml"))


def test_shipped_x86_avx2_describes_the_tvm_backend():
    t = load_target("x86-avx2")
    assert t.act_input == "fp32" and t.row_tile > 0 and t.vector_lanes == 8
    assert t.decoded_at_load("int4", "int8")
    # unpacking nibbles to fp32 is slower than widening bytes
    assert t.convert_rate("int4->fp32") < t.convert_rate("int8->fp32")
