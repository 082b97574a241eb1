"""Turn a layer's float weight + plan formats into the arrays a compiled kernel consumes.

Weights come from the format library's own ``encode`` (codes + scales), so the artifact stores exactly
what the simulation used; every prepared weight is checked at build time by reconstructing it from the
stored arrays and comparing with ``Format.decode`` bit for bit. Layout is ``[K, O]`` (reduction axis
first, output channels contiguous) because the CPU kernels vectorize over output channels; 1/2/4-bit
codes are packed along O by ``mpsearch.formats.packing`` (LSB first; a byte holds whole codes, so the
kernel decodes with a shift and a mask); 3/5/6/7-bit codes are kept one per byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mpsearch.errors import MpsearchError
from mpsearch.formats import Format, parse_format

#: decode modes a kernel understands
FLOAT_MODES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class ActQuant:
    """Static per-tensor activation quantization ``q = clamp(round(x / scale) + zp, qmin, qmax)``.

    The kernel feeds ``(q - zp) * scale`` to a float dot product, or ``q`` itself to an int8 dot product
    when the format is symmetric (``zp == 0``) and fits in int8.
    """

    spelling: str
    qmin: int
    qmax: int
    scale: np.float32
    zero_point: np.float32

    @property
    def int8_ok(self) -> bool:
        return float(self.zero_point) == 0.0 and self.qmin >= -128 and self.qmax <= 127

    def fake_quant_np(self, x: np.ndarray) -> np.ndarray:
        """What the kernel computes, in numpy (float32, round half to even)."""
        x = x.astype(np.float32)
        q = np.clip(np.rint(x / self.scale) + self.zero_point, self.qmin, self.qmax).astype(np.float32)
        return ((q - self.zero_point) * self.scale).astype(np.float32)


def act_quant(spelling: str, amax: float | None) -> ActQuant | None:
    """ActQuant for a plan's act format (None for float acts); checked against ``Format.fake_quant``.

    Scale and zero point come from the format's own ``encode(..., amax=amax)`` so they are the ones the
    simulation uses; a probe covering the range, the steps and the ties is then compared bit for bit.
    """
    fmt = parse_format(spelling)
    if fmt.is_float:
        return None
    if fmt.family != "int":
        raise MpsearchError(f"activation format {spelling!r} is not supported by the TVM backend (integer act formats only)")
    if amax is None:
        raise MpsearchError(f"act format {spelling!r} needs a calibrated act_amax for the layer; run calibrate_act_ranges")
    amax = float(amax)
    enc = fmt.encode(torch.tensor([amax, -amax], dtype=torch.float32), channel_axis=None, amax=amax)
    zp = np.float32(enc.zero_points.reshape(-1)[0]) if enc.zero_points is not None else np.float32(0)
    aq = ActQuant(fmt.spelling, int(fmt.qmin), int(fmt.qmax), np.float32(enc.scales.reshape(-1)[0]), zp)
    s = float(aq.scale)
    probe = np.concatenate([
        np.linspace(-1.25 * amax, 1.25 * amax, 2001, dtype=np.float32),
        (np.arange(-300, 301, dtype=np.float32) + 0.5) * np.float32(s),
        np.float32([0.0, amax, -amax]),
    ]).astype(np.float32)
    ref = fmt.fake_quant(torch.from_numpy(probe), channel_axis=None, amax=amax).numpy()
    if not np.array_equal(ref, aq.fake_quant_np(probe)):
        raise MpsearchError(f"activation format {spelling!r}: static quantizer does not reproduce the format library; not supported by the TVM backend")
    return aq


@dataclass
class PreparedWeight:
    """A weight in kernel form. ``w(k, o)`` is decoded per ``mode``:

    - ``float32``/``float16``/``bfloat16``: ``arrays["w"][k, o]`` (bf16 stored as its uint16 bits)
    - ``int``: ``(int(code) - zp[g, o]) * scale[g, o]`` with ``g = k // group``; ``int(code)`` is the
      two's complement value (``coding="twos"``) or ``code + offset`` (``coding="offset"``)
    - ``lut``: ``(lut[code] - zp[g, o]) * scale[g, o]`` (minifloat / block-format code books)
    - ``int8dot``: ``arrays["w"]`` int8 values; per-channel ``scale[o]`` applied after the dot

    ``group`` is None when there is one scale per output channel (per-tensor scales are broadcast).
    """

    mode: str
    spelling: str
    out_channels: int
    k: int
    bits: int = 32
    coding: str = "twos"
    offset: int = 0
    group: int | None = None
    per_byte: int = 1
    has_zp: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return 1 if self.group is None else -(-self.k // self.group)

    def storage_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


def int_values(codes: np.ndarray, p: PreparedWeight) -> np.ndarray:
    """Integer values of unpacked codes under ``p``'s coding (numpy mirror of the kernel)."""
    c = codes.astype(np.int32)
    if p.coding == "twos":
        half = 1 << (p.bits - 1)
        return (c ^ half) - half
    return c + p.offset


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``[K, O]`` along O with the format library's packer (LSB first, rows = K)."""
    from mpsearch.formats.packing import pack_codes as lib_pack

    return lib_pack(codes, bits)


def unpack_codes(packed: np.ndarray, bits: int, out_channels: int) -> np.ndarray:
    """Inverse of ``pack_codes`` (the format library's unpacker)."""
    from mpsearch.formats.packing import unpack_codes as lib_unpack

    return lib_unpack(packed, bits, (packed.shape[0], out_channels))


def _reconstruct(p: PreparedWeight) -> np.ndarray:
    """Dense float32 ``[K, O]`` from the prepared arrays (numpy mirror of the kernel's decode)."""
    if p.mode in ("float32", "float16"):
        return p.arrays["w"].astype(np.float32)
    if p.mode == "bfloat16":
        return (p.arrays["w"].astype(np.uint32) << 16).view(np.float32)
    if p.mode == "int8dot":
        return p.arrays["w"].astype(np.float32) * p.arrays["scale"][None, :]
    codes = p.arrays["codes"]
    if p.per_byte > 1:
        codes = unpack_codes(codes, p.bits, p.out_channels)
    vals = int_values(codes, p).astype(np.float32) if p.mode == "int" else p.arrays["lut"][codes]
    g = np.arange(p.k) // (p.group or p.k)
    sc = p.arrays["scale"][g]
    if p.has_zp:
        vals = vals - p.arrays["zp"][g]
    return (vals * sc).astype(np.float32)


def _scale_layout(enc_scales: np.ndarray, out_channels: int, kflat: int, declared: int | None) -> int | None:
    """Group size along the flattened row (None: per channel); the format's declared group/block wins."""
    n = enc_scales.size
    if n in (1, out_channels) and (declared is None or declared >= kflat):
        return None
    if n % out_channels:
        raise MpsearchError(f"cannot map {n} weight scales onto {out_channels} output channels")
    groups = n // out_channels
    group = int(declared) if declared else -(-kflat // groups)
    if -(-kflat // group) != groups:
        raise MpsearchError(f"cannot infer the group size of {groups} groups over {kflat} elements")
    return group


def _code_book(fmt: Format, enc, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(value of every code at unit scale, per-row-of-scales scale, zero point or None) for ``enc``.

    Integer and minifloat formats carry float32 scales; block formats carry E8M0/E4M3 scale codes that
    are decoded here. Everything is re-checked by reconstruction against ``Format.decode``.
    """
    every = np.arange(2**bits, dtype=np.uint8)
    if fmt.family == "int":
        book = (fmt.code_values(every) if hasattr(fmt, "code_values") else every.astype(np.int32) + int(enc.meta.get("qmin", 0)))
        return book.astype(np.float32), np.asarray(enc.scales, np.float32), (None if enc.zero_points is None else np.asarray(enc.zero_points, np.float32))
    if fmt.family == "fp" and hasattr(fmt, "codec"):
        return np.asarray(fmt.codec.decode(every), dtype=np.float32).reshape(-1), np.asarray(enc.scales, np.float32), None
    if fmt.family == "block" and enc.scale_codes is not None and hasattr(fmt, "_element_values"):
        book = fmt._element_values(torch.from_numpy(every)).numpy().astype(np.float32)
        sc = torch.from_numpy(np.ascontiguousarray(enc.scale_codes)).reshape(-1, 1)
        if enc.meta.get("scale_format") == "e8m0":
            from mpsearch.formats.block import e8m0_decode

            eff = e8m0_decode(sc)
        else:
            g = torch.from_numpy(np.asarray(enc.scales, dtype=np.float32)).reshape(1, 1)
            eff = fmt._e4m3.decode(sc) * g
        return book, eff.reshape(-1).numpy().astype(np.float32), None
    raise MpsearchError(f"weight format {enc.spelling!r} (family {fmt.family!r}) is not supported by the TVM backend")


def _int_coding(book: np.ndarray, bits: int) -> tuple[str, int] | None:
    """Recognise code books that bit arithmetic can decode: two's complement or offset codes."""
    c = np.arange(2**bits)
    twos = np.where(c >= 2 ** (bits - 1), c - 2**bits, c)
    if np.array_equal(book, twos.astype(np.float32)):
        return "twos", 0
    off = int(book[0])
    if np.array_equal(book, (c + off).astype(np.float32)):
        return "offset", off
    return None


def prepare_weight(weight: torch.Tensor, spelling: str, act: ActQuant | None = None) -> PreparedWeight:
    """Encode ``weight`` (``[O, ...]``) with the format library and lay it out for the kernels.

    With an integer ``act`` and a symmetric per-channel int weight of <= 8 bits the result is an
    ``int8dot`` weight (int8 x int8 -> int32, scale after the dot); otherwise a decode weight.
    """
    fmt = parse_format(spelling)
    w = weight.detach().float().cpu()
    o = int(w.shape[0])
    kflat = int(w[0].numel())
    if fmt.is_float:
        mode = FLOAT_MODES[fmt.spelling]
        wt = w.reshape(o, kflat).t().contiguous()
        if mode == "float16":
            arr = wt.half().numpy()
        elif mode == "bfloat16":
            arr = wt.bfloat16().view(torch.int16).numpy().view(np.uint16)
        else:
            arr = wt.numpy()
        p = PreparedWeight(mode, fmt.spelling, o, kflat, bits=fmt.element_bits, arrays={"w": np.ascontiguousarray(arr)})
        ref = fmt.fake_quant(w).reshape(o, kflat).t().numpy()
        if not np.array_equal(_reconstruct(p), ref):
            raise MpsearchError(f"internal: float weight preparation for {spelling!r} is not exact")
        return p

    enc = fmt.encode(w, channel_axis=0)
    bits = int(fmt.element_bits)
    if bits > 8:
        raise MpsearchError(f"weight format {spelling!r} has {bits}-bit codes; the TVM backend packs at most 8")
    book, enc_scales, enc_zps = _code_book(fmt, enc, bits)
    codes = np.asarray(enc.codes, dtype=np.uint8).reshape(o, kflat)
    declared = enc.meta.get("group") or enc.meta.get("block") or getattr(fmt, "group", None) or getattr(fmt, "block", None)
    group = _scale_layout(enc_scales, o, kflat, declared)
    n_groups = 1 if group is None else -(-kflat // group)
    scales = np.broadcast_to(enc_scales.reshape(o if enc_scales.size > 1 else 1, -1), (o, n_groups)).astype(np.float32)
    zps = enc_zps if enc_zps is not None else np.zeros(1, np.float32)
    zps = np.broadcast_to(zps.reshape(o if zps.size > 1 else 1, -1), (o, n_groups)).astype(np.float32)
    has_zp = bool(np.any(zps != 0))
    coding = _int_coding(book, bits)

    if (coding is not None and act is not None and act.int8_ok and not has_zp and group is None
            and book.min() >= -128 and book.max() <= 127):
        wq = book[codes].astype(np.int8)
        p = PreparedWeight("int8dot", fmt.spelling, o, kflat, bits=bits,
                           arrays={"w": np.ascontiguousarray(wq.T), "scale": np.ascontiguousarray(scales[:, 0])})
    else:
        per_byte = 8 // bits if bits in (1, 2, 4) else 1
        codes_t = np.ascontiguousarray(codes.T)
        arrays = {"codes": pack_codes(codes_t, bits) if per_byte > 1 else codes_t,
                  "scale": np.ascontiguousarray(scales.T)}
        if has_zp:
            arrays["zp"] = np.ascontiguousarray(zps.T)
        if coding is None:
            arrays["lut"] = book
        p = PreparedWeight("int" if coding else "lut", fmt.spelling, o, kflat, bits=bits,
                           coding=coding[0] if coding else "twos", offset=coding[1] if coding else 0,
                           group=group, per_byte=per_byte, has_zp=has_zp, arrays=arrays)
    ref = fmt.decode(enc).reshape(o, kflat).t().numpy()
    if not np.array_equal(_reconstruct(p), ref):
        raise MpsearchError(f"weight format {spelling!r}: the packed form does not reproduce Format.decode; not supported by the TVM backend")
    return p
