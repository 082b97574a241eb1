"""Hardware targets as data: per-dtype compute rates, memory, launch overhead, energy, format support.

Costs must come from a per-target description, never one built-in INT-vs-FP ratio (the literature
disagrees by device), so every number lives in a TOML file next to this module with its source cited.

A numeric format meets a target in one of three ways:
- *native*: the target multiplies it directly (compute type = the format's class, or a mapped name);
- *stored*: it can be kept in memory but is decoded to a wider type before the MACs (dequantization
  cost per element, e.g. INT4 weights on an H100 decoded to FP16);
- *unsupported*: the target cannot run it; the cost model leaves such candidates out.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.formats import Format, parse_format
from mpsearch.plan import Candidate

NATIVE, STORED, UNSUPPORTED = "native", "stored", "unsupported"


@dataclass(frozen=True)
class ComputeUnit:
    """Peak dense throughput of one compute type (1 MAC = 2 ops, as datasheets count)."""

    name: str
    ops_per_s: float
    out_bytes: float = 4.0  # bytes per output element written (accumulator / epilogue dtype)
    mac_pj: float = 0.0  # energy per MAC (multiply + accumulate)
    unit: str = ""  # e.g. "tensor-core", "cuda-core", "avx2", "lut", "dsp"

    @property
    def macs_per_s(self) -> float:
        return self.ops_per_s / 2.0


@dataclass(frozen=True)
class MemoryLevel:
    """A level of the memory hierarchy: a layer whose working set fits ``capacity_bytes`` streams at
    ``bandwidth_Bps`` and costs ``pj_per_byte``."""

    name: str
    capacity_bytes: float
    bandwidth_Bps: float
    pj_per_byte: float = 0.0


@dataclass(frozen=True)
class Execution:
    """How a target runs one candidate: the MAC compute type and which operands need converting."""

    compute: ComputeUnit
    weight_mode: str  # native | stored
    act_mode: str
    convert_weight: bool  # weight storage type differs from the compute type (decode per call)
    convert_act: bool


@dataclass(frozen=True)
class Target:
    """A hardware target loaded from TOML; see the module docstring for the format support rules."""

    name: str
    kind: str  # gpu | cpu | fpga
    description: str
    compute: dict[str, ComputeUnit]
    memory: tuple[MemoryLevel, ...]  # ordered smallest (fastest) to largest (main memory)
    launch_overhead_s: float
    convert_elems_per_s: float  # decode / quantize throughput for stored-only formats
    convert_pj_per_elem: float
    native: tuple[str, ...]  # fnmatch patterns over format classes
    stored: dict[str, str]  # pattern -> type it decodes to
    unsupported: tuple[str, ...]
    compute_map: dict[str, str]  # format class pattern -> compute type name (default: the class itself)
    mixed_float: str  # compute type when an int operand meets a float operand (both promoted to at least this)
    promotion: tuple[str, ...]  # compute types widest first: which of two operand types wins
    source_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: achieved fraction of the peak rate per ``"<layer kind>:<compute type>"`` (e.g. ``"linear:int8"``) or
    #: per compute type; 1.0 when absent. Kernels differ per op (conv vs. matmul), so calibration fits these.
    efficiency: dict[str, float] = field(default_factory=dict)
    #: stored-only weights decoded at every use inside the reduction (fused decode, one per MAC) instead of
    #: once per weight element per call; TOML ``convert_per_use``
    convert_per_use: bool = False
    #: conversion throughput per ``"<from>-><to>"`` pattern (fnmatch; ``int4->fp32`` = INT4 weight codes
    #: decoded to FP32, ``fp32->int8`` = FP32 activations quantized to INT8); ``convert_elems_per_s`` when no
    #: pattern matches. TOML table ``[convert_rates]``. Decoding packed nibbles costs several times more
    #: than widening a byte, so one rate for every format misranks INT4 against INT8.
    convert_rates: dict[str, float] = field(default_factory=dict)
    #: stored formats expanded once, when the model is loaded, into the compute type they map to
    #: (``{"int[2-7]": "int8"}``: INT4 weights unpacked to INT8 codes at load): no per-call decode, and
    #: the kernel streams them at the compute type's width. TOML ``formats.decode_at_load``.
    decode_at_load: dict[str, str] = field(default_factory=dict)
    #: format the activations arrive in from the producing op (``"fp32"``): an integer act format is then
    #: quantized inside the consuming kernel, once per input element (a ``"fp32-><act>"`` conversion).
    #: Empty: activations arrive already in the candidate's act format. TOML ``act_input``.
    act_input: str = ""
    #: fp32 vector lanes of one SIMD register (CPU): a kernel vectorized over output channels runs a
    #: channel count that is not a multiple of this scalar; 0 = not modelled. TOML ``cpu.vector_lanes``.
    vector_lanes: int = 0
    #: register tile of the target's GEMM/conv kernels (CPU): output rows (tokens / pixels) per tile and
    #: output channels per tile. With ``row_tile`` > 0 the memory term is reuse-aware: the weights are
    #: streamed once per ``row_tile`` output rows and the input once per ``col_tile`` output channels, each
    #: from the smallest memory level that holds that operand (kernels without cache blocking along the
    #: rows re-read a weight matrix that does not fit L1 for every row tile). 0 = the plain roofline
    #: (every operand once, at the level holding the whole working set). TOML ``cpu.row_tile`` / ``cpu.col_tile``.
    row_tile: int = 0
    col_tile: int = 0
    #: weight bytes of a whole model that stay cached from one forward pass to the next (CPU: one core's
    #: share of the last-level cache, which other cores and tenants also fill). A plan whose weights
    #: exceed it fetches every layer's weights from main memory in the deployed model, although the same
    #: kernel timed alone, called back to back, finds them cached. 0 = the last cache level's capacity.
    #: TOML ``cpu.resident_bytes``.
    resident_bytes: float = 0.0
    #: bytes/s of a layer's weight fetch from main memory when they are not cached (``resident_bytes``);
    #: 0 = the last memory level's bandwidth. Calibration fits it from kernels timed with flushed weights.
    stream_Bps: float = 0.0
    #: fixed seconds per call of a layer whose weights come from main memory: the first misses' latency
    #: (and the output lines read for ownership) before streaming starts. TOML ``cpu.stream_latency_s``.
    stream_latency_s: float = 0.0

    def stream_bandwidth(self) -> float:
        return self.stream_Bps if self.stream_Bps > 0 else self.memory[-1].bandwidth_Bps

    def weights_resident(self, model_weight_bytes: float) -> bool:
        """Whether a model whose layers hold ``model_weight_bytes`` of weights keeps them cached between
        forward passes (see ``resident_bytes``)."""
        cap = self.resident_bytes if self.resident_bytes > 0 else (self.memory[-2].capacity_bytes if len(self.memory) > 1 else math.inf)
        return model_weight_bytes <= cap

    def efficiency_for(self, kind: str, compute_type: str) -> float:
        return float(self.efficiency.get(f"{kind}:{compute_type}", self.efficiency.get(compute_type, 1.0)))

    def convert_rate(self, key: str) -> float:
        """Elements/s of one conversion ``"<from>-><to>"`` (first matching ``convert_rates`` pattern)."""
        if key in self.convert_rates:
            return float(self.convert_rates[key])
        for pat, rate in self.convert_rates.items():
            if fnmatch.fnmatchcase(key, pat):
                return float(rate)
        return float(self.convert_elems_per_s)

    def decoded_at_load(self, fmt: Format | str, compute_type: str) -> bool:
        """True when a stored operand in ``fmt`` is expanded to ``compute_type`` once at load time."""
        cls = format_class(fmt)
        return self.support(fmt) == STORED and any(
            fnmatch.fnmatchcase(cls, pat) and ct == compute_type for pat, ct in self.decode_at_load.items())

    # -- format support -------------------------------------------------------------------------
    def support(self, fmt: Format | str) -> str:
        """``native``, ``stored`` or ``unsupported`` for one format on this target."""
        cls = format_class(fmt)
        if any(fnmatch.fnmatchcase(cls, p) for p in self.native):
            return NATIVE
        if any(fnmatch.fnmatchcase(cls, p) for p in self.stored):
            return STORED
        return UNSUPPORTED

    def operand_type(self, fmt: Format | str) -> str | None:
        """The compute type an operand in ``fmt`` enters the MACs as (None if unsupported)."""
        cls = format_class(fmt)
        mode = self.support(fmt)
        if mode == NATIVE:
            for pat, ct in self.compute_map.items():
                if fnmatch.fnmatchcase(cls, pat):
                    return ct
            return cls
        if mode == STORED:
            for pat, ct in self.stored.items():
                if fnmatch.fnmatchcase(cls, pat):
                    return ct
        return None

    def execution(self, cand: Candidate) -> Execution | None:
        """How this target executes ``cand``, or None when it cannot (a format is unsupported, or no
        compute unit exists for the combination)."""
        wt, at = self.operand_type(cand.weight), self.operand_type(cand.act)
        if wt is None or at is None:
            return None
        ct = self._combine(wt, at)
        if ct is None or ct not in self.compute:
            return None
        return Execution(
            compute=self.compute[ct],
            weight_mode=self.support(cand.weight),
            act_mode=self.support(cand.act),
            convert_weight=format_class(cand.weight) != ct and self._storage_type(cand.weight) != ct,
            convert_act=format_class(cand.act) != ct and self._storage_type(cand.act) != ct,
        )

    def _storage_type(self, fmt: str) -> str | None:
        """Compute type a *natively* stored operand already is (so no conversion is needed)."""
        return self.operand_type(fmt) if self.support(fmt) == NATIVE else None

    def _rank(self, t: str) -> int:
        return self.promotion.index(t) if t in self.promotion else len(self.promotion)

    def _combine(self, wt: str, at: str) -> str | None:
        if wt == at:
            return wt
        if _is_int(wt) != _is_int(at):  # int meets float: compute in a float type at least mixed_float
            flt = at if _is_int(wt) else wt
            return min((flt, self.mixed_float), key=self._rank)
        return min((wt, at), key=self._rank)

    def memory_for(self, working_set_bytes: float) -> MemoryLevel:
        """The smallest memory level the working set fits in (the last level if none)."""
        for lvl in self.memory:
            if working_set_bytes <= lvl.capacity_bytes:
                return lvl
        return self.memory[-1]

    def replace(self, **changes: Any) -> "Target":
        """A copy with fields changed (calibration returns fitted targets this way)."""
        return dataclasses.replace(self, **changes)


def _is_int(type_name: str) -> bool:
    return type_name.startswith(("int", "uint"))


def format_class(fmt: Format | str) -> str:
    """The hardware-relevant class of a format: ``int{b}`` for any INT granularity/symmetry (the MAC is
    the same; scales only change bytes), otherwise the canonical spelling (``fp16``, ``e4m3``, ...)."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if f.family == "int":
        return f"int{f.element_bits}"
    return f.spelling


# -- loading ------------------------------------------------------------------------------------
def _package_dir() -> Path:
    return Path(str(resources.files(__name__)))


def list_targets() -> list[str]:
    """Names of the shipped targets (TOML files in this package)."""
    return sorted(p.stem for p in _package_dir().glob("*.toml"))


def load_target(name_or_path: str | Path) -> Target:
    """Load a shipped target by name (``h100``) or any target TOML by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file()):
        path = _package_dir() / f"{text}.toml"
        if not path.is_file():
            raise MpsearchError(f"unknown target {text!r}", hint=f"known: {', '.join(list_targets())}; or a path to a .toml")
    elif not path.is_file():
        raise MpsearchError(f"target file {text!r} not found", hint=f"known targets: {', '.join(list_targets())}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MpsearchError(f"target file {str(path)!r} is not valid TOML: {e}") from None
    return _from_dict(data, str(path))


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise MpsearchError(f"target {where}: missing required key {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise MpsearchError(f"target {where}: key {key!r} has the wrong type ({type(v).__name__})")
    return v


def _positive(v: float, what: str, where: str) -> float:
    if not v > 0:
        raise MpsearchError(f"target {where}: {what} must be > 0, got {v}")
    return float(v)


def _fpga_ops(spec: dict[str, Any], dev: dict[str, Any], where: str) -> float:
    """Peak ops/s of an FPGA MAC type from resource counts: the whole DSP budget plus the LUT budget
    filled with multipliers of this width, at the design clock."""
    clock = _positive(_req(dev, "clock_hz", (int, float), where), "device.clock_hz", where)
    luts = float(_req(dev, "luts", (int, float), where)) * float(dev.get("lut_fraction_for_macs", 1.0))
    dsps = float(_req(dev, "dsps", (int, float), where))
    units = 0.0
    if spec.get("luts_per_mac", 0) > 0:
        units += luts / float(spec["luts_per_mac"])
    if spec.get("macs_per_dsp", 0) > 0:
        units += dsps * float(spec["macs_per_dsp"])
    if units <= 0:
        raise MpsearchError(f"target {where}: FPGA compute entry needs luts_per_mac or macs_per_dsp > 0")
    return 2.0 * units * clock


def _from_dict(d: dict[str, Any], where: str) -> Target:
    name = _req(d, "name", str, where)
    kind = _req(d, "kind", str, where)
    if kind not in ("gpu", "cpu", "fpga"):
        raise MpsearchError(f"target {where}: kind must be gpu, cpu or fpga, got {kind!r}")
    scale = 1.0
    if kind == "cpu":  # CPU rates are given per core-cycle
        cpu = _req(d, "cpu", dict, where)
        scale = _positive(_req(cpu, "cores", (int, float), where), "cpu.cores", where) * _positive(
            _req(cpu, "freq_hz", (int, float), where), "cpu.freq_hz", where
        )
    compute: dict[str, ComputeUnit] = {}
    for ct, spec in _req(d, "compute", dict, where).items():
        if not isinstance(spec, dict):
            raise MpsearchError(f"target {where}: compute.{ct} must be a table")
        if kind == "fpga":
            ops = _fpga_ops(spec, _req(d, "device", dict, where), where)
        elif kind == "cpu":
            ops = float(_req(spec, "ops_per_cycle", (int, float), f"{where} compute.{ct}")) * scale
        else:
            ops = float(_req(spec, "ops_per_s", (int, float), f"{where} compute.{ct}"))
        compute[ct] = ComputeUnit(
            ct, _positive(ops, f"compute.{ct} rate", where), float(spec.get("out_bytes", 4.0)),
            float(spec.get("mac_pj", 0.0)), str(spec.get("unit", "")),
        )
    if not compute:
        raise MpsearchError(f"target {where}: no compute types listed")
    levels = []
    for lvl in _req(d, "memory", list, where):
        lw = f"{where} memory"
        levels.append(MemoryLevel(
            str(lvl.get("name", "")), _positive(_req(lvl, "capacity_bytes", (int, float), lw), "memory capacity", where),
            _positive(_req(lvl, "bandwidth_Bps", (int, float), lw), "memory bandwidth", where), float(lvl.get("pj_per_byte", 0.0)),
        ))
    if not levels:
        raise MpsearchError(f"target {where}: at least one memory level is required")
    levels.sort(key=lambda m: m.capacity_bytes)
    fm = _req(d, "formats", dict, where)
    native = tuple(_req(fm, "native", list, where))
    stored = dict(fm.get("stored", {}))
    unsupported = tuple(fm.get("unsupported", []))
    compute_map = dict(fm.get("compute", {}))
    for pat, ct in list(stored.items()) + list(compute_map.items()):
        if ct not in compute:
            raise MpsearchError(f"target {where}: format pattern {pat!r} maps to compute type {ct!r}, which is not in [compute]")
    decode_at_load = {str(k): str(v) for k, v in dict(fm.get("decode_at_load", {})).items()}
    for pat, ct in decode_at_load.items():
        if ct not in compute:
            raise MpsearchError(f"target {where}: decode_at_load pattern {pat!r} maps to compute type {ct!r}, which is not in [compute]")
    mixed = str(fm.get("mixed_float", "fp32"))
    promotion = tuple(fm.get("promotion", ["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"]))
    return Target(
        name=name, kind=kind, description=str(d.get("description", "")), compute=compute, memory=tuple(levels),
        launch_overhead_s=float(d.get("launch_overhead_s", 0.0)),
        convert_elems_per_s=_positive(float(d.get("convert_elems_per_s", 1e12)), "convert_elems_per_s", where),
        convert_pj_per_elem=float(d.get("convert_pj_per_elem", 0.0)),
        native=native, stored=stored, unsupported=unsupported, compute_map=compute_map, mixed_float=mixed,
        promotion=promotion, source_path=where, extra=dict(d.get("extra", {})),
        convert_per_use=bool(d.get("convert_per_use", False)),
        efficiency={str(k): _positive(float(v), f"efficiency.{k}", where) for k, v in dict(d.get("efficiency", {})).items()},
        convert_rates={str(k): _positive(float(v), f"convert_rates.{k}", where) for k, v in dict(d.get("convert_rates", {})).items()},
        decode_at_load=decode_at_load,
        act_input=str(d.get("act_input", "")),
        vector_lanes=int(d.get("cpu", {}).get("vector_lanes", 0)) if kind == "cpu" else 0,
        row_tile=int(d.get("cpu", {}).get("row_tile", 0)) if kind == "cpu" else 0,
        col_tile=int(d.get("cpu", {}).get("col_tile", 0)) if kind == "cpu" else 0,
        resident_bytes=float(d.get("cpu", {}).get("resident_bytes", 0.0)) if kind == "cpu" else 0.0,
        stream_latency_s=float(d.get("cpu", {}).get("stream_latency_s", 0.0)) if kind == "cpu" else 0.0,
    )


__all__ = ["ComputeUnit", "Execution", "MemoryLevel", "Target", "format_class", "list_targets", "load_target"]
